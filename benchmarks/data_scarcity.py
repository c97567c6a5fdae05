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
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = (("linear probe", ("test",)), ("zero-shot", ("zero_shot",)), ("GNN level 1", ("gnn", "level1")))


def lookup(results: dict, path: tuple) -> float:
    node = results
    for key in path:
        if key not in node:
            return float("nan")
        node = node[key]
    return float(node["mauc"])


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
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.py"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--fractions", default="0.1,0.3,0.5,1.0")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from absl import logging

    from pclip_jax import train
    from pclip_jax.config_files import load_config

    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(args.workdir)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    rows = []
    for fraction in fractions:
        config = load_config(args.config, args.overrides)
        config.data.fraction = fraction
        if not config.data.cache_dir:
            config.data.cache_dir = str(workdir / "cache")  # ingest and text features shared by all fractions
        print(f"=== fraction {fraction:g} ===", file=sys.stderr)
        results = train.train_and_evaluate(config, str(workdir / f"fraction_{fraction:g}"))
        rows.append({"fraction": fraction, "train_flows": results["data"]["train_flows"],
                     "mauc": {name: lookup(results, path) for name, path in STAGES}})
    full = rows[-1]["mauc"]
    print(f"\n{'fraction':>9}{'flows':>8}" + "".join(f"{name:>22}" for name, _ in STAGES))
    for r in rows:
        cells = "".join(f"{r['mauc'][n]:>12.3f} ({r['mauc'][n] / full[n]:>5.1%})" for n, _ in STAGES)
        print(f"{r['fraction']:>9g}{r['train_flows']:>8d}{cells}")
    print("(in brackets: share of the mAUC reached with the largest fraction)")
    report = {"config": args.config, "overrides": args.overrides, "rows": rows}
    (workdir / "scarcity.json").write_text(json.dumps(report, indent=2))
    plot(rows, workdir / "scarcity.png")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
