"""The main job on several capture-disjoint splits, one command: mean and spread of every evaluation.

    python benchmarks/capture_splits.py --workdir /tmp/splits [--config configs/quickstart.py] [--seeds 0,1,2]
        [--set train.num_steps=300 ...] [--json OUT]

One split of the nDPI corpus is a noisy estimate (several classes have one to three test captures), so this runs
`train_and_evaluate` once per `data.split_seed` (each in WORKDIR/seed_N, resumed if already trained; ingest and
text features shared in WORKDIR/cache) and prints, per evaluation, the mAUC of every split, their mean and
standard deviation, and the same for the test flows of applications seen in training and of novel ones
(`by_application_novelty`). Writes WORKDIR/capture_splits.json.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

EVALUATIONS = (("linear probe", ("test",)), ("zero-shot", ("zero_shot",)), ("GNN level 1", ("gnn", "level1")),
               ("GNN level 2", ("gnn", "level2")))
HALVES = (("all", None), ("seen apps", "seen_applications"), ("novel apps", "novel_applications"))


def report_of(results: dict, path: tuple) -> dict | None:
    node = results
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def split_row(results: dict) -> dict:
    """{evaluation: {half: mAUC}} of one split's results.json (NaN where an evaluation or half is absent)."""
    row = {}
    for name, path in EVALUATIONS:
        report = report_of(results, path)
        cells = {}
        for half, key in HALVES:
            part = report if key is None else (report or {}).get("by_application_novelty", {}).get(key)
            cells[half] = float(part["mauc"]) if part and part.get("mauc") is not None else float("nan")
        row[name] = cells
    return row


def summarise(rows: list[dict]) -> dict:
    """{evaluation: {half: {"mean", "std", "splits"}}} over the splits (NaN-aware; std is the sample std)."""
    out = {}
    for name, _ in EVALUATIONS:
        out[name] = {}
        for half, _ in HALVES:
            values = np.array([r["mauc"][name][half] for r in rows], float)
            finite = values[np.isfinite(values)]
            out[name][half] = {"splits": values.tolist(),
                               "mean": float(finite.mean()) if len(finite) else float("nan"),
                               "std": float(finite.std(ddof=1)) if len(finite) > 1 else float("nan")}
    return out


def format_summary(seeds: list[int], summary: dict) -> str:
    head = f"{'evaluation':<14}{'test flows':<12}" + "".join(f"{'split ' + str(s):>10}" for s in seeds) + \
        f"{'mean':>9}{'± sd':>8}"
    lines = [head]
    for name, _ in EVALUATIONS:
        for half, _ in HALVES:
            cell = summary[name][half]
            if all(not np.isfinite(v) for v in cell["splits"]):
                continue
            lines.append(f"{name:<14}{half:<12}" + "".join(f"{v:>10.3f}" for v in cell["splits"]) +
                         f"{cell['mean']:>9.3f}{cell['std']:>8.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.py"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from absl import logging

    from pclip_jax import train
    from pclip_jax.config_files import load_config

    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(args.workdir)
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        config = load_config(args.config, [*args.overrides, f"data.split_seed={seed}"])
        if not config.data.cache_dir:
            config.data.cache_dir = str(workdir / "cache")  # ingest and text features shared by all splits
        print(f"=== capture split seed {seed} ===", file=sys.stderr)
        results = train.train_and_evaluate(config, str(workdir / f"seed_{seed}"))
        rows.append({"seed": seed, "test_flows": results["test"]["num_flows"], "mauc": split_row(results)})
    summary = summarise(rows)
    print("\nmAUC on capture-disjoint test splits (seen / novel apps: test flows whose application the training "
          "flows have / do not have)")
    print(format_summary(seeds, summary))
    report = {"config": args.config, "overrides": args.overrides, "seeds": seeds, "rows": rows, "summary": summary}
    (workdir / "capture_splits.json").write_text(json.dumps(report, indent=2))
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
