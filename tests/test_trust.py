"""How far an answer can be trusted (pclip_jax/training/calibration.py): the risk–coverage curve, the low-confidence flag's
meaning, and conformal prediction sets calibrated on some captures and measured on others (real nDPI captures)."""
import numpy as np
import pytest

from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.training import calibration as cal


def test_risk_coverage_is_monotone_when_confidence_ranks_right_answers_first():
    # Eight flows: the five most confident are right, the three least are wrong.
    conf = np.array([0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4])
    right = np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)
    rc = cal.risk_coverage(conf, right, points=9)
    coverage, accuracy = np.array([p[0] for p in rc["curve"]]), np.array([p[1] for p in rc["curve"]])
    assert (np.diff(coverage) > 0).all() and coverage[-1] == 1.0
    assert (np.diff(accuracy) <= 1e-12).all()                    # keeping more flows never raises the accuracy
    assert accuracy[-1] == rc["accuracy_all"] == 5 / 8
    # The area: mean over k of the accuracy of the k most confident flows.
    assert np.isclose(rc["area"], np.mean([right[:k].mean() for k in range(1, 9)]))
    # A confidence that says nothing (all equal) keeps every flow at once: the area is the accuracy.
    flat = cal.risk_coverage(np.full(8, 0.5), right)
    assert flat["curve"] == [[1.0, 5 / 8, 0.5]] and np.isclose(flat["area"], 5 / 8)
    # Reversed (confident answers wrong): accuracy rises with coverage and the area falls below the accuracy.
    rev = cal.risk_coverage(conf, ~right)
    assert (np.diff([p[1] for p in rev["curve"]]) >= -1e-12).all() and rev["area"] < rev["accuracy_all"]


def test_low_confidence_threshold_keeps_the_flows_answered_at_the_target_accuracy():
    rng = np.random.default_rng(0)
    conf = rng.uniform(0.2, 1.0, 2000)
    right = rng.uniform(size=2000) < conf          # calibrated: right with probability = confidence
    fit = cal.selective_threshold(conf, right, target_accuracy=0.85)
    kept = conf >= fit["threshold"]
    # Unmarked flows (confidence ≥ threshold) reach the target; the threshold is the lowest that does.
    assert fit["reached"] and right[kept].mean() >= 0.85 and np.isclose(fit["validation_accuracy_kept"],
                                                                         right[kept].mean())
    lower = conf[conf < fit["threshold"]].max()
    assert right[conf >= lower].mean() < 0.85
    assert np.isclose(fit["validation_kept_share"], kept.mean())
    assert right[~kept].mean() < right[kept].mean() - 0.15
    # A target nothing reaches: the most accurate threshold that keeps at least 10 % of the flows, said so.
    hard = cal.selective_threshold(conf, np.zeros(2000, bool) | (rng.uniform(size=2000) < 0.3), 0.99)
    assert not hard["reached"] and hard["validation_kept_share"] >= cal.MIN_KEPT_SHARE
    # The flag classify writes: calibrated probability below the stored threshold; old calibrations keep 0.5.
    assert cal.low_confidence_threshold({"selective": fit, "low_probability": 0.5}) == fit["threshold"]
    assert cal.low_confidence_threshold({"low_probability": 0.5}) == 0.5


def test_conformal_threshold_split_and_capture_weighted():
    scores = np.linspace(0, 1, 101)
    # Plain split conformal: the ⌈(n+1)·0.9⌉-th smallest score.
    assert cal.conformal_threshold(scores, 0.9, method="split") == scores[91]
    # One flow per capture: capture weights change nothing but the correction (Kish n_eff = n).
    assert cal.conformal_threshold(scores, 0.9, captures=np.arange(101), method="capture_weighted") == scores[91]
    # A big capture of easy flows (score 0) and small captures of hard ones: the split rule follows the big
    # capture, the capture-weighted one counts each capture once.
    easy, hard = np.zeros(950), np.linspace(0.5, 1.0, 50)
    s = np.r_[easy, hard]
    caps = np.r_[np.zeros(950, int), 1 + np.arange(50) // 10]
    assert cal.conformal_threshold(s, 0.9, method="split") == 0.0
    assert cal.conformal_threshold(s, 0.9, captures=caps, method="capture_weighted") > 0.9
    sets = cal.prediction_sets(np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]]), 0.1)
    assert sets.tolist() == [[True, False, False], [False, False, True]]   # never empty: the top class is in


