"""Classification metrics as the paper reports them: per-class one-vs-rest ROC AUC and their macro mean (mAUC),
accuracy, macro-F1 and the confusion matrix; a ROC plot per evaluation.

Classes without a positive or without a negative in the evaluated set have no defined AUC: they are listed under
`undefined_auc` and left out of the mean, never counted as 0.5.

`by_application_novelty` splits a report by whether each test flow's application was among the training flows'
applications: on a capture-disjoint split most test captures hold applications no training capture has (other
protocols of the same service class), and the two halves measure different things (recognising a known
application in a new capture vs. generalising a class to a new application).
"""
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np


ECE_BINS = 10


def calibration(y_true: np.ndarray, proba: np.ndarray, bins: int = ECE_BINS) -> dict:
    """Expected calibration error of the top-class probability (`bins` equal-width bins, weighted by flows) and
    the reliability diagram's points: per bin the mean confidence, the accuracy and the flow count."""
    y_true, proba = np.asarray(y_true), np.asarray(proba, np.float64)
    confidence, correct = proba.max(1), (proba.argmax(1) == y_true).astype(np.float64)
    which = np.minimum((confidence * bins).astype(np.int64), bins - 1)
    count = np.bincount(which, minlength=bins).astype(np.float64)
    conf = np.bincount(which, confidence, minlength=bins) / np.maximum(count, 1)
    acc = np.bincount(which, correct, minlength=bins) / np.maximum(count, 1)
    ece = float((count * np.abs(conf - acc)).sum() / max(count.sum(), 1))
    return {"ece": ece, "confidence": conf.round(4).tolist(), "accuracy": acc.round(4).tolist(),
            "count": count.astype(int).tolist()}


def binary_auroc(positive: np.ndarray, score: np.ndarray) -> Optional[float]:
    """AUROC of `score` (higher = more likely positive) for the `positive` flows against the rest; None when one
    side is empty."""
    from sklearn import metrics as skm  # on use, as classification_report

    positive = np.asarray(positive, bool)
    if positive.all() or not positive.any():
        return None
    return float(skm.roc_auc_score(positive, np.asarray(score, np.float64)))


def classification_report(y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict:
    """y_true [N] ints in [0, C); scores [N, C] (probabilities or logits, higher = more likely). When the scores
    are probabilities (rows sum to 1) the report also has `calibration` (ECE and the reliability diagram)."""
    from sklearn import metrics as skm  # on use: importing it costs ~1 s (classify needs none)
    y_true = np.asarray(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    n_classes = len(class_names)
    if scores.shape != (len(y_true), n_classes):
        raise ValueError(f"scores shape {scores.shape} does not match {len(y_true)} flows × {n_classes} classes")
    y_pred = scores.argmax(1)
    per_class_auc, undefined = {}, []
    for c, name in enumerate(class_names):
        positives = y_true == c
        if positives.all() or not positives.any():
            undefined.append(name)
            continue
        per_class_auc[name] = float(skm.roc_auc_score(positives, scores[:, c]))
    labels = np.arange(n_classes)
    present = np.unique(y_true)
    return {
        "mauc": float(np.mean(list(per_class_auc.values()))) if per_class_auc else float("nan"),
        "accuracy": float((y_pred == y_true).mean()) if len(y_true) else float("nan"),
        # Macro-F1 over the classes present in the evaluated set (absent classes have undefined recall).
        "macro_f1": float(skm.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0))
        if len(y_true) else float("nan"),
        "per_class_auc": per_class_auc,
        "undefined_auc": undefined,
        "support": {name: int((y_true == c).sum()) for c, name in enumerate(class_names)},
        "confusion_matrix": (skm.confusion_matrix(y_true, y_pred, labels=labels) if len(y_true)
                             else np.zeros((n_classes, n_classes), np.int64)).tolist(),
        "classes": list(class_names),
        "num_flows": int(len(y_true)),
        **({"calibration": calibration(y_true, scores)}
           if len(y_true) and (scores >= 0).all() and np.allclose(scores.sum(1), 1.0, atol=1e-3) else {}),
    }


SEEN, NOVEL = "seen_applications", "novel_applications"


def by_application_novelty(y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str],
                           applications: Sequence[str], training_applications) -> dict:
    """{SEEN: report, NOVEL: report}: `classification_report` restricted to the flows whose application is (is not)
    in `training_applications`, without the confusion matrix. `applications` are the flows' level-2 labels."""
    seen = np.isin(np.asarray(applications).astype(str), np.asarray(sorted(training_applications), dtype=str))
    out = {}
    for key, subset in ((SEEN, seen), (NOVEL, ~seen)):
        if not subset.any():
            out[key] = {"mauc": float("nan"), "accuracy": float("nan"), "macro_f1": float("nan"),
                        "per_class_auc": {}, "num_flows": 0, "applications": []}
            continue
        report = classification_report(np.asarray(y_true)[subset], np.asarray(scores)[subset], class_names)
        report.pop("confusion_matrix")
        report["applications"] = sorted(set(np.asarray(applications).astype(str)[subset].tolist()))
        out[key] = report
    return out


