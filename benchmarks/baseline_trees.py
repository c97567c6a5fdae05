"""Tree baselines on the same flows and capture-disjoint splits as the main job, for scale.

    python benchmarks/baseline_trees.py [--config configs/quickstart.py] [--seeds 0,1,2] [--json OUT]
    python benchmarks/baseline_trees.py --config configs/iot_sentinel.py     # devices, per flow and per capture

Extremely randomised trees (500, balanced class weights) on (a) the signed sizes and log inter-arrival times of
the first K packets — what flow-statistics classifiers see — (b) those plus the first B masked bytes of the
first 8 packets, and (c) those plus the server-name vector the packet tower reads (`data.use_names`). Train on
the training captures (validation included: no model selection here), test on the test captures; level-1 classes
with enough training flows, as in the main job. Each mAUC is also split into test flows whose application
(level-2 label) some training flow has ("seen") and the rest ("novel"), as the main job reports.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


# name: (with bytes, with names, label in the printout)
VARIANTS = {"sizes_iat": (False, False, "sizes+IAT"), "sizes_iat_bytes": (True, False, "+ bytes"),
            "sizes_iat_bytes_names": (True, True, "+ names")}


def features(tensors: dict, idx: np.ndarray, with_bytes: bool, with_names: bool = False) -> np.ndarray:
    sizes = tensors["sizes"][idx].astype(np.float32)
    iat = np.log1p(np.maximum(tensors["iat"][idx], 0.0) * 1e3)
    parts = [sizes, iat]
    if with_bytes:
        parts.append(tensors["bytes"][idx][:, :8].reshape(len(idx), -1).astype(np.float32))
    if with_names:
        parts.append(tensors["name_vec"][idx].astype(np.float32))
    return np.concatenate(parts, 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.py"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set data.min_class_flows=10")
    parser.add_argument("--workdir", default="/tmp/pclip_baselines")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from sklearn.ensemble import ExtraTreesClassifier

    from pclip_jax.plumbing.config_files import load_config
    from pclip_jax.data.prepare import prepare_flows
    from pclip_jax.training.detection import load_graph
    from pclip_jax.plumbing.metrics import (NOVEL, SEEN, by_application_novelty, classification_report,
                                            per_capture_accuracy)
    from pclip_jax.text.name_features import NameEncoder
    from pclip_jax.plumbing.settings import from_config, with_absolute_paths

    rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        config = with_absolute_paths(from_config(load_config(args.config, [*args.overrides,
                                                                           f"data.split_seed={seed}"])))
        cache = config.data.cache_dir or f"{args.workdir}/cache"
        prepared = prepare_flows(config.data, cache, progress=False,
                                 kg=load_graph(config.gnn.kg) if config.gnn.kg else None)
        prepared.table.tensors["name_vec"] = NameEncoder(config.text.encoder)(prepared.table.meta["server_name"])
        train_idx = np.concatenate([prepared.train_idx, prepared.val_idx])
        apps = np.asarray(prepared.table.meta["level2"]).astype(str)
        seen = prepared.applications(train_idx)
        y_train, y_test = prepared.class_ids[train_idx], prepared.class_ids[prepared.test_idx]
        keep_train, keep_test = y_train >= 0, y_test >= 0
        row = {"seed": seed}
        for name, (with_bytes, with_names, _) in VARIANTS.items():
            clf = ExtraTreesClassifier(500, n_jobs=-1, random_state=0, class_weight="balanced")
            clf.fit(features(prepared.table.tensors, train_idx[keep_train], with_bytes, with_names),
                    y_train[keep_train])
            proba = np.zeros((int(keep_test.sum()), len(prepared.class_names)))
            proba[:, clf.classes_] = clf.predict_proba(
                features(prepared.table.tensors, prepared.test_idx[keep_test], with_bytes, with_names))
            report = classification_report(y_test[keep_test], proba, prepared.class_names)
            row[name] = report["mauc"]
            row[f"{name}_accuracy"], row[f"{name}_macro_f1"] = report["accuracy"], report["macro_f1"]
            captures = np.asarray(prepared.table.meta["capture"]).astype(str)[prepared.test_idx[keep_test]]
            per_capture = per_capture_accuracy(y_test[keep_test], proba, captures, prepared.class_names)
            row[f"{name}_capture_accuracy"] = per_capture["accuracy"]
            row[f"{name}_capture_macro_f1"] = per_capture["macro_f1"]
            halves = by_application_novelty(y_test[keep_test], proba, prepared.class_names,
                                            apps[prepared.test_idx[keep_test]], seen)
            row[f"{name}_seen"], row[f"{name}_novel"] = halves[SEEN]["mauc"], halves[NOVEL]["mauc"]
        rows.append(row)
        cells = ", ".join(f"{label} {row[n]:.3f} ({row[n + '_seen']:.3f} / {row[n + '_novel']:.3f})"
                          for n, (_, _, label) in VARIANTS.items())
        print(f"seed {seed}: mAUC (seen apps / novel apps) {cells}", flush=True)
        cells = ", ".join(f"{label} {row[n + '_accuracy']:.3f} / {row[n + '_macro_f1']:.3f} / "
                          f"{row[n + '_capture_accuracy']:.3f} / {row[n + '_capture_macro_f1']:.3f}"
                          for n, (_, _, label) in VARIANTS.items())
        print(f"seed {seed}: accuracy / macro-F1 per flow / per capture: {cells}", flush=True)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
