"""Flows per second, whole process, one core: `classify` (ONNX and JAX backends) against nfstream + nDPI.

    python -m pclip_jax.export --workdir W --out EXPORT
    python benchmarks/classify_throughput.py --model EXPORT --workdir W --test-split-of W --json OUT

What is timed, for each tool, is one child process pinned to one CPU core (`sched_setaffinity`; onnxruntime and
XLA also told to use one thread), from start to exit, over the same capture files:
* `nfstream + nDPI`: NFStreamer per capture (one meter, nDPI dissection on with its default 20 packets, statistics
  off), every flow consumed: what a user would otherwise run to label traffic.
* `pclip onnx`: `python -m pclip_jax.classify --backend onnx --model EXPORT --threads 1 ... --out FILE`: ingest,
  packet tower, GNN, calibration, explanations and JSON lines, without JAX; `pclip onnx brief`: the same with
  `--brief` (no winning descriptions, no flow facts: the detection stage reads the graph once).
* `pclip jax` (with `--workdir`): the same on the workdir's checkpoints with JAX, compiling every program
  (`--compile-cache off`: a first run on a workdir); `pclip jax cached`: the same with the programs an earlier,
  untimed run kept in a fresh compilation cache (what every later run on a workdir does by default).
Each runs `--repeat` times (default 2) and the fastest is reported (the machine may be shared); the ratio is
flows/s of pclip over flows/s of nfstream (each tool's own flow count: their flow definitions differ slightly).

Captures: INPUT files or folders, or `--test-split-of W`: the test-split captures of workdir W (captures its
model never trained on), found under `--data-dir` (default: the nDPI captures in ../shared).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1",
              "TF_CPP_MIN_LOG_LEVEL": "3"}

NFSTREAM = """
import sys
from nfstream import NFStreamer
n = 0
for path in sys.argv[1:]:
    n += sum(1 for _ in NFStreamer(source=path, n_meters=1, statistical_analysis=False, splt_analysis=0))
print(n)
"""


def _pin():
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})


def _child(cmd: list[str]) -> tuple[float, float, str, str]:
    """(wall seconds, CPU seconds, stdout, stderr) of a child pinned to one core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, preexec_fn=_pin, env={**os.environ, **ONE_THREAD})
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if r.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), r.stdout, r.stderr


def run_nfstream(files: list[str]) -> dict:
    wall, cpu, out, _ = _child([sys.executable, "-c", NFSTREAM, *files])
    return {"seconds": wall, "cpu_seconds": cpu, "flows": int(out.split()[-1])}


def run_classify(args: list[str], files: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "preds.jsonl"
        wall, cpu, stdout, _ = _child([sys.executable, "-m", "pclip_jax.classify", *args, *files, "--out", str(out),
                                       "--quiet"])
        flows = sum(1 for _ in out.open())
    m = re.search(r"\[load ([\d.]+) s, ingest ([\d.]+) s", stdout)
    parts = {"load_seconds": float(m.group(1)), "ingest_seconds": float(m.group(2))} if m else {}
    return {"seconds": wall, "cpu_seconds": cpu, "flows": flows, **parts}


def test_split_captures(workdir: str, data_dir: str) -> list[str]:
    split = json.loads((Path(workdir) / "split.json").read_text())
    found = {p.name: str(p) for p in Path(data_dir).rglob("*") if p.is_file()}
    names = [Path(c).name for c in split["test"]]
    missing = [n for n in names if n not in found]
    if missing:
        raise SystemExit(f"--data-dir {data_dir}: {len(missing)} test captures of {workdir} not found, e.g. "
                         f"{missing[:3]}")
    return [found[n] for n in names]


def _files(inputs: list[str]) -> list[str]:
    out = []
    for i in inputs:
        p = Path(i)
        out += sorted(str(f) for f in p.rglob("*") if f.is_file()) if p.is_dir() else [str(p)]
    return out


def _best(runs: list[dict]) -> dict:
    best = dict(min(runs, key=lambda r: r["seconds"]))
    best["runs_seconds"] = [round(r["seconds"], 2) for r in runs]
    best["flows_per_s"] = best["flows"] / best["seconds"]
    best["flows_per_cpu_s"] = best["flows"] / min(r["cpu_seconds"] for r in runs)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", metavar="INPUT", help="capture files or folders")
    ap.add_argument("--model", required=True, help="an export of python -m pclip_jax.export")
    ap.add_argument("--workdir", help="also time the JAX backend on this workdir")
    ap.add_argument("--test-split-of", metavar="W", help="the test-split captures of workdir W")
    ap.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ndpi"),
                    help="where --test-split-of finds the captures (default ../shared/data/ndpi)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--skip", nargs="*", default=[], choices=["nfstream", "jax"])
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    files = _files(args.inputs) + (test_split_captures(args.test_split_of, args.data_dir)
                                   if args.test_split_of else [])
    if not files:
        ap.error("no captures: give INPUT files/folders or --test-split-of W")
    size_mb = sum(Path(f).stat().st_size for f in files) / 1e6
    res = {"captures": len(files), "capture_mb": size_mb, "load_average_1min": os.getloadavg()[0],
           "cores": 1}
    print(f"{len(files)} captures, {size_mb:.1f} MB; one core per tool; best of {args.repeat}")
    rows = [("pclip onnx", ["--backend", "onnx", "--model", args.model, "--threads", "1"]),
            ("pclip onnx brief", ["--backend", "onnx", "--model", args.model, "--threads", "1", "--brief"])]
    compile_cache = tempfile.TemporaryDirectory()
    if args.workdir and "jax" not in args.skip:
        rows.append(("pclip jax", ["--workdir", args.workdir, "--compile-cache", "off"]))
        rows.append(("pclip jax cached", ["--workdir", args.workdir, "--compile-cache", compile_cache.name]))
        run_classify(rows[-1][1], files)  # not timed: fills the cache the timed runs load their programs from
    for name, cli in rows:
        r = _best([run_classify(cli, files) for _ in range(args.repeat)])
        res[name.replace(" ", "_")] = r
        print(f"{name:16s} {r['flows']:>7,} flows in {r['seconds']:6.2f} s = {r['flows_per_s']:8,.0f} flows/s "
              f"(load {r.get('load_seconds', float('nan')):.2f} s, ingest {r.get('ingest_seconds', float('nan')):.2f} s)")
    if "nfstream" not in args.skip:
        r = _best([run_nfstream(files) for _ in range(args.repeat)])
        res["nfstream_ndpi"] = r
        print(f"{'nfstream + nDPI':16s} {r['flows']:>7,} flows in {r['seconds']:6.2f} s = {r['flows_per_s']:8,.0f} "
              f"flows/s")
        for name, _ in rows:
            key = name.replace(" ", "_")
            res[f"{key}_vs_nfstream"] = res[key]["flows_per_s"] / r["flows_per_s"]
            print(f"{name} / nfstream + nDPI: {res[f'{key}_vs_nfstream']:.2f}x flows/s")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    compile_cache.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
