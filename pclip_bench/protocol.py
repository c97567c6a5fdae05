"""The benchmark protocol's statistics and guards (docs/peers.md, "Protocol"), free of JAX and of any model.

- `SplitPredictions`: one model's test answers on one capture split (labels, scores, the flows' captures), the unit
  the intervals are computed from (a cell keeps them in `<cell>.npz` beside its JSON).
- `paired_bootstrap`: the margin of model A over model B in a metric, averaged over the evaluation splits, with a
  percentile interval from resampling each split's *test captures* with replacement (both models see the same
  resampled captures: paired). Captures, not flows, are the unit: flows of one capture are not independent.
  "Ahead" only when the interval excludes zero.
- `SealedTest` / `select_on_validation`: choices (hyperparameters, the declared evaluation) take validation figures
  only; a choice made after a split's test answers were opened raises, so a selection can never see test.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, Optional, Sequence

import numpy as np

METRICS = ("mauc", "macro_f1", "accuracy")


@dataclasses.dataclass(frozen=True)
class SplitPredictions:
    """One model's answers on one split's test flows: true class ids [N], class scores [N, C] (higher = more
    likely), each flow's capture [N] (the resampling unit) and, when known, whether its application is novel (no
    training flow) [N]."""
    y_true: np.ndarray
    scores: np.ndarray
    captures: np.ndarray
    novel: Optional[np.ndarray] = None

    def __post_init__(self):
        y, s, c = np.asarray(self.y_true), np.asarray(self.scores), np.asarray(self.captures)
        if s.ndim != 2 or len(y) != len(s) or len(c) != len(y):
            raise ValueError(f"predictions: {len(y)} labels, scores of shape {s.shape}, {len(c)} captures "
                             "(need N labels, N × C scores, N captures)")
        if self.novel is not None and len(np.asarray(self.novel)) != len(y):
            raise ValueError(f"predictions: {len(np.asarray(self.novel))} novelty flags for {len(y)} flows")

    def subset(self, rows: np.ndarray) -> "SplitPredictions":
        novel = None if self.novel is None else np.asarray(self.novel)[rows]
        return SplitPredictions(np.asarray(self.y_true)[rows], np.asarray(self.scores)[rows],
                                np.asarray(self.captures)[rows], novel)

    def has_both_halves(self) -> bool:
        """Whether the split holds seen and novel flows (the novel-application task's test side)."""
        return self.novel is not None and bool(np.any(self.novel)) and not bool(np.all(self.novel))

    def halves(self) -> tuple["SplitPredictions", "SplitPredictions"]:
        """(seen flows, novel flows)."""
        novel = np.asarray(self.novel, bool)
        return self.subset(np.flatnonzero(~novel)), self.subset(np.flatnonzero(novel))

    def novelty(self) -> "SplitPredictions":
        """Novelty detection as a two-class problem over the same flows, so the capture bootstrap and `mauc` apply:
        class 1 = novel application, scored by 1 − the largest class probability (the score every model has; a
        model with a better own score is not given it, so the rule is the same for all)."""
        top = np.asarray(self.scores, np.float64).max(1)
        return SplitPredictions(np.asarray(self.novel, np.int32), np.stack([top, 1.0 - top], 1), self.captures)


def weighted_metric(name: str, y_true: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """`name` ('mauc', 'macro_f1' or 'accuracy') of one model's answers under each row of `weights` [R, N] (a
    flow's weight = how many times its capture was drawn); with all weights 1 it equals
    `pclip_jax.plumbing.metrics.classification_report`'s figure (mAUC over the classes with positives and
    negatives, macro-F1 over the classes present). Returns [R]."""
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(scores, np.float64)
    w = np.atleast_2d(np.asarray(weights, np.float64))
    if name == "mauc":
        return _weighted_mauc(y, s, w)
    pred = s.argmax(1)
    if name == "accuracy":
        return (w * (pred == y)).sum(1) / np.maximum(w.sum(1), 1e-12)
    if name == "macro_f1":
        c = s.shape[1]
        true_1h = np.eye(c)[y]
        pred_1h = np.eye(c)[pred]
        tp = w @ (true_1h * pred_1h)
        support, predicted = w @ true_1h, w @ pred_1h
        f1 = np.where(support + predicted > 0, 2 * tp / np.maximum(support + predicted, 1e-12), 0.0)
        present = support > 0
        return (f1 * present).sum(1) / np.maximum(present.sum(1), 1)
    raise ValueError(f"metric {name!r}: known {', '.join(METRICS)}")


def _weighted_mauc(y: np.ndarray, s: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Mean over classes of the weighted one-vs-rest AUC (ties count one half), per weight row; a class counts in a
    row when it has positive and negative weight there."""
    total = np.zeros(len(w))
    counted = np.zeros(len(w))
    for c in range(s.shape[1]):
        pos = y == c
        if not pos.any() or pos.all():
            continue
        order = np.argsort(s[:, c], kind="stable")
        score, is_pos, wo = s[order, c], pos[order], w[:, order]
        # Group equal scores: a positive beats every negative of a lower score and ties with half of its own group.
        starts = np.r_[0, np.nonzero(np.diff(score))[0] + 1]
        neg_w = wo * ~is_pos
        pos_w = wo * is_pos
        neg_group = np.add.reduceat(neg_w, starts, axis=1)
        pos_group = np.add.reduceat(pos_w, starts, axis=1)
        neg_below = np.cumsum(neg_group, axis=1) - neg_group
        wins = (pos_group * (neg_below + 0.5 * neg_group)).sum(1)
        p_total, n_total = pos_group.sum(1), neg_group.sum(1)
        ok = (p_total > 0) & (n_total > 0)
        total += np.where(ok, wins / np.maximum(p_total * n_total, 1e-300), 0.0)
        counted += ok
    return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)


def capture_weights(captures: np.ndarray, draws: np.ndarray, capture_names: np.ndarray) -> np.ndarray:
    """[R, N] flow weights from [R, K] draws of capture indices into `capture_names` (each flow weighs as many times
    as its capture was drawn)."""
    flow_capture = np.searchsorted(capture_names, np.asarray(captures).astype(str))
    counts = np.stack([np.bincount(d, minlength=len(capture_names)) for d in draws])
    return counts[:, flow_capture].astype(np.float64)


def _paired_replicates(a: Sequence[SplitPredictions], b: Sequence[SplitPredictions], metric: str, replicates: int,
                       seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per split, A's and B's `metric` on the split's test flows ([S] each) and on `replicates` resamplings of its
    test captures ([S, R] each), the same draws for A and B; splits resampled independently."""
    if len(a) != len(b) or not len(a):
        raise ValueError(f"paired bootstrap: {len(a)} and {len(b)} splits (need the same, at least one)")
    rng = np.random.default_rng(seed)
    point_a, point_b, reps_a, reps_b = [], [], [], []
    for i, (pa, pb) in enumerate(zip(a, b)):
        names = np.unique(np.concatenate([np.asarray(pa.captures).astype(str), np.asarray(pb.captures).astype(str)]))
        if set(np.unique(np.asarray(pa.captures).astype(str))) != set(np.unique(np.asarray(pb.captures).astype(str))):
            raise ValueError(f"paired bootstrap: split {i}: the two models answered on different test captures")
        draws = rng.integers(0, len(names), size=(replicates, len(names)))
        point_a.append(weighted_metric(metric, pa.y_true, pa.scores, np.ones((1, len(pa.y_true))))[0])
        point_b.append(weighted_metric(metric, pb.y_true, pb.scores, np.ones((1, len(pb.y_true))))[0])
        reps_a.append(weighted_metric(metric, pa.y_true, pa.scores, capture_weights(pa.captures, draws, names)))
        reps_b.append(weighted_metric(metric, pb.y_true, pb.scores, capture_weights(pb.captures, draws, names)))
    return np.asarray(point_a), np.asarray(point_b), np.stack(reps_a), np.stack(reps_b)


def paired_bootstrap(a: Sequence[SplitPredictions], b: Sequence[SplitPredictions], metric: str,
                     replicates: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Margin of A over B in `metric`, the mean over splits of (A − B), with a paired percentile interval from
    `replicates` resamplings of each split's test captures (the same draws for A and B; splits resampled
    independently). `a[i]` and `b[i]` must be the same split: their captures must match (a model may have answered
    a subset of a capture's flows, never another capture). Returns {margin, low, high, ahead, behind, splits,
    replicates}: `ahead` when the interval's low end is above zero, `behind` when its high end is below."""
    point_a, point_b, reps_a, reps_b = _paired_replicates(a, b, metric, replicates, seed)
    margins = np.nanmean(reps_a - reps_b, axis=0)
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(margins, [alpha, 1 - alpha])
    return {"margin": float(np.mean(point_a - point_b)), "low": float(low), "high": float(high),
            "ahead": bool(low > 0), "behind": bool(high < 0), "splits": len(a), "replicates": int(replicates),
            "confidence": confidence}


def paired_ratio_bootstrap(a: Sequence[SplitPredictions], b: Sequence[SplitPredictions], metric: str,
                           replicates: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """A's `metric` as a share of B's, mean over splits of A over mean over splits of B (e.g. the mAUC a model
    keeps with 10 % of the labels against all of them, on the same test captures), with the paired percentile
    interval of the same capture resampling as `paired_bootstrap`. Returns {ratio, low, high, splits, replicates}."""
    point_a, point_b, reps_a, reps_b = _paired_replicates(a, b, metric, replicates, seed)
    ratios = np.nanmean(reps_a, axis=0) / np.nanmean(reps_b, axis=0)
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(ratios, [alpha, 1 - alpha])
    return {"ratio": float(np.mean(point_a) / np.mean(point_b)), "low": float(low), "high": float(high),
            "splits": len(a), "replicates": int(replicates), "confidence": confidence}


def bootstrap_interval(preds: Sequence[SplitPredictions], metric: str, replicates: int = 2000,
                       confidence: float = 0.95, seed: int = 0) -> dict:
    """One model's `metric` averaged over splits, with the percentile interval of the capture bootstrap."""
    rng = np.random.default_rng(seed)
    point, reps = [], []
    for p in preds:
        names = np.unique(np.asarray(p.captures).astype(str))
        draws = rng.integers(0, len(names), size=(replicates, len(names)))
        point.append(weighted_metric(metric, p.y_true, p.scores, np.ones((1, len(p.y_true))))[0])
        reps.append(weighted_metric(metric, p.y_true, p.scores, capture_weights(p.captures, draws, names)))
    alpha = (1.0 - confidence) / 2
    low, high = np.nanquantile(np.nanmean(np.stack(reps), axis=0), [alpha, 1 - alpha])
    return {"mean": float(np.mean(point)), "low": float(low), "high": float(high), "splits": len(preds)}


class TestReadBeforeSelection(RuntimeError):
    """A choice was asked for after the test answers it must not see had been opened."""


class SealedTest:
    """A split's test data, closed until every choice about the model has been made. `select` takes validation
    scores only and is refused once `open()` has been called; `open()` returns the data and records it."""

    def __init__(self, data, split: str = "test"):
        self._data = data
        self.split = split
        self.opened = False
        self.choices: dict = {}

    def select(self, what: str, validation_scores: Mapping[str, float],
               higher_is_better: bool = True) -> str:
        """The key with the best validation score (ties: the first in the mapping's order), recorded as `what`."""
        if self.opened:
            raise TestReadBeforeSelection(f"{what}: chosen after the {self.split} answers were opened; choices take "
                                          "validation figures only, before test is read")
        choice = select_on_validation(validation_scores, higher_is_better)
        self.choices[what] = {"choice": choice, "validation": dict(validation_scores)}
        return choice

    def open(self):
        self.opened = True
        return self._data


def select_on_validation(validation_scores: Mapping[str, float], higher_is_better: bool = True) -> str:
    """The key of the best finite validation score (first on ties). Takes a mapping of numbers: a selection cannot
    be handed arrays of any split."""
    finite = {k: float(v) for k, v in validation_scores.items() if v is not None and np.isfinite(float(v))}
    if not finite:
        raise ValueError(f"no finite validation score among {list(validation_scores)}: nothing to choose on")
    best = max(finite.values()) if higher_is_better else min(finite.values())
    return next(k for k, v in finite.items() if v == best)


def grid(space: Mapping[str, Sequence]) -> list[dict]:
    """Every combination of a search space {field: values}, in a fixed order (the first field varies slowest)."""
    combos: list[dict] = [{}]
    for field, values in space.items():
        combos = [{**c, field: v} for c in combos for v in values]
    return combos


def tune(space: Mapping[str, Sequence], fit_and_validate: Callable[[dict], float],
         higher_is_better: bool = True) -> dict:
    """Runs `fit_and_validate(candidate) -> validation score` on every candidate of `space` and returns
    {chosen, candidates: [{config, validation}]}. The callable is given a configuration only: what it fits on and
    validates against is the tuning split's training and validation captures (`pclip_bench.peers.suite`)."""
    results = []
    for candidate in grid(space):
        results.append({"config": candidate, "validation": float(fit_and_validate(candidate))})
    key = select_on_validation({str(i): r["validation"] for i, r in enumerate(results)}, higher_is_better)
    return {"chosen": results[int(key)]["config"], "candidates": results}


def interval_text(stats: Optional[dict], digits: int = 3) -> str:
    """'0.812 [0.790, 0.833]' from a `bootstrap_interval` (or 'margin [low, high]' from `paired_bootstrap`)."""
    if not stats:
        return "–"
    mid = stats.get("mean", stats.get("margin"))
    return f"{mid:+.{digits}f} [{stats['low']:+.{digits}f}, {stats['high']:+.{digits}f}]" if "margin" in stats \
        else f"{mid:.{digits}f} [{stats['low']:.{digits}f}, {stats['high']:.{digits}f}]"
