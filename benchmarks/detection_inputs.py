"""Does the detection stage gain from raw flow features beside the frozen tower's embedding?

    python benchmarks/detection_inputs.py WORKDIR [WORKDIR ...] [--variants none,sizes_iat] [--seeds 0,1,2]
        [--out DIR] [--json OUT]

For each finished main-job workdir (its towers, flows, capture splits and `embeddings.npz`) the hierarchical GNN
is trained again on the training flows with the flow node's input [embedding, raw features] — the features through
a layer of their own (`GnnConfig.flow_features`), kept out of the similarity term, early stopping on the
validation captures as in the main job — and evaluated on the test captures; a linear probe on the same inputs
beside it. Variants: `none` (the embedding only: the main job's GNN, a reference that reproduces it),
`sizes_iat` (signed sizes / 1500 and log inter-arrival times of the first K packets: what the tree peers split
on), `sizes_iat_bytes` (plus the first 8 packets' masked bytes / 255), `sizes_iat_names` (plus the server-name
vector). The tree ensembles' lead over the tower (docs/results.md, "Peers on the same splits") comes from these features; this measures
whether handing them to the detection stage closes it. Metrics at the level the workdir evaluates (level 1 for
nDPI, the device for IoT Sentinel); the workdir's own `gnn/` is not touched (the GNNs train under `--out`).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

VARIANTS = ("none", "sizes_iat", "sizes_iat_bytes", "sizes_iat_names")


def raw_features(tensors: dict, rows: np.ndarray, variant: str) -> np.ndarray:
    """[len(rows), F] fixed transforms of the flow table's columns (no statistics fitted: nothing to store)."""
    if variant == "none":
        return np.zeros((len(rows), 0), np.float32)
    sizes = np.asarray(tensors["sizes"][rows], np.float32) / 1500.0
    iat = np.log1p(np.maximum(np.asarray(tensors["iat"][rows], np.float32), 0.0) * 1e3) / 8.0
    parts = [sizes, iat]
    if variant == "sizes_iat_bytes":
        parts.append(np.asarray(tensors["bytes"][rows][:, :8], np.float32).reshape(len(rows), -1) / 255.0)
    elif variant == "sizes_iat_names":
        if "name_vec" not in tensors:
            raise ValueError("variant sizes_iat_names: the workdir's flows have no server-name vectors "
                             "(data.use_names=False)")
        parts.append(np.asarray(tensors["name_vec"][rows], np.float32))
    elif variant != "sizes_iat":
        raise ValueError(f"unknown variant {variant!r}; known {', '.join(VARIANTS)}")
    return np.concatenate(parts, 1)