def _capture_features(ndpi_dir):
    from pclip_jax.data import labels as labels_lib
    from pclip_jax.data import splits as splits_lib
    from pclip_jax.data.ingest import IngestConfig, ingest

    inputs = [str(ndpi_dir / "pcap")]
    table = ingest(inputs, IngestConfig(packets=8, bytes=16), progress=False)
    table = labels_lib.attach_labels(table, f"ndpi:{ndpi_dir / 'result'}", progress=False, inputs=inputs)
    table, _ = splits_lib.filter_flows(table, min_packets=3)
    t = table.tensors
    x = np.concatenate([np.log1p(np.abs(t["sizes"])) * np.sign(t["sizes"]), np.log1p(np.maximum(t["iat"], 0) * 1e3),
                        np.nan_to_num(t["stats"]),
                        t["tcp_flags"] / 255.0, np.asarray(table.meta["server_port"])[:, None] / 65535.0,
                        (np.asarray(table.meta["proto"]) == 6)[:, None]], 1).astype(np.float64)
    return x, np.asarray(table.meta["level1"]).astype(str), np.asarray(table.meta["capture"]).astype(str)


def _fitted_on_some_captures(ndpi_dir, seed=0):
    """A classifier of nDPI's level-1 classes on simple flow features, fitted on half of the nDPI captures (two
    of four capture folds); returns (probabilities of every flow, class ids, capture names, fold of each flow,
    flows of a class it knows)."""
    from sklearn.ensemble import ExtraTreesClassifier

    x, labels, captures = _capture_features(ndpi_dir)
    names = np.unique(captures)
    fold = dict(zip(names, np.random.default_rng(seed).permutation(len(names)) % 4))
    f = np.array([fold[c] for c in captures])
    classes = sorted(set(labels[f <= 1]))
    keep = np.isin(labels, classes)
    y = np.searchsorted(classes, labels)
    model = ExtraTreesClassifier(n_estimators=60, min_samples_leaf=2, random_state=0).fit(x[(f <= 1) & keep],
                                                                                           y[(f <= 1) & keep])
    return model.predict_proba(x), y, captures, f, keep


@pytest.fixture(scope="module")
def fitted(real_ndpi_dir):
    return _fitted_on_some_captures(real_ndpi_dir)  # the figures are about the real corpus: not on stand-ins


def test_conformal_sets_cover_exchangeable_flows_of_real_captures(fitted):
    """Calibration and test flows drawn at random from the same held-out captures (exchangeable): split-conformal
    sets hold the truth 90 % of the time within ±0.03, and the capture-grouped variants at least as often as
    split's guarantee allows (they target new captures, not new flows of the same captures)."""
    proba, y, captures, f, keep = fitted
    pool = np.flatnonzero((f >= 2) & keep)
    half = np.random.default_rng(1).permutation(len(pool)) < len(pool) // 2
    c, t = pool[half], pool[~half]
    assert len(t) >= 500
    scores = cal.conformal_scores(proba[c], y[c])
    got = {m: cal.set_report(cal.prediction_sets(proba[t], cal.conformal_threshold(scores, 0.9, captures[c], m)),
                             y[t], 0.9) for m in cal.CONFORMAL_METHODS}
    assert abs(got["split"]["coverage"] - 0.9) <= 0.03, got
    assert got["capture_cv"]["coverage"] >= got["split"]["coverage"] - 1e-9, got   # asks more, never less


@pytest.mark.xfail(strict=True, reason="capture shift: calibrated on one fold of nDPI captures, the sets of this "
                                       "classifier hold the truth for 0.85 of another fold's flows (seed 0; "
                                       "0.79-0.90 on seeds 0-3, docs/trust.md)")
