"""Calibrated probabilities and an out-of-distribution score for the detection stage.

The GNN's probabilities are fitted on training captures and are overconfident on captures it never saw. After the
GNN is trained, the main job fits on the *validation* captures (never the test split):

* a temperature per level (temperature scaling, Guo et al. 2017): p_T ∝ p^(1/T), T chosen on a log grid to
  minimise the validation negative log-likelihood; level 2 is scored among all level-2 nodes (renormalised);
* an out-of-distribution threshold: the OOD score of a flow is its embedding's mean cosine similarity to its
  `OOD_K` nearest training flows in the shared space (`knn_similarity`, Sun et al. 2022), against a reference bank
  of at most `OOD_BANK_MAX` training embeddings stored beside the GNN (`OOD_BANK_FILE`); the threshold is the
  `OOD_QUANTILE` quantile of the validation flows' scores, so about that share of in-distribution flows fall below
  it. Workdirs calibrated before the bank existed keep their score: the highest cosine similarity to any class
  node's text (`ood_scores`; calibration.json has no `ood_score` then). docs/trust.md compares the two.

* the low-confidence threshold (`selective_threshold`): the lowest calibrated level-1 probability at which the
  validation flows kept are right `LOW_CONFIDENCE_TARGET_ACCURACY` of the time;
* the prediction sets' calibration scores per level (`fit_trust`), and the conformal method chosen on validation
  capture halves (`choose_conformal_method`).

Written to `WORKDIR/gnn/calibration.json`; `classify` reports `calibrated_probability` per level,
`out_of_distribution`, `too_short` (fewer packets than training kept), `low_confidence` (calibrated level-1
probability below the threshold; `LOW_PROBABILITY` for workdirs calibrated before it) and `prediction_set`.
results.json's GNN blocks report the test ECE before (`calibration`) and after (`calibrated`) scaling and
`gnn.trust` (`trust_report`). docs/trust.md has the figures.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from pclip_jax.plumbing import metrics as metrics_lib


TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(20.0), 90))
OOD_QUANTILE = 0.05
LOW_PROBABILITY = 0.5
KNN_K = 5  # neighbours of the nearest-neighbour score (the OOD score and calibration studies)
OOD_K = KNN_K
# Training embeddings kept as the OOD score's reference (a random subset beyond this; 4096 x 128 float32 = 2 MiB).
OOD_BANK_MAX = 4096
OOD_BANK_FILE = "ood_bank.npz"


def scale(proba: np.ndarray, temperature) -> np.ndarray:
    """Rows of `proba` tempered: ∝ proba^(1/T), renormalised. `temperature`: one for all rows, or one per row."""
    t = np.asarray(temperature, np.float64)
    logp = np.log(np.clip(np.asarray(proba, np.float64), 1e-12, None)) / (t[:, None] if t.ndim else t)
    logp -= logp.max(1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(1, keepdims=True)


def fit_temperature(proba: np.ndarray, y: np.ndarray, weights: Optional[np.ndarray] = None) -> float:
    """The grid temperature with the lowest NLL of the true classes `y` (rows of `proba` renormalised first;
    `weights`: per-flow weights of the NLL, default equal)."""
    proba = np.asarray(proba, np.float64)
    proba = proba / np.maximum(proba.sum(1, keepdims=True), 1e-12)
    y = np.asarray(y)
    if not len(y):
        return 1.0
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    nll = [float((w * -np.log(np.clip(scale(proba, t)[np.arange(len(y)), y], 1e-12, None))).sum() / w.sum())
           for t in TEMPERATURES]
    return float(TEMPERATURES[int(np.argmin(nll))])


def ood_node_text(prepared) -> np.ndarray:
    """The text embeddings the OOD score compares a flow with: the graph's classes and applications
    (`prepared`: a `train_gnn.PreparedKG`)."""
    layout = prepared.layout
    return np.asarray(prepared.embeddings)[np.concatenate([layout.level_nodes[1], layout.level_nodes[2]])]


def ood_scores(z: np.ndarray, node_text: np.ndarray) -> Optional[np.ndarray]:
    """[N] highest cosine similarity of each flow embedding to a node text (None when the towers do not share a
    space, i.e. the dimensions differ)."""
    z, t = np.asarray(z, np.float64), np.asarray(node_text, np.float64)
    if z.shape[1] != t.shape[1]:
        return None
    z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return (z @ t.T).max(1)


def ood_bank(z_train: np.ndarray, max_rows: int = OOD_BANK_MAX, seed: int = 0) -> np.ndarray:
    """The OOD score's reference: the training flows' embeddings, unit-normalised float32, at most `max_rows` of
    them (a seeded random subset, in row order)."""
    z = np.asarray(z_train, np.float32)
    if len(z) > max_rows:
        z = z[np.sort(np.random.default_rng(seed).choice(len(z), max_rows, replace=False))]
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def flow_ood_scores(z: np.ndarray, calibration: Optional[dict], node_text: np.ndarray,
                    bank: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """[N] the OOD score the workdir was calibrated with (lower = less like the mission's training traffic): the
    `ood_k`-NN similarity to the training bank when calibration.json says `ood_score: knn`, else the class-text
    similarity of older workdirs. None when it cannot be computed (no bank, or towers of different widths)."""
    cal = calibration or {}
    if cal.get("ood_score") == "knn":
        return None if bank is None or not len(bank) else knn_similarity(z, bank, int(cal.get("ood_k", OOD_K)))
    return ood_scores(z, node_text)


def fit(prob1, y1, prob2=None, y2=None, z=None, node_text=None, bank=None) -> dict:
    """Temperatures (and the OOD threshold) from validation flows; ECE before and after on them. With `bank`
    (`ood_bank`), the OOD score is the nearest-neighbour one, else the class-text similarity."""

    out = {"level1_temperature": fit_temperature(prob1, y1), "validation_flows": int(len(y1))}
    out["validation_ece_level1"] = metrics_lib.calibration(y1, prob1 / prob1.sum(1, keepdims=True))["ece"] \
        if len(y1) else None
    out["validation_ece_level1_calibrated"] = metrics_lib.calibration(
        y1, scale(prob1, out["level1_temperature"]))["ece"] if len(y1) else None
    if prob2 is not None and y2 is not None and len(y2) and prob2.shape[1]:
        out["level2_temperature"] = fit_temperature(prob2, y2)
    if z is not None and node_text is not None and len(z):
        if bank is not None and len(bank):
            out["ood_score"], out["ood_k"] = "knn", OOD_K
        scores = flow_ood_scores(z, out, node_text, bank)
        if scores is not None:
            out["ood_threshold"] = float(np.quantile(scores, OOD_QUANTILE))
            out["ood_quantile"] = OOD_QUANTILE
    out["low_probability"] = LOW_PROBABILITY
    return out


def knn_similarity(query: np.ndarray, bank: np.ndarray, k: int = 5, chunk: int = 256) -> np.ndarray:
    """[N] mean cosine similarity of each `query` row to its `k` most similar rows of `bank` (the nearest-neighbour
    out-of-distribution score of Sun et al. 2022), computed `chunk` queries at a time."""
    def unit(x):
        x = np.asarray(x, np.float32)
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    q, b = unit(query), unit(bank)
    k = max(1, min(k, len(b)))
    out = np.empty(len(q), np.float64)
    for i in range(0, len(q), chunk):
        sims = q[i:i + chunk] @ b.T
        out[i:i + chunk] = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:].mean(1)
    return out


def fit_adaptive_temperature(proba: np.ndarray, y: np.ndarray, score: np.ndarray) -> tuple[float, float]:
    """(a, b) of a per-flow temperature T = exp(a + b·(1 − score)) with the lowest NLL of the true classes: flows
    less similar to anything seen in training (lower `score`) may get a higher temperature."""
    proba = np.asarray(proba, np.float64)
    proba = proba / np.maximum(proba.sum(1, keepdims=True), 1e-12)
    logp = np.log(np.clip(proba, 1e-12, None))
    far = 1.0 - np.asarray(score, np.float64)
    rows = np.arange(len(y))
    best = (np.inf, 0.0, 0.0)
    for a in np.linspace(-1.5, 3.0, 46):
        for b in np.linspace(-2.0, 6.0, 41):
            lt = logp / np.exp(a + b * far)[:, None]
            lt = lt - lt.max(1, keepdims=True)
            nll = float((np.log(np.exp(lt).sum(1)) - lt[rows, y]).mean())
            if nll < best[0]:
                best = (nll, float(a), float(b))
    return best[1], best[2]


def atc_temperature(proba_val: np.ndarray, y_val: np.ndarray, proba_test: np.ndarray,
                    temperature_val: float) -> tuple[float, float]:
    """A label-free test-time temperature (ATC, Garg et al. 2022): the confidence threshold above which the share
    of validation flows equals their accuracy estimates the accuracy on the unlabelled test flows (the share of them
    above it); the temperature whose mean top probability on the test flows is closest to that estimate is returned
    with the estimate. Confidences are taken after the validation temperature."""
    qv = scale(proba_val, temperature_val)
    accuracy = float((qv.argmax(1) == np.asarray(y_val)).mean())
    threshold = np.quantile(qv.max(1), 1.0 - accuracy)
    estimate = float((scale(proba_test, temperature_val).max(1) > threshold).mean())
    mean_top = np.array([scale(proba_test, t).max(1).mean() for t in TEMPERATURES])
    return float(TEMPERATURES[int(np.argmin(np.abs(mean_top - estimate)))]), estimate


def fitted_embedding_check(z_train, y_train, captures_train, z_test, y_test, folds: int = 5, seed: int = 0) -> dict:
    """Whether the packet tower has fitted its training flows' labels (which rules out calibrating on
    out-of-fold predictions for training flows): the accuracy of a logistic-regression probe on held-out training
    captures (capture folds) against its accuracy on the test captures when trained on all training flows."""
    from sklearn.linear_model import LogisticRegression

    captures = np.asarray(captures_train).astype(str)
    names = np.unique(captures)
    fold_of = dict(zip(names, np.random.default_rng(seed).integers(0, folds, len(names))))
    fold = np.array([fold_of[c] for c in captures])
    right = np.zeros(len(y_train), bool)
    for f in range(folds):
        held = fold == f
        if held.any() and len(np.unique(y_train[~held])) >= 2:
            probe = LogisticRegression(max_iter=2000).fit(z_train[~held], y_train[~held])
            right[held] = probe.predict(z_train[held]) == y_train[held]
    probe = LogisticRegression(max_iter=2000).fit(z_train, y_train)
    return {"out_of_fold_training_accuracy": float(right.mean()),
            "test_accuracy": float((probe.predict(z_test) == y_test).mean()), "folds": folds}


def compare_methods(flows: dict, embeddings: Optional[dict] = None) -> dict:
    """A calibration study on one workdir's `gnn/calibration_flows.npz` (validation and test level-1
    probabilities, true slots, unseen-application flags, captures, OOD scores): the test ECE of temperatures fitted
    on the validation flows in several ways, two bounds fitted on the test flows themselves (never usable in
    practice), and how well the OOD score and the top probability separate flows of unseen applications."""
    from sklearn.metrics import roc_auc_score


    def split(name):
        p = np.asarray(flows[f"{name}_prob1"], np.float64)
        return (p / np.maximum(p.sum(1, keepdims=True), 1e-12), np.asarray(flows[f"{name}_y1"]),
                np.asarray(flows[f"{name}_unseen_application"], bool), np.asarray(flows[f"{name}_capture"]).astype(str),
                np.asarray(flows[f"{name}_ood_score"], np.float64))

    pv, yv, uv, cv, _ = split("validation")
    pt, yt, ut, _, ood = split("test")
    if not len(yv) or not len(yt):
        raise ValueError(f"calibration study: {len(yv)} validation and {len(yt)} test flows with a known class; "
                         "both are needed")

    def ece(p, y):
        return metrics_lib.calibration(y, p)["ece"]

    def acc(p, y, m):
        return float((p.argmax(1) == y)[m].mean()) if m.any() else None

    _, inverse, per_capture = np.unique(cv, return_inverse=True, return_counts=True)
    share_v, share_t = float(uv.mean()), float(ut.mean())
    to_test_share = np.where(uv, share_t / max(share_v, 1e-12), (1 - share_t) / max(1 - share_v, 1e-12))
    methods = {}
    for name, w in (("validation NLL (the job's)", None), ("per-capture weights", 1.0 / per_capture[inverse]),
                    ("sqrt per-capture weights", 1.0 / np.sqrt(per_capture[inverse])),
                    ("unseen share set to the test split's (bound)", to_test_share)):
        t = fit_temperature(pv, yv, w)
        methods[name] = {"temperature": t, "test_ece": ece(scale(pt, t), yt)}
    k = pv.shape[1]
    mixes = np.linspace(0.0, 0.9, 19)
    best = min(((float(-np.log(np.clip(((1 - a) * scale(pv, t) + a / k)[np.arange(len(yv)), yv], 1e-12, None)).mean()),
                 t, a) for t in TEMPERATURES[::3] for a in mixes))
    methods["temperature + uniform mix, validation NLL"] = {
        "temperature": float(best[1]), "mix": float(best[2]),
        "test_ece": ece((1 - best[2]) * scale(pt, best[1]) + best[2] / k, yt)}
    t_atc, estimate = atc_temperature(pv, yv, pt, methods["validation NLL (the job's)"]["temperature"])
    methods["label-free test temperature (ATC estimate)"] = {
        "temperature": t_atc, "estimated_accuracy": estimate, "test_ece": ece(scale(pt, t_atc), yt)}
    eces = [ece(scale(pt, t), yt) for t in TEMPERATURES]
    methods["best temperature on the test flows (bound)"] = {"temperature": float(TEMPERATURES[int(np.argmin(eces))]),
                                                             "test_ece": float(min(eces))}
    out = {"validation_flows": int(len(yv)), "validation_captures": int(len(per_capture)), "test_flows": int(len(yt)),
           "uncalibrated_test_ece": ece(pt, yt), "unseen_share": {"validation": share_v, "test": share_t},
           "accuracy": {"validation": acc(pv, yv, np.ones(len(yv), bool)), "test": acc(pt, yt, np.ones(len(yt), bool)),
                        "test_seen": acc(pt, yt, ~ut), "test_unseen": acc(pt, yt, ut)},
           "methods": methods}
    knn_t = None
    if embeddings is not None and "validation_rows" in flows and "validation" in embeddings:
        # The nearest-neighbour score: similarity to the k closest training flows in the tower's space.
        def knn_of(name):
            where = {int(r): i for i, r in enumerate(embeddings[f"{name}_rows"])}
            z = np.asarray(embeddings[name])[[where[int(r)] for r in flows[f"{name}_rows"]]]
            return knn_similarity(z, embeddings["train"], KNN_K)

        knn_v, knn_t = knn_of("validation"), knn_of("test")
        a, b = fit_adaptive_temperature(pv, yv, knn_v)
        methods[f"temperature from the {KNN_K}-NN score, validation NLL"] = {
            "temperature": float(np.exp(a + b * (1 - np.median(knn_t)))), "a": a, "b": b,
            "test_ece": ece(scale(pt, np.exp(a + b * (1 - knn_t))), yt)}
    if ut.any() and (~ut).any():
        out["unseen_detection_auroc"] = {"ood_score": None if np.isnan(ood).any() else
                                         float(roc_auc_score(ut, -ood)),
                                         "top_probability": float(roc_auc_score(ut, -pt.max(1)))}
        if knn_t is not None:
            out["unseen_detection_auroc"][f"knn{KNN_K}_similarity"] = float(roc_auc_score(ut, -knn_t))
        text = np.asarray(flows["test_text_score"], np.float64) if "test_text_score" in flows else None
        if text is not None and not np.isnan(text).any():
            out["unseen_detection_auroc"]["text_similarity"] = float(roc_auc_score(ut, -text))
    return out


# ----------------------------------------------------------------------------------------------- selective answers

LOW_CONFIDENCE_TARGET_ACCURACY = 0.8   # the accuracy the flows *not* marked low-confidence should reach
MIN_KEPT_SHARE = 0.1                   # the threshold never keeps fewer than this share of the validation flows
CURVE_POINTS = 21


def risk_coverage(confidence, correct, points: int = CURVE_POINTS) -> dict:
    """The accuracy of the flows kept against the share kept, keeping flows from the most to the least confident
    (a flow is kept with every flow of equal confidence: a threshold cannot split ties).

    Returns `area` (the mean over flows, most confident first, of the accuracy of the flows kept so far: the area
    under the accuracy–coverage curve, 1 − AURC; equal to the overall accuracy for an uninformative confidence,
    higher when confident answers are right more often), `accuracy_all`, `flows`, and `curve`: [coverage,
    accuracy, confidence threshold] at about `points` coverages (0.05, 0.10, ... 1.0, each the first threshold
    that keeps at least that share)."""
    conf = np.asarray(confidence, np.float64)
    right = np.asarray(correct, bool).astype(np.float64)
    n = len(conf)
    if not n:
        return {"flows": 0, "area": None, "accuracy_all": None, "curve": []}
    order = np.argsort(-conf, kind="stable")
    c, r = conf[order], np.cumsum(right[order])
    last = np.r_[np.nonzero(np.diff(c))[0], n - 1]          # the last index of each group of equal confidence
    group_end = np.repeat(last, np.diff(np.r_[-1, last]))    # for every position, the end of its tie group
    acc_at = r[group_end] / (group_end + 1)
    curve = []
    for target in np.linspace(0, 1, points)[1:]:
        k = int(group_end[min(n - 1, max(0, int(np.ceil(target * n)) - 1))])
        point = [round((k + 1) / n, 4), round(float(r[k] / (k + 1)), 4), float(c[k])]
        if not curve or curve[-1][0] != point[0]:
            curve.append(point)
    return {"flows": int(n), "area": float(acc_at.mean()), "accuracy_all": float(right.mean()), "curve": curve}


def selective_threshold(confidence, correct, target_accuracy: float = LOW_CONFIDENCE_TARGET_ACCURACY,
                        min_kept_share: float = MIN_KEPT_SHARE) -> dict:
    """The confidence threshold of the low-confidence flag, from held-out (validation) flows: the lowest threshold
    whose kept flows (confidence ≥ threshold) are right at least `target_accuracy` of the time, i.e. the most flows
    answered at that accuracy. When no threshold keeping at least `min_kept_share` of the flows reaches it, the one
    with the most accurate kept flows among those (`reached` false)."""
    conf = np.asarray(confidence, np.float64)
    right = np.asarray(correct, bool)
    if not len(conf):
        return {"threshold": None, "target_accuracy": target_accuracy, "reached": False, "flows": 0}
    order = np.argsort(-conf, kind="stable")
    c, r = conf[order], np.cumsum(right[order])
    ends = np.r_[np.nonzero(np.diff(c))[0], len(c) - 1]
    acc, kept = r[ends] / (ends + 1), (ends + 1) / len(c)
    ok = np.nonzero((acc >= target_accuracy) & (kept >= min_kept_share))[0]
    reached = bool(len(ok))
    if reached:
        best = int(ok[-1])
    else:
        allowed = np.nonzero(kept >= min_kept_share)[0]
        best = int(allowed[np.argmax(acc[allowed])])
    return {"threshold": float(c[ends[best]]), "target_accuracy": target_accuracy, "reached": reached,
            "validation_accuracy_kept": float(acc[best]), "validation_kept_share": float(kept[best]),
            "validation_accuracy_marked": float((~right[order][ends[best] + 1:]).size and
                                                right[order][ends[best] + 1:].mean()) if best < len(ends) - 1 else None,
            "flows": int(len(c))}


# ----------------------------------------------------------------------------------------------- prediction sets

DEFAULT_COVERAGE = 0.9
CONFORMAL_METHODS = ("split", "capture_weighted", "capture_cv")
CV_HALVES = 100


def capture_cv_level(scores, captures, coverage: float = DEFAULT_COVERAGE, halves: int = CV_HALVES,
                     seed: int = 0) -> float:
    """The nominal level at which split-conformal sets, calibrated on half of the calibration captures, cover the
    flows of the other half `coverage` of the time on average over `halves` random capture halves: how much more
    than `coverage` to ask of the calibration flows so that new *captures* get `coverage` (at least `coverage`)."""
    s = np.asarray(scores, np.float64)
    caps = np.asarray(captures).astype(str)
    names = np.unique(caps)
    if len(names) < 4:
        return coverage
    rng = np.random.default_rng(seed)
    splits = [np.isin(caps, rng.permutation(names)[:len(names) // 2]) for _ in range(halves)]
    parts = [(np.sort(s[a]), s[~a]) for a in splits]

    def held_out(level):
        cov = []
        for cal_scores, other in parts:
            k = int(np.ceil((len(cal_scores) + 1) * level))
            q = 1.0 if k > len(cal_scores) else cal_scores[k - 1]
            cov.append((other <= q + 1e-12).mean())
        return float(np.mean(cov))

    lo, hi = coverage, 0.999
    if held_out(lo) >= coverage:
        return coverage
    for _ in range(14):
        mid = (lo + hi) / 2
        lo, hi = (lo, mid) if held_out(mid) >= coverage else (mid, hi)
    return hi


def conformal_scores(proba: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Nonconformity of each flow's true class (LAC, Sadinle et al. 2019): 1 − its (calibrated) probability."""
    proba = np.asarray(proba, np.float64)
    return 1.0 - proba[np.arange(len(y)), np.asarray(y)]


