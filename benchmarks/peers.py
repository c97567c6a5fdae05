"""PacketCLIP against its peers on the same flows, capture-disjoint splits, fractions and seeds, one command.

    python benchmarks/peers.py --workdir W [--datasets ndpi,iot_sentinel] [--models all]
        [--fractions 0.1,0.3,1.0] [--seeds 0,1,2] [--size cpu|published] [--shard I/N] [--json OUT]
        [--set KEY=VALUE ...] [--summary-only] [--readme docs/results.md]

Every (dataset, model, fraction, seed) cell is its own file under W/cells/ (a rerun resumes; `--shard I/N` runs
every N-th cell, so N processes or hosts — `launch/peers_array.sh` — share one sweep). After the cells it prints,
from every finished cell, a table per dataset (mean ± sd over seeds), the paper's four claims, and writes plots
(data-scarcity curves, mAUC against FLOPs, reliability diagrams) to W/plots/, everything to W/peers.json and the
Markdown report (tables per dataset and fraction, the issue's quality bar, the claims, the cells still to run) to
W/summary.md; `--readme FILE` also rewrites FILE's generated block (the quality bar, the claims, the full-data
tables) between its two marker lines (`pclip_bench.peers.suite.README_BEGIN` / `README_END`).
Models: pclip (rows pclip_probe, pclip_zero_shot, pclip_gnn[, pclip_gnn_level1]), extra_trees, lightgbm, cnn1d,
fsnet, yatc, netmamba, etbert (pclip_bench/peers/). `--size published` trains the papers' sizes (accelerators).
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
    parser.add_argument("--datasets", default="ndpi_closed,ndpi_novel,iot_sentinel")
    parser.add_argument("--models", default="all")
    parser.add_argument("--fractions", default="1.0,0.1")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--size", choices=("cpu", "published"), default="cpu")
    parser.add_argument("--shard", default="0/1", metavar="I/N")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dataset config override for every cell, e.g. --set train.num_steps=200")
    parser.add_argument("--json", default=None, help="also write the rows (a list) here")
    parser.add_argument("--summary-only", action="store_true", help="summarise the finished cells, run nothing")
    parser.add_argument("--tune-only", action="store_true",
                        help="tune every (dataset, model) of the sweep on the tuning split, run no cell")
    parser.add_argument("--untuned", action="store_true",
                        help="the models' fixed defaults, no tuning (the protocol before tuning; cells say so)")
    parser.add_argument("--readme", default=None, metavar="FILE",
                        help="also rewrite the generated peers summary block of FILE (e.g. docs/results.md)")
    args = parser.parse_args(argv)

    from absl import logging

    from pclip_jax.plumbing import errors
    from pclip_bench.peers import suite

    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(args.workdir)
    with errors.cli_errors(verbose=False) as status:
        models = suite.MODELS if args.models == "all" else tuple(args.models.split(","))
        cells = suite.make_cells(args.datasets.split(","), models, [float(f) for f in args.fractions.split(",")],
                                 [int(s) for s in args.seeds.split(",")])
        if args.tune_only:
            for dataset, model in dict.fromkeys((c.dataset, m) for c in suite.shard(cells, args.shard)
                                                for m in suite.tuning.TUNED_AS.get(c.model, (c.model,))):
                suite.tune_model(dataset, model, workdir, args.overrides, args.size)
        elif not args.summary_only:
            suite.run_cells(suite.shard(cells, args.shard), workdir, args.overrides, args.size,
                            tune=not args.untuned)
        # The command that regenerates the summary, as the report names it (the sweep's own options, no workdir).
        chosen = [f"--{name} {getattr(args, name)}" for name in ("datasets", "models", "fractions", "seeds")
                  if getattr(args, name) != parser.get_default(name)]
        command = " ".join(["python benchmarks/peers.py --workdir W", *chosen, "--summary-only"])
        suite.summarize(workdir, args.json, cells, command,
                        readme=None if args.readme is None else pathlib.Path(args.readme))
        # The protocol's report (intervals from the cells' answers), when protocol cells exist.
        from pclip_bench.peers import report
        from pclip_jax.plumbing import files

        protocol_report = report.protocol_report(workdir)
        if protocol_report["tables"] or protocol_report["tuned"]:
            text = report.markdown(protocol_report, command)
            files.write_text(workdir / "protocol.md", text)
            files.write_json(workdir / "protocol.json", protocol_report)
            print(text)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
