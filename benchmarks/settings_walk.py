"""How often the main job's whole `Settings` crosses a module boundary below the entry point (issue 28's "climbs
back"): runs `job.train_and_evaluate` on the test config (tests' stand-in nDPI captures and tiny text encoder, or
the given ones) under a profiler and lists every call from one `pclip_jax` module into a function of another
that receives the whole `Settings` object as an argument (not a section of it). Calls made by `pclip_jax.job` are
the entry point handing the resolved settings to a stage; the ones below it are the count.

    python benchmarks/settings_walk.py [--ndpi ../shared/data/ndpi --encoder ../shared/models/all-MiniLM-L6-v2]

About 1-2 minutes on 2 CPU cores (the profiler sees every Python call, JAX's included).
"""
from __future__ import annotations

import argparse
import collections
import pathlib
import sys
import tempfile

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def walk(ndpi: str, encoder: str) -> collections.Counter:
    from pclip_jax import job
    from pclip_jax.configs import test as test_config
    from pclip_jax.plumbing.settings import Settings

    edges: collections.Counter = collections.Counter()

    def on_call(frame, event, _arg):
        if event != "call" or frame.f_back is None:
            return
        callee = frame.f_globals.get("__name__", "")
        caller = frame.f_back.f_globals.get("__name__", "")
        if not (callee.startswith("pclip_jax") and caller.startswith("pclip_jax")) or callee == caller:
            return
        code = frame.f_code
        for name in code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]:
            if isinstance(frame.f_locals.get(name), Settings):
                edges[(caller, frame.f_back.f_code.co_name, callee, code.co_name)] += 1
                return

    config = test_config.get_config()
    config.data.manual_dir, config.text.encoder = ndpi, encoder
    with tempfile.TemporaryDirectory() as workdir:
        sys.setprofile(on_call)
        try:
            job.train_and_evaluate(config, workdir)
        finally:
            sys.setprofile(None)
    return edges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ndpi", default=None, help="nDPI captures (default: the tests' stand-ins, built now)")
    parser.add_argument("--encoder", default=None, help="text encoder (default: the tests' tiny random one)")
    args = parser.parse_args()
    if args.ndpi is None or args.encoder is None:
        from tests.synthetic_data import build_ndpi_corpus, build_text_encoder
    with tempfile.TemporaryDirectory(prefix="settings_walk_") as scratch:  # the stand-ins, removed after
        ndpi = args.ndpi or str(build_ndpi_corpus(pathlib.Path(scratch) / "ndpi"))
        encoder = args.encoder or str(build_text_encoder(pathlib.Path(scratch) / "encoder"))
        edges = walk(ndpi, encoder)
    below = {k: n for k, n in edges.items() if k[0] != "pclip_jax.job"}
    for (caller, caller_fn, callee, callee_fn), n in sorted(edges.items()):
        mark = "   entry" if caller == "pclip_jax.job" else "   BELOW"
        print(f"{mark}  {caller}.{caller_fn} -> {callee}.{callee_fn}  x{n}")
    print(f"\nthe whole Settings handed across a module boundary: {len(edges)} call sites, {len(edges) - len(below)} "
          f"by the entry point (job), {len(below)} below it ({sum(below.values())} calls)")


if __name__ == "__main__":
    main()
