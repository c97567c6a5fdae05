"""Calibrated probabilities and an out-of-distribution score for the detection stage.

The GNN's probabilities are fitted on training captures and are overconfident on captures it never saw. After the
GNN is trained, the main job fits on the *validation* captures (never the test split):

* a temperature per level (temperature scaling, Guo et al. 2017): p_T ∝ p^(1/T), T chosen on a log grid to
  minimise the validation negative log-likelihood; level 2 is scored among all level-2 nodes (renormalised);
* an out-of-distribution threshold: the OOD score of a flow is its embedding's highest cosine similarity to any
  class node's text in the shared space; the threshold is the `OOD_QUANTILE` quantile of the validation flows'
  scores, so about that share of in-distribution flows fall below it.

Written to `WORKDIR/gnn/calibration.json`; `classify` reports `calibrated_probability` per level and
`out_of_distribution`, and marks `low_confidence` when the flow has fewer packets than training kept, its
calibrated level-1 probability is below `LOW_PROBABILITY`, or it is out of distribution. results.json's GNN blocks
report the test ECE before (`calibration`) and after (`calibrated`) scaling.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


TEMPERATURES = np.exp(np.linspace(np.log(0.25), np.log(20.0), 90))
OOD_QUANTILE = 0.05
LOW_PROBABILITY = 0.5
KNN_K = 5  # neighbours of the nearest-neighbour score in calibration studies


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


def fit(prob1, y1, prob2=None, y2=None, z=None, node_text=None) -> dict:
    """Temperatures (and the OOD threshold) from validation flows; ECE before and after on them."""
    from pclip_jax.plumbing import metrics as metrics_lib  # scikit-learn: not needed where only `scale` runs (classify)

    out = {"level1_temperature": fit_temperature(prob1, y1), "validation_flows": int(len(y1))}
    out["validation_ece_level1"] = metrics_lib.calibration(y1, prob1 / prob1.sum(1, keepdims=True))["ece"] \
        if len(y1) else None
    out["validation_ece_level1_calibrated"] = metrics_lib.calibration(
        y1, scale(prob1, out["level1_temperature"]))["ece"] if len(y1) else None
    if prob2 is not None and y2 is not None and len(y2) and prob2.shape[1]:
        out["level2_temperature"] = fit_temperature(prob2, y2)
    if z is not None and node_text is not None and len(z):
        scores = ood_scores(z, node_text)
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

    from pclip_jax.plumbing import metrics as metrics_lib  # scikit-learn: not needed where only `scale` runs (classify)

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
    return out
