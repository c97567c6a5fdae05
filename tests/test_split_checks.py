"""A split that cannot select or evaluate is found before training: validation captures with one class are
repaired with whole training captures or folded into training (said in one line and in results.json), a test side
with one class stops the job in one line."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np

from pclip_jax.data import splits
from tests.job_configs import folder_job_config


def test_validation_without_two_classes_is_repaired_or_folded():
    caps = np.array(["a1", "a1", "a2", "a3", "b1", "b2", "c1", "v1", "v1"])
    ids = np.array([0, 0, 0, 0, 1, 1, 2, 0, 0])
    train, val, note = splits.ensure_validation_classes(caps, ids, np.arange(7), np.array([7, 8]))
    assert set(caps[val]) == {"v1", "b1"} and "moved training capture(s) b1" in note
    assert set(ids[train]) == {0, 1, 2}  # every class keeps a training capture
    # No class can spare a capture: validation goes back to training.
    caps, ids = np.array(["a1", "b1", "c1", "v1"]), np.array([0, 1, 2, 0])
    train, val, note = splits.ensure_validation_classes(caps, ids, np.arange(3), np.array([3]))
    assert len(val) == 0 and list(train) == [0, 1, 2, 3] and "folded into training" in note
    # Two classes already: unchanged.
    train, val, note = splits.ensure_validation_classes(np.array(["a", "b", "c", "d"]), np.array([0, 1, 0, 1]),
                                                        np.array([0, 1]), np.array([2, 3]))
    assert note is None and list(val) == [2, 3]


def test_folder_dataset_whose_validation_holds_one_class_completes(iot_dir, minilm_dir, tmp_path):
    """The reported failure: a class with many captures, one with two, one with one. The inner split puts only the
    first class in validation; before, every validation mAUC was nan and the job died after pre-training. Now the
    split is checked first, said in one line, and the job completes."""
    folder = tmp_path / "devices"
    for device, n in (("Aria", 8), ("HueBridge", 2), ("TP-LinkPlugHS110", 1)):
        (folder / device).mkdir(parents=True)
        for c in sorted((iot_dir / device).glob("*.pcap"))[:n]:
            shutil.copy(c, folder / device / c.name)
    results = __import__("pclip_jax.job", fromlist=["job"]).train_and_evaluate(
        folder_job_config([folder], minilm_dir), str(tmp_path / "wd"))
    notes = results["data"]["split_notes"]
    assert len(notes) == 1 and "validation" in notes[0]
    assert results["test"]["mauc"] == results["test"]["mauc"]  # a number, not nan
    assert json.loads((tmp_path / "wd" / "results.json").read_text())["data"]["split_notes"] == notes


def test_a_test_split_with_one_class_stops_before_training(iot_dir, minilm_dir, tmp_path):
    folder = tmp_path / "devices"
    for device, n in (("Aria", 3), ("HueBridge", 1)):
        (folder / device).mkdir(parents=True)
        for c in sorted((iot_dir / device).glob("*.pcap"))[:n]:
            shutil.copy(c, folder / device / c.name)
    wd = tmp_path / "wd"
    proc = subprocess.run([sys.executable, "-m", "pclip_jax.main", "--config", "configs/test.py", "--workdir", str(wd),
                           "--config.data.manual_dir=", "--config.data.labels=folder", "--config.data.taxonomy=raw",
                           "--config.gnn.kg=", f"--config.data.inputs=('{folder}',)", "--config.data.min_class_flows=1",
                           f"--config.text.encoder={minilm_dir}"],
                          capture_output=True, text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the test captures hold 1 evaluated") and "data.test_fraction" in last, last
    assert not (wd / "checkpoints").exists()
