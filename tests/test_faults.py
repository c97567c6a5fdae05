"""Faults a user meets, on real captures with the tiny config: damaged caches are rebuilt, damaged checkpoints
fall back to the newest intact one, bad values and unfinished workdirs are one clear line naming the thing."""
import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from pclip_jax.training import towers as embedding
from pclip_jax import evaluate
from pclip_jax.training import experiment
from pclip_jax.plumbing import files
from pclip_jax.training import pretrain as train_lib
from pclip_jax.plumbing.checkpointing import DIGESTS_FILE, CheckpointError, Checkpoints
from pclip_jax.data.prepare import prepare_flows
from pclip_jax.plumbing.settings import SettingsError, from_config
from pclip_jax.plumbing.workdir import Workdir
from tests.test_train import _config

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def settings(ndpi_dir, minilm_dir):
    return from_config(_config(ndpi_dir, minilm_dir, 4)).replace(train={"checkpoint_every": 2, "eval_every": 2})


def _flow_cache(cache: pathlib.Path) -> pathlib.Path:
    (entry,) = [p for p in cache.iterdir() if p.name.startswith("flows-") and p.is_dir()]  # not its .lock
    return entry


# ----------------------------------------------------------------------------------------------- caches

def test_damaged_flow_cache_is_rebuilt_with_a_warning(settings, tmp_path, capsys):
    cache = tmp_path / "cache"
    first = prepare_flows(settings.data, cache, progress=False)
    entry = _flow_cache(cache)
    tensors = entry / "tensors.npz"
    capsys.readouterr()
    # A cache file cut in half.
    data = tensors.read_bytes()
    tensors.write_bytes(data[:len(data) // 2])
    again = prepare_flows(settings.data, cache, progress=False)
    err = capsys.readouterr().err
    assert f"cached flow table {entry} is unreadable" in err and "tensors.npz" in err and "rebuilding" in err
    np.testing.assert_array_equal(again.table.tensors["bytes"], first.table.tensors["bytes"])
    assert tensors.read_bytes() == data  # rebuilt in place, whole
    # What a kill between the writes of a cache left before writes were atomic: a table without summary.json.
    (entry / "summary.json").unlink()
    again = prepare_flows(settings.data, cache, progress=False)
    assert "summary.json: missing" in capsys.readouterr().err
    assert len(again.table) == len(first.table) and (entry / "summary.json").is_file()
    # What a kill leaves now: only a temporary directory beside the cache, which is never read.
    leftover = cache / f"{files.TMP_PREFIX}{entry.name}-killed"
    leftover.mkdir()
    (leftover / "flows.csv").write_text("capture\n")
    prepare_flows(settings.data, cache, progress=False)
    assert "unreadable" not in capsys.readouterr().err


def test_killed_write_leaves_the_previous_file(tmp_path):
    """`files.atomic_path`: an exception (a kill, a full disk) mid-write leaves the old content and no stray file."""
    target = tmp_path / "results.json"
    files.write_json(target, {"old": 1})
    with pytest.raises(KeyboardInterrupt):
        with files.atomic_path(target) as tmp:
            tmp.write_text('{"new": ')
            raise KeyboardInterrupt
    assert json.loads(target.read_text()) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


def test_a_lock_makes_the_second_process_wait_and_dies_with_its_holder(tmp_path):
    """`files.exclusive_lock` (the peer suite holds it while a cell trains a PacketCLIP workdir): a second process
    waits, says for what and who holds it, and gets the lock as soon as the holder is killed."""
    lock = tmp_path / "run.lock"
    hold = ("import sys, time; from pclip_jax.plumbing import files\n"
            "with files.exclusive_lock(sys.argv[1]):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(lock)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert holder.stdout.readline().strip() == "held"
        wait = ("import sys, time; from pclip_jax.plumbing import files\nt = time.time()\n"
                "with files.exclusive_lock(sys.argv[1], waiting='training W'):\n    print(f'{time.time() - t:.1f}')")
        waiter = subprocess.Popen([sys.executable, "-c", wait, str(lock)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO)
        line = waiter.stderr.readline()
        assert line.startswith("training W (held by ") and f"{holder.pid}@" in line and str(lock) in line
        time.sleep(1.0)
        assert waiter.poll() is None  # still waiting
        holder.kill()  # the OS releases a dead holder's lock: nothing stale is left
        out, _ = waiter.communicate(timeout=60)
        assert waiter.returncode == 0 and float(out) >= 1.0
    finally:
        holder.kill()
        holder.wait()
    with files.exclusive_lock(lock):  # free again, in this process
        assert lock.read_text().startswith(f"{os.getpid()}@")


def test_damaged_text_feature_cache_is_recomputed(settings, tmp_path, capsys):
    from pclip_jax.text.feature_cache import cached_text_features

    featurizer = embedding.text_featurizer(settings)
    texts = ["an encrypted video stream", "a DNS lookup"]
    first = cached_text_features(featurizer, texts, tmp_path, progress=False)
    (path,) = tmp_path.glob("text-*.npz")
    path.write_bytes(path.read_bytes()[:100])
    capsys.readouterr()
    again = cached_text_features(featurizer, texts, tmp_path, progress=False)
    assert str(path) in capsys.readouterr().err
    np.testing.assert_allclose(again, first, rtol=1e-6)


# ----------------------------------------------------------------------------------------------- checkpoints

@pytest.fixture(scope="module")
def trained(settings, tmp_path_factory):
    """A pre-training run of 4 steps with checkpoints at steps 2 and 4, and its inputs for reruns."""
    cache = tmp_path_factory.mktemp("cache")
    prepared = experiment.prepare_experiment(settings, cache)
    texts = train_lib.build_train_texts(prepared, settings, embedding.text_featurizer(settings), cache)
    model = embedding.build_model(settings)
    wd = Workdir(tmp_path_factory.mktemp("straight"))
    params, _ = train_lib.pretrain(settings, wd, prepared, texts, model, progress=False)
    return prepared, texts, model, wd, params


def _copy_workdir(src: Workdir, dst: pathlib.Path) -> Workdir:
    import shutil
    shutil.copytree(src.path, dst)
    return Workdir(dst)


def _assert_same_params(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-5, atol=1e-6)


def _restore_last(wd: Workdir, settings, model):
    target = jax.eval_shape(lambda: train_lib.create_state(settings, model, jax.random.PRNGKey(0)))
    ckpts = Checkpoints(wd.checkpoints, writable=False)
    try:
        return ckpts.restore(target)
    finally:
        ckpts.close()


def _last_state_params(wd, settings, model):
    state, step = _restore_last(wd, settings, model)
    return state.params, step


@pytest.mark.parametrize("damage", ["truncated", "flipped", "empty_metadata"])
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(trained, settings, tmp_path, capsys, damage):
    prepared, texts, model, straight, _ = trained
    wd = _copy_workdir(straight, tmp_path / "wd")
    assert sorted(json.loads((wd.checkpoints / DIGESTS_FILE).read_text())) == ["2", "4"]
    newest = wd.checkpoints / "4"
    victims = sorted((p for p in newest.rglob("*") if p.is_file() and p.stat().st_size > 64),
                     key=lambda p: -p.stat().st_size)
    if damage == "truncated":
        victims[0].write_bytes(victims[0].read_bytes()[: victims[0].stat().st_size // 2])
    elif damage == "flipped":
        data = bytearray(victims[0].read_bytes())
        data[len(data) // 2] ^= 0xFF
        victims[0].write_bytes(bytes(data))
    else:
        (newest / "_METADATA").write_text("")
    capsys.readouterr()
    # Reading (evaluate / classify): step 4 is reported damaged, step 2 is loaded.
    params, step = _last_state_params(wd, settings, model)
    err = capsys.readouterr().err
    assert step == 2 and f"{newest}: damaged" in err and err.count("\n") <= 2, err
    # Training resumes from step 2, moves the damaged step aside and ends where the straight run ended.
    rerun, steps = train_lib.pretrain(settings, wd, prepared, texts, model, progress=False)
    assert steps == 4 and (wd.checkpoints / "damaged-4").is_dir()
    last, step = _last_state_params(wd, settings, model)
    straight_last, _ = _last_state_params(straight, settings, model)
    assert step == 4
    _assert_same_params(last, straight_last)


def test_no_intact_checkpoint_is_a_clear_error_for_readers(trained, settings, tmp_path):
    _, _, model, straight, _ = trained
    wd = _copy_workdir(straight, tmp_path / "wd")
    for step in ("2", "4"):
        (wd.checkpoints / step / "_METADATA").write_text("")
    with pytest.raises(CheckpointError, match=r"no intact checkpoint \(damaged steps: \[4, 2\]\)"):
        _restore_last(wd, settings, model)


# ----------------------------------------------------------------------------------------------- bad values

BAD_OVERRIDES = [
    ("--config.train.batch_size=-1", "config.train.batch_size=-1: must be an integer >= 1"),
    ("--config.train.batch_size=0", "config.train.batch_size=0: must be an integer >= 1"),
    ("--config.train.num_steps=-5", "config.train.num_steps=-5: must be an integer >= 1"),
    ("--config.train.dtype=bf16", "config.train.dtype='bf16': must be one of 'float32', 'bfloat16'"),
    ("--config.train.batchsize=4", "batchsize"),
    ("--config.gnn.kg=ndpii", "gnn.kg='ndpii': no such shipped knowledge graph"),
]


def test_bad_overrides_are_one_line_errors_before_any_work(ndpi_dir, minilm_dir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    runs = []
    for i, (flag, _) in enumerate(BAD_OVERRIDES):
        wd = tmp_path / f"wd{i}"
        cmd = [sys.executable, "-m", "pclip_jax.main", "--config", str(REPO / "configs" / "test.py"),
               "--workdir", str(wd), f"--config.text.encoder={minilm_dir}",
               f"--config.data.manual_dir={ndpi_dir}", flag]
        runs.append((wd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)))
    for (flag, expected), (wd, proc) in zip(BAD_OVERRIDES, runs):
        out, err = proc.communicate(timeout=300)
        lines = [line for line in err.splitlines() if line.strip()]
        assert proc.returncode == 1, (flag, err)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (flag, err)
        assert not (wd / "checkpoints").exists() and not (wd / "cache").exists(), flag  # nothing ran


def test_settings_name_the_field_and_what_it_accepts(settings):
    with pytest.raises(SettingsError, match=r"config.data.test_fraction=1.5: must be in \(0, 1\)"):
        settings.replace(data={"test_fraction": 1.5})
    with pytest.raises(SettingsError, match="config.model.heads=5: must be a divisor of model.width=16"):
        settings.replace(model={"heads": 5})
    with pytest.raises(SettingsError, match="config.train.multi_positive='yes': must be True or False"):
        settings.replace(train={"multi_positive": "yes"})
    with pytest.raises(SettingsError, match="config.eval.probe_target: unknown field"):
        settings.replace(eval={"probe_target": "class"})


# ----------------------------------------------------------------------------------------------- workdirs

def test_evaluate_on_a_missing_workdir_is_one_line(ndpi_dir, tmp_path, capsys):
    capture = str(ndpi_dir / "pcap" / "ftp.pcap")
    assert evaluate.main(["--workdir", str(tmp_path / "nowhere"), capture, "--labels",
                          f"ndpi:{ndpi_dir / 'result'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {tmp_path / 'nowhere'}: no such workdir"]


def test_evaluate_on_an_interrupted_workdir_names_what_is_missing(trained, settings, ndpi_dir, tmp_path, capsys):
    """A job killed during pre-training: config.json and checkpoints, but no model info, probe or results."""
    prepared, texts, model, _, _ = trained
    wd = Workdir(tmp_path / "wd")
    wd.save_settings(settings)
    train_lib.pretrain(settings.replace(train={"stop_after": 2}), wd, prepared, texts, model, progress=False)
    capsys.readouterr()
    capture = str(ndpi_dir / "pcap" / "ftp.pcap")
    assert evaluate.main(["--workdir", str(wd.path), capture, "--labels", f"ndpi:{ndpi_dir / 'result'}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "model_info.json: missing" in err[0] and "did not finish" in err[0], err


def test_labels_that_match_nothing_are_an_error_not_zero_flows(trained, settings, ndpi_dir, tmp_path, capsys):
    """Labels pointing at a folder without nDPI results used to exit 0 with flows_evaluated 0."""
    prepared, texts, model, straight, _ = trained
    wd = _copy_workdir(straight, tmp_path / "wd")
    wd.save_settings(settings)
    # Finish the towers' artefacts without the GNN stage: the evaluation of the towers alone.
    from pclip_jax import evaluate as evaluate_lib
    params, _ = train_lib.pretrain(settings, wd, prepared, texts, model, progress=False)
    evaluate_lib.evaluate_pretrained(settings, wd, prepared, model, params, embedding.text_featurizer(settings))
    empty = tmp_path / "no_results"
    empty.mkdir()
    capsys.readouterr()
    capture = str(ndpi_dir / "pcap" / "ftp.pcap")
    assert evaluate.main(["--workdir", str(wd.path), capture, "--labels", f"ndpi:{empty}"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "none of the" in err[-1] and "got a label" in err[-1], err


def test_saving_a_table_into_a_folder_keeps_the_users_other_files(ndpi_dir, tmp_path):
    """`ingest --out DIR` into a folder that holds other files writes the table beside them, touching nothing."""
    from pclip_jax.data.flow_table import FlowTable
    from pclip_jax.data.ingest import IngestConfig, ingest

    table = ingest([str(ndpi_dir / "pcap" / "ftp.pcap")], IngestConfig(), progress=False)
    (tmp_path / "notes.txt").write_text("mine")
    table.save(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert len(FlowTable.load(tmp_path)) == len(table)
    table.save(tmp_path / "fresh")  # a new folder: written beside it and swapped in
    assert sorted(p.name for p in (tmp_path / "fresh").iterdir()) == sorted(FlowTable.TABLE_FILES)
