"""The benchmark protocol's statistics and guards (pclip_bench.protocol) on hand-built cases."""
import numpy as np
import pytest

from pclip_bench import protocol
from pclip_jax.plumbing import metrics as metrics_lib


def _onehot_scores(pred, classes, sharp=0.9):
    s = np.full((len(pred), classes), (1 - sharp) / (classes - 1))
    s[np.arange(len(pred)), pred] = sharp
    return s


def test_weighted_metrics_equal_the_report_at_unit_weights_and_follow_the_weights():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 300)
    y[:4] = np.arange(4)
    scores = rng.random((300, 4)) + np.eye(4)[y] * rng.random((300, 1))
    scores /= scores.sum(1, keepdims=True)
    scores[:40, 1] = 0.25  # tied scores within a class count one half, as sklearn does
    report = metrics_lib.classification_report(y, scores, list("abcd"))
    for name in ("mauc", "macro_f1", "accuracy"):
        got = protocol.weighted_metric(name, y, scores, np.ones((1, 300)))[0]
        assert got == pytest.approx(report[name], abs=1e-12), name
    # Integer weights are the same as repeating the flows.
    w = rng.integers(0, 3, 300)
    rep = np.repeat(np.arange(300), w)
    rep_report = metrics_lib.classification_report(y[rep], scores[rep], list("abcd"))
    for name in ("mauc", "macro_f1", "accuracy"):
        got = protocol.weighted_metric(name, y, scores, w[None].astype(float))[0]
        assert got == pytest.approx(rep_report[name], abs=1e-12), name


def test_paired_bootstrap_on_two_captures_gives_the_enumerable_interval():
    """A is right on capture X and wrong on Y, B the opposite (10 flows each). Resampling two captures gives
    (X, X) with probability 1/4 → A − B accuracy = +1, (Y, Y) 1/4 → −1, mixed 1/2 → 0: margin 0, 95 % interval
    [−1, +1], neither ahead nor behind."""
    y = np.zeros(20, int)
    y[::2] = 1
    captures = np.array(["X"] * 10 + ["Y"] * 10)
    wrong = 1 - y
    a = protocol.SplitPredictions(y, _onehot_scores(np.r_[y[:10], wrong[10:]], 2), captures)
    b = protocol.SplitPredictions(y, _onehot_scores(np.r_[wrong[:10], y[10:]], 2), captures)
    out = protocol.paired_bootstrap([a], [b], "accuracy", replicates=4000, seed=1)
    assert out["margin"] == 0.0
    assert out["low"] == -1.0 and out["high"] == 1.0
    assert not out["ahead"] and not out["behind"]
    # The replicate margins take the three values in the stated proportions.
    draws = np.random.default_rng(1).integers(0, 2, size=(4000, 2))
    ma = protocol.weighted_metric("accuracy", a.y_true, a.scores, protocol.capture_weights(captures, draws,
                                                                                            np.array(["X", "Y"])))
    mb = protocol.weighted_metric("accuracy", b.y_true, b.scores, protocol.capture_weights(captures, draws,
                                                                                            np.array(["X", "Y"])))
    values, counts = np.unique(np.round(ma - mb, 9), return_counts=True)
    assert values.tolist() == [-1.0, 0.0, 1.0]
    assert counts / 4000 == pytest.approx([0.25, 0.5, 0.25], abs=0.03)


def test_paired_bootstrap_says_ahead_only_when_every_capture_agrees():
    rng = np.random.default_rng(3)
    splits_a, splits_b = [], []
    for split in range(3):
        y = rng.integers(0, 3, 240)
        captures = np.repeat([f"s{split}c{i}" for i in range(12)], 20)
        splits_a.append(protocol.SplitPredictions(y, _onehot_scores(np.where(rng.random(240) < 0.9, y, (y + 1) % 3),
                                                                    3), captures))
        splits_b.append(protocol.SplitPredictions(y, _onehot_scores(np.where(rng.random(240) < 0.5, y, (y + 1) % 3),
                                                                    3), captures))
    ahead = protocol.paired_bootstrap(splits_a, splits_b, "macro_f1", replicates=500)
    assert ahead["ahead"] and ahead["low"] > 0.2 and ahead["margin"] > ahead["low"]
    behind = protocol.paired_bootstrap(splits_b, splits_a, "mauc", replicates=500)
    assert behind["behind"] and not behind["ahead"]
    same = protocol.paired_bootstrap(splits_a, splits_a, "mauc", replicates=200)
    assert same["margin"] == 0.0 and same["low"] == 0.0 == same["high"] and not same["ahead"]
    single = protocol.bootstrap_interval(splits_a, "accuracy", replicates=500)
    assert single["low"] <= single["mean"] <= single["high"] and 0.8 < single["mean"] < 1.0
    with pytest.raises(ValueError, match="different test captures"):
        other = protocol.SplitPredictions(splits_b[0].y_true, splits_b[0].scores,
                                          np.repeat([f"z{i}" for i in range(12)], 20))
        protocol.paired_bootstrap(splits_a[:1], [other], "mauc")


