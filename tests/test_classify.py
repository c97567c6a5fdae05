"""`python -m pclip_jax.classify` end to end on real captures, with a tiny workdir trained by the test config."""
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from configs import test as test_config
from pclip_jax.serving import classify, export
from pclip_jax.text import prompts as text_lib
from pclip_jax.training import restore as inference
from pclip_jax.training import train_gnn
from pclip_jax import job
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.graph.missions import mission_from_statement
from pclip_jax.graph.schema import KGValidationError, graph_path, load_kg
from pclip_jax.plumbing.settings import from_config
from pclip_jax.plumbing.workdir import WorkdirError
from tests.conftest import HAVE_NDPI, on_corpus

# Training captures: several service classes, few flows (the sentence encoder embeds each flow's texts).
TRAIN = ["signal.pcap", "quic.pcap", "bittorrent.pcap", "openvpn.pcap", "ookla.pcap", "tor.pcap",
         "whatsapp_login_chat.pcap", "telegram.pcap", "1kxun.pcap", "wireguard.pcap"]  # 2 validation captures
TARGET = "zoom.pcap"          # not seen in training; has VLAN-tagged flows and flows of 1-2 packets
DAMAGED = "KakaoTalk_chat.pcap"
MISSION = "vpn_remote_access"  # declared in pclip_jax/graph/shipped/ndpi.yaml: VPN/Tunnel and RemoteAccess weighted ×2
STATEMENT = "catch anyone hiding their traffic from us"   # names no node of the graph


@pytest.fixture(scope="module")
def workdir(ndpi_dir, minilm_dir, tmp_path_factory):
    config = test_config.get_config()
    config.unlock()
    config.data.inputs = tuple(str(ndpi_dir / "pcap" / c) for c in TRAIN)
    config.data.labels = f"ndpi:{ndpi_dir / 'result'}"
    # Relative to the current directory, as a user writes it: the workdir must store it so it works elsewhere.
    config.text.encoder = os.path.relpath(minilm_dir)
    config.text.variants_per_flow = 1
    # One step of each stage: the tests check the classify path, not what training learns (compilation and
    # checkpoint writes dominate the fixture's time).
    config.train.num_steps = config.train.checkpoint_every = config.train.log_every = 1
    config.gnn.num_steps = config.gnn.log_every = 1
    config.gnn.model.factored = True  # the detection stage that exports (the ONNX tests below)
    wd = tmp_path_factory.mktemp("classify_wd")
    results = job.train_and_evaluate(config, str(wd))
    assert "gnn" in results
    return wd, config


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def _ingest(paths, config):
    return ingest([str(p) for p in paths], IngestConfig(packets=config.data.packets, bytes=config.data.bytes),
                  progress=False)


