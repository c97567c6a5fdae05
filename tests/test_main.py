"""The whole job on captures (real, or their stand-ins) with the tiny test config: results.json, plots, metrics,
evaluate CLI."""
import json

import numpy as np
import pytest

from pclip_jax.training import towers as embedding, loop, pretrain as train
from pclip_jax import evaluate, job
from pclip_jax.training import experiment
from pclip_jax.plumbing.settings import from_config
from pclip_jax.plumbing.workdir import Workdir
from tests.test_train import _config

EVAL_CAPTURES = ["wireguard.pcap", "tls_verylong_certificate.pcap", "nintendo.pcap", "ftp.pcap", "smtp.pcap"]


@pytest.fixture(scope="module")
def workdir(ndpi_dir, minilm_dir, tmp_path_factory):
    config = _config(ndpi_dir, minilm_dir, 6)
    wd = tmp_path_factory.mktemp("main_job")
    results = job.train_and_evaluate(config, str(wd))
    return wd, results


def test_results_json_has_the_promised_blocks(workdir):
    wd, results = workdir
    on_disk = json.loads((wd / "results.json").read_text())
    assert on_disk["train_steps"] == 6
    assert on_disk["devices"]["count"] >= 1
    for tower in ("packet_tower", "projection_heads", "text_tower_frozen", "total"):
        assert on_disk["num_params"][tower] > 0
    for block in ("test", "zero_shot"):
        m = on_disk[block]
        assert {"mauc", "accuracy", "macro_f1", "per_class_auc", "confusion_matrix"} <= set(m)
        assert 0.0 <= m["accuracy"] <= 1.0 and all(0.0 <= a <= 1.0 for a in m["per_class_auc"].values())
        assert np.isclose(m["mauc"], np.mean(list(m["per_class_auc"].values())))
    gnn = on_disk["gnn"]
    assert 0 < gnn["trainable_params"] <= 1_100_000 and gnn["flops_per_flow"] > 0
    # Seen / novel applications partition the evaluated test flows; seen ones are exactly those whose
    # application the pre-training flows had.
    train_apps = set(json.loads((wd / "model_info.json").read_text())["train_applications"])
    for report in (on_disk["test"], on_disk["zero_shot"], gnn["level1"]):
        halves = report["by_application_novelty"]
        seen, novel = halves["seen_applications"], halves["novel_applications"]
        assert seen["num_flows"] + novel["num_flows"] == report["num_flows"]
        assert set(seen["applications"]) <= train_apps and not set(novel["applications"]) & train_apps
    assert on_disk["test"]["by_application_novelty"]["novel_applications"]["num_flows"] > 0
    # The probe is fitted per application and sums its applications' probabilities to each class.
    targets = on_disk["test"]["probe_targets"]
    with np.load(wd / "linear_probe.npz") as probe:
        to_class, coef = probe["to_class"], probe["coef"]
    assert targets["mode"] == "application" and targets["count"] == len(to_class) == len(coef)
    assert targets["count"] > len(on_disk["test"]["classes"])  # more applications than classes
    assert (to_class.sum(1) == 1).all() and (to_class.sum(0) >= 1).all()
    assert {"level1", "level2", "hierarchical_accuracy"} <= set(gnn)
    for name in ("roc_linear_probe.png", "roc_zero_shot.png", "roc_gnn_level1.png", "metrics_train.jsonl"):
        assert (wd / name).stat().st_size > 0, name
    assert any((wd / "tensorboard" / "train").iterdir())
    # Train and test captures are disjoint.
    assert on_disk["data"]["train_captures"] > 0 and on_disk["data"]["test_captures"] > 0


def test_evaluate_cli_on_other_captures_reports_unknown_classes(workdir, ndpi_dir, tmp_path):
    wd, _ = workdir
    inputs = [str(ndpi_dir / "pcap" / c) for c in EVAL_CAPTURES if (ndpi_dir / "pcap" / c).is_file()]
    out = tmp_path / "metrics.json"
    assert evaluate.main(["--workdir", str(wd), *inputs, "--labels", f"ndpi:{ndpi_dir / 'result'}",
                          "--out", str(out)]) == 0
    metrics = json.loads(out.read_text())
    known = set(json.loads((wd / "model_info.json").read_text())["class_names"])
    assert set(metrics["unknown_classes"]).isdisjoint(known)
    assert metrics["flows_evaluated"] > 0 and sum(metrics["unknown_classes"].values()) > 0
    assert set(metrics["linear_probe"]["classes"]) == known
    halves = metrics["zero_shot"]["by_application_novelty"]
    assert halves["seen_applications"]["num_flows"] + halves["novel_applications"]["num_flows"] \
        == metrics["flows_evaluated"]
    assert {"level1", "level2", "hierarchical_accuracy"} <= set(metrics["gnn"])


