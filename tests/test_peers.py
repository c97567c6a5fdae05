"""The peer suite on captures (real, or their stand-ins): each peer's input view, output shapes, published parameter
counts, training steps that reduce the loss, and `benchmarks/peers.py` resuming (a finished cell is not
recomputed)."""
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest

from pclip_jax.plumbing.runtime import count_params
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_bench import protocol
from pclip_bench.peers import inputs, models, suite, tuning
from pclip_bench.peers import train as peer_train
from tests.conftest import REPO

CAPTURES = ["1kxun.pcap", "zoom.pcap", "443-chrome.pcap", "signal.pcap", "dns-exf.pcap", "ftp.pcap"]


@pytest.fixture(scope="module")
def table(ndpi_dir):
    t = ingest([str(ndpi_dir / "pcap" / c) for c in CAPTURES], IngestConfig(bytes=suite.PEER_BYTES), progress=False)
    assert len(t) >= 64
    return t


def test_input_views_read_the_packet_bytes(table):
    t, idx = table.tensors, np.arange(len(table))
    tokens, mask = inputs.bigram_tokens(t, idx)
    assert tokens.shape == mask.shape == (len(idx), 128) and (tokens[:, 0] == inputs.SPECIAL["cls"]).all()
    data, real = inputs.flow_bytes(t, idx, 128)
    # A bigram token is the 2-byte value of consecutive real bytes, offset by the special tokens.
    i = int(np.argmax(real.sum(1)))
    n = int(real[i].sum())
    want = data[i, :n - 1].astype(np.int64) * 256 + data[i, 1:n] + len(inputs.SPECIAL)
    np.testing.assert_array_equal(tokens[i, 1:n], want)
    assert not mask[i, n:].any()
    # The first packet's real bytes are its IP length (or the row width), then zero padding.
    first = min(int(np.abs(t["sizes"][i, 0])), 128)
    np.testing.assert_array_equal(data[i, :first], t["bytes"][i, 0, :first])
    assert inputs.byte_image(t, idx).shape == (len(idx), 40, 40)
    assert inputs.stride_tokens(t, idx).shape == (len(idx), 400, 4)
    assert inputs.first_bytes(t, idx).shape == (len(idx), 784)
    ids, real_packets = inputs.length_sequence(t, idx)
    assert ids.min() >= 0 and ids.max() < inputs.LENGTH_VOCAB and (real_packets == (t["sizes"] != 0)).all()


@pytest.mark.parametrize("name", ["etbert", "yatc", "cnn1d"])
def test_published_sizes_match_the_papers(name, table):
    spec = models.PEERS[name]
    module = spec.build(10, "published")
    x = spec.features(table.tensors, np.arange(2))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))
    params = count_params(shapes["params"])
    assert abs(params - spec.published_params) / spec.published_params < 0.05, params


@pytest.mark.parametrize("name", list(models.PEERS))
def test_a_few_steps_reduce_the_loss(name, table):
    spec = models.PEERS[name]
    idx = np.arange(64)
    y = (np.asarray(table.meta["proto"])[idx] == 17).astype(np.int64) + 2 * (np.abs(table.tensors["sizes"][idx, 0])
                                                                         > 200)
    x = spec.features(table.tensors, idx)
    config = peer_train.PeerTrainConfig(pretrain_steps=12 if spec.pretrain else 0, steps=30, batch_size=32,
                                        learning_rate=3e-3, pretrain_learning_rate=3e-3, warmup_steps=2)
    fitted = peer_train.fit_peer(spec, "cpu", 4, x, y, x, y, config, progress=False)
    info = fitted.info
    assert info["loss_last"] < info["loss_first"], info
    if spec.pretrain:
        assert info["pretrain_loss_last"] < info["pretrain_loss_first"], info
    proba = peer_train.predict_proba(fitted.module, fitted.params, x)
    assert proba.shape == (64, 4) and np.allclose(proba.sum(1), 1, atol=1e-5)
    assert peer_train.flops_per_flow(fitted.module, fitted.params, x) > 0