def test_classify_capture_end_to_end(workdir, ndpi_dir, tmp_path, capsys):
    wd, config = workdir
    out = tmp_path / "preds.jsonl"
    target = ndpi_dir / "pcap" / TARGET
    rc = classify.main(["--workdir", str(wd), str(target), "--out", str(out), "--top", "2", "--explain-text", "2",
                        "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0
    recs = _lines(out)
    table = _ingest([target], config)
    # One line per ingested flow, in flow-table order, with the flow's identity.
    assert len(recs) == len(table) > 20
    for key in ("capture", "flow_id", "proto", "client_ip", "client_port", "server_ip", "server_port", "vlan"):
        assert [r[key] for r in recs] == table.meta[key].tolist(), key
    np.testing.assert_allclose([r["first_ts"] for r in recs], table.meta["first_ts"])
    np.testing.assert_allclose([r["last_ts"] for r in recs], table.meta["last_ts"])
    assert {r["vlan"] for r in recs} != {0}
    packets = table.meta["c2s_packets"] + table.meta["s2c_packets"]
    # Low confidence: fewer packets than training kept, a calibrated level-1 probability below 0.5 (temperature
    # fitted on the validation captures) or out of distribution (OOD threshold from the same captures).
    calibration = json.loads((wd / "gnn" / "calibration.json").read_text())
    assert calibration["level1_temperature"] > 0 and "ood_threshold" in calibration
    # results.json says why a validation temperature may not hold on the test captures: the share of flows of
    # applications the GNN never saw in each split, and the test-fitted temperature's ECE (a bound over the grid).
    gnn = json.loads((wd / "results.json").read_text())["gnn"]
    fit, halves = gnn["calibration_fit"], gnn["level1"]["by_application_novelty"]
    assert 0.0 <= fit["validation_novel_share"] <= 1.0
    assert np.isclose(fit["test_novel_share"], halves["novel_applications"]["num_flows"] / gnn["level1"]["num_flows"])
    assert fit["test_ece_level1_best_temperature"] <= gnn["level1"]["calibrated"]["ece"] + 1e-9
    # "None of these" measured on the real split: the OOD score's AUROC for test flows of applications absent from
    # training, the same as recomputed from the saved flows.
    saved = np.load(wd / "gnn" / "calibration_flows.npz")
    from sklearn.metrics import roc_auc_score
    unseen = saved["test_unseen_application"]
    if HAVE_NDPI or 0 < unseen.mean() < 1:
        assert np.isclose(fit["test_novel_application_ood_auroc"], roc_auc_score(unseen, -saved["test_ood_score"]))
    else:  # the stand-in captures' split may test only seen (or only novel) applications: AUROC is undefined
        assert "test_novel_application_ood_auroc" not in fit
    # The calibration study (benchmarks/calibration_study.py) reads the flows the job saved and refits the job's
    # temperature from them: the same temperature, the same test ECE, the same bound.
    from pclip_jax.training import calibration as calibration_lib
    study = calibration_lib.compare_methods(dict(np.load(wd / "gnn" / "calibration_flows.npz")))
    job_fit = study["methods"]["validation NLL (the job's)"]
    assert np.isclose(job_fit["temperature"], calibration["level1_temperature"])
    assert np.isclose(job_fit["test_ece"], gnn["level1"]["calibrated"]["ece"], atol=1e-6)
    assert np.isclose(study["methods"]["best temperature on the test flows (bound)"]["test_ece"],
                      fit["test_ece_level1_best_temperature"], atol=1e-6)
    # The label-free ATC temperature: its accuracy estimate is the share of test flows above the validation
    # threshold, recomputed here; its temperature is the grid one whose mean test confidence is closest to it.
    atc = study["methods"]["label-free test temperature (ATC estimate)"]
    flows = dict(np.load(wd / "gnn" / "calibration_flows.npz"))
    pv, pt = (flows[f"{n}_prob1"] / flows[f"{n}_prob1"].sum(1, keepdims=True) for n in ("validation", "test"))
    qv = calibration_lib.scale(pv, job_fit["temperature"])
    threshold = np.quantile(qv.max(1), 1 - (qv.argmax(1) == flows["validation_y1"]).mean())
    assert np.isclose(atc["estimated_accuracy"],
                      (calibration_lib.scale(pt, job_fit["temperature"]).max(1) > threshold).mean())
    gaps = [abs(calibration_lib.scale(pt, t).max(1).mean() - atc["estimated_accuracy"])
            for t in calibration_lib.TEMPERATURES]
    assert np.isclose(gaps[list(calibration_lib.TEMPERATURES).index(atc["temperature"])], min(gaps))
    assert study["test_flows"] == gnn["level1"]["num_flows"] and np.isclose(study["unseen_share"]["test"],
                                                                             fit["test_novel_share"])
    # With the job's embeddings.npz the study adds the nearest-neighbour score (similarity to the closest training
    # flows): each training flow's closest is itself; a per-flow temperature from it is fitted and scored.
    embeddings = dict(np.load(wd / "embeddings.npz"))
    np.testing.assert_allclose(calibration_lib.knn_similarity(embeddings["train"][:40], embeddings["train"], k=1), 1.0,
                               atol=1e-5)
    z, bank = embeddings["validation"][:5], embeddings["train"]
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(calibration_lib.knn_similarity(z, bank, k=3),
                               np.sort(unit(z) @ unit(bank).T, 1)[:, -3:].mean(1), rtol=1e-5)
    with_knn = calibration_lib.compare_methods(dict(np.load(wd / "gnn" / "calibration_flows.npz")), embeddings)
    knn_fit = with_knn["methods"][f"temperature from the {calibration_lib.KNN_K}-NN score, validation NLL"]
    assert 0 <= knn_fit["test_ece"] <= 1 and knn_fit["temperature"] > 0
    assert with_knn["methods"]["validation NLL (the job's)"] == job_fit
    # The study as a user runs it: it also checks whether the tower fitted its training flows (a probe on held-out
    # training captures against the test captures).
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    import calibration_study

    assert calibration_study.main([str(wd), "--json", str(tmp_path / "study.json")]) == 0
    fitted = json.loads((tmp_path / "study.json").read_text())[str(wd)]["fitted_embeddings"]
    assert 0 <= fitted["out_of_fold_training_accuracy"] <= 1 and 0 <= fitted["test_accuracy"] <= 1
    assert "probe on the tower's embeddings" in capsys.readouterr().out
    # One meaning each: `too_short` = fewer packets than training kept; `low_confidence` = calibrated level-1
    # probability below the selective threshold fitted on the validation captures (calibration.json);
    # `out_of_distribution` on its own.
    low = np.array([r["low_confidence"] for r in recs])
    calibrated = np.array([r["level1"]["calibrated_probability"] for r in recs])
    ood = np.array([r["out_of_distribution"] for r in recs])
    assert ((0 < calibrated) & (calibrated <= 1)).all() and ood.dtype == bool
    # The OOD score: the mean cosine similarity to the 5 nearest training flows of the bank stored beside the GNN
    # (training embeddings, unit rows); the flag is the score below the validation captures' 5 % quantile.
    assert calibration["ood_score"] == "knn" and calibration["ood_k"] == 5
    bank = np.load(wd / "gnn" / "ood_bank.npz")["embeddings"]
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-5)
    score = np.array([r["ood_score"] for r in recs])
    assert ((-1 <= score) & (score <= 1)).all()
    np.testing.assert_array_equal(ood, score < calibration["ood_threshold"])
    selective = calibration["selective"]
    assert selective["score"] == "calibrated level-1 probability" and 0 < selective["threshold"] <= 1
    np.testing.assert_array_equal(low, calibrated < selective["threshold"])
    np.testing.assert_array_equal([r["too_short"] for r in recs], packets < config.data.min_packets)
    # Prediction sets at the default 90 %: the chosen node first, sets never empty; results.json reports their
    # coverage on the test captures, and the risk-coverage curve of the calibrated probability.
    for r in recs:
        ps = r["prediction_set"]
        assert ps["coverage"] == 0.9 and ps["level1"][0] == r["level1"]["id"]
        assert len(set(ps["level1"])) == len(ps["level1"]) and (ps["level2"] is None or len(ps["level2"]) >= 1)
    trust = gnn["trust"]
    assert 0 <= trust["prediction_sets_level1"]["coverage"] <= 1 and trust["risk_coverage"]["curve"][-1][0] == 1.0
    assert trust["low_confidence"]["threshold"] == selective["threshold"]

    kg = load_kg(graph_path(from_config(config).gnn.kg))
    gnn_layers = config.gnn.model.num_layers
    facts = text_lib.flow_facts_batch(table.tensors["sizes"], table.tensors["iat"], table.tensors["num_packets"],
                                      table.meta["proto"], duration=table.meta["last_ts"] - table.meta["first_ts"])
    for r, fact in zip(recs, facts):
        l1, l2 = r["level1"], r["level2"]
        assert kg.node(l1["id"]).level == 1 and l1["name"] == kg.node(l1["id"]).name
        assert 0 < l1["probability"] <= 1
        # Levels agree: the chosen application belongs to the chosen class and never outranks it.
        if l2 is None:      # only a class without applications in the graph has no level-2 decision
            assert not [n for n in kg.nodes if n.parent == l1["id"]]
            continue
        assert kg.node(l2["id"]).parent == l1["id"]
        assert 0 < l2["probability"] <= l1["probability"] + 1e-6 and 0 < l2["conditional_probability"] <= 1
        np.testing.assert_allclose(l2["probability"], l1["probability"] * l2["conditional_probability"], rtol=1e-4)
        alt1 = r["alternatives"]["level1"]
        assert len(alt1) == 2 and all(a["id"] != l1["id"] and a["probability"] <= l1["probability"] + 1e-6
                                      for a in alt1)
        assert len(r["alternatives"]["level2"]) == 2
        # The explanation: the chosen path with attention per GNN layer, a description of each node, the facts.
        e = r["explanation"]
        assert e["graph"] == "ndpi" and e["mission"] is None
        assert [p["id"] for p in e["path"]] == [l1["id"], l2["id"]]
        for step in e["path"]:
            assert len(step["attention"]) == gnn_layers and all(0 <= a <= 1 for a in step["attention"])
            assert step["winning_description"] in kg.node(step["id"]).descriptions
        assert e["path"][0]["probability"] == l1["probability"]
        assert e["flow_facts"] == fact and len(fact) > 20

    # The summary table counts the JSON lines per predicted class; text explanations were printed.
    counts = {}
    for r in recs:
        counts[r["level1"]["id"]] = counts.get(r["level1"]["id"], 0) + 1
    rows = {ln.split()[0]: ln.split() for ln in printed.splitlines() if ln.split() and ln.split()[0] in counts}
    assert {c: int(v[1]) for c, v in rows.items()} == counts
    assert f"classified {len(recs)} flows from 1 capture(s)" in printed and "flows/s" in printed
    assert printed.count("because: ") >= 2 and f"{TARGET} #0 " in printed and f"{TARGET} #2 " not in printed


def test_damaged_capture_strict_and_mission(workdir, ndpi_dir, tmp_path, capsys):
    wd, config = workdir
    target = ndpi_dir / "pcap" / TARGET
    data = (ndpi_dir / "pcap" / DAMAGED).read_bytes()
    damaged = tmp_path / "damaged.pcap"
    damaged.write_bytes(data[:len(data) * 2 // 3])     # cut inside a packet record
    good = tmp_path / TARGET
    shutil.copy(target, good)

    # --strict: the problem is an error (exit 1), reported with file and offset; nothing is written.
    strict_out = tmp_path / "strict.jsonl"
    assert classify.main(["--workdir", str(wd), str(good), str(damaged), "--out", str(strict_out), "--strict",
                          "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "damaged.pcap: byte " in err and "truncated" in err and not strict_out.exists()

    # Default: reported, the readable flows of both captures classified, exit 0 — here under a mission.
    out = tmp_path / "preds.jsonl"
    assert classify.main(["--workdir", str(wd), str(good), str(damaged), "--out", str(out), "--mission", MISSION,
                          "--quiet"]) == 0
    captured = capsys.readouterr()
    assert "damaged.pcap: byte " in captured.err and "1 capture problem(s)" in captured.out
    recs = _lines(out)
    by_capture = {}
    for r in recs:
        by_capture.setdefault(r["capture"], []).append(r)
    assert len(by_capture[TARGET]) == len(_ingest([target], config))
    readable = _ingest([damaged], config)
    assert 0 < len(by_capture["damaged.pcap"]) == len(readable) < len(_ingest([ndpi_dir / "pcap" / DAMAGED], config))
    assert all(r["explanation"]["mission"] == MISSION for r in recs)

    # The mission only raises the prior of its classes: a flow given to them without the mission stays there with
    # a higher probability; a flow that keeps another class keeps it with a lower one; a flow that changes class
    # changes to one of them.
    base = tmp_path / "base.jsonl"
    assert classify.main(["--workdir", str(wd), str(good), "--out", str(base), "--quiet"]) == 0
    focus = {"VPN/Tunnel", "RemoteAccess"}
    weighted = {r["flow_id"]: r for r in by_capture[TARGET]}
    base_recs = _lines(base)
    assert sorted(r["flow_id"] for r in base_recs) == sorted(weighted)
    lowered = moved = 0
    for r in base_recs:
        w = weighted[r["flow_id"]]
        assert r["explanation"]["mission"] is None
        if r["level1"]["id"] in focus:
            assert w["level1"]["id"] in focus and w["level1"]["probability"] >= r["level1"]["probability"] - 1e-6
        elif w["level1"]["id"] == r["level1"]["id"]:
            assert w["level1"]["probability"] < r["level1"]["probability"]
            lowered += 1
        else:
            assert w["level1"]["id"] in focus, (r["level1"], w["level1"])
            moved += 1
    # On the real zoom.pcap some flows keep their class. After the fixture's one training step on the stand-ins every
    # flow outside the focus has VPN/Tunnel as its runner-up, so the doubled prior moves them all.
    assert lowered >= on_corpus(1, 0) and lowered + moved > 0


def test_captures_stream_through_the_models_as_one_table_would(workdir, ndpi_dir, tmp_path):
    """Captures are read on a background thread a few at a time and classified in groups: the records are those of
    the whole ingested table classified in one go, in the same order, whatever the group size; problems of a
    capture are reported; a failing model load stops the reader."""
    import threading

    wd, config = workdir
    names = [TARGET, "signal.pcap", "skype-conference-call.pcap", "googledns_android10.pcap"]
    for name in names:
        shutil.copy(ndpi_dir / "pcap" / name, tmp_path / name)
    data = (ndpi_dir / "pcap" / DAMAGED).read_bytes()
    (tmp_path / "damaged.pcap").write_bytes(data[:len(data) * 2 // 3])
    table = ingest([str(tmp_path)], IngestConfig.from_data_config(from_config(config).data), progress=False)
    engine = classify.jax_engine(wd)
    whole = [json.loads(json.dumps(r)) for r in classify.classify_flows(engine, table)]
    assert len({r["capture"] for r in whole}) == 5 and len(whole) > 50
    threads_before = threading.active_count()
    for chunk, read_ahead in ((7, 1), (10_000, 4)):
        out = tmp_path / f"stream-{chunk}.jsonl"
        run = classify.classify_captures(wd, [str(tmp_path)], out, chunk=chunk, read_ahead=read_ahead,
                                         progress=False)
        recs = _lines(out)
        assert [(r["capture"], r["flow_id"]) for r in recs] == [(r["capture"], r["flow_id"]) for r in whole]
        for a, b in zip(recs, whole):
            assert a["level1"]["id"] == b["level1"]["id"] and a["low_confidence"] == b["low_confidence"]
            np.testing.assert_allclose(a["level1"]["probability"], b["level1"]["probability"], atol=1e-5)
            assert a["explanation"]["flow_facts"] == b["explanation"]["flow_facts"]
        assert run.files == 5 and [e["file"] for e in run.errors] == ["damaged.pcap"]
        assert run.summary["flows"] == len(whole) and run.timings["ingest"] > 0
    no_gnn = tmp_path / "no_gnn"  # settings but no trained stages: the load fails while the reader runs
    no_gnn.mkdir()
    shutil.copy(wd / "config.json", no_gnn / "config.json")
    with pytest.raises(WorkdirError, match="GNN stage"):
        classify.classify_captures(no_gnn, [str(tmp_path)], tmp_path / "none.jsonl", progress=False)
    assert threading.active_count() == threads_before  # the reader was stopped and joined


def test_bad_workdir_and_input_are_clear_errors(workdir, ndpi_dir, tmp_path, capsys):
    wd, _ = workdir
    target = str(ndpi_dir / "pcap" / TARGET)
    assert classify.main(["--workdir", str(tmp_path), target, "--quiet"]) == 1
    assert "config.json" in capsys.readouterr().err
    assert classify.main(["--workdir", str(wd), str(tmp_path / "missing.pcap"), "--quiet"]) == 1
    assert "missing.pcap: no such file" in capsys.readouterr().err


def test_free_text_mission_uses_the_nearest_classes(workdir):
    wd, config = workdir
    kg = load_kg(graph_path(from_config(config).gnn.kg))
    with pytest.raises(KGValidationError):      # no name matches: the embedding fallback is what is tested
        mission_from_statement(kg, STATEMENT)
    clf = inference.load_classifier(wd, mission=STATEMENT)
    m = clf.kg.mission
    assert m.statement == STATEMENT and len(m.focus) == 2 and all(kg.node(f).level == 1 for f in m.focus)
    assert {clf.kg.kg.nodes[i].id for i in np.flatnonzero(clf.kg.prior > 0)} == set(m.focus)


def test_workdir_works_from_another_directory_without_re_embedding(workdir, ndpi_dir, tmp_path, monkeypatch):
    """config.json keeps absolute paths and the text-feature cache is keyed by the encoder, not its path: from
    another directory, classify finds the encoder and every text it needs in the workdir's cache."""
    wd, _ = workdir
    stored = json.loads((wd / "config.json").read_text())
    assert os.path.isabs(stored["text"]["encoder"]) and stored["_format"] == 2
    cache_files = sorted((wd / "cache").glob("text-*.npz"))
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "elsewhere.jsonl"
    assert classify.main(["--workdir", os.path.relpath(wd), str(ndpi_dir / "pcap" / TARGET), "--out", str(out),
                          "--quiet"]) == 0
    assert len(_lines(out)) > 20
    assert sorted((wd / "cache").glob("text-*.npz")) == cache_files  # no text was embedded again



def _classify_process(args):
    """`python -m pclip_jax.classify ARGS` in a fresh process, as a user runs it (without the test session's own
    compilation cache, conftest.py): (stdout, stderr)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}
    proc = subprocess.run([sys.executable, "-m", "pclip_jax.classify", *args, "--quiet"], capture_output=True,
                          text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def _programs(stdout):
    """(compiled programs, of them from the persistent cache) from the report, None when it has no such line."""
    m = re.search(r"XLA programs: (\d+), (\d+) of them loaded from the persistent compilation cache", stdout)
    return (int(m.group(1)), int(m.group(2))) if m else None


def test_a_second_run_loads_its_compiled_programs_from_the_workdir(workdir, ndpi_dir, tmp_path):
    """The JAX backend keeps its compiled programs in the workdir's cache/xla: a second process compiles nothing
    and writes the same records; a cache directory that cannot be written is a note, not a failure."""
    wd, _ = workdir
    target = str(ndpi_dir / "pcap" / TARGET)
    first, second = tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    out1, _ = _classify_process(["--workdir", str(wd), target, "--out", str(first)])
    cached = sorted(p.name for p in (wd / "cache" / "xla").glob("*-cache"))
    assert cached and _programs(out1)[0] > 0
    out2, _ = _classify_process(["--workdir", str(wd), target, "--out", str(second)])
    compiled, from_cache = _programs(out2)
    assert compiled > 0 and from_cache == compiled, out2
    assert sorted(p.name for p in (wd / "cache" / "xla").glob("*-cache")) == cached  # nothing new to keep
    assert second.read_text() == first.read_text()

    not_a_dir = tmp_path / "a_file"
    not_a_dir.write_text("")
    out3, err3 = _classify_process(["--workdir", str(wd), target, "--out", str(tmp_path / "third.jsonl"),
                                    "--compile-cache", str(not_a_dir / "xla")])
    assert "cannot be written; compiling without a persistent cache" in err3 and _programs(out3) is None
    assert (tmp_path / "third.jsonl").read_text() == first.read_text()


@pytest.fixture(scope="module")
def exported(workdir, tmp_path_factory):
    wd, _ = workdir
    out = tmp_path_factory.mktemp("export")
    return out, export.export_workdir(wd, out, progress=lambda line: None)


def _compare(onnx_recs, jax_recs, tolerance=1e-4):
    """Same flows, decisions, flags and descriptions; every probability and attention within `tolerance`."""
    assert len(onnx_recs) == len(jax_recs) > 20
    worst = 0.0
    for a, b in zip(onnx_recs, jax_recs):
        assert (a["capture"], a["flow_id"]) == (b["capture"], b["flow_id"])
        assert a["low_confidence"] == b["low_confidence"] and a["out_of_distribution"] == b["out_of_distribution"]
        assert a["too_short"] == b["too_short"]
        worst = max(worst, abs(a["ood_score"] - b["ood_score"]))
        # The same prediction sets; the order of classes whose probabilities tie within the tolerance may differ.
        pa, pb = a["prediction_set"], b["prediction_set"]
        assert pa["coverage"] == pb["coverage"] and sorted(pa["level1"]) == sorted(pb["level1"])
        assert sorted(pa["level2"] or []) == sorted(pb["level2"] or [])
        for level in ("level1", "level2"):
            if b[level] is None:
                assert a[level] is None
                continue
            assert a[level]["id"] == b[level]["id"]
            for key in ("probability", "calibrated_probability", "conditional_probability"):
                if b[level].get(key) is not None:
                    worst = max(worst, abs(a[level][key] - b[level][key]))
        for level in ("level1", "level2"):
            assert [x["id"] for x in a["alternatives"][level]] == [x["id"] for x in b["alternatives"][level]]
            worst = max([worst] + [abs(x["probability"] - y["probability"])
                                   for x, y in zip(a["alternatives"][level], b["alternatives"][level])])
        for x, y in zip(a["explanation"]["path"], b["explanation"]["path"]):
            assert x["winning_description"] == y["winning_description"]
            worst = max([worst] + [abs(u - v) for u, v in zip(x["attention"], y["attention"])])
        worst = max([worst] + [abs(u - v) for u, v in zip(a["explanation"]["mission_attention"],
                                                          b["explanation"]["mission_attention"])])
    assert worst <= tolerance, worst
    return worst


def test_onnx_export_scores_both_levels_as_jax_does(workdir, exported, ndpi_dir, tmp_path):
    """The export's manifest lists every file with its digest; onnxruntime on a capture's flows gives the JAX backend's
    records: same decisions, both levels' probabilities, attention and winning descriptions within 1e-4."""
    wd, config = workdir
    out, manifest = exported
    assert set(manifest["files"]) >= {"packet_tower.onnx", "detection.onnx", "explain.json", "config.json",
                                      "node_text.npy", "ood_bank.npy"}
    assert all((out / n).stat().st_size == f["bytes"] for n, f in manifest["files"].items())
    assert max(manifest["parity_max_abs_diff"].values()) <= 1e-4
    target = str(ndpi_dir / "pcap" / TARGET)
    jax_out, onnx_out = tmp_path / "jax.jsonl", tmp_path / "onnx.jsonl"
    assert classify.main(["--workdir", str(wd), target, "--out", str(jax_out), "--quiet"]) == 0
    assert classify.main(["--backend", "onnx", "--model", str(out), target, "--out", str(onnx_out), "--quiet",
                          "--threads", "1"]) == 0
    _compare(_lines(onnx_out), _lines(jax_out))


def test_brief_records_are_the_full_ones_without_descriptions(workdir, exported, ndpi_dir, tmp_path):
    """`--brief` (both backends, files and live streams): the full records with every winning description, its
    scores and the flow facts left out (null) — the brief detection model reads the graph once, the full one once
    per description slot, and both give the same probabilities; a live stream honours `--coverage`."""
    wd, _ = workdir
    out, manifest = exported
    assert manifest["detection"]["brief_file"] in manifest["files"] and manifest["parity_max_abs_diff"]["brief"] < 1e-4
    target = ndpi_dir / "pcap" / TARGET
    full_out, jax_out, onnx_out = tmp_path / "full.jsonl", tmp_path / "jax.jsonl", tmp_path / "onnx.jsonl"
    assert classify.main(["--backend", "onnx", "--model", str(out), str(target), "--out", str(full_out), "--quiet",
                          "--threads", "1"]) == 0
    assert classify.main(["--workdir", str(wd), str(target), "--out", str(jax_out), "--quiet", "--brief"]) == 0
    assert classify.main(["--backend", "onnx", "--model", str(out), str(target), "--out", str(onnx_out), "--quiet",
                          "--threads", "1", "--brief"]) == 0
    full = _lines(full_out)
    assert any(step["winning_description"] for r in full for step in r["explanation"]["path"])
    blanked = json.loads(json.dumps(full))
    for r in blanked:
        r["explanation"]["flow_facts"] = None
        for step in r["explanation"]["path"]:
            step["winning_description"] = step["description_scores"] = None
    for brief in (_lines(jax_out), _lines(onnx_out)):
        assert all(r["explanation"]["flow_facts"] is None and all(
            s["winning_description"] is None and s["description_scores"] is None for s in r["explanation"]["path"])
            for r in brief)
        _compare(brief, blanked)
    proc = subprocess.run([sys.executable, "-m", "pclip_jax.classify", "--backend", "onnx", "--model", str(out), "-",
                           "--brief", "--coverage", "0.5", "--quiet", "--threads", "1"], input=target.read_bytes(),
                          capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    live = _by_flow([json.loads(line) for line in proc.stdout.decode().splitlines()])
    whole = _by_flow(full)
    assert sorted(live) == sorted(whole)
    assert {r["prediction_set"]["coverage"] for r in live.values()} == {0.5}
    assert all(len(r["prediction_set"]["level1"]) <= len(whole[f]["prediction_set"]["level1"]) for f, r in live.items())
    assert all(r["explanation"]["flow_facts"] is None for r in live.values())


def test_int8_export_is_smaller_and_decides_as_the_float_one(workdir, exported, ndpi_dir, tmp_path):
    """`--quantize int8`: smaller towers (the test config's are mostly embedding tables, which stay float; the
    shipped configs' shrink to 39 %); the manifest's check on the workdir's test flows, and
    classify on a held-out capture, agree with the float export on nearly every flow."""
    wd, _ = workdir
    out, manifest = exported
    q_out = tmp_path / "int8"
    assert export.main(["--workdir", str(wd), "--out", str(q_out), "--quantize", "int8"]) == 0
    q_manifest = json.loads((q_out / "manifest.json").read_text())
    for name in q_manifest["packet_tower"]["slot_files"].values():
        assert q_manifest["files"][name]["bytes"] < 0.9 * manifest["files"][name]["bytes"]
    assert q_manifest["files"]["detection.onnx"] == manifest["files"]["detection.onnx"]  # stays float32
    check = q_manifest["quantization"]
    assert check["check_flows"] > 20 and check["level1_top_agreement"] >= 0.9 and check["embedding_min_cosine"] > 0.9
    assert abs(check["level1_int8"]["mauc"] - check["level1_float32"]["mauc"]) < 0.03
    target = str(ndpi_dir / "pcap" / TARGET)
    float_out, int8_out = tmp_path / "float.jsonl", tmp_path / "int8.jsonl"
    for model, dest in ((out, float_out), (q_out, int8_out)):
        assert classify.main(["--backend", "onnx", "--model", str(model), target, "--out", str(dest), "--quiet",
                              "--threads", "1"]) == 0
    a, b = _lines(float_out), _lines(int8_out)
    assert len(a) == len(b) > 20
    same = np.mean([x["level1"]["id"] == y["level1"]["id"] for x, y in zip(a, b) if x["level1"]])
    assert same >= 0.9, same
    with pytest.raises(ValueError, match="--quantize 'int4'"):
        export.export_workdir(wd, tmp_path / "x", quantize="int4", progress=lambda line: None)
    # Exported where the workdir's captures are not: the int8 towers are written, the check says why it is missing.
    moved = tmp_path / "moved_wd"
    shutil.copytree(wd, moved, ignore=shutil.ignore_patterns("cache"))
    stored = json.loads((moved / "config.json").read_text())
    gone = tmp_path / "no_captures_here"
    stored["data"].update(manual_dir=str(gone), cache_dir="",
                          inputs=[str(gone / pathlib.Path(p).name) for p in stored["data"]["inputs"]])
    (moved / "config.json").write_text(json.dumps(stored))
    lines = []
    skipped = export.export_workdir(moved, tmp_path / "moved_export", quantize="int8", progress=lines.append)
    assert "no_captures_here" in skipped["quantization"]["check_skipped"]
    assert any("not checked on the test flows" in line for line in lines)


BLOCK_JAX = textwrap.dedent("""
    import importlib.abc, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {"jax", "jaxlib", "flax", "jraph", "optax", "orbax", "chex", "jax2onnx"}:
                raise ImportError(f"{name} is not installed on this device (blocked by the test)")
    sys.meta_path.insert(0, Block())
    from pclip_jax.serving import classify
    rc = classify.main(sys.argv[1:])
    assert not any(m.split(".")[0] in {"jax", "flax", "jraph"} for m in sys.modules), "JAX was imported"
    sys.exit(rc)
""")


def test_onnx_classify_runs_where_jax_is_not_installed(workdir, exported, ndpi_dir, tmp_path):
    """`classify --backend onnx` in a process where importing JAX, Flax, jraph or optax fails: same records."""
    wd, _ = workdir
    out, _ = exported
    target = str(ndpi_dir / "pcap" / TARGET)
    onnx_out, jax_out = tmp_path / "nojax.jsonl", tmp_path / "jax.jsonl"
    proc = subprocess.run([sys.executable, "-c", BLOCK_JAX, "--backend", "onnx", "--model", str(out), target,
                           "--out", str(onnx_out), "--quiet", "--explain-text", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "(onnx backend)" in proc.stdout and "because: " in proc.stdout
    assert classify.main(["--workdir", str(wd), target, "--out", str(jax_out), "--quiet"]) == 0
    _compare(_lines(onnx_out), _lines(jax_out))


def test_onnx_errors_name_the_file(workdir, exported, ndpi_dir, tmp_path, capsys):
    """A damaged export, a missing one, a mission the export was not made with, and a per-flow GNN workdir."""
    wd, _ = workdir
    out, _ = exported
    target = str(ndpi_dir / "pcap" / TARGET)
    damaged = tmp_path / "damaged_export"
    shutil.copytree(out, damaged)
    data = bytearray((damaged / "detection.onnx").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "detection.onnx").write_bytes(bytes(data))
    assert classify.main(["--backend", "onnx", "--model", str(damaged), target, "--quiet"]) == 1
    assert "detection.onnx: its contents differ from the SHA-256" in capsys.readouterr().err
    assert classify.main(["--backend", "onnx", "--model", str(tmp_path / "nowhere"), target, "--quiet"]) == 1
    assert "nowhere: no such export directory" in capsys.readouterr().err
    assert classify.main(["--backend", "onnx", "--model", str(out), target, "--mission", MISSION, "--quiet"]) == 1
    assert "was exported with mission None" in capsys.readouterr().err
    assert classify.main(["--backend", "onnx", target, "--quiet"]) == 2

    per_flow = tmp_path / "per_flow_wd"
    shutil.copytree(wd, per_flow)
    stored = json.loads((per_flow / "config.json").read_text())
    stored["gnn"]["model"]["factored"] = False
    (per_flow / "config.json").write_text(json.dumps(stored))
    assert export.main(["--workdir", str(per_flow), "--out", str(tmp_path / "x")]) == 1
    assert "per-flow formulation (gnn.model.factored=False)" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------------------
# Live streams (the live-stream section of pclip_jax/serving/classify.py)


def _by_flow(records):
    return {r["flow_id"]: r for r in records if not r.get("final")}


def test_live_stdin_answers_equal_the_file_answers(exported, ndpi_dir, tmp_path):
    """`cat capture | classify -`: every flow answered once, early answers included, with the decisions and
    probabilities classify gives on the capture file (the early answer's inputs are final; order aside); flows
    that ended before K packets also have the file's counters; `--final` adds the totals of the early ones."""
    out, _ = exported
    target = ndpi_dir / "pcap" / TARGET
    file_out = tmp_path / "file.jsonl"
    assert classify.main(["--backend", "onnx", "--model", str(out), str(target), "--out", str(file_out), "--quiet",
                          "--threads", "1"]) == 0
    proc = subprocess.run([sys.executable, "-m", "pclip_jax.classify", "--backend", "onnx", "--model", str(out), "-",
                           "--final", "--quiet", "--threads", "1"], input=target.read_bytes(), capture_output=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    live, whole = _by_flow(records), _by_flow(_lines(file_out))
    assert sorted(live) == sorted(whole) and len(live) == sum(not r.get("final") for r in records)
    kinds = {r["answer"] for r in live.values()}
    assert kinds >= {"early", "ended"}, kinds
    for fid, a in live.items():
        b = whole[fid]
        for level in ("level1", "level2"):
            assert (a[level] is None) == (b[level] is None)
            if a[level] is not None:
                assert a[level]["id"] == b[level]["id"]
                assert abs(a[level]["probability"] - b[level]["probability"]) < 1e-5
        assert a["server_name"] == b["server_name"]
        if a["answer"] == "ended":
            assert (a["c2s_packets"], a["s2c_packets"], a["last_ts"]) == (b["c2s_packets"], b["s2c_packets"],
                                                                          b["last_ts"])
    finals = {r["flow_id"]: r for r in records if r.get("final")}
    assert set(finals) == {f for f, r in live.items() if r["answer"] == "early"}
    for fid, r in finals.items():
        assert (r["c2s_packets"], r["s2c_packets"], r["last_ts"]) == (whole[fid]["c2s_packets"],
                                                                      whole[fid]["s2c_packets"], whole[fid]["last_ts"])


def test_live_answers_in_small_chunks_equal_the_answers_in_one(exported, ndpi_dir):
    """Flows that come due together (here: the end of the stream answers every flow still tracked) go through the
    models `answer_chunk` flows at a time, which bounds peak memory: the same records as in one go."""
    import io

    out_dir, _ = exported
    engine = classify.onnx_engine(out_dir, threads=1)
    target = str(ndpi_dir / "pcap" / TARGET)
    runs = {}
    for chunk in (7, 1024):
        buf = io.StringIO()
        run = classify.classify_stream(engine, target, buf, classify.LiveOptions(answer_chunk=chunk), progress=False)
        runs[chunk] = (_by_flow([json.loads(line) for line in buf.getvalue().splitlines()]), run.summary)
    (small, small_summary), (whole, whole_summary) = runs[7], runs[1024]
    assert len(whole) > 7 and sorted(small) == sorted(whole)
    for fid, a in small.items():
        b = whole[fid]
        assert (a["answer"], a["level1"]["id"]) == (b["answer"], b["level1"]["id"])
        for level in ("level1", "level2"):  # classes tied within float noise may swap places
            assert sorted(a["prediction_set"][level] or []) == sorted(b["prediction_set"][level] or [])
        assert abs(a["level1"]["probability"] - b["level1"]["probability"]) < 1e-5
    assert small_summary["flows"] == whole_summary["flows"] == len(whole)


def test_live_damaged_stream_is_reported_and_the_flows_before_it_answered(exported, ndpi_dir, tmp_path):
    out, _ = exported
    data = (ndpi_dir / "pcap" / TARGET).read_bytes()
    cut = len(data) * 2 // 3
    damaged = data[:cut] + b"\xff" * 64
    proc = subprocess.run([sys.executable, "-m", "pclip_jax.classify", "--backend", "onnx", "--model", str(out), "-",
                           "--quiet", "--threads", "1"], input=damaged, capture_output=True, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    assert re.search(r"warning: -: byte \d+: ", proc.stderr.decode())
    records = [json.loads(line) for line in proc.stdout.decode().splitlines()]
    prefix = tmp_path / "prefix.pcap"
    prefix.write_bytes(data[:cut])
    expected = ingest([prefix], IngestConfig.from_data_config(from_config(test_config.get_config()).data),
                      progress=False)
    assert len(records) == len(expected) > 10


def _mostly_unknown_captures(ndpi_dir, root, keep_known=100, others=("wechat.pcap", "reddit.pcap")):
    """gnutella.pcap with nDPI's own result file, cut to all its `Unknown` flows and only the first `keep_known`
    flows of a protocol, and `others` (captures of web and chat services) with theirs: captures whose labels
    the label hierarchy covers for fewer than half of the flows (a user's captures where nDPI names little).
    Returns (pcap dir, result dir)."""
    pcaps, results = root / "pcap", root / "result"
    pcaps.mkdir(parents=True)
    results.mkdir()
    for name in ("gnutella.pcap",) + tuple(others):
        shutil.copy(ndpi_dir / "pcap" / name, pcaps)
        if name != "gnutella.pcap":
            shutil.copy(ndpi_dir / "result" / f"{name}.out", results)
    kept, lines = 0, []
    for line in (ndpi_dir / "result" / "gnutella.pcap.out").read_text().split("\n"):
        if re.match(r"^\t\d+\t", line) and "[proto: 0/Unknown]" not in line:
            kept += 1
            if kept > keep_known:
                continue
        lines.append(line)
    (results / "gnutella.pcap.out").write_text("\n".join(lines))
    return pcaps, results


def test_evaluate_keeps_the_workdirs_classes_on_captures_the_hierarchy_mostly_misses(workdir, ndpi_dir, tmp_path):
    from pclip_jax import evaluate
    from pclip_jax.data import labels as labels_lib
    from pclip_jax.data import splits as splits_lib
    from pclip_jax.data import taxonomy

    wd, config = workdir
    pcaps, results = _mostly_unknown_captures(ndpi_dir, tmp_path / "new")
    spec = f"ndpi:{results}"
    table = labels_lib.attach_labels(_ingest(sorted(pcaps.iterdir()), config), spec, progress=False)
    # The case of the issue: `auto` decided on these captures alone would name every class by its raw label.
    _, auto = taxonomy.resolve_levels(table, "auto")
    assert auto["coverage"]["hierarchy"] < 0.5 and auto["source"] == "raw"
    info = json.loads((wd / "model_info.json").read_text())
    assert info["taxonomy"] == {"source": "hierarchy"}   # recorded by training
    names = set(info["class_names"])
    kept, _ = splits_lib.filter_flows(table, min_packets=config.data.min_packets, drop_one_way=config.data.drop_one_way,
                                      drop_unlabelled=True, label_column="level1")
    expected = int(np.isin(kept.meta["level1"].astype(str), sorted(names)).sum())
    assert expected > 30
    raw, level1 = table.meta["label"].astype(str), table.meta["level1"].astype(str)
    unknown_labels = int(((raw != "") & (level1 == "")).sum())

    def check(result, recorded_in):
        assert result["flows_evaluated"] == expected
        labels = result["labels"]
        assert labels["taxonomy"]["source"].split("+")[0] == "hierarchy" and labels["taxonomy"]["recorded_in"] == recorded_in
        # What the model cannot know is reported with counts: labels the taxonomy does not name, and classes
        # named but never trained on.
        assert labels["labels_outside_taxonomy"] == {"Unknown": unknown_labels}
        other = level1[(raw != "") & (level1 != "") & ~np.isin(level1, sorted(names))]
        assert labels["other_classes"] == dict(zip(*np.unique(other, return_counts=True))) or not len(other)
        assert (labels["flows_of_model_classes"] + labels["flows_outside_taxonomy"] + labels["flows_of_other_classes"]
                == labels["labelled_flows"] == int((raw != "").sum()))
        assert 0 <= result["gnn"]["level1"]["accuracy"] <= 1

    check(evaluate.evaluate_workdir(wd, [str(pcaps)], spec, out=str(tmp_path / "m.json")), "model_info.json")
    assert json.loads((tmp_path / "m.json").read_text())["flows_evaluated"] == expected
    # A workdir from before the record (no `taxonomy` in model_info.json) still evaluates with its classes:
    # upgraded from results.json's taxonomy report, or, without that either, by matching the model's classes.
    old = tmp_path / "old_wd"
    shutil.copytree(wd, old, ignore=shutil.ignore_patterns("xla"))
    info.pop("taxonomy")
    (old / "model_info.json").write_text(json.dumps(info))
    check(evaluate.evaluate_workdir(old, [str(pcaps)], spec), "results.json")
    res = json.loads((old / "results.json").read_text())
    res["data"].pop("taxonomy")
    (old / "results.json").write_text(json.dumps(res))
    check(evaluate.evaluate_workdir(old, [str(pcaps)], spec), "none")


def test_distilled_deployment_tower_exports_and_classifies(workdir, ndpi_dir, tmp_path):
    """`python -m pclip_jax.distill` trains a smaller packet tower to place the training flows where the trained one
    does and to make the GNN answer as it does: the validation loss falls from its first check, the student is cheaper, the rest of the towers is the
    workdir's, and `export --deployment` writes it (parity with JAX checked by the export) for classify's ONNX
    backend."""
    from pclip_jax import distill as distill_cli
    from pclip_jax.training import distill

    wd, config = workdir
    # The test config's tower is already tiny (width 16, 4 bytes per byte): a student at half of it.
    rc = distill_cli.main(["--workdir", str(wd), "--width", "8", "--heads", "2", "--patch-size", "16",
                           "--byte-dim", "2", "--steps", "40", "--batch-size", "64", "--learning-rate", "1e-2",
                           "--extra", str(ndpi_dir / "pcap" / DAMAGED)])
    assert rc == 0
    saved = json.loads((wd / distill.DEPLOYMENT_DIR / distill.TOWER_JSON).read_text())
    report = saved["report"]
    assert saved["model"]["width"] == 8 and len(report["history"]) == 4
    assert report["validation_loss"] < report["history"][0]["validation_loss"]
    assert report["validation_kl"] >= 0 and "level1_agreement" in report["validation"]
    # Defaults: the teacher and the student read the same augmented flows, and the GNN's answers are matched.
    assert report["training"]["augment"] is True and report["training"]["match_predictions"] > 0
    assert report["packet_tower"]["flops_ratio"] > 1.5 and -1 <= report["test_cosine"] <= 1
    assert 0 <= report["level1_agreement"] <= 1 and "mauc" in report["level1_deployment"]
    # The extra capture's flows (no labels) join the training flows the student learns from.
    assert report["extra_flows"] > 0 and report["training_flows"] > 0

    # The GNN-output term reads the workdir's GNN through one fixed graph batch whose flow embeddings are swapped:
    # the same distributions as the GNN's own prediction path.
    clf = inference.load_classifier(wd)
    z = np.random.default_rng(0).normal(size=(64, clf.settings.model.embed_dim)).astype(np.float32)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    logp1, logp2 = distill.gnn_distributions(clf, 64)(z)
    ref = train_gnn.predict_arrays(clf.gnn_train_config, clf.gnn_params, z, clf.kg)
    np.testing.assert_allclose(np.exp(np.asarray(logp1)), ref["prob1"] + 1e-7, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(np.exp(np.asarray(logp2)), ref["prob2"] + 1e-7, rtol=1e-4, atol=1e-6)

    trained, small = inference.load_towers(wd), inference.load_deployment_towers(wd)
    assert small.settings.model.width == 8 and small.settings.model.dropout == 0.0
    assert small.settings.data == trained.settings.data
    np.testing.assert_array_equal(small.params["text_head"]["kernel"], trained.params["text_head"]["kernel"])
    assert small.params["packet_head"]["kernel"].shape[0] == 8 != trained.params["packet_head"]["kernel"].shape[0]

    out = tmp_path / "export_small"
    manifest = export.export_workdir(wd, out, progress=lambda line: None, deployment=True)
    assert manifest["packet_tower"]["deployment"] is True
    assert manifest["packet_tower"]["params"] == report["packet_tower"]["deployment"]["params"]
    assert json.loads((out / "config.json").read_text())["model"]["width"] == 8
    preds = tmp_path / "small.jsonl"
    target = str(ndpi_dir / "pcap" / TARGET)
    assert classify.main(["--backend", "onnx", "--model", str(out), target, "--out", str(preds), "--quiet",
                          "--threads", "1"]) == 0
    assert len(_lines(preds)) > 20
    shutil.rmtree(wd / distill.DEPLOYMENT_DIR)
    with pytest.raises(WorkdirError, match="no deployment tower"):
        inference.load_deployment_towers(wd)


def test_json_lines_are_the_same_values_with_and_without_orjson(monkeypatch):
    """classify writes its lines with orjson when installed and with the standard library on a device without it:
    the same values either way (numpy scalars included), one line per record."""
    records = [{"capture": "a.pcap", "flow_id": 1, "p": 0.25, "ids": ["Web", "DNS"], "n": np.int64(3),
                "x": np.float32(0.5), "ok": True, "none": None, "nested": {"path": [{"level": 1, "attention": [0.1]}]}},
               {"capture": "b.pcap", "flow_id": 2, "p": 1e-9, "ids": [], "n": 0, "x": 2.0, "ok": False,
                "none": None, "nested": {"path": []}}]
    fast = classify.json_lines([{k: v.item() if isinstance(v, np.generic) else v for k, v in r.items()}
                                for r in records])
    assert classify.orjson is not None and classify.json_lines(records) == fast
    monkeypatch.setattr(classify, "orjson", None)
    slow = classify.json_lines([{k: v.item() if isinstance(v, np.generic) else v for k, v in r.items()}
                                for r in records])
    assert slow.endswith("\n") and len(slow.splitlines()) == len(fast.splitlines()) == 2
    assert [json.loads(x) for x in slow.splitlines()] == [json.loads(x) for x in fast.splitlines()]