def novelty_rows(name: str, report: dict) -> list[tuple[str, dict]]:
    """Rows for `format_table`: the report's seen/novel halves when it has them."""
    halves = report.get("by_application_novelty") or {}
    return [(f"{name}, {label}", halves[key]) for key, label in ((SEEN, "seen apps"), (NOVEL, "novel apps"))
            if key in halves and halves[key]["num_flows"]]


def plot_roc(y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str], path: str | pathlib.Path,
             title: str) -> None:
    """One-vs-rest ROC curves, one line per class with its AUC in the legend."""
    from sklearn import metrics as skm  # on use: importing it costs ~1 s (classify needs none)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 6))
    for c, name in enumerate(class_names):
        positives = np.asarray(y_true) == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = skm.roc_curve(positives, scores[:, c])
        ax.plot(fpr, tpr, lw=1.3, label=f"{name} ({skm.auc(fpr, tpr):.3f}, n={int(positives.sum())})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def per_capture_accuracy(y_true: np.ndarray, scores: np.ndarray, captures: Sequence[str],
                         class_names: Sequence[str]) -> dict:
    """Capture-level identification (IoT Sentinel's measure: one device per setup capture): a capture's predicted
    class is the majority vote of its flows' predictions (ties: the larger summed probability), its true class
    the most frequent true class of its flows. Returns `accuracy`, `macro_f1` over captures and `num_captures`."""
    from sklearn import metrics as skm  # on use: importing it costs ~1 s (classify needs none)
    y_true, scores = np.asarray(y_true), np.asarray(scores, dtype=np.float64)
    captures = np.asarray(captures).astype(str)
    n_classes = len(class_names)
    truth, pred = [], []
    for c in np.unique(captures):
        rows = captures == c
        votes = np.bincount(scores[rows].argmax(1), minlength=n_classes).astype(np.float64)
        votes += 1e-6 * scores[rows].sum(0) / max(rows.sum(), 1)  # tie-break below one vote
        truth.append(int(np.bincount(y_true[rows], minlength=n_classes).argmax()))
        pred.append(int(votes.argmax()))
    truth, pred = np.asarray(truth), np.asarray(pred)
    present = np.unique(truth)
    return {"accuracy": float((truth == pred).mean()) if len(truth) else float("nan"),
            "macro_f1": float(skm.f1_score(truth, pred, labels=present, average="macro", zero_division=0))
            if len(truth) else float("nan"),
            "num_captures": int(len(truth))}


def format_table(rows: Sequence[tuple[str, dict]]) -> str:
    """Plain-text results table: one row per evaluation with mAUC, accuracy, macro-F1 and flow count."""
    lines = [f"{'evaluation':<28}{'mAUC':>8}{'acc':>8}{'mF1':>8}{'flows':>8}"]
    for name, m in rows:
        lines.append(f"{name:<28}{m['mauc']:>8.3f}{m['accuracy']:>8.3f}{m['macro_f1']:>8.3f}{m['num_flows']:>8d}")
    return "\n".join(lines)


def format_capture_rows(rows: Sequence[tuple[str, dict]]) -> str:
    """Per-capture accuracy (majority vote of a capture's flows) of the reports that have it."""
    lines = [f"{'per capture (majority vote)':<28}{'acc':>8}{'mF1':>8}{'capts':>8}"]
    for name, m in rows:
        if m.get("per_capture"):
            pc = m["per_capture"]
            lines.append(f"{name:<28}{pc['accuracy']:>8.3f}{pc['macro_f1']:>8.3f}{pc['num_captures']:>8d}")
    return "\n".join(lines)



def restricted_report(y_true: np.ndarray, scores: np.ndarray, class_names: Sequence[str], classes: Sequence[int],
                      captures: Sequence[str] | None = None) -> dict:
    """`classification_report` of the flows whose class is one of `classes` (indices into `class_names`), scored
    among those classes only (columns renormalised): one dataset's evaluation within a mixed corpus, whose
    model also knows other datasets' classes. With `captures`, also `per_capture`."""
    classes = np.asarray(sorted(classes), np.int64)
    y_true, scores = np.asarray(y_true), np.asarray(scores, np.float64)
    rows = np.isin(y_true, classes)
    local = np.searchsorted(classes, y_true[rows])
    part = scores[rows][:, classes]
    part = part / np.maximum(part.sum(1, keepdims=True), 1e-12) if (part >= 0).all() else part
    names = [class_names[c] for c in classes]
    report = classification_report(local, part, names)
    if captures is not None:
        report["per_capture"] = per_capture_accuracy(local, part, np.asarray(captures)[rows], names)
    report["flows_of_other_classes"] = int((~rows).sum())
    return report


def by_group(groups: Sequence[str], y_true: np.ndarray, scores: dict, class_names: Sequence[str],
             classes_of: dict, captures: Sequence[str]) -> dict:
    """{group: {evaluation: report}}: `restricted_report` of each group's flows (a mixed corpus's sources) among
    `classes_of[group]`, for every {evaluation: scores [N, C]}. Groups with fewer than 2 classes are left out."""
    groups, captures = np.asarray(groups).astype(str), np.asarray(captures).astype(str)
    out = {}
    for name, classes in classes_of.items():
        mine = groups == name
        if mine.any() and len(classes) >= 2:
            out[name] = {key: restricted_report(np.asarray(y_true)[mine], np.asarray(s)[mine], class_names, classes,
                                                captures[mine]) for key, s in scores.items()}
    return out
