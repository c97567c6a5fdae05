"""Build a flow dataset (TFDS, array_record) in one process or as an Apache Beam pipeline.

    python -m pclip_jax.data.build ndpi_traffic --manual_dir ../shared/data/ndpi --data_dir ~/tensorflow_datasets
    python -m pclip_jax.data.build ndpi_traffic --manual_dir ... --data_dir ... --beam_runner DirectRunner --beam_workers 2
    python -m pclip_jax.data.build iot_sentinel --manual_dir gs://.../iot --data_dir gs://... \\
        --beam_runner DataflowRunner --beam_args="--project=P --region=R --temp_location=gs://..."

Beam: one element per capture file → ingest → labels → filters; the per-capture label summaries are combined into
the capture-disjoint split (a side input); each split is written by TFDS's Beam writer. Both ways print one JSON
line: dataset, config, version, per-split example counts, a content digest (equal for both ways), seconds. Then the
packet bytes are also written in the fixed layout that training reads fastest (`pclip_jax.data.fixed`; `--no_fixed`
skips it, `python -m pclip_jax.data.fixed DATASET_DIR` writes it for a dataset built before).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import time

from pclip_jax.plumbing.errors import cli_errors


def main(argv=None) -> int:
    """The CLI: builds the dataset, one line `error: ...` and exit 1 on a bad input (`--verbose`: the traceback)."""
    args = _parse(argv)
    with cli_errors(args.verbose) as status:
        _build(args)
    return status.code


def run(argv=None) -> dict:
    """Builds the dataset the arguments name and returns what it prints (dataset, splits, digest, ...); errors
    raise."""
    return _build(_parse(argv))


def _parse(argv):
    # TFDS and TensorFlow load when a build runs, not at import (the CLI's --help and errors stay fast)
    from pclip_jax.data import tfds_builders

    parser = argparse.ArgumentParser(prog="python -m pclip_jax.data.build", description=__doc__.split("\n\n")[0])
    parser.add_argument("name", choices=sorted(tfds_builders.BUILDERS), help="dataset builder")
    parser.add_argument("--manual_dir", default=None, help="captures (and labels) on disk; see the builder's docs")
    parser.add_argument("--data_dir", required=True, help="where the dataset is written (data_dir/name/config/version)")
    parser.add_argument("--config", default=None, help="builder config (default: the builder's first, k16_b128)")
    parser.add_argument("--beam_runner", default=None,
                        help="run as an Apache Beam pipeline on this runner (DirectRunner, DataflowRunner, ...)")
    parser.add_argument("--beam_workers", type=int, default=1,
                        help="DirectRunner worker processes (multi-processing mode when > 1)")
    parser.add_argument("--beam_args", default="", help="further Beam pipeline options, one string")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    parser.add_argument("--no_fixed", action="store_true",
                        help="skip the fixed layout (DATASET/fixed/: the packet bytes as memory-mapped raw rows, read "
                             "per training batch; pclip_jax.data.fixed), e.g. for a data_dir on object storage")
    args = parser.parse_args(argv)
    if args.beam_workers < 1:
        parser.error(f"--beam_workers must be >= 1, got {args.beam_workers}")
    if args.beam_workers > 1 and not args.beam_runner:
        parser.error("--beam_workers needs --beam_runner (e.g. DirectRunner)")
    return args


def _build(args) -> dict:
    # TFDS and TensorFlow load when a build runs, not at import (the CLI's --help and errors stay fast)
    from pclip_jax.data import tfds_builders

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # TFDS prints its progress on stdout; stdout is the JSON line
        builder = tfds_builders.build(args.name, args.data_dir, args.manual_dir, args.config, args.beam_runner,
                                      args.beam_workers, shlex.split(args.beam_args))
        if not args.no_fixed:
            # only a build that writes the fixed layout needs it (it reads the built TFDS dataset back)
            from pclip_jax.data import fixed

            fixed.write_fixed(str(builder.data_dir))
    result = {"dataset": args.name, "config": builder.builder_config.name, "version": str(builder.version),
              "runner": args.beam_runner or "single-process", **tfds_builders.dataset_digest(builder),
              "data_dir": str(builder.data_dir), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    sys.exit(main())
