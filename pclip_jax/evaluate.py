"""Evaluation of pre-trained towers: zero-shot (class descriptions) and a linear probe (frozen packet features).

Library: `evaluate_pretrained(...)` (called by the main job after pre-training) and `evaluate_workdir(...)` (a
trained workdir on any labelled captures). CLI:

    python -m pclip_jax.evaluate --workdir DIR INPUT... --labels SPEC [--out metrics.json] [--verbose]

The new captures' labels are named with the taxonomy source the workdir was trained with (recorded in its
model_info.json, `Workdir.trained_taxonomy`), never re-decided from the new captures. What the model cannot know is
reported with counts under `labels` (labels the taxonomy does not name, classes it was not trained on) and
`unknown_classes`, and left out of the metrics, never merged into a known class.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time
from collections import Counter
from typing import Optional, Sequence

import numpy as np
from sklearn.linear_model import LogisticRegression

from pclip_jax.plumbing import errors, files, runtime
from pclip_jax.training import restore
from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.plumbing.runtime import count_params
from pclip_jax.training import calibration as calibration_lib
from pclip_jax.data import labels as labels_lib
from pclip_jax.data import splits as splits_lib
from pclip_jax.data import taxonomy
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.training.towers import (class_text_features, embed_flows, load_descriptions, make_embed_fn, param_counts,
                                       zero_shot_scores)
from pclip_jax.models import graph_tuples as kg_graphs
from pclip_jax.training import detection, train_gnn
from pclip_jax.text.name_features import with_name_features
from pclip_jax.plumbing.settings import Settings
from pclip_jax.plumbing.workdir import Workdir, taxonomy_record


# ----------------------------------------------------------------------------------------------- the linear probe

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


def fit_validated_probe(train_features: np.ndarray, y_train: np.ndarray, train_applications: Sequence[str],
                        val_features: np.ndarray, y_val: np.ndarray, num_classes: int, mode: str, seed: int = 0
                        ) -> tuple[dict, float, dict, list]:
    """The main job's linear probe: targets per `mode` (`probe_targets`), L2 chosen on the validation flows
    (`select_probe_l2`), fitted on the training flows. Returns (probe, l2, validation score per L2, target names)."""
    targets, to_class, target_names = probe_targets(y_train, train_applications, num_classes, mode)
    l2, l2_scores = select_probe_l2(train_features, targets, val_features, y_val, len(target_names), seed,
                                    to_class=to_class)
    probe = fit_linear_probe(train_features, targets, len(target_names), l2=l2, seed=seed, to_class=to_class)
    return probe, l2, l2_scores, target_names


def linear_probe_scores(probe: dict, features: np.ndarray) -> np.ndarray:
    """Class probabilities [N, C] of a fitted probe (summed over a class's applications when it has them)."""
    logits = ((features - probe["mean"]) / probe["std"]) @ probe["coef"].T + probe["intercept"]
    logits -= logits.max(1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(1, keepdims=True)
    return p @ probe["to_class"] if "to_class" in probe else p


# ----------------------------------------------------------------------------------------------- after training

def by_source(prepared, rows: np.ndarray, y: np.ndarray, scores: dict, class_names) -> dict:
    """{source: {evaluation: report}} of a mixed corpus: each source's test flows `rows` (class ids `y`), scored
    among the classes of that source's own training flows; {} for a single-source run."""
    if not prepared.sources:
        return {}
    classes_of = {}
    for name in prepared.sources:
        ids = prepared.class_ids[prepared.source_rows(prepared.train_idx, name)]
        classes_of[name] = sorted(set(ids[ids >= 0].tolist()))
    meta = prepared.table.meta
    return metrics_lib.by_group(np.asarray(meta["source"]).astype(str)[rows], y, scores, class_names, classes_of,
                                np.asarray(meta["capture"]).astype(str)[rows])


def format_source_rows(blocks: dict) -> str:
    """One results row per (source, evaluation) of `by_source`."""
    return metrics_lib.format_table([(f"{name}: {key}", report) for name, reports in blocks.items()
                                     for key, report in reports.items()])


def evaluate_pretrained(settings: Settings, workdir: Workdir, prepared, model, params, featurizer
                        ) -> tuple[dict, dict]:
    """Embeds train/validation/test flows, fits the probe on train, scores test both ways, writes plots and the
    workdir's probe, class text features and model info.

    Returns (results, embeddings) with embeddings = {'train': z, 'test': z, 'validation': z or None} (projected,
    normalised packet embeddings of prepared.train_idx / test_idx / val_idx), which the GNN stage reuses."""
    cache_dir = workdir.cache_dir(settings.data)
    names = prepared.class_names
    embed_fn = make_embed_fn(model)
    rparams = runtime.replicate(params)
    tensors = prepared.table.tensors
    batch = settings.eval.batch_size
    feats_train, z_train = embed_flows(embed_fn, rparams, tensors, prepared.train_idx, batch, progress=True,
                                       desc="embedding train flows")
    embed_started = time.perf_counter()
    feats_test, z_test = embed_flows(embed_fn, rparams, tensors, prepared.test_idx, batch, progress=True,
                                     desc="embedding test flows")
    embed_seconds = time.perf_counter() - embed_started  # the packet tower's inference rate (compiled on train)
    y_train = prepared.class_ids[prepared.train_idx]
    y_test = prepared.class_ids[prepared.test_idx]
    keep_train, keep_test = y_train >= 0, y_test >= 0

    feats_val, z_val = embed_flows(embed_fn, rparams, tensors, prepared.val_idx, batch)
    y_val = prepared.class_ids[prepared.val_idx]
    keep_val = y_val >= 0
    apps = np.asarray(prepared.table.meta["level2"]).astype(str)
    targets_mode = settings.eval.probe_targets
    probe, l2, l2_scores, target_names = fit_validated_probe(
        feats_train[keep_train], y_train[keep_train], apps[prepared.train_idx][keep_train],
        feats_val[keep_val] if len(feats_val) else feats_val, y_val[keep_val], len(names), targets_mode,
        settings.train.seed)
    probe_scores = linear_probe_scores(probe, feats_test[keep_test])
    prompt_feats, prompt_class, _ = class_text_features(names, featurizer, load_descriptions(settings.text, settings.gnn.kg),
                                                        cache_dir)
    zs_scores = zero_shot_scores(params, model, z_test[keep_test], prompt_feats, prompt_class, len(names))

    captures = np.asarray(prepared.table.meta["capture"]).astype(str)
    answers = [("test", y_test[keep_test], probe_scores, zs_scores, captures[prepared.test_idx][keep_test],
                prepared.novel(prepared.test_idx[keep_test]))]
    if keep_val.any():
        answers.append(("validation", y_val[keep_val], linear_probe_scores(probe, feats_val[keep_val]),
                        zero_shot_scores(params, model, z_val[keep_val], prompt_feats, prompt_class, len(names)),
                        captures[prepared.val_idx][keep_val], prepared.novel(prepared.val_idx[keep_val])))
    for split, y, probe_split, zs_split, caps, novel in answers:
        workdir.save_answers("probe", split, y, probe_split, caps, names, novel)
        workdir.save_answers("zero_shot", split, y, zs_split, caps, names, novel)

    test_metrics = metrics_lib.classification_report(y_test[keep_test], probe_scores, names)
    zs_metrics = metrics_lib.classification_report(y_test[keep_test], zs_scores, names)
    train_apps = prepared.applications(prepared.train_idx)
    test_apps = apps[prepared.test_idx][keep_test]
    test_captures = captures[prepared.test_idx][keep_test]
    for report, scores in ((test_metrics, probe_scores), (zs_metrics, zs_scores)):
        report["by_application_novelty"] = metrics_lib.by_application_novelty(
            y_test[keep_test], scores, names, test_apps, train_apps)
        report["per_capture"] = metrics_lib.per_capture_accuracy(y_test[keep_test], scores, test_captures, names)
    metrics_lib.plot_roc(y_test[keep_test], probe_scores, names, workdir.plot("linear_probe"),
                         "linear probe on frozen packet features (capture-disjoint test)")
    metrics_lib.plot_roc(y_test[keep_test], zs_scores, names, workdir.plot("zero_shot"),
                         "zero-shot against class descriptions (capture-disjoint test)")
    workdir.save_probe(probe)
    workdir.save_class_text(prompt_feats, prompt_class)
    counts = param_counts(params)
    frozen = count_params(featurizer.params)
    workdir.save_model_info({"class_names": names, "label_level": settings.data.label_level,
                             "taxonomy": taxonomy_record(prepared.taxonomy or {}),
                             "train_applications": train_apps,
                             "num_params": {**counts, "text_tower_frozen": frozen}})
    counts_train = np.bincount(y_train[keep_train], minlength=len(names))
    counts_test = np.bincount(y_test[keep_test], minlength=len(names))
    print(metrics_lib.format_table([("linear probe (test)", test_metrics), ("zero-shot (test)", zs_metrics)]
                                   + metrics_lib.novelty_rows("probe", test_metrics)
                                   + metrics_lib.novelty_rows("zero-shot", zs_metrics)), file=sys.stderr)
    print(metrics_lib.format_capture_rows([("linear probe", test_metrics), ("zero-shot", zs_metrics)]),
          file=sys.stderr)
    sources = by_source(prepared, prepared.test_idx[keep_test], y_test[keep_test],
                        {"probe": probe_scores, "zero_shot": zs_scores}, names)
    if sources:
        print(format_source_rows(sources), file=sys.stderr)
    test_metrics["probe_targets"] = {"mode": targets_mode, "count": len(target_names)}
    test_metrics["probe_l2"] = l2
    test_metrics["embed_flows_per_s"] = round(len(prepared.test_idx) / max(embed_seconds, 1e-9), 1)
    test_metrics["probe_l2_validation_mauc"] = {str(k): v for k, v in l2_scores.items()}
    results = {
        "num_params": {**counts, "text_tower_frozen": frozen, "total": counts["trainable_total"] + frozen},
        "test": test_metrics,
        "zero_shot": zs_metrics,
        **({"by_source": sources} if sources else {}),
        "classes": {n: {"train_flows": int(a), "test_flows": int(b)}
                    for n, a, b in zip(names, counts_train, counts_test)},
        "data": {"flows": len(prepared.table), "train_flows": int(len(prepared.train_idx)),
                 "validation_flows": int(len(prepared.val_idx)),
                 "validation_captures": len(prepared.split_captures["validation"]),
                 "test_flows": int(len(prepared.test_idx)), "dropped": prepared.dropped,
                 "train_captures": len(prepared.split_captures["train"]),
                 "test_captures": len(prepared.split_captures["test"]),
                 **({"split_notes": list(prepared.split_notes)} if prepared.split_notes else {})},
    }
    return results, {"train": z_train, "test": z_test, "validation": z_val if len(prepared.val_idx) else None}


# ----------------------------------------------------------------------------------------------- any captures

def trust_block(clf, settings: Settings, table, idx: np.ndarray, z: np.ndarray, short_table,
                coverage: float) -> dict:
    """`calibration.trust_report` of the GNN on labelled flows: the flows training keeps (`idx` of `table`, packet
    embeddings `z`) and the short ones (`short_table`, fewer packets than training keeps) apart and together."""
    zs = np.zeros((0, z.shape[1]), np.float32)
    if len(short_table):
        zs = embed_flows(make_embed_fn(clf.towers.model), clf.replicated_params, short_table.tensors,
                         np.arange(len(short_table)), settings.eval.batch_size)[1]
    meta_in, meta_short = table.meta, short_table.meta
    level1 = np.concatenate([np.asarray(meta_in["level1"]).astype(str)[idx],
                             np.asarray(meta_short["level1"]).astype(str)])
    level2 = np.concatenate([np.asarray(meta_in["level2"]).astype(str)[idx],
                             np.asarray(meta_short["level2"]).astype(str)])
    y1, y2, _ = kg_graphs.labels_to_slots(clf.kg.layout, list(level1), list(level2))
    pred = train_gnn.predict_arrays(clf.gnn_train_config, clf.gnn_params, np.concatenate([z, zs]), clf.kg)
    short = np.r_[np.zeros(len(idx), bool), np.ones(len(short_table), bool)]
    ok = y1 >= 0
    report = calibration_lib.trust_report(pred["prob1"][ok], y1[ok], pred["prob2"][ok], y2[ok], clf.calibration,
                                          coverage, short=short[ok])
    report["calibrated_with"] = {k: (clf.calibration or {}).get(k) for k in ("level1_temperature",
                                                                             "level2_temperature")}
    for name in ("in_scope", "short"):
        if name in report:
            detection.print_trust(report[name], f"{name.replace('_', '-')} flows")
    return report


def trained_levels(table, wd: Workdir, settings: Settings, class_names: Sequence[str], level: str, kg=None
                   ) -> tuple:
    """`table` (labels attached) with `level1` / `level2` named by the taxonomy source the workdir was trained
    with (`Workdir.trained_taxonomy`), and a report of what the model can and cannot know of these labels.

    The source is never re-decided from the new captures: `data.taxonomy = "auto"` applied to them would pick
    `raw` when the label hierarchy covers fewer than half of *their* labels, and no raw label matches the model's
    classes. A mixed corpus recorded one source per part: a flow takes the first of them that names one of the
    model's classes. An old `auto` workdir without a record does the same over hierarchy, graph and raw.

    Report: `taxonomy` (source, where it was recorded), `labelled_flows`, `flows_of_model_classes`,
    `flows_outside_taxonomy` with `labels_outside_taxonomy` (raw label → flows: labels the taxonomy does not name,
    e.g. nDPI's `Unknown`), `flows_of_other_classes` with `other_classes` (class → flows: named, but not one the
    model was trained on), counted before the packet filters."""
    record = wd.trained_taxonomy(settings)
    source = record["source"]
    if source in ("hierarchy", "graph", "raw"):
        candidates = [source]
    elif source == "mixed" and record.get("sources"):
        candidates = list(dict.fromkeys(s for s in record["sources"].values() if s in taxonomy.SOURCES[1:]))
    else:  # `dataset`, or an old `auto` workdir without a record
        candidates = ["hierarchy", "graph", "raw"]
    if kg is None:
        candidates = [c for c in candidates if c != "graph"] or ["hierarchy"]
    known = set(class_names)
    tables = [taxonomy.resolve_levels(table, c, kg)[0] for c in candidates]
    meta = dict(tables[0].meta)
    if len(tables) > 1:
        chosen = np.full(len(table), -1)
        for k, t in enumerate(tables):
            hit = (chosen < 0) & np.isin(np.asarray(t.meta[level]).astype(str), sorted(known))
            chosen[hit] = k
        chosen[chosen < 0] = 0
        for col in ("level1", "level2"):
            meta[col] = np.choose(chosen, [np.asarray(t.meta[col]).astype(object) for t in tables]).astype(str)
    table = dataclasses.replace(table, meta=meta)
    raw = np.asarray(table.meta["label"]).astype(str)
    named = np.asarray(table.meta[level]).astype(str)
    labelled = raw != ""
    outside = labelled & (named == "")
    other = labelled & (named != "") & ~np.isin(named, sorted(known))

    def counts(values):
        return {str(k): int(v) for k, v in Counter(values.tolist()).most_common()}

    report = {"taxonomy": {"source": "+".join(candidates) if len(candidates) > 1 else candidates[0],
                           "recorded": source, "recorded_in": record["recorded_in"]},
              "labelled_flows": int(labelled.sum()),
              "flows_of_model_classes": int((labelled & np.isin(named, sorted(known))).sum()),
              "flows_outside_taxonomy": int(outside.sum()), "labels_outside_taxonomy": counts(raw[outside]),
              "flows_of_other_classes": int(other.sum()), "other_classes": counts(named[other])}
    return table, report


def evaluate_workdir(workdir: str | pathlib.Path, inputs: Sequence[str], label_spec: str,
                     out: Optional[str] = None, coverage: float = calibration_lib.DEFAULT_COVERAGE) -> dict:
    """Zero-shot, linear-probe and (when trained) GNN metrics of a trained workdir on any labelled captures.

    Raises `errors.UserError` subclasses (WorkdirError, ...) for a missing or unfinished workdir and a
    ValueError when no flow of the captures carries a label of the given spec."""
    if not 0 < coverage < 1:
        raise ValueError(f"--coverage {coverage}: must be between 0 and 1 (e.g. 0.9)")
    wd = Workdir(workdir)
    towers = restore.load_towers(wd)
    settings, model, params, info = towers.settings, towers.model, towers.params, towers.info
    clf = restore.load_classifier(wd, towers=towers) if wd.has_gnn() else None
    probe = wd.load_probe()
    prompt_feats, prompt_class = wd.load_class_text()
    names, level = info["class_names"], info["label_level"]
    table = ingest(inputs, IngestConfig.from_data_config(settings.data))
    if not len(table):
        raise ValueError(f"no flows in {list(map(str, inputs))} (no readable capture files?)")
    table = labels_lib.attach_labels(table, label_spec, inputs=inputs)
    raw = np.asarray(table.meta.get("label", np.full(len(table), ""))).astype(str)
    if not (raw != "").any():
        raise ValueError(f"--labels {label_spec}: none of the {len(table)} flows got a label "
                         f"(wrong label directory or spec?)")
    # The classes as the workdir's training named them (the taxonomy source it recorded), never re-decided from
    # the new captures.
    table, labels_report = trained_levels(table, wd, settings, names, level,
                                          detection.load_graph(settings.gnn.kg) if settings.gnn.kg else None)
    print(f"[evaluate] classes from the {labels_report['taxonomy']['source']} taxonomy the workdir was trained "
          f"with ({labels_report['taxonomy']['recorded_in']}); {labels_report['labelled_flows']} labelled flows: "
          f"{labels_report['flows_of_model_classes']} of the model's {len(names)} classes, "
          f"{labels_report['flows_outside_taxonomy']} with a label the taxonomy does not know, "
          f"{labels_report['flows_of_other_classes']} of classes the model was not trained on", file=sys.stderr)
    table = with_name_features(table, settings)
    # Flows with fewer packets than training keeps (classify marks them `too_short`), of classes the model knows:
    # scored apart, so the figures of the flows training keeps are not mixed with theirs.
    packets = np.asarray(table.meta["c2s_packets"], np.int64) + np.asarray(table.meta["s2c_packets"], np.int64)
    short_rows = np.flatnonzero((packets < settings.data.min_packets)
                                & np.isin(np.asarray(table.meta[level]).astype(str), list(names)))
    short_table = table.select(short_rows)
    table, dropped = splits_lib.filter_flows(table, min_packets=settings.data.min_packets,
                                            drop_one_way=settings.data.drop_one_way, drop_unlabelled=True,
                                            label_column=level)
    labels = np.asarray(table.meta[level]).astype(str)
    lookup = {n: i for i, n in enumerate(names)}
    y = np.array([lookup.get(x, -1) for x in labels], np.int32)
    unknown = {str(n): int(c) for n, c in zip(*np.unique(labels[y < 0], return_counts=True))}
    idx = np.nonzero(y >= 0)[0]
    feats, z = embed_flows(make_embed_fn(model), runtime.replicate(params), table.tensors, idx,
                           settings.eval.batch_size, progress=True)
    result = {"flows_evaluated": int(len(idx)), "unknown_classes": unknown, "dropped": dropped,
              "label_level": level, "labels": labels_report}
    if not len(idx):
        print(f"[evaluate] warning: no flow of a class the model knows ({len(names)} classes) is left after the "
              f"filters; unknown classes {unknown}, dropped {dropped}", file=sys.stderr)
    apps = np.asarray(table.meta["level2"]).astype(str)[idx]
    train_apps = info.get("train_applications")  # None in older workdirs: no seen/novel breakdown
    if len(idx):
        rows, halves = [], []
        for key, title, scores in (
                ("linear_probe", "linear probe", linear_probe_scores(probe, feats)),
                ("zero_shot", "zero-shot", zero_shot_scores(params, model, z, prompt_feats, prompt_class,
                                                            len(names)))):
            result[key] = metrics_lib.classification_report(y[idx], scores, names)
            result[key]["per_capture"] = metrics_lib.per_capture_accuracy(
                y[idx], scores, np.asarray(table.meta["capture"]).astype(str)[idx], names)
            if train_apps is not None:
                result[key]["by_application_novelty"] = metrics_lib.by_application_novelty(
                    y[idx], scores, names, apps, train_apps)
            rows.append((title, result[key]))
            halves += metrics_lib.novelty_rows(title, result[key])
        print(metrics_lib.format_table(rows + halves), file=sys.stderr)
        print(metrics_lib.format_capture_rows(rows), file=sys.stderr)
    if clf is not None and len(idx):
        result["trust"] = trust_block(clf, settings, table, idx, z, short_table, coverage)
        level1 = np.asarray(table.meta["level1"]).astype(str)[idx]
        gnn_block = train_gnn.evaluate_gnn(clf.gnn_train_config, clf.gnn_params, z, level1, apps, clf.kg,
                                           min_flows_level2=settings.gnn.min_flows_level2,
                                           train_applications=train_apps,
                                           captures=np.asarray(table.meta["capture"]).astype(str)[idx])
        result["gnn"] = gnn_block
        gnn_rows = [("GNN level 1", gnn_block["level1"]), ("GNN level 2", gnn_block["level2"])]
        print(metrics_lib.format_table(gnn_rows + metrics_lib.novelty_rows("GNN level 1", gnn_block["level1"])),
              file=sys.stderr)
        print(metrics_lib.format_capture_rows(gnn_rows), file=sys.stderr)
    if unknown:
        print(f"[evaluate] classes unknown to the model, left out: {unknown}", file=sys.stderr)
    if out:
        files.write_text(out, json.dumps(result, indent=2))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pclip_jax.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("inputs", nargs="+", help="capture files or folders (searched recursively)")
    parser.add_argument("--workdir", required=True, help="a workdir written by pclip_jax.main")
    parser.add_argument("--labels", required=True, help="ndpi:DIR | folder | csv:PATH | dpi")
    parser.add_argument("--out", default=None, help="write the metrics as JSON here")
    parser.add_argument("--coverage", type=float, default=calibration_lib.DEFAULT_COVERAGE,
                        help="target coverage of the prediction sets whose empirical coverage is reported (0.9)")
    parser.add_argument("--compile-cache", default=None, metavar="DIR",
                        help="keep compiled XLA programs here for later runs (default: the workdir's cache/xla; "
                             "'off': none)")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = parser.parse_args(argv)
    with errors.cli_errors(args.verbose) as status, runtime.restored_compilation_cache():
        if args.compile_cache != "off":  # process-wide: undone when main returns
            restore.use_compilation_cache(args.workdir, args.compile_cache, tool="evaluate")
        evaluate_workdir(args.workdir, args.inputs, args.labels, args.out, args.coverage)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