def conformal_threshold(scores, coverage: float = DEFAULT_COVERAGE, captures=None,
                        method: str = "split") -> float:
    """The score threshold q̂ of prediction sets {classes with 1 − p ≤ q̂} that hold the truth with probability
    `coverage`, from held-out flows' `scores` (`conformal_scores`).

    `split`: plain split conformal (the ⌈(n+1)·coverage⌉-th smallest score; valid when test flows are exchangeable
    with the calibration flows). `capture_weighted`: flows of different captures are not exchangeable; captures
    are, more nearly. Each calibration flow weighs 1/(flows of its capture), so every capture counts once and a
    large capture of easy flows no longer sets the threshold for all, and the finite-sample correction is that of
    the weights' effective sample size n_eff = (Σw)²/Σw² (Kish): the test flow is one more point of mass
    1/(n_eff + 1) at +∞, the weighted conformal rule of Tibshirani et al. 2019. (Treating the test capture as one
    of G+1 exchangeable captures, mass 1/(G+1), guarantees the coverage of a new capture's flows on average but
    asks (G+1)/G · coverage of the calibration captures: 0.99 for 90 % with 10 validation captures.)"""
    s = np.asarray(scores, np.float64)
    if not len(s):
        return 1.0
    if method not in CONFORMAL_METHODS:
        raise ValueError(f"conformal method {method!r}: must be one of {', '.join(CONFORMAL_METHODS)}")
    if method == "capture_cv" and captures is not None:
        coverage = capture_cv_level(s, captures, coverage)
    if method in ("split", "capture_cv") or captures is None:
        k = int(np.ceil((len(s) + 1) * coverage))
        return 1.0 if k > len(s) else float(np.sort(s)[k - 1])
    caps = np.asarray(captures).astype(str)
    _, inverse, counts = np.unique(caps, return_inverse=True, return_counts=True)
    w = 1.0 / counts[inverse]
    n_eff = w.sum() ** 2 / (w ** 2).sum()
    w = w / w.sum() * n_eff / (n_eff + 1)                    # calibration mass n_eff/(n_eff+1), the test flow's the rest
    order = np.argsort(s, kind="stable")
    cum = np.cumsum(w[order])
    k = int(np.searchsorted(cum, coverage - 1e-12))
    return 1.0 if k >= len(s) else float(s[order][k])


