"""PacketCLIP against its peers on the same flows, capture-disjoint splits, fractions and seeds, one command.

    python benchmarks/peers.py --workdir W [--datasets ndpi_closed,ndpi_novel,iot_sentinel] [--models all]
        [--fractions 1.0,0.1] [--seeds 0,1,2,3,4] [--size cpu|published] [--shard I/N] [--json OUT]
        [--set KEY=VALUE ...] [--tune-only] [--summary-only] [--readme README.md]

Every model is first tuned on the tuning split (validation captures only; W/tuned/), then every (dataset, model,
fraction, seed) cell is its own file under W/cells/ with its per-flow answers (a rerun resumes; `--shard I/N` runs
every N-th cell, so N processes or hosts — `launch/peers_array.sh` — share one sweep). After the cells it writes
the protocol's report, W/protocol.md (every figure a mean over splits with a capture-bootstrap interval, PacketCLIP's
declared evaluation against the best tree and the best neural peer as paired margins), and protocol 1's summary
(W/summary.md, plots in W/plots/). `--readme FILE` also rewrites the generated blocks FILE holds between their marker
lines: the protocol's headline table (`pclip_bench.peers.report.README_BEGIN`, README.md) and protocol 1's peers
summary (`pclip_bench.peers.suite.README_BEGIN`, docs/results.md).
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
                        help="also rewrite the generated blocks FILE has: protocol 1's peers summary "
                        "(docs/results.md) and the protocol's headline table (README.md)")
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
        # --readme FILE rewrites the generated blocks FILE has: protocol 1's peers summary and/or the protocol's.
        readme = None if args.readme is None else pathlib.Path(args.readme)
        readme_text = "" if readme is None else readme.read_text(encoding="utf-8")
        from pclip_bench.peers import report

        if readme is not None and report.README_BEGIN not in readme_text and suite.README_BEGIN not in readme_text:
            raise ValueError(f"--readme {readme}: it has neither generated block's marker line "
                             f"({suite.README_BEGIN!r}, {report.README_BEGIN!r})")
        suite.summarize(workdir, args.json, cells, command,
                        readme=readme if readme is not None and suite.README_BEGIN in readme_text else None)
        # The protocol's report (intervals from the cells' answers), when protocol cells exist.
        from pclip_jax.plumbing import files

        protocol_report = report.protocol_report(workdir)
        if protocol_report["tables"] or protocol_report["tuned"]:
            text = report.markdown(protocol_report, command)
            files.write_text(workdir / "protocol.md", text)
            files.write_json(workdir / "protocol.json", protocol_report)
            print(text)
            if readme is not None and report.README_BEGIN in readme_text:
                shown = readme.name if readme.is_absolute() else readme.as_posix()
                suite.replace_readme_block(readme, report.readme_block(protocol_report, f"{command} --readme {shown}"),
                                           report.README_BEGIN, report.README_END)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
