"""Evaluation of a pre-trained workdir: zero-shot (class descriptions) and a linear probe (frozen packet features).

Library: `evaluate_pretrained(...)` (called at the end of training) and `evaluate_workdir(...)` (any labelled
captures). CLI:

    python -m pclip_jax.evaluate --workdir DIR INPUT... --labels SPEC --out metrics.json

Classes of the new captures that the model does not know are reported under `unknown_classes` and left out of the
metrics, never merged into a known class.
"""
from __future__ import annotations

import json
import pathlib
import sys
from typing import Optional, Sequence

import jax
import ml_collections
import numpy as np

from pclip_jax import metrics as metrics_lib
from pclip_jax import parallel
from pclip_jax import text as text_lib
from pclip_jax.name_features import attach_name_features

PROBE_FILE = "linear_probe.npz"
CLASS_TEXT_FILE = "class_text_features.npz"
MODEL_INFO_FILE = "model_info.json"


# ----------------------------------------------------------------------------------------------- scoring

def zero_shot_scores(params, model, flow_embeddings: np.ndarray, prompt_features: np.ndarray,
                     prompt_class: np.ndarray, num_classes: int) -> np.ndarray:
    """Softmax over classes of scale · cos(flow, class), a class's embedding being the mean of its prompts'."""
    from pclip_jax.models.two_towers import TwoTowers

    z_prompts = np.asarray(model.apply({"params": params}, jax.numpy.asarray(prompt_features),
                                       method=TwoTowers.embed_text))
    class_emb = np.stack([z_prompts[prompt_class == c].mean(0) for c in range(num_classes)])
    class_emb /= np.linalg.norm(class_emb, axis=1, keepdims=True)
    scale = float(np.exp(min(float(params["logit_scale"]), model.config.max_log_scale)))
    logits = scale * flow_embeddings @ class_emb.T
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


PROBE_L2_GRID = (0.1, 1.0, 10.0, 100.0)
PROBE_TARGETS = ("application", "class")