def test_selection_takes_validation_figures_and_is_refused_after_test_is_opened():
    sealed = protocol.SealedTest({"y": np.arange(3)})
    assert sealed.select("declared_evaluation", {"probe": 0.71, "zero_shot": 0.69, "gnn": float("nan")}) == "probe"
    assert sealed.choices["declared_evaluation"]["choice"] == "probe"
    assert sealed.open()["y"].tolist() == [0, 1, 2]
    with pytest.raises(protocol.TestReadBeforeSelection, match="declared_evaluation"):
        sealed.select("declared_evaluation", {"probe": 0.5})
    with pytest.raises(ValueError, match="no finite validation score"):
        protocol.select_on_validation({"a": float("nan"), "b": None})
    # `tune` hands the fitting function a configuration only and keeps the best validation score (first on ties).
    seen = []

    def fit(config):
        seen.append(config)
        return {1e-3: 0.7, 3e-3: 0.8}[config["lr"]] - 0.01 * config["steps"] / 100

    out = protocol.tune({"lr": (1e-3, 3e-3), "steps": (100, 200)}, fit)
    assert out["chosen"] == {"lr": 3e-3, "steps": 100}
    assert seen == protocol.grid({"lr": (1e-3, 3e-3), "steps": (100, 200)}) and len(out["candidates"]) == 4


def _answers(y, scores, captures):
    return {"y_true": np.asarray(y), "scores": np.asarray(scores, np.float32), "captures": np.asarray(captures),
            "class_names": np.array(["a", "b"])}


def test_declared_evaluation_follows_validation_even_when_test_would_pick_another_row():
    from pclip_bench.peers import suite

    y = np.array([0, 1] * 10)
    caps = np.repeat(["c0", "c1"], 10)
    right, wrong = _onehot_scores(y, 2), _onehot_scores(1 - y, 2)
    answers = {"probe": {"validation": _answers(y, right, caps), "test": _answers(y, wrong, caps)},
               "zero_shot": {"validation": _answers(y, wrong, caps), "test": _answers(y, right, caps)},
               "gnn_level1": {"validation": _answers(y, 0.5 * right + 0.5 * wrong, caps),
                              "test": _answers(y, right, caps)}}
    rows = [{"model": m, "mauc": 0.0} for m in ("pclip_probe", "pclip_zero_shot", "pclip_gnn")]
    out = suite.declare_evaluation(rows, answers, "level1")
    assert {r["declared_evaluation"] for r in out} == {"pclip_probe"}
    assert [r["validation_mauc"] for r in out] == [1.0, 0.0, 0.5]
    assert all(set(r[suite.ANSWERS]) == {"validation", "test"} for r in out)


def test_every_neural_model_gets_the_same_budget_of_training_flows():
    from pclip_bench.peers import tuning

    for candidate in protocol.grid(tuning.NEURAL_SPACE):
        over = dict(o.split("=") for o in tuning.pclip_overrides(candidate))
        pclip_flows = int(over["train.num_steps"]) * int(over["train.batch_size"])
        assert int(over["train.eval_every"]) * tuning.CHECKS <= int(over["train.num_steps"])
        for has_pretraining in (True, False):
            config = tuning.peer_train_config(candidate, seed=3, has_pretraining=has_pretraining)
            peer_flows = (config.pretrain_steps + config.steps) * config.batch_size
            assert peer_flows == pytest.approx(pclip_flows, rel=0.01)
            assert pclip_flows == pytest.approx(candidate["length"] * tuning.FLOWS_SEEN, rel=0.01)
            assert config.steps // config.eval_every == tuning.CHECKS and config.seed == 3
            assert config.learning_rate == candidate["learning_rate"]
            assert (config.pretrain_steps > 0) == has_pretraining
    # Every model of the suite has a declared search space, directly or through the models it is built from.
    from pclip_bench.peers import suite
    for model in suite.MODELS:
        assert all(m in tuning.SEARCH_SPACES for m in tuning.TUNED_AS.get(model, (model,))), model
    assert tuning.TUNING_SEED not in tuning.EVALUATION_SEEDS and len(tuning.EVALUATION_SEEDS) == 5