def run_workdir(workdir: str, variants, seeds, out_dir: pathlib.Path) -> list[dict]:
    from pclip_jax import evaluate as evaluate_lib
    from pclip_jax.training import restore as inference
    from pclip_jax.training import experiment
    from pclip_jax.plumbing import metrics as metrics_lib
    from pclip_jax.training.towers import text_featurizer
    from pclip_jax.training import detection
    from pclip_jax.training import train_gnn

    towers = inference.load_towers(workdir)
    settings = towers.settings
    finished = experiment.load_finished(settings, workdir)
    if finished is None:
        raise SystemExit(f"{workdir}: not a finished run with embeddings.npz (rerun its main job to finish it)")
    _, prepared, embeddings = finished
    featurizer = text_featurizer(settings, towers.params) if towers.model.text_encoder is not None \
        else text_featurizer(settings)
    pkg = detection.prepare_detection_kg(settings, towers.model, towers.params, featurizer,
                                         towers.workdir.cache_dir(settings.data))
    meta, tensors = prepared.table.meta, prepared.table.tensors
    level1, level2 = (np.asarray(meta[k]).astype(str) for k in ("level1", "level2"))
    device_level = settings.data.label_level == "level2"
    splits = {"train": prepared.train_idx, "validation": prepared.val_idx, "test": prepared.test_idx}
    te = prepared.test_idx
    keep = prepared.class_ids[te] >= 0
    rows = []
    for variant in variants:
        # No validation captures (data.validation_fraction=0): no early stopping and the probe's default L2.
        x = {s: np.concatenate([embeddings[s], raw_features(tensors, r, variant)], 1)
             if embeddings.get(s) is not None else np.zeros((0, embeddings["train"].shape[1]), np.float32)
             for s, r in splits.items()}
        features = x["train"].shape[1] - embeddings["train"].shape[1]
        # The linear probe on the same inputs, at the workdir's evaluated classes (the main job's probe targets).
        names = prepared.class_names
        k = {s: prepared.class_ids[r] >= 0 for s, r in splits.items()}
        probe, _, _, _ = evaluate_lib.fit_validated_probe(
            x["train"][k["train"]], prepared.class_ids[splits["train"]][k["train"]], level2[splits["train"]][k["train"]],
            x["validation"][k["validation"]], prepared.class_ids[splits["validation"]][k["validation"]], len(names),
            settings.eval.probe_targets)
        report = metrics_lib.classification_report(prepared.class_ids[te][k["test"]],
                                                   evaluate_lib.linear_probe_scores(probe, x["test"][k["test"]]),
                                                   names)
        base = {"workdir": workdir, "variant": variant, "features": features}
        rows.append({**base, "model": "probe (shared-space embedding)", "seed": 0, "mauc": report["mauc"],
                     "accuracy": report["accuracy"], "macro_f1": report["macro_f1"]})
        for seed in seeds:
            gcfg = detection.gnn_train_config(settings, towers.params)
            gcfg = dataclasses.replace(gcfg, seed=seed,
                                       model=dataclasses.replace(gcfg.model, flow_features=features))
            validate = detection.gnn_validator(gcfg, pkg, prepared, level1, x["validation"] if len(x["validation"])
                                               else None,
                                               level2 if device_level else None)
            tr = splits["train"]
            params, _ = train_gnn.train_gnn(
                gcfg, x["train"], level1[tr], level2[tr], pkg,
                out_dir / f"{pathlib.Path(workdir).name}-{variant}-s{seed}", validate=validate,
                eval_every=settings.gnn.eval_every, progress=False, validation_level=2 if device_level else 1)
            block = train_gnn.evaluate_gnn(gcfg, params, x["test"][keep], level1[te][keep], level2[te][keep], pkg,
                                           measure_flops=False)
            level = block["level2" if device_level else "level1"]
            rows.append({**base, "model": f"GNN level {2 if device_level else 1}", "seed": seed,
                         "mauc": level["mauc"], "accuracy": level["accuracy"], "macro_f1": level["macro_f1"]})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def summary(rows: list[dict]) -> str:
    lines = ["| workdir | model | variant | F | n | mAUC | accuracy | macro-F1 |", "| --- " * 8 + "|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["workdir"], r["model"], r["variant"], r["features"]), []).append(r)
    for (wd, model, variant, f), rs in groups.items():
        cells = []
        for key in ("mauc", "accuracy", "macro_f1"):
            v = np.array([r[key] for r in rs])
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std(ddof=1):.3f}" if len(v) > 1 else ""))
        lines.append(f"| {pathlib.Path(wd).name} | {model} | {variant} | {f} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workdirs", nargs="+", help="finished main-job workdirs")
    parser.add_argument("--variants", default="none,sizes_iat", help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--seeds", default="0,1,2", help="GNN seeds")
    parser.add_argument("--out", default="/tmp/pclip_detection_inputs", help="where the GNNs train")
    parser.add_argument("--json", default=None, help="write the rows here")
    args = parser.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {unknown}; known {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows = []
    for wd in args.workdirs:
        rows += run_workdir(wd, variants, seeds, pathlib.Path(args.out))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