def test_pre_training_reads_the_unlabelled_flows_it_is_given(table):
    """With data.unlabelled_pretraining a peer's self-supervised stage reads more flows than it fine-tunes on
    (`x_pretrain`): the pre-training losses are those of the flows given, fine-tuning is unchanged in kind."""
    spec = models.PEERS["yatc"]  # masked-autoencoder pre-training
    assert spec.pretrain
    labelled, unlabelled = np.arange(32), np.arange(32, 160)
    y = (np.asarray(table.meta["proto"])[labelled] == 17).astype(np.int64)
    x = spec.features(table.tensors, labelled)
    config = peer_train.PeerTrainConfig(pretrain_steps=8, steps=4, batch_size=16, warmup_steps=1)
    own = peer_train.fit_peer(spec, "cpu", 2, x, y, x, y, config, progress=False)
    more = peer_train.fit_peer(spec, "cpu", 2, x, y, x, y, config, progress=False,
                               x_pretrain=spec.features(table.tensors, np.concatenate([labelled, unlabelled])))
    assert own.info["pretrain_loss_first"] != more.info["pretrain_loss_first"]
    assert np.isfinite(more.info["pretrain_loss_last"]) and np.isfinite(more.info["loss_last"])


def test_cells_shard_and_resume(ndpi_dir, tmp_path):
    cells = suite.make_cells(["ndpi", "iot_sentinel"], ["pclip", "extra_trees"], [0.1, 1.0], [0, 1])
    assert len(cells) == 16 and cells[0] == suite.Cell("ndpi", "pclip", 1.0, 0)
    parts = [suite.shard(cells, f"{i}/3") for i in range(3)]
    assert sorted(sum(parts, []), key=cells.index) == cells
    with pytest.raises(ValueError, match="--shard '3/3'"):
        suite.shard(cells, "3/3")
    # A pclip cell and its hybrid share a PacketCLIP workdir, so they always fall in one shard.
    with_hybrid = suite.make_cells(["ndpi"], ["pclip", "pclip_trees", "extra_trees"], [0.1, 1.0], [0, 1])
    for n in (2, 3, 5):
        parts = [suite.shard(with_hybrid, f"{i}/{n}") for i in range(n)]
        assert sorted(sum(parts, []), key=with_hybrid.index) == with_hybrid
        for part in parts:
            for c in part:
                if c.model == "pclip":
                    assert dataclasses.replace(c, model="pclip_trees") in part
    workdir = tmp_path / "w"
    command = [sys.executable, str(REPO / "benchmarks" / "peers.py"), "--workdir", str(workdir), "--datasets", "ndpi",
               "--models", "extra_trees", "--fractions", "0.1", "--seeds", "0", "--json", str(tmp_path / "rows.json"),
               "--set", f"data.manual_dir={ndpi_dir}", "--set", "data.use_names=false"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert first.returncode == 0, first.stderr[-2000:]
    cell = workdir / "cells" / "ndpi" / "extra_trees-f0.1-s0.json"
    stamp = cell.stat().st_mtime_ns
    rows = json.loads((tmp_path / "rows.json").read_text())
    assert len(rows) == 1 and rows[0]["model"] == "extra_trees" and 0.5 < rows[0]["mauc"] <= 1
    assert {"accuracy", "macro_f1", "trainable_params", "flops_per_flow", "train_seconds", "infer_flows_per_s",
            "ece"} <= set(rows[0])
    assert "extra_trees" in first.stdout and "=== cell 1/1" in first.stderr
    # The protocol: the model was tuned first on the tuning split (validation scores only), the cell records the
    # frozen configuration it ran with, its declared evaluation and its per-flow answers on validation and test.
    tuned = json.loads((workdir / "tuned" / "ndpi" / "extra_trees.json").read_text())
    assert tuned["split_seed"] == tuning.TUNING_SEED and len(tuned["candidates"]) == 4
    assert tuned["chosen"] == max(tuned["candidates"], key=lambda c: c["validation"])["config"]
    for candidate in (workdir / "tuning" / "ndpi" / "extra_trees").glob("*.json"):
        assert set(json.loads(candidate.read_text())) == {"candidate", "validation_mauc", "seconds"}
    record = json.loads(cell.read_text())
    assert record["protocol"] == 2 and record["tuned"] == {"extra_trees": tuned["chosen"]}
    assert record["declared_evaluation"] == "extra_trees"
    answers = suite.read_answers(workdir, suite.Cell("ndpi", "extra_trees", 0.1, 0))
    test = answers["extra_trees"]["test"]
    assert set(answers["extra_trees"]) == {"validation", "test"} and len(test["y_true"]) == rows[0]["num_flows"]
    # The mixed capture split tests applications with and without training captures: each flow says which.
    assert test["novel"].dtype == bool and 0 < test["novel"].mean() < 1
    assert protocol.weighted_metric("mauc", test["y_true"], test["scores"], np.ones((1, len(test["y_true"]))))[0] \
        == pytest.approx(rows[0]["mauc"], abs=1e-6)
    # The next cells of a model are announced with the time its finished cells took.
    typical = suite.typical_seconds(workdir)
    took = json.loads(cell.read_text())["seconds"]
    assert typical == {("ndpi", "extra_trees"): took}
    later = [suite.Cell("ndpi", "extra_trees", 1.0, 0), suite.Cell("ndpi", "etbert", 1.0, 0)]
    assert suite._eta(later[0], later, typical) == (
        f" (typically {took / 60:.0f} min; the cells left ~{took / 3600:.1f} h + 1 never timed here, by earlier "
        "cells' times)")
    assert suite._eta(later[1], later, typical) == ""
    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0 and "=== cell" not in again.stderr
    assert cell.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "rows.json").read_text()) == rows