def test_report_tables_come_from_the_cells_answers_and_choose_rivals_on_validation(tmp_path):
    """Hand-built protocol cells on three splits: the declared PacketCLIP row, the best tree chosen by validation
    (lightgbm: better on validation, worse on test than extra_trees), and intervals recomputed from the answers."""
    from pclip_bench.peers import report, suite

    rng = np.random.default_rng(0)

    def preds(acc, n=120, k=3):
        y = rng.integers(0, k, n)
        return y, _onehot_scores(np.where(rng.random(n) < acc, y, (y + 1) % k), k), np.repeat(
            [f"c{i}" for i in range(n // 10)], 10)

    quality = {"pclip_probe": (0.8, 0.7), "pclip_zero_shot": (0.5, 0.9), "extra_trees": (0.5, 0.75),
               "lightgbm": (0.7, 0.6)}  # (validation accuracy, test accuracy)
    for seed in range(3):
        for model, rows in (("pclip", ("pclip_probe", "pclip_zero_shot")), ("extra_trees", ("extra_trees",)),
                            ("lightgbm", ("lightgbm",))):
            cell = suite.Cell("ndpi_closed", model, 1.0, seed)
            built = []
            answers = {}
            for row in rows:
                val_acc, test_acc = quality[row]
                answers[row] = {split: suite.answer(*preds(acc), ["a", "b", "c"], np.zeros(120, bool))
                                for split, acc in (("validation", val_acc), ("test", test_acc))}
                built.append({"model": row, suite.ANSWERS: answers[row]})
            if model == "pclip":
                validation = {r: float(protocol.weighted_metric("mauc", a["validation"]["y_true"],
                                                                a["validation"]["scores"], np.ones((1, 120)))[0])
                              for r, a in answers.items()}
                declared = protocol.select_on_validation(validation)
            else:
                declared = model
            kept = suite.write_answers(tmp_path, cell, built)
            suite.files.write_json(suite.cell_file(tmp_path, cell), {
                "cell": {"dataset": "ndpi_closed", "model": model, "fraction": 1.0, "seed": seed}, "protocol": 2,
                "declared_evaluation": declared, "tuned": {}, "rows": kept})
    out = report.protocol_report(tmp_path, replicates=200)
    block = out["tables"]["ndpi_closed 1"]
    assert block["rows"][report.DECLARED]["seeds"] == [0, 1, 2]
    assert block["rows"][report.DECLARED]["accuracy"]["mean"] == pytest.approx(
        block["rows"]["pclip_probe"]["accuracy"]["mean"])  # the probe wins validation on every split
    assert block["margins"]["best_tree"]["rival"] == "lightgbm"  # chosen on validation, not on test
    margin = block["margins"]["best_tree"]["mauc"]
    assert margin["low"] <= margin["margin"] <= margin["high"] and margin["ahead"]
    claim = out["claims"]["ndpi_closed"]
    assert claim["mauc"]["mean"] == pytest.approx(block["rows"][report.DECLARED]["mauc"]["mean"])
    assert "auc_gain_over_etbert" not in claim and "mauc_kept_low_data" not in claim  # no ET-BERT, no 10 % cells
    text = report.markdown(out, "peers.py --summary-only")
    assert "The paper's four claims" in text
    assert "ndpi_closed, 100% of the training data" in text and "(lightgbm, chosen on validation" in text
    # README's headline block: the declared row against the tree chosen on validation, with the paired verdict.
    block_text = report.readme_block(out, "peers.py --summary-only --readme README.md")
    assert block_text.startswith(report.README_BEGIN) and block_text.endswith(report.README_END)
    line = next(x for x in block_text.splitlines() if x.startswith("| nDPI, known applications"))
    assert "| 100% | 3 |" in line and "(lightgbm)" in line and protocol.interval_text(margin) + " ahead" in line
    # A task whose tree cells exist and PacketCLIP's not yet: the tree's row, PacketCLIP's cells said to be missing.
    block = report.collect(report.load_protocol_cells(tmp_path))[("ndpi_closed", 1.0)]
    trees_only = report.dataset_fraction_report({k: v for k, v in block.items() if not k.startswith("pclip")}, 100)
    line = next(x for x in report.readme_block({"tables": {"ndpi_closed 1": trees_only}}, "cmd").splitlines()
                if x.startswith("| nDPI"))
    assert line.count("not run yet") == 2 and "(lightgbm)" in line
    # PacketCLIP's cells still running (split 2 missing): the splits column says how many each side has.
    for f in (tmp_path / "cells" / "ndpi_closed").glob("pclip-f1-s2.*"):
        f.unlink()
    partial = report.protocol_report(tmp_path, replicates=50)
    assert partial["tables"]["ndpi_closed 1"]["margins"]["best_tree"]["seeds"] == [0, 1]
    line = next(x for x in report.readme_block(partial, "cmd").splitlines() if x.startswith("| nDPI"))
    assert "| 100% | 2 PacketCLIP, 3 tree |" in line


def test_report_splits_a_test_side_with_seen_and_novel_applications(tmp_path):
    """The novel-application task's test side holds novel flows and seen ones (`data.seen_test_fraction`): the
    report's main rows are the novel flows, a seen table beside them, and novelty AUROC (1 − the largest class
    probability) equal to sklearn's on the same flows."""
    from sklearn.metrics import roc_auc_score

    from pclip_bench.peers import report, suite

    rng = np.random.default_rng(1)
    n, k = 200, 3
    captures = np.repeat([f"c{i}" for i in range(20)], 10)
    novel = np.isin(captures, [f"c{i}" for i in range(12)])  # whole captures are novel or seen
    expected = {}
    for seed in range(2):
        for model, row in (("pclip", "pclip_probe"), ("lightgbm", "lightgbm")):
            y = rng.integers(0, k, n)
            # Confident and mostly right on seen flows, unsure and often wrong on novel ones.
            right = np.where(novel, rng.random(n) < 0.5, rng.random(n) < 0.9)
            pred = np.where(right, y, (y + 1) % k)
            confidence = np.where(novel, rng.uniform(0.34, 0.8, n), rng.uniform(0.6, 1.0, n))
            scores = np.full((n, k), 0.0)
            scores[np.arange(n), pred] = confidence
            scores[np.arange(n), (pred + 1) % k] = 1.0 - confidence
            arrays = {split: suite.answer(y, scores, captures, ["a", "b", "c"], novel)
                      for split in ("validation", "test")}
            cell = suite.Cell("ndpi_novel", model, 1.0, seed)
            kept = suite.write_answers(tmp_path, cell, [{"model": row, suite.ANSWERS: arrays}])
            suite.files.write_json(suite.cell_file(tmp_path, cell), {
                "cell": {"dataset": "ndpi_novel", "model": model, "fraction": 1.0, "seed": seed}, "protocol": 2,
                "declared_evaluation": row if model == "pclip" else model, "tuned": {}, "rows": kept})
            expected.setdefault(row, []).append((
                protocol.weighted_metric("accuracy", y[novel], scores[novel], np.ones((1, novel.sum())))[0],
                protocol.weighted_metric("accuracy", y[~novel], scores[~novel], np.ones((1, (~novel).sum())))[0],
                roc_auc_score(novel, 1.0 - scores.max(1))))
    block = report.protocol_report(tmp_path, replicates=100)["tables"]["ndpi_novel 1"]
    for row, figures in expected.items():
        novel_acc, seen_acc, auroc = np.mean(figures, axis=0)
        assert block["rows"][row]["accuracy"]["mean"] == pytest.approx(novel_acc)
        assert block["seen_rows"][row]["accuracy"]["mean"] == pytest.approx(seen_acc)
        assert block["novelty"][row]["mauc"]["mean"] == pytest.approx(auroc)
        assert auroc > 0.7 and seen_acc > novel_acc + 0.2
    assert block["novelty"][report.DECLARED]["mauc"]["mean"] == pytest.approx(
        block["novelty"]["pclip_probe"]["mauc"]["mean"])
    assert block["novelty_margins"]["best_tree"]["rival"] == "lightgbm"
    text = report.markdown({"tables": {"ndpi_novel 1": block}, "claims": {}, "tuned": {}}, "peers.py")
    assert "**Applications never trained on**" in text and "**Seen applications**" in text
    assert "**Novelty detection**" in text
    headline = report.readme_block({"tables": {"ndpi_novel 1": block}}, "peers.py")
    assert "applications never trained on" in headline and "Telling novel applications from known ones" in headline


def test_paired_ratio_bootstrap_on_a_hand_built_case():
    """B is right on every flow of both captures (accuracy 1), A on every flow of capture X only (accuracy 1/2 on
    the split): A keeps half of B's accuracy. Resampling two captures: (X, X) → A keeps 1, (Y, Y) → 0, mixed → 1/2,
    so the 95 % interval is [0, 1]; a model against itself keeps exactly 1."""
    y = np.zeros(20, int)
    y[::2] = 1
    captures = np.array(["X"] * 10 + ["Y"] * 10)
    b = protocol.SplitPredictions(y, _onehot_scores(y, 2), captures)
    a = protocol.SplitPredictions(y, _onehot_scores(np.r_[y[:10], 1 - y[10:]], 2), captures)
    out = protocol.paired_ratio_bootstrap([a], [b], "accuracy", replicates=4000, seed=1)
    assert out["ratio"] == 0.5 and out["low"] == 0.0 and out["high"] == 1.0 and out["splits"] == 1
    same = protocol.paired_ratio_bootstrap([a, b], [a, b], "accuracy", replicates=200)
    assert same["ratio"] == 1.0 == same["low"] == same["high"]
    with pytest.raises(ValueError, match="different test captures"):
        protocol.paired_ratio_bootstrap([a], [protocol.SplitPredictions(y, b.scores, np.array(["Z"] * 20))],
                                        "accuracy")
