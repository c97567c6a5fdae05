"""Ingest captures into a flow table: ``python -m pclip_jax.ingest INPUT... --out DIR``.

Writes DIR/flows.csv, DIR/tensors.npz and DIR/summary.json (docs/architecture.md, "The flow table").
Problems with a capture are reported and skipped (exit 0); ``--strict`` makes them fatal (exit 1).
"""
from __future__ import annotations

import argparse
import sys

from pclip_jax.data.ingest import IngestConfig, ingest, keep_freed_memory
from pclip_jax.data.labels import attach_labels
from pclip_jax.plumbing.errors import cli_errors


def build_parser() -> argparse.ArgumentParser:
    d = IngestConfig()
    ap = argparse.ArgumentParser(prog="python -m pclip_jax.ingest", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="+", metavar="INPUT", help="capture files or folders (searched recursively)")
    ap.add_argument("--out", required=True, metavar="DIR", help="output folder")
    ap.add_argument("--labels", metavar="SPEC",
                    help="ndpi:DIR, folder, csv:PATH, dpi (nDPI through nfstream; see pclip_jax.data.labels)")
    ap.add_argument("--workers", type=int, default=d.workers, help="processes (files are spread over them)")
    ap.add_argument("--strict", action="store_true", help="any capture problem is an error (exit 1)")
    ap.add_argument("--packets", type=int, default=d.packets, metavar="K", help="packets per flow in the tensors")
    ap.add_argument("--bytes", type=int, default=d.bytes, metavar="B", help="bytes per packet from the IP header")
    ap.add_argument("--idle-timeout", type=float, default=d.idle_timeout, metavar="S", help="seconds")
    ap.add_argument("--active-timeout", type=float, default=d.active_timeout, metavar="S", help="seconds")
    ap.add_argument("--no-mask", action="store_true", help="keep addresses, ports, TTL, ... (docs/masking.md)")
    ap.add_argument("--payload-rows", action="store_true",
                    help="tensor rows from the first K packets that carry payload (bare ACKs skipped)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()
    with cli_errors(args.verbose) as status:
        _run(args)
    return status.code


def _run(args) -> None:
    config = IngestConfig(packets=args.packets, bytes=args.bytes, idle_timeout=args.idle_timeout,
                          active_timeout=args.active_timeout, mask=not args.no_mask, strict=args.strict,
                          workers=args.workers, payload_rows=args.payload_rows)
    table = ingest(args.inputs, config, progress=not args.quiet)
    if args.labels:
        try:
            table = attach_labels(table, args.labels, progress=not args.quiet, inputs=args.inputs)
        except (FileNotFoundError, ValueError) as e:
            raise ValueError(f"--labels {args.labels}: {e}") from e
    table.save(args.out)
    s = table.summary
    skipped = f" ({len(s['skipped_files'])} skipped)" if s.get("skipped_files") else ""
    print(f"{s['files']} files{skipped}, {s['packets']:,} packets, {s['flows']:,} flows, {len(s['errors'])} errors, "
          f"{s['later_fragments']:,} later IP fragments, {s['non_ip_packets']:,} non-IP packets; "
          f"{s['seconds']:.2f} s ({s['packets_per_s']:,.0f} packets/s) -> {args.out}")
    if "labels" in s and isinstance(s["labels"], dict) and "match_rate" in s["labels"]:
        lab = s["labels"]
        line = (f"labels: {lab.get('out_flows_matched', 0):,} of {lab.get('out_flows_in_capture', 0):,} label flows "
                f"matched one flow with the same packets each way ({lab['match_rate']:.2%})")
        if "match_rate_with_splits" in lab:
            line += (f"; {lab['match_rate_with_splits']:.2%} counting conversations that the idle/active timeouts "
                     f"split into several flows (every piece labelled)")
        print(line)


if __name__ == "__main__":
    sys.exit(main())