def prediction_sets(proba: np.ndarray, threshold: float) -> np.ndarray:
    """[N, C] bool: the classes with 1 − p ≤ `threshold`, never empty (the most likely class is always in)."""
    proba = np.asarray(proba, np.float64)
    sets = (1.0 - proba) <= threshold + 1e-12
    sets[np.arange(len(proba)), proba.argmax(1)] = True
    return sets


def set_report(sets: np.ndarray, y: np.ndarray, target: float) -> dict:
    """Empirical coverage (share of flows whose set holds the truth) and set sizes of prediction sets."""
    sets, y = np.asarray(sets, bool), np.asarray(y)
    if not len(y):
        return {"target": target, "flows": 0, "coverage": None, "mean_size": None}
    size = sets.sum(1)
    return {"target": target, "flows": int(len(y)), "coverage": float(sets[np.arange(len(y)), y].mean()),
            "mean_size": float(size.mean()), "singletons": float((size == 1).mean())}


def fit_trust(prob1, y1, captures1, prob2=None, y2=None, captures2=None, temperatures: Optional[dict] = None,
              target_accuracy: float = LOW_CONFIDENCE_TARGET_ACCURACY) -> dict:
    """What the low-confidence flag and the prediction sets need, from held-out (validation) flows, after the
    temperatures: `selective` (`selective_threshold` on the calibrated level-1 top probability) and `conformal`
    (each level's nonconformity scores and captures, so that any `--coverage` is a quantile away)."""
    temperatures = temperatures or {}
    out = {}
    p1 = scale(prob1, temperatures.get("level1") or 1.0)
    if len(y1):
        out["selective"] = {"score": "calibrated level-1 probability",
                            **selective_threshold(p1.max(1), p1.argmax(1) == np.asarray(y1), target_accuracy)}
    conformal = {"method": "split", "score": "1 - calibrated probability (LAC)"}
    for level, prob, y, caps in (("level1", prob1, y1, captures1), ("level2", prob2, y2, captures2)):
        if prob is None or y is None or not len(y) or not np.shape(prob)[1]:
            continue
        p = scale(prob, temperatures.get(level) or 1.0)
        conformal[level] = {"scores": np.round(conformal_scores(p, y), 6).tolist(),
                            "captures": np.asarray(caps).astype(str).tolist()}
    if "level1" in conformal:
        conformal["selection"] = choose_conformal_method(p1, y1, captures1)
        conformal["method"] = conformal["selection"]["chosen"]
        out["conformal"] = conformal
    return out