def test_nan_guard_names_the_step(ndpi_dir, minilm_dir, tmp_path):
    """A flow whose timing is NaN (e.g. a broken capture clock) makes the loss NaN: training stops and says when."""
    settings = from_config(_config(ndpi_dir, minilm_dir, 4))
    prepared = experiment.prepare_experiment(settings, tmp_path / "cache")
    texts = train.build_train_texts(prepared, settings, embedding.text_featurizer(settings), None)
    prepared.table.tensors["iat"] = np.full_like(prepared.table.tensors["iat"], np.nan)
    with pytest.raises(loop.NanLossError, match="at step 1"):
        train.pretrain(settings, Workdir(tmp_path / "wd"), prepared, texts, embedding.build_model(settings),
                       progress=False)


def test_capture_splits_benchmark_reads_the_results_it_summarises(workdir):
    """benchmarks/capture_splits.py summarises results.json files: every cell it reports is the number the
    main job wrote (catches a renamed key), and mean/sd are over the splits."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "capture_splits.py"
    spec = importlib.util.spec_from_file_location("capture_splits", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    _, results = workdir
    row = bench.split_row(results)
    # The very numbers (nan where a part of the test flows holds one class, as it can on the small stand-ins).
    np.testing.assert_equal(row["linear probe"]["all"], results["test"]["mauc"])
    np.testing.assert_equal(row["zero-shot"]["novel apps"],
                            results["zero_shot"]["by_application_novelty"]["novel_applications"]["mauc"])
    np.testing.assert_equal(row["GNN level 1"]["seen apps"],
                            results["gnn"]["level1"]["by_application_novelty"]["seen_applications"]["mauc"])
    shifted = json.loads(json.dumps(row))
    shifted["linear probe"]["all"] += 0.1
    summary = bench.summarise([{"mauc": row}, {"mauc": shifted}])
    cell = summary["linear probe"]["all"]
    assert np.isclose(cell["mean"], results["test"]["mauc"] + 0.05)
    assert np.isclose(cell["std"], 0.1 / np.sqrt(2))
    assert "linear probe" in bench.format_summary([0, 1], summary)


def test_checkpoint_steps_benchmark_reproduces_the_kept_step(workdir):
    """benchmarks/checkpoint_steps.py scores every kept pre-training step; on the step the job kept it gives the
    job's own probe and zero-shot figures, and it scores each periodic checkpoint as well."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "checkpoint_steps.py"
    spec = importlib.util.spec_from_file_location("checkpoint_steps", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    wd, results = workdir
    rows = bench.score_workdir(str(wd))
    periodic = sorted(int(p.name) for p in Workdir(wd).checkpoints.iterdir() if p.name.isdigit())
    assert set(periodic) <= {r["step"] for r in rows} and periodic
    [kept] = [r for r in rows if r["kept"]]
    best = Workdir(wd).best_checkpoints / "best.json"  # the job's step: the validation-best one, else the newest
    assert kept["step"] == (json.loads(best.read_text())["step"] if best.is_file() else max(periodic))
    for key, block in (("test_probe", "test"), ("test_zero_shot", "zero_shot")):
        for metric in ("accuracy", "macro_f1", "mauc"):
            assert np.isclose(kept[key][metric], results[block][metric], atol=1e-6), (key, metric)
    assert "(kept)" in bench.format_row(kept)


def test_detection_inputs_benchmark_reproduces_the_jobs_gnn(workdir, tmp_path):
    """benchmarks/detection_inputs.py retrains the GNN from a finished workdir's towers and flows: with the
    embedding alone it gives the main job's own GNN numbers (the comparison it makes is against what the job
    ships), and the raw-feature variant widens the flow input by the K sizes and K inter-arrival times."""
    import importlib.util
    import pathlib

    from pclip_jax.training.detection import gnn_train_config

    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "detection_inputs.py"
    spec = importlib.util.spec_from_file_location("detection_inputs", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    wd, results = workdir
    settings = Workdir(wd).read_settings()
    rows = bench.run_workdir(str(wd), ["none", "sizes_iat"], [gnn_train_config(settings).seed], tmp_path)
    gnn = {r["variant"]: r for r in rows if r["model"].startswith("GNN")}
    assert np.isclose(gnn["none"]["mauc"], results["gnn"]["level1"]["mauc"], atol=1e-6)
    assert np.isclose(gnn["none"]["macro_f1"], results["gnn"]["level1"]["macro_f1"], atol=1e-6)
    assert gnn["none"]["features"] == 0 and gnn["sizes_iat"]["features"] == 2 * settings.data.packets
    assert "| sizes_iat |" in bench.summary(rows)