def test_conformal_sets_cover_a_held_out_capture_fold_on_real_captures(fitted):
    """Calibrated on one fold of captures with the method chosen on it, measured on a fold of captures neither the
    classifier nor the calibration saw: the issue's target, ±0.03 of 90 %. Not reached (strict: a pass is news)."""
    proba, y, captures, f, keep = fitted
    c, t = (f == 2) & keep, (f == 3) & keep
    assert len(np.unique(captures[c])) >= 50 and t.sum() >= 400
    chosen = cal.choose_conformal_method(proba[c], y[c], captures[c])["chosen"]
    q = cal.conformal_threshold(cal.conformal_scores(proba[c], y[c]), 0.9, captures[c], chosen)
    got = cal.set_report(cal.prediction_sets(proba[t], q), y[t], 0.9)
    assert abs(got["coverage"] - 0.9) <= 0.03, got


def test_nearest_neighbour_ood_score_flags_a_cluster_training_never_saw():
    """The OOD bank keeps at most OOD_BANK_MAX unit training rows; calibration with a bank records the
    nearest-neighbour score, its threshold flags about OOD_QUANTILE of validation flows, and flows from a region
    no training flow occupies score lower than the validation flows (AUROC near 1). A calibration.json without
    `ood_score` (older workdirs) keeps the class-text similarity."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16))
    def around(c, n):
        return centres[c][None] + 0.3 * rng.normal(size=(n, 16))
    train = np.concatenate([around(c, 300) for c in range(3)])
    bank = cal.ood_bank(train, max_rows=500)
    assert bank.shape == (500, 16) and bank.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(bank, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(cal.ood_bank(train, max_rows=500), bank)  # seeded
    val = np.concatenate([around(c, 100) for c in range(3)])
    novel = around(3, 100)
    texts = rng.normal(size=(5, 16))
    prob = np.full((len(val), 3), 1 / 3)
    y = np.repeat(np.arange(3), 100)
    fitted = cal.fit(prob, y, z=val, node_text=texts, bank=bank)
    assert fitted["ood_score"] == "knn" and fitted["ood_k"] == cal.OOD_K
    val_scores = cal.flow_ood_scores(val, fitted, texts, bank)
    np.testing.assert_allclose(val_scores, cal.knn_similarity(val, bank, cal.OOD_K))
    assert abs((val_scores < fitted["ood_threshold"]).mean() - cal.OOD_QUANTILE) <= 0.01
    novel_scores = cal.flow_ood_scores(novel, fitted, texts, bank)
    positive = np.r_[np.zeros(len(val)), np.ones(len(novel))]
    assert metrics_lib.binary_auroc(positive, -np.r_[val_scores, novel_scores]) > 0.95
    assert (novel_scores < fitted["ood_threshold"]).mean() > 0.9
    assert metrics_lib.binary_auroc(np.zeros(3), np.arange(3.0)) is None
    older = {k: v for k, v in fitted.items() if k not in ("ood_score", "ood_k")}
    np.testing.assert_allclose(cal.flow_ood_scores(novel, older, texts, bank), cal.ood_scores(novel, texts))
    assert cal.flow_ood_scores(novel, fitted, texts, None) is None


def test_classify_ranks_each_prediction_set_like_the_per_flow_rule():
    """`classify._ranked_sets` (one argsort for the batch, a slice per flow) gives each flow the classes of
    `calibration.prediction_sets`, most likely first, ties included and the top class forced in."""
    from pclip_jax.serving.classify import _ranked_sets

    rng = np.random.default_rng(3)
    proba = rng.dirichlet(np.full(6, 0.4), size=300)
    proba[:20] = np.round(proba[:20], 1)                 # ties
    proba[20] = [0.2, 0.2, 0.2, 0.2, 0.1, 0.1]          # the top class below the threshold, tied with others
    ids = np.asarray([f"c{i}" for i in range(6)], dtype=object)
    for q in (0.05, 0.5, 0.85, 1.0):
        sets = cal.prediction_sets(proba, q)
        got = _ranked_sets(proba, q, ids)
        for p, member, ranked in zip(proba, sets, got):
            assert set(ranked) == set(ids[member]) and len(ranked) == member.sum()
            assert np.all(np.diff([p[int(c[1:])] for c in ranked]) <= 0)      # most likely first
            assert ranked[0] == ids[np.argmax(p)]