def probe_targets(class_ids: np.ndarray, applications: Sequence[str], num_classes: int, mode: str = "application"
                  ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """What the linear probe is fitted to: (targets [N], to_class [T, C] 0/1, target names).

    "class": one target per service class (to_class is the identity). "application" (default): one target per
    (class, application) pair of the given flows, each mapped to its class; the probe's class probability is the
    sum of its applications'. A service class is a union of unrelated protocols (Web holds HTTP, TLS sites and
    QUIC; Infrastructure holds DNS, NTP and SNMP), so one weight vector per class must fit several clusters at
    once, one per application need not. A flow without an application counts as its class's own target.
    """
    class_ids = np.asarray(class_ids)
    if mode == "class":
        return class_ids.astype(np.int64), np.eye(num_classes, dtype=np.float32), [str(c) for c in range(num_classes)]
    if mode != "application":
        raise ValueError(f"eval.probe_targets must be one of {PROBE_TARGETS}, got {mode!r}")
    apps = np.asarray(applications).astype(str)
    keys = [f"{c}\t{a}" for c, a in zip(class_ids.tolist(), apps.tolist())]
    names, targets = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
    to_class = np.zeros((len(names), num_classes), np.float32)
    to_class[np.arange(len(names)), [int(k.split("\t")[0]) for k in names]] = 1.0
    return targets.reshape(-1).astype(np.int64), to_class, [k.split("\t", 1)[1] for k in names]


def select_probe_l2(train_features, y_train, val_features, y_val, num_classes: int, seed: int = 0,
                    grid: Sequence[float] = PROBE_L2_GRID, to_class: Optional[np.ndarray] = None
                    ) -> tuple[float, dict]:
    """The probe's L2 strength by mAUC on the validation captures (never the test split). The validation
    captures are also unseen by pre-training, unlike a cross-validation over training flows whose features the
    tower has fitted. Without validation flows the default 1.0 is used. `y_train` are probe targets
    (`num_classes` of them), `y_val` class ids (`to_class.shape[1]` of them when targets are applications)."""
    if len(y_val) == 0 or len(np.unique(y_val)) < 2:
        return 1.0, {}
    n_eval = num_classes if to_class is None else to_class.shape[1]
    scores = {}
    for l2 in grid:
        probe = fit_linear_probe(train_features, y_train, num_classes, l2=l2, seed=seed, to_class=to_class)
        proba = linear_probe_scores(probe, val_features)
        scores[l2] = metrics_lib.classification_report(y_val, proba, [str(c) for c in range(n_eval)])["mauc"]
    return max(scores, key=lambda k: scores[k]), scores


def fit_linear_probe(features: np.ndarray, y: np.ndarray, num_classes: int, l2: float = 1.0, seed: int = 0,
                     to_class: Optional[np.ndarray] = None) -> dict:
    """Multinomial logistic regression on standardised frozen features; returned as arrays (saved as npz).
    With `to_class` ([num_classes targets, C]) the probe scores classes by summing its targets' probabilities."""
    from sklearn.linear_model import LogisticRegression

    mean, std = features.mean(0), features.std(0) + 1e-6
    clf = LogisticRegression(C=1.0 / l2, max_iter=2000, class_weight="balanced", random_state=seed)
    clf.fit((features - mean) / std, y)
    coef = np.zeros((num_classes, features.shape[1]), np.float32)
    intercept = np.full((num_classes,), -1e4, np.float32)  # classes absent from train can never win
    coef[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_, clf.coef_])
    intercept[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else np.r_[-clf.intercept_, clf.intercept_]
    probe = {"mean": mean.astype(np.float32), "std": std.astype(np.float32), "coef": coef, "intercept": intercept}
    if to_class is not None:
        probe["to_class"] = np.asarray(to_class, np.float32)
    return probe


def linear_probe_scores(probe: dict, features: np.ndarray) -> np.ndarray:
    """Class probabilities [N, C] of a fitted probe (summed over a class's applications when it has them)."""
    logits = ((features - probe["mean"]) / probe["std"]) @ probe["coef"].T + probe["intercept"]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return p @ probe["to_class"] if "to_class" in probe else p


# ----------------------------------------------------------------------------------------------- after training

def evaluate_pretrained(config, workdir: pathlib.Path, prepared, model, params, featurizer) -> tuple[dict, dict]:
    """Embeds train/test flows, fits the probe on train, scores test both ways, writes plots and artefacts.

    Returns (results, embeddings) with embeddings = {'train': z, 'test': z} (projected, normalised packet
    embeddings of prepared.train_idx / test_idx), which the GNN stage reuses."""
    from pclip_jax import train as train_lib

    workdir = pathlib.Path(workdir)
    cache_dir = pathlib.Path(config.data.get("cache_dir") or workdir / "cache")
    names = prepared.class_names
    embed_fn = train_lib.make_embed_fn(model)
    rparams = parallel.replicate(params)
    tensors = prepared.table.tensors
    feats_train, z_train = train_lib.embed_flows(embed_fn, rparams, tensors, prepared.train_idx,
                                           config.eval.batch_size, progress=True, desc="embedding train flows")
    feats_test, z_test = train_lib.embed_flows(embed_fn, rparams, tensors, prepared.test_idx,
                                               config.eval.batch_size, progress=True, desc="embedding test flows")
    y_train = prepared.class_ids[prepared.train_idx]
    y_test = prepared.class_ids[prepared.test_idx]
    keep_train, keep_test = y_train >= 0, y_test >= 0

    feats_val, z_val = train_lib.embed_flows(embed_fn, rparams, tensors, prepared.val_idx, config.eval.batch_size)
    y_val = prepared.class_ids[prepared.val_idx]
    keep_val = y_val >= 0
    apps = np.asarray(prepared.table.meta["level2"]).astype(str)
    targets_mode = config.eval.get("probe_targets", "application")
    targets, to_class, target_names = probe_targets(y_train[keep_train], apps[prepared.train_idx][keep_train],
                                                    len(names), targets_mode)
    l2, l2_scores = select_probe_l2(feats_train[keep_train], targets,
                                    feats_val[keep_val] if len(feats_val) else feats_val, y_val[keep_val],
                                    len(target_names), config.train.seed, to_class=to_class)
    probe = fit_linear_probe(feats_train[keep_train], targets, len(target_names), l2=l2, seed=config.train.seed,
                             to_class=to_class)
    probe_scores = linear_probe_scores(probe, feats_test[keep_test])
    descriptions = text_lib.load_class_descriptions(config.text.get("descriptions") or None)
    prompt_feats, prompt_class, prompts = train_lib.class_text_features(names, featurizer, descriptions, cache_dir)
    zs_scores = zero_shot_scores(params, model, z_test[keep_test], prompt_feats, prompt_class, len(names))

    test_metrics = metrics_lib.classification_report(y_test[keep_test], probe_scores, names)
    zs_metrics = metrics_lib.classification_report(y_test[keep_test], zs_scores, names)
    train_apps = prepared.applications(prepared.train_idx)
    test_apps = apps[prepared.test_idx][keep_test]
    for report, scores in ((test_metrics, probe_scores), (zs_metrics, zs_scores)):
        report["by_application_novelty"] = metrics_lib.by_application_novelty(
            y_test[keep_test], scores, names, test_apps, train_apps)
    metrics_lib.plot_roc(y_test[keep_test], probe_scores, names, workdir / "roc_linear_probe.png",
                         "linear probe on frozen packet features (capture-disjoint test)")
    metrics_lib.plot_roc(y_test[keep_test], zs_scores, names, workdir / "roc_zero_shot.png",
                         "zero-shot against class descriptions (capture-disjoint test)")
    np.savez(workdir / PROBE_FILE, **probe)
    np.savez(workdir / CLASS_TEXT_FILE, features=prompt_feats, prompt_class=prompt_class)
    counts = train_lib.param_counts(params)
    info = {"class_names": names, "label_level": config.data.label_level, "train_applications": train_apps,
            "num_params": {**counts, "text_tower_frozen": count_tree(featurizer.params)}}
    (workdir / MODEL_INFO_FILE).write_text(json.dumps(info, indent=2))
    counts_train = np.bincount(y_train[keep_train], minlength=len(names))
    counts_test = np.bincount(y_test[keep_test], minlength=len(names))
    print(metrics_lib.format_table([("linear probe (test)", test_metrics), ("zero-shot (test)", zs_metrics)]
                                   + metrics_lib.novelty_rows("probe", test_metrics)
                                   + metrics_lib.novelty_rows("zero-shot", zs_metrics)), file=sys.stderr)
    test_metrics["probe_targets"] = {"mode": targets_mode, "count": len(target_names)}
    test_metrics["probe_l2"] = l2
    test_metrics["probe_l2_validation_mauc"] = {str(k): v for k, v in l2_scores.items()}
    results = {
        "num_params": {**counts, "text_tower_frozen": count_tree(featurizer.params),
                       "total": counts["trainable_total"] + count_tree(featurizer.params)},
        "test": test_metrics,
        "zero_shot": zs_metrics,
        "classes": {n: {"train_flows": int(a), "test_flows": int(b)}
                    for n, a, b in zip(names, counts_train, counts_test)},
        "data": {"flows": len(prepared.table), "train_flows": int(len(prepared.train_idx)),
                 "validation_flows": int(len(prepared.val_idx)),
                 "validation_captures": len(prepared.split_captures["validation"]),
                 "test_flows": int(len(prepared.test_idx)), "dropped": prepared.dropped,
                 "train_captures": len(prepared.split_captures["train"]),
                 "test_captures": len(prepared.split_captures["test"])},
    }
    return results, {"train": z_train, "test": z_test, "validation": z_val if len(prepared.val_idx) else None}


def count_tree(tree) -> int:
    from pclip_jax.compat import count_params
    return count_params(tree)


# ----------------------------------------------------------------------------------------------- any captures

def load_workdir(workdir: str | pathlib.Path):
    """(config, model, params, model_info) of a trained workdir (newest checkpoint)."""
    from pclip_jax import checkpointing, train as train_lib

    workdir = pathlib.Path(workdir)
    if not (workdir / "config.json").is_file():
        raise FileNotFoundError(f"{workdir}: no config.json — is this a pclip_jax workdir?")
    config = ml_collections.ConfigDict(json.loads((workdir / "config.json").read_text()))
    info = json.loads((workdir / MODEL_INFO_FILE).read_text())
    model = train_lib.build_model(config)
    # Shapes only: the restore target needs no real initialisation (saves ~160 small compilations).
    state = jax.eval_shape(lambda: train_lib.create_state(config, model, jax.random.PRNGKey(0)))
    mngr = checkpointing.manager(workdir / "checkpoints", 1, config.train.keep_checkpoints)
    state, step = checkpointing.restore_latest(mngr, state)
    mngr.close()
    if step is None:
        raise FileNotFoundError(f"{workdir}/checkpoints: no checkpoint to evaluate")
    params = state.params
    if (workdir / train_lib.BEST_DIR / "best.json").is_file():  # the validation-selected parameters
        params = train_lib.BestKeeper(workdir / train_lib.BEST_DIR).load(params)
    return config, model, params, info


def evaluate_workdir(workdir: str, inputs: Sequence[str], label_spec: str, out: Optional[str] = None) -> dict:
    """Zero-shot and linear-probe metrics of a trained workdir on any labelled captures."""
    from pclip_jax import train as train_lib
    from pclip_jax.data import labels as labels_lib, splits as splits_lib
    from pclip_jax.data.ingest import IngestConfig, ingest

    clf = load_gnn_classifier(workdir)
    if clf is not None:  # towers + GNN, loaded once
        config, model, params = clf.config, clf.model, clf.params
        info = json.loads((pathlib.Path(workdir) / MODEL_INFO_FILE).read_text())
    else:
        config, model, params, info = load_workdir(workdir)
    names, level = info["class_names"], info["label_level"]
    table = ingest(inputs, IngestConfig.from_data_config(config.data))
    table = labels_lib.attach_labels(table, label_spec)
    attach_name_features(table, config)
    table, dropped = splits_lib.filter_flows(table, min_packets=config.data.min_packets,
                                            drop_one_way=config.data.drop_one_way, drop_unlabelled=True,
                                            label_column=level)
    labels = np.asarray(table.meta[level]).astype(str)
    lookup = {n: i for i, n in enumerate(names)}
    y = np.array([lookup.get(x, -1) for x in labels], np.int32)
    unknown = {str(n): int(c) for n, c in zip(*np.unique(labels[y < 0], return_counts=True))}
    idx = np.nonzero(y >= 0)[0]
    embed_fn = train_lib.make_embed_fn(model)
    feats, z = train_lib.embed_flows(embed_fn, parallel.replicate(params), table.tensors, idx,
                                     config.eval.batch_size, progress=True)
    with np.load(pathlib.Path(workdir) / PROBE_FILE, allow_pickle=False) as f:
        probe = {k: f[k] for k in f.files}
    with np.load(pathlib.Path(workdir) / CLASS_TEXT_FILE, allow_pickle=False) as f:
        prompt_feats, prompt_class = f["features"], f["prompt_class"]
    result = {"flows_evaluated": int(len(idx)), "unknown_classes": unknown, "dropped": dropped,
              "label_level": level}
    apps = np.asarray(table.meta["level2"]).astype(str)[idx]
    train_apps = info.get("train_applications")  # None in older workdirs: no seen/novel breakdown
    if len(idx):
        rows, halves = [], []
        for key, title, scores in (
                ("linear_probe", "linear probe", linear_probe_scores(probe, feats)),
                ("zero_shot", "zero-shot", zero_shot_scores(params, model, z, prompt_feats, prompt_class,
                                                            len(names)))):
            result[key] = metrics_lib.classification_report(y[idx], scores, names)
            if train_apps is not None:
                result[key]["by_application_novelty"] = metrics_lib.by_application_novelty(
                    y[idx], scores, names, apps, train_apps)
            rows.append((title, result[key]))
            halves += metrics_lib.novelty_rows(title, result[key])
        print(metrics_lib.format_table(rows + halves), file=sys.stderr)
    gnn_block = evaluate_gnn_on_flows(clf, z, labels[idx], apps, train_apps) if clf is not None and len(idx) \
        else None
    if gnn_block is not None:
        result["gnn"] = gnn_block
        print(metrics_lib.format_table([("GNN level 1", gnn_block["level1"]), ("GNN level 2", gnn_block["level2"])]
                                       + metrics_lib.novelty_rows("GNN level 1", gnn_block["level1"])),
              file=sys.stderr)
    if unknown:
        print(f"[evaluate] classes unknown to the model, left out: {unknown}", file=sys.stderr)
    if out:
        pathlib.Path(out).write_text(json.dumps(result, indent=2))
    return result


def load_gnn_classifier(workdir):
    """The workdir's towers + GNN (`classify.Classifier`) when it has a trained GNN, else None."""
    from pclip_jax.classify import load_classifier, read_config
    from pclip_jax.kg import pipeline

    if not read_config(workdir).get("gnn") or \
            not (pathlib.Path(workdir) / pipeline.GNN_DIR / "gnn_checkpoints").is_dir():
        return None
    return load_classifier(workdir)


def evaluate_gnn_on_flows(clf, flow_embeddings, level1, level2, train_applications=None) -> dict:
    """The `gnn` block (per-level metrics, hierarchical accuracy) for flows of known classes; with
    `train_applications`, level 1 is also split into seen and novel applications."""
    from pclip_jax.kg import pipeline, train_gnn

    gcfg = pipeline.gnn_train_config(clf.config, clf.params)
    return train_gnn.evaluate_gnn(gcfg, clf.gnn_params, flow_embeddings, level1, level2, clf.kg,
                                  min_flows_level2=clf.config.gnn.min_flows_level2,
                                  train_applications=train_applications)


def main(argv: Optional[Sequence[str]] = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m pclip_jax.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="capture files or folders (searched recursively)")
    parser.add_argument("--workdir", required=True, help="a workdir written by pclip_jax.main")
    parser.add_argument("--labels", required=True, help="ndpi:DIR | folder | csv:PATH")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")
    args = parser.parse_args(argv)
    evaluate_workdir(args.workdir, args.inputs, args.labels, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
