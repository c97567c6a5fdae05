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
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from benchmarks.main_job_runs import add_arguments, report_at, run_main_job, write_report  # noqa: E402

EVALUATIONS = (("linear probe", ("test",)), ("zero-shot", ("zero_shot",)), ("GNN level 1", ("gnn", "level1")),
               ("GNN level 2", ("gnn", "level2")))
HALVES = (("all", None), ("seen apps", "seen_applications"), ("novel apps", "novel_applications"))


def split_row(results: dict) -> dict:
    """{evaluation: {half: mAUC}} of one split's results.json (NaN where an evaluation or half is absent)."""
    row = {}
    for name, path in EVALUATIONS:
        report = report_at(results, path)
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
    add_arguments(parser)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for seed in seeds:
        results = run_main_job(args, f"seed_{seed}", [f"data.split_seed={seed}"], f"capture split seed {seed}")
        rows.append({"seed": seed, "test_flows": results["test"]["num_flows"], "mauc": split_row(results)})
    summary = summarise(rows)
    print("\nmAUC on capture-disjoint test splits (seen / novel apps: test flows whose application the training "
          "flows have / do not have)")
    print(format_summary(seeds, summary))
    write_report(args, "capture_splits.json",
                 {"config": args.config, "overrides": args.overrides, "seeds": seeds, "rows": rows,
                  "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
