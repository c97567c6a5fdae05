"""Tree ensembles on the features flow-statistics classifiers see: the signed sizes and log inter-arrival times of
the first K packets, the masked bytes of the first 8 packets (header fields and cleartext protocol structure) and,
when the dataset's settings use names, the server-name vector the packet tower reads — the same information
PacketCLIP's tower gets.

Size is reported as the number of tree nodes and cost per flow as the node tests on a flow's paths (measured on
the test flows), stated as such: trees do comparisons, not FLOPs.
"""
from __future__ import annotations

import time

import numpy as np

BYTE_PACKETS = 8


def tree_features(tensors: dict, idx: np.ndarray, byte_width: int, with_names: bool) -> np.ndarray:
    """float32 [N, F]: sizes, log1p(IAT in ms), bytes of the first 8 packets (first `byte_width` of each), names."""
    sizes = np.asarray(tensors["sizes"])[idx].astype(np.float32)
    iat = np.log1p(np.maximum(np.asarray(tensors["iat"])[idx], 0.0) * 1e3)
    parts = [sizes, iat, np.asarray(tensors["bytes"])[idx][:, :BYTE_PACKETS, :byte_width]
             .reshape(len(idx), -1).astype(np.float32)]
    if with_names and "name_vec" in tensors:
        parts.append(np.asarray(tensors["name_vec"])[idx].astype(np.float32))
    return np.concatenate(parts, 1)


def _spread(proba: np.ndarray, classes: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(proba), num_classes), np.float64)
    out[:, classes] = proba
    return out


def fit_extra_trees(x_train, y_train, num_classes: int, seed: int = 0, trees: int = 500,
                    max_features="sqrt", min_samples_leaf: int = 1):
    """ExtraTrees with balanced class weights; `max_features` and `min_samples_leaf` are the tuned knobs
    (`pclip_bench.peers.tuning`)."""
    from sklearn.ensemble import ExtraTreesClassifier

    started = time.time()
    clf = ExtraTreesClassifier(trees, n_jobs=-1, random_state=seed, class_weight="balanced",
                               max_features=max_features, min_samples_leaf=min_samples_leaf)
    clf.fit(x_train, y_train)
    seconds = time.time() - started

    def predict(x):
        return _spread(clf.predict_proba(x), clf.classes_, num_classes)

    def comparisons(x):
        paths = clf.decision_path(x)[0]
        return float(paths.sum() / len(x) - len(clf.estimators_))  # internal nodes on the paths (leaves excluded)

    nodes = int(sum(e.tree_.node_count for e in clf.estimators_))
    return predict, {"trainable_params": nodes, "train_seconds": round(seconds, 1)}, comparisons


def fit_lightgbm(x_train, y_train, num_classes: int, x_val=None, y_val=None, seed: int = 0, rounds: int = 500,
                 num_leaves: int = 31, learning_rate: float = 0.05):
    """LightGBM, early-stopped on the validation captures when they have ≥ 2 classes; `num_leaves` and
    `learning_rate` are the tuned knobs (`pclip_bench.peers.tuning`). One thread: with two, OpenMP's spinning
    threads made a niced sweep process 20× slower whenever another process held a core (1,206 s for one fit)."""
    import lightgbm as lgb

    started = time.time()
    clf = lgb.LGBMClassifier(n_estimators=rounds, learning_rate=learning_rate, num_leaves=num_leaves,
                             class_weight="balanced",
                             subsample=0.8, subsample_freq=1, colsample_bytree=0.5, random_state=seed, n_jobs=1,
                             verbose=-1)
    fit_args = {}
    if x_val is not None and len(x_val) and len(np.unique(y_val)) >= 2 and set(np.unique(y_val)) <= set(y_train):
        import inspect

        # lightgbm 4.7 renamed eval_set to eval_X / eval_y (the old name warns)
        new_api = "eval_X" in inspect.signature(clf.fit).parameters
        fit_args = ({"eval_X": (x_val,), "eval_y": (y_val,)} if new_api else {"eval_set": [(x_val, y_val)]})
        fit_args["callbacks"] = [lgb.early_stopping(50, verbose=False)]
    clf.fit(x_train, y_train, **fit_args)
    seconds = time.time() - started
    booster = clf.booster_
    frame = booster.trees_to_dataframe()
    # depth[t, leaf] of every leaf, so a flow's node tests are one gather over its leaves (no per-flow loop).
    leaf_rows = frame[frame["node_index"].str.contains("-L")]
    trees = leaf_rows["tree_index"].to_numpy(int)
    leaves = leaf_rows["node_index"].str.split("-L").str[1].to_numpy(int)
    depth = np.ones((trees.max() + 1, leaves.max() + 1), np.int64)
    depth[trees, leaves] = leaf_rows["node_depth"].to_numpy(int)

    def predict(x):
        return _spread(clf.predict_proba(x), clf.classes_, num_classes)

    def comparisons(x):
        hit = booster.predict(x, pred_leaf=True, num_iteration=clf.best_iteration_ or None).reshape(len(x), -1)
        return float((depth[np.arange(hit.shape[1])[None, :], hit] - 1).sum() / len(x))

    return predict, {"trainable_params": int(len(frame)), "train_seconds": round(seconds, 1),
                     "best_iteration": int(clf.best_iteration_ or rounds)}, comparisons