def choose_conformal_method(proba, y, captures, coverage: float = DEFAULT_COVERAGE, repeats: int = 50,
                            seed: int = 0) -> dict:
    """The conformal method (`CONFORMAL_METHODS`) whose level-1 sets come closest to `coverage` on held-out
    captures, judged on the calibration (validation) captures alone: they are split at random, by capture, into
    halves `repeats` times; each method is calibrated on one half and its coverage measured on the other. Returns
    `chosen` and per method the mean coverage, its 10th and 90th percentiles and the mean absolute error.
    With fewer than 4 captures: `split`, unjudged."""
    proba, y = np.asarray(proba, np.float64), np.asarray(y)
    caps = np.asarray(captures).astype(str)
    names = np.unique(caps)
    if len(names) < 4:
        return {"chosen": "split", "captures": int(len(names)), "reason": "fewer than 4 calibration captures"}
    rng = np.random.default_rng(seed)
    got: dict = {m: [] for m in CONFORMAL_METHODS}
    for _ in range(repeats):
        a = np.isin(caps, rng.permutation(names)[:len(names) // 2])
        scores = conformal_scores(proba[a], y[a])
        for m in CONFORMAL_METHODS:
            sets = prediction_sets(proba[~a], conformal_threshold(scores, coverage, caps[a], m))
            got[m].append(float(sets[np.arange(int((~a).sum())), y[~a]].mean()))
    summary = {m: {"mean_coverage": float(np.mean(v)), "mean_abs_error": float(np.mean(np.abs(np.subtract(v, coverage)))),
                   "p10": float(np.quantile(v, 0.1)), "p90": float(np.quantile(v, 0.9))} for m, v in got.items()}
    return {"chosen": min(summary, key=lambda m: summary[m]["mean_abs_error"]), "coverage": coverage,
            "captures": int(len(names)), "capture_halves": repeats, "methods": summary}


def calibrated_probabilities(prob: np.ndarray, calibration: Optional[dict], level: str) -> np.ndarray:
    """A level's probabilities (rows renormalised) after the workdir's temperature for it (none: unchanged)."""
    prob = np.asarray(prob, np.float64)
    prob = prob / np.maximum(prob.sum(1, keepdims=True), 1e-12)
    t = (calibration or {}).get(f"{level}_temperature")
    return scale(prob, t) if t else prob


def low_confidence_threshold(calibration: Optional[dict]) -> float:
    """The calibrated level-1 probability below which a flow is marked low-confidence: the validation-fitted
    selective threshold, or `low_probability` (0.5) for a workdir calibrated before it existed."""
    cal = calibration or {}
    selective = cal.get("selective") or {}
    if selective.get("threshold") is not None:
        return float(selective["threshold"])
    return float(cal.get("low_probability", LOW_PROBABILITY))


def set_threshold(calibration: Optional[dict], level: str, coverage: float) -> Optional[float]:
    """q̂ of a level's prediction sets at `coverage` from the workdir's stored calibration scores (None: none)."""
    conformal = (calibration or {}).get("conformal") or {}
    block = conformal.get(level)
    if not block:
        return None
    return conformal_threshold(block["scores"], coverage, block.get("captures"), conformal.get("method", "split"))


def trust_report(prob1, y1, prob2=None, y2=None, calibration: Optional[dict] = None,
                 coverage: float = DEFAULT_COVERAGE, short=None) -> dict:
    """How far labelled flows can trust the answers (results.json, `evaluate`): per level the ECE before and after
    the temperature; the risk–coverage curve of the calibrated level-1 probability and its area; the accuracy of
    the flows the low-confidence flag leaves unmarked and of those it marks; the prediction sets' empirical
    coverage and mean size at `coverage`. With `short` (bool per flow: fewer packets than training keeps), the
    figures are also given for the flows training keeps (`in_scope`) and the short ones apart."""
    y1 = np.asarray(y1)
    out: dict = {}
    groups = {"all": np.ones(len(y1), bool)}
    if short is not None:
        short = np.asarray(short, bool)
        groups.update({"in_scope": ~short, "short": short})
    p1 = calibrated_probabilities(prob1, calibration, "level1")
    raw1 = np.asarray(prob1, np.float64) / np.maximum(np.asarray(prob1, np.float64).sum(1, keepdims=True), 1e-12)
    tau = low_confidence_threshold(calibration)
    for name, m in groups.items():
        if not m.any():
            continue
        conf, right = p1[m].max(1), p1[m].argmax(1) == y1[m]
        low = conf < tau
        block = {"flows": int(m.sum()), "accuracy": float(right.mean()),
                 "ece_level1": metrics_lib.calibration(y1[m], raw1[m])["ece"],
                 "ece_level1_calibrated": metrics_lib.calibration(y1[m], p1[m])["ece"],
                 "risk_coverage": risk_coverage(conf, right),
                 "low_confidence": {"threshold": tau, "marked_share": float(low.mean()),
                                    "accuracy_unmarked": float(right[~low].mean()) if (~low).any() else None,
                                    "accuracy_marked": float(right[low].mean()) if low.any() else None}}
        q1 = set_threshold(calibration, "level1", coverage)
        if q1 is not None:
            block["prediction_sets_level1"] = set_report(prediction_sets(p1[m], q1), y1[m], coverage)
        if prob2 is not None and y2 is not None and np.shape(prob2)[1]:
            y2a = np.asarray(y2)
            k2 = m & (y2a >= 0)
            if k2.any():
                p2 = calibrated_probabilities(np.asarray(prob2)[k2], calibration, "level2")
                raw2 = np.asarray(prob2, np.float64)[k2]
                raw2 = raw2 / np.maximum(raw2.sum(1, keepdims=True), 1e-12)
                block["ece_level2"] = metrics_lib.calibration(y2a[k2], raw2)["ece"]
                block["ece_level2_calibrated"] = metrics_lib.calibration(y2a[k2], p2)["ece"]
                q2 = set_threshold(calibration, "level2", coverage)
                if q2 is not None:
                    block["prediction_sets_level2"] = set_report(prediction_sets(p2, q2), y2a[k2], coverage)
        out[name] = block
    return out
