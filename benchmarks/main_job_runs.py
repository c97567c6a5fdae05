"""What the benchmarks that run the main job several times share (data_scarcity.py, capture_splits.py): their
common flags, one run of `train_and_evaluate` in a sub-workdir with ingest and text features cached once for
all runs, reading a report out of results.json, and writing the summary."""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """--config, --workdir, --set KEY=VALUE (repeatable), --json."""
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.py"))
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--json", default=None)


def run_main_job(args: argparse.Namespace, name: str, overrides: list[str], banner: str) -> dict:
    """results.json of the main job with `args.config`, `args.overrides` + `overrides`, in WORKDIR/name (resumed
    when already trained); ingest and text features are shared in WORKDIR/cache unless the config names a cache."""
    from absl import logging

    from pclip_jax import job
    from pclip_jax.plumbing.config_files import load_config

    logging.set_verbosity(logging.WARNING)
    workdir = pathlib.Path(args.workdir)
    config = load_config(args.config, [*args.overrides, *overrides])
    if not config.data.cache_dir:
        config.data.cache_dir = str(workdir / "cache")
    print(f"=== {banner} ===", file=sys.stderr)
    return job.train_and_evaluate(config, str(workdir / name))


def report_at(results: dict, path: tuple) -> dict | None:
    """The report at `path` in results.json (e.g. ("gnn", "level1")), or None when the run has none."""
    node = results
    for key in path:
        node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def write_report(args: argparse.Namespace, filename: str, report: dict) -> None:
    """WORKDIR/filename, and the --json path when given."""
    text = json.dumps(report, indent=2)
    (pathlib.Path(args.workdir) / filename).write_text(text)
    if args.json:
        pathlib.Path(args.json).write_text(text)
