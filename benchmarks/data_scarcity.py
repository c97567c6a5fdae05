"""Data-scarcity curve: the main job at several fractions of the training data, one command.

    python benchmarks/data_scarcity.py --config configs/quickstart.py --workdir /tmp/scarcity \
        [--fractions 0.1,0.3,0.5,1.0] [--set train.num_steps=300 ...] [--json OUT]

Each fraction takes a class-balanced, seeded subset of the training captures' flows (every class keeps at least
one flow; `pclip_jax.data.splits.fraction_subset`) for *every* trained stage (pre-training, linear probe, GNN);
the capture-disjoint test split never changes. Prints mAUC per stage and fraction with the share of the full-data
mAUC kept, and writes `scarcity.png` and `scarcity.json` in the workdir.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.main_job_runs import add_arguments, report_at, run_main_job, write_report  # noqa: E402

STAGES = (("linear probe", ("test",)), ("zero-shot", ("zero_shot",)), ("GNN level 1", ("gnn", "level1")))


def lookup(results: dict, path: tuple) -> float:
    report = report_at(results, path)
    return float(report["mauc"]) if report else float("nan")


def plot(rows: list[dict], path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    fractions = [r["fraction"] for r in rows]
    for name, _ in STAGES:
        ax.plot(fractions, [r["mauc"][name] for r in rows], marker="o", label=name)
    ax.set_xscale("log")
    ax.set_xticks(fractions, [f"{f:g}" for f in fractions])
    ax.set_xlabel("fraction of training data")
    ax.set_ylabel("mAUC (capture-disjoint test)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--fractions", default="0.1,0.3,0.5,1.0")
    args = parser.parse_args(argv)

    workdir = pathlib.Path(args.workdir)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    rows = []
    for fraction in fractions:
        results = run_main_job(args, f"fraction_{fraction:g}", [f"data.fraction={fraction}"],
                               f"fraction {fraction:g}")
        rows.append({"fraction": fraction, "train_flows": results["data"]["train_flows"],
                     "mauc": {name: lookup(results, path) for name, path in STAGES}})
    full = rows[-1]["mauc"]
    print(f"\n{'fraction':>9}{'flows':>8}" + "".join(f"{name:>22}" for name, _ in STAGES))
    for r in rows:
        cells = "".join(f"{r['mauc'][n]:>12.3f} ({r['mauc'][n] / full[n]:>5.1%})" for n, _ in STAGES)
        print(f"{r['fraction']:>9g}{r['train_flows']:>8d}{cells}")
    print("(in brackets: share of the mAUC reached with the largest fraction)")
    write_report(args, "scarcity.json", {"config": args.config, "overrides": args.overrides, "rows": rows})
    plot(rows, workdir / "scarcity.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