def test_model_speed_counts_flops_on_the_cpu_program_and_runs_every_kind():
    """benchmarks/model_speed.py: a peer's FLOPs per flow are those of the suite's own count (the program compiled
    for the CPU, whatever device runs it), a training step costs more than a forward pass, PacketCLIP's pmap step is
    counted through vmap (once, on one device), and a bf16 ET-BERT computes in bf16 (its layers' own dtype, not a parameter cast)."""
    import jax.numpy as jnp

    sys.path.insert(0, str(REPO / "benchmarks"))
    import model_speed

    row = model_speed.peer_speed("fsnet", "cpu", 8, "float32", 1)
    spec = models.PEERS["fsnet"]
    module = spec.build(model_speed.NUM_CLASSES, "cpu")
    x = spec.features(model_speed._random_tensors(8, 16, 320), np.arange(8))
    params = module.init({"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(0)}, x,
                         jax.random.PRNGKey(0), method=module.init_all)["params"]
    assert row["infer_flops_per_flow"] == pytest.approx(peer_train.flops_per_flow(module, params, x), rel=0.01)
    assert row["train_flops_per_step"] > 2 * 8 * row["infer_flops_per_flow"]
    assert row["infer_flows_per_s"] > 0 and row["train_flows_per_s"] > 0 and row["params"] == count_params(params)

    pclip = model_speed.pclip_speed(str(REPO / "configs" / "test.py"), [], 8, "float32", 1)
    assert pclip["train_flops_per_step"] > 0 and pclip["infer_flops_per_flow"] > 0 and pclip["train_flows_per_s"] > 0

    bert = models.PEERS["etbert"].build(4, "cpu").clone(dtype=jnp.bfloat16)
    tokens = inputs.bigram_tokens(model_speed._random_tensors(2, 16, 320), np.arange(2))
    bert_params = bert.init(jax.random.PRNGKey(0), tokens)["params"]
    hidden = bert.apply({"params": bert_params}, *tokens, method=bert.encode)
    assert hidden.dtype == jnp.bfloat16


TINY = ["data.packets=4", "data.bytes=32", "model.width=16", "model.depth=1", "model.heads=2", "model.byte_dim=4",
        "model.embed_dim=16", "text.max_len=32", "text.variants_per_flow=1", "train.batch_size=16",
        "train.num_steps=2", "train.checkpoint_every=2", "train.eval_every=2", "train.warmup_steps=1",
        "gnn.num_steps=1", "gnn.batch_size=16", "gnn.model.hidden=16", "gnn.model.num_heads=2", "eval.batch_size=64"]


def test_hybrid_cell_adds_the_tower_embedding_to_the_tree_features(ndpi_dir, minilm_dir, tmp_path):
    """pclip_trees: ExtraTrees on the tree features plus the embedding of the pclip cell's towers (trained in that
    cell's workdir). With the same seed and features, plain extra_trees must give other predictions: the
    embedding is really there."""
    overrides = [*TINY, f"data.manual_dir={ndpi_dir}", f"text.encoder={minilm_dir}"]
    cell = suite.Cell("ndpi", "pclip_trees", 0.3, 0)
    [row] = suite.run_cell(cell, tmp_path, overrides, progress=False)
    assert row["model"] == "pclip_trees" and 0.5 < row["mauc"] <= 1 and row["tree_nodes"] > 0
    tower = json.loads((tmp_path / "pclip" / "ndpi" / "pclip-f0.3-s0" / "results.json").read_text())
    assert row["trainable_params"] == tower["num_params"]["trainable_total"] and row["flops_per_flow"] > 0
    assert row["num_flows"] == tower["test"]["num_flows"]
    [plain] = suite.run_cell(dataclasses.replace(cell, model="extra_trees"), tmp_path, overrides, progress=False)
    assert plain["num_flows"] == row["num_flows"]
    assert (plain["mauc"], plain["per_class_recall"]) != (row["mauc"], row["per_class_recall"])
    # Run again, it reads the finished tower run's embeddings.npz instead of running the towers: same predictions.
    pclip_dir = tmp_path / "pclip" / "ndpi" / "pclip-f0.3-s0"
    results_mtime = (pclip_dir / "results.json").stat().st_mtime_ns
    [again] = suite.run_cell(cell, tmp_path, overrides, progress=False)
    assert (pclip_dir / "results.json").stat().st_mtime_ns == results_mtime  # the job did not run again
    assert (again["mauc"], again["per_class_recall"]) == (row["mauc"], row["per_class_recall"])


def test_summary_report_from_the_committed_cells(tmp_path):
    """The Markdown report from the sweep's real cells: every table, the quality bar recomputed here from the
    aggregated rows, and the cells still to run of the default sweep."""
    shutil.copytree(REPO / "benchmarks" / "results" / "peers" / "cells", tmp_path / "cells")
    cells = suite.make_cells(["ndpi", "iot_sentinel"], suite.MODELS, [1.0, 0.3, 0.1], [0, 1, 2])
    (tmp_path / "cells" / "ndpi" / "lightgbm-f1-s2.json").unlink()  # one cell certainly missing
    report = suite.summarize(tmp_path, cells=cells, command="peers.py --summary-only")
    text = (tmp_path / "summary.md").read_text()
    status = report["status"]
    assert status["expected"] == len(cells) == 162
    assert ("ndpi", "lightgbm-f1-s2") in status["missing"] and "lightgbm-f1-s2" in text
    assert status["finished"] == len(cells) - len(status["missing"]) < 162
    assert "`peers.py --summary-only`" in text
    agg = {(a["dataset"], a["model"], a["fraction"]): a for a in report["aggregated"]}
    for dataset in ("ndpi", "iot_sentinel"):
        assert f"## {dataset}" in text and "### 100% of the training data" in text
    # The quality bar compares means over the seeds every compared model has run; recomputed here from the rows.
    value = {(r["dataset"], r["model"], r["fraction"], r["seed"]): r for r in report["rows"]}
    assert report["quality_bar"]
    for q in report["quality_bar"]:
        d, f = q["dataset"], q["fraction"]
        models = [m for m in suite.PCLIP_ROWS[:3] + suite.PEERS if (d, m, f) in agg]
        seeds = sorted(set.intersection(*({s for s in range(3) if (d, m, f, s) in value} for m in models)))
        assert q["seeds"] == seeds and seeds
        for key in ("mauc", "macro_f1"):
            mean = {m: np.mean([value[d, m, f, s][key] for s in seeds]) for m in models}
            own = max(mean[m] for m in suite.PCLIP_ROWS[:3] if m in mean)
            peer = max(mean[m] for m in suite.PEERS if m in mean)
            assert q[key]["margin"] == pytest.approx(own - peer)
            assert f"{q[key]['margin']:+.3f}" in text
    ndpi = report["claims"]["ndpi"]
    gnn = [value["ndpi", "pclip_gnn", frac, s]["mauc"] for frac in (1.0, 0.3) for s in
           ndpi["mauc_kept_at_30pct_pclip_gnn_seeds"]]
    half = len(gnn) // 2
    assert ndpi["mauc_kept_at_30pct_pclip_gnn"] == pytest.approx(np.mean(gnn[half:]) / np.mean(gnn[:half]))
    ndpi_gnn = agg["ndpi", "pclip_gnn", 1.0]
    assert f"{ndpi_gnn['mauc']:.3f}±{ndpi_gnn['mauc_sd']:.3f}" in text
    assert (tmp_path / "plots" / "scarcity_ndpi.png").is_file()


def test_readme_block_is_replaced_between_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(f"# title\n\nbefore\n{suite.README_BEGIN}\nold table\n{suite.README_END}\nafter\n")
    suite.replace_readme_block(readme, f"{suite.README_BEGIN}\nnew table\n{suite.README_END}")
    assert readme.read_text() == f"# title\n\nbefore\n{suite.README_BEGIN}\nnew table\n{suite.README_END}\nafter\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="README.md: needs one line"):
        suite.replace_readme_block(readme, "x")
    assert readme.read_text() == "no markers\n"
