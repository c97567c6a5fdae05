"""Data-scarcity curves: a view of the peer suite (benchmarks/peers.py) at several training fractions.

    python benchmarks/data_scarcity.py --workdir W [--datasets ndpi] [--models pclip,extra_trees]
        [--fractions 0.1,0.3,0.5,1.0] [--seeds 0,1,2] [--set KEY=VALUE ...] [--json OUT]

Each fraction takes a class-balanced, seeded subset of the training captures' flows (every class keeps at least
one flow, subsets nested; `pclip_jax.data.splits.fraction_subset`) for every trained stage; the capture-disjoint
test split never changes. The cells are the suite's (same files, so a cell computed here is not recomputed by
peers.py and the other way round). Prints mAUC per model and fraction, mean ± sd over seeds, with the share of the
full-data mAUC kept, and writes W/plots/scarcity_DATASET.png.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--datasets", default="ndpi")
    parser.add_argument("--models", default="pclip,extra_trees")
    parser.add_argument("--fractions", default="0.1,0.3,0.5,1.0")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from absl import logging

    from pclip_jax.plumbing import errors, files
    from pclip_bench.peers import suite

    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(args.workdir)
    fractions = sorted(float(f) for f in args.fractions.split(","))
    with errors.cli_errors(verbose=False) as status:
        cells = suite.make_cells(args.datasets.split(","), args.models.split(","), fractions,
                                 [int(s) for s in args.seeds.split(",")])
        rows = suite.run_cells(cells, workdir, args.overrides)
        aggregated = suite.aggregate(rows)
        suite.plot(aggregated, rows, workdir / "plots")
        print(f"{'dataset':<14}{'model':<18}" + "".join(f"{f:>14g}" for f in fractions) + f"{'kept at 30%':>13}")
        for dataset in sorted({a["dataset"] for a in aggregated}):
            for model in sorted({a["model"] for a in aggregated if a["dataset"] == dataset}):
                get = {a["fraction"]: a for a in aggregated if a["dataset"] == dataset and a["model"] == model}
                cells_txt = "".join(f"{suite._fmt(get[f]['mauc'], get[f]['mauc_sd']) if f in get else '-':>14}"
                                    for f in fractions)
                pair = suite.paired(rows, dataset, [(model, 1.0), (model, 0.3)])  # on the seeds both have
                kept = (f"{pair[0][model, 0.3]['mauc'] / pair[0][model, 1.0]['mauc']:>13.1%}" if pair else
                        f"{'-':>13}")
                print(f"{dataset:<14}{model:<18}{cells_txt}{kept}")
        if args.json:
            files.write_json(pathlib.Path(args.json), aggregated)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
