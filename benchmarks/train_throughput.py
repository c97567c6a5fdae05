"""Pre-training throughput through the real input pipeline, and whether host memory stays flat in corpus size.

    python benchmarks/train_throughput.py --config configs/quickstart.py --corpus-scale 10 --steps 50 --workdir W
        [--dtypes float32,bfloat16] [--manual-dir ../shared/data/ndpi] [--set KEY=VALUE ...] [--json OUT]

For scale 1 and each scale S asked for, the nDPI corpus is built as a dataset (`pclip_jax.data.build`'s builder,
array_record) S times over: copy c of capture X is `copyC/X` with its times shifted by c days. Each (scale, dtype)
then trains in a fresh process, reading batches from that dataset through its random-access source
(`pclip_jax.data.flow_source`: each step reads and decodes only its batch's rows, prefetched in a thread), and
reports:

* steps/s and flows/s of pre-training (after the first, compiling, steps);
* the same step on one batch kept on the device: how much the input pipeline costs (input-bound when the ratio
  of the two is well below 1);
* the input pipeline alone (read, decode, augment, shard; `train.prefetch` threads): the flows/s it can feed;
* peak RSS of the process, and its ratio to scale 1 (flat input memory: close to 1);
* FLOPs per step from the program compiled for the CPU (a multiply-add = 2 FLOPs; XLA:GPU's own count leaves out
  the cuBLAS matrix products) and MFU where the device's peak is known.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import resource
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

def build_corpus(data_dir: pathlib.Path, manual_dir: str, scale: int, packets: int, nbytes: int) -> pathlib.Path:
    """The nDPI dataset `scale` times over (built once, reused); returns its dataset directory."""
    from pclip_jax.data import tfds_builders

    config = tfds_builders.TrafficConfig(name=f"k{packets}_b{nbytes}_x{scale}", packets=packets, bytes=nbytes,
                                         copies=scale, description=f"the nDPI corpus {scale} times over")
    builder = tfds_builders.build("ndpi_traffic", data_dir, manual_dir, config)
    return pathlib.Path(str(builder.data_dir))


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def train_child(dataset_dir: str, config_path: str, overrides: list[str], steps: int, workdir: str) -> dict:
    """Runs in its own process: trains `steps` pre-training steps from the dataset, then times the same step on a
    device-resident batch. Returns the figures."""
    import jax
    import numpy as np

    from pclip_jax.plumbing import runtime
    from pclip_jax.training import towers as embedding, pretrain as train
    from pclip_jax.training import experiment
    from pclip_bench.costs import peak_flops
    from pclip_jax.plumbing.config_files import load_config
    from pclip_jax.data.flow_source import Prefetcher, TableRows
    from pclip_jax.training.towers import build_model, text_featurizer
    from pclip_jax.plumbing.settings import from_config, with_absolute_paths
    from pclip_jax.plumbing.workdir import Workdir

    log_every = max(1, steps // 5)
    config = load_config(config_path, [*overrides, f"data.dataset={dataset_dir}", f"train.num_steps={steps}",
                                       f"train.log_every={log_every}", f"train.checkpoint_every={steps}",
                                       f"train.warmup_steps={min(10, steps)}", "train.eval_every=0"])
    settings = with_absolute_paths(from_config(config))
    wd = Workdir(workdir)
    wd.path.mkdir(parents=True, exist_ok=True)
    text_cache = pathlib.Path(workdir).parent / "text-cache"
    text_cache.mkdir(parents=True, exist_ok=True)
    # The main job's own path with data.dataset: labels read once, packet bytes read per batch.
    prepared = experiment.prepare_experiment(settings, text_cache)
    rows = TableRows(prepared.table.tensors, prepared.train_idx)
    featurizer = text_featurizer(settings)
    texts = train.build_train_texts(prepared, settings, featurizer, text_cache)
    model = build_model(settings)
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    train.pretrain(settings, wd, prepared, texts, model, progress=False)
    wall = time.perf_counter() - t0
    logged = [json.loads(x) for x in (wd.path / "metrics_train.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "steps_per_sec" in r]
    timed = logged[1:] or logged  # the first window includes compilation
    steps_per_s = float(np.mean([r["steps_per_sec"] for r in timed]))
    global_batch = runtime.global_batch_size(settings.train.batch_size)

    # The input pipeline alone (read, decode, augment, text variants, shard), through the prefetcher training uses
    # (train.prefetch threads): the flows/s it can feed a device.
    known = np.maximum(prepared.class_ids[prepared.train_idx], 0)
    mine = runtime.process_slice(global_batch)

    def batch_of(step):
        sample = train.sample_indices(step, len(rows), global_batch, known, settings.train.seed,
                                      settings.train.class_balance)
        return runtime.shard(train.make_train_batch(prepared, texts, sample, step, settings.train.seed,
                                                     settings.train.augment, rows, mine))

    reads = max(5, min(steps, 20))
    t1 = time.perf_counter()
    feed = Prefetcher(batch_of, 0, depth=settings.train.prefetch)
    for _ in range(reads):
        next(feed)
    input_flows_per_s = reads * global_batch / (time.perf_counter() - t1)
    feed.close()

    # The same step on one batch that stays on the device: no reading, no augmenting, no transfer.
    state = train.create_state(settings, model, jax.random.PRNGKey(0), texts.features.shape[1])
    p_step = train.make_train_step(model, settings)
    sample = train.sample_indices(0, len(rows), global_batch, known, 0, 0.5)
    batch = runtime.shard(train.make_train_batch(prepared, texts, sample, 0, 0, settings.train.augment, rows, mine))
    on_device = runtime.shard_local(batch)
    rstate, rngs = runtime.replicate(state), runtime.replicate(jax.random.PRNGKey(1))
    # FLOPs of this process's step, counted on the program compiled for the CPU (runtime.compiled_flops): the pmap
    # step with its device axis bound by vmap, so the per-device work (the optimizer update too) counts once a device.
    per_device, key = jax.local_device_count(), jax.random.PRNGKey(1)
    flops_per_step = runtime.compiled_flops(
        jax.vmap(train.train_step_fn(model, settings), axis_name=embedding.AXIS),
        jax.tree.map(lambda a: np.broadcast_to(np.asarray(a), (per_device,) + np.shape(a)), state), batch,
        np.broadcast_to(np.asarray(key), (per_device,) + np.shape(key)), on_cpu=True) * jax.process_count()
    for _ in range(2):  # the second call may compile again: its state comes back with pmap's own sharding
        rstate, metrics = p_step(rstate, on_device, rngs)
    jax.block_until_ready(metrics)
    t1 = time.perf_counter()
    reps = max(3, min(steps, 50))
    for _ in range(reps):
        rstate, metrics = p_step(rstate, on_device, rngs)
    jax.block_until_ready(metrics)
    resident_steps_per_s = reps / (time.perf_counter() - t1)
    peak = peak_flops(jax.devices()[0])
    mfu = flops_per_step * steps_per_s / (peak * jax.device_count()) if peak else None
    return {"flows": len(prepared.class_ids), "train_flows": len(rows),
            "captures": sum(len(v) for v in prepared.split_captures.values()), "steps": steps,
            "dtype": settings.train.dtype, "global_batch": global_batch, "wall_seconds": round(wall, 2),
            "steps_per_s": steps_per_s, "flows_per_s": steps_per_s * global_batch,
            "resident_steps_per_s": resident_steps_per_s, "input_efficiency": steps_per_s / resident_steps_per_s,
            "input_flows_per_s": input_flows_per_s,
            "flops_per_step": flops_per_step, "mfu": mfu, "peak_rss_mb": _rss_mb(), "rss_before_training_mb": rss_before,
            "device": jax.devices()[0].device_kind, "devices": jax.device_count(),
            "data_parallel": runtime.data_parallel_implementation(),  # $PCLIP_DATA_PARALLEL: pmap or shard_map
            "distinct_texts": len(texts.texts)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "quickstart.py"))
    parser.add_argument("--corpus-scale", default="10", help="corpus sizes to measure besides 1 (comma list)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared" / "data" / "ndpi"),
                        help="the nDPI corpus (flat pcap/ + result/, or the source tree)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override (repeatable), e.g. --set train.batch_size=512")
    parser.add_argument("--json", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: one measurement
    args = parser.parse_args(argv)
    if args.child:
        spec = json.loads(args.child)
        print("RESULT " + json.dumps(train_child(**spec)), flush=True)
        return 0
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the first steps compile)")
    scales = sorted({1} | {int(s) for s in args.corpus_scale.split(",") if s.strip()})
    if scales[0] < 1:
        parser.error("--corpus-scale values must be >= 1")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    workdir = pathlib.Path(args.workdir).resolve()
    from pclip_jax.plumbing.config_files import load_config

    data = load_config(args.config, args.overrides).data
    rows = []
    for scale in scales:
        dataset_dir = build_corpus(workdir / "data", args.manual_dir, scale, int(data.packets), int(data.bytes))
        for dtype in dtypes:
            run = workdir / f"run-x{scale}-{dtype}"
            if run.exists():
                import shutil

                shutil.rmtree(run)
            spec = {"dataset_dir": str(dataset_dir), "config_path": str(pathlib.Path(args.config).resolve()),
                    "overrides": [*args.overrides, f"train.dtype={dtype}"], "steps": args.steps, "workdir": str(run)}
            print(f"[train_throughput] scale {scale}, {dtype}: training {args.steps} steps ...", file=sys.stderr)
            # The child's progress (ingest, text embeddings, steps) streams to stderr as it runs; stdout carries
            # only its RESULT line.
            proc = subprocess.run([sys.executable, __file__, "--workdir", str(workdir), "--child", json.dumps(spec)],
                                  stdout=subprocess.PIPE, text=True)
            found = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not found:
                raise SystemExit(f"train_throughput: the run at scale {scale} ({dtype}) failed (exit {proc.returncode}; "
                                 f"its output is above)")
            rows.append({"corpus_scale": scale, **json.loads(found[-1][len("RESULT "):])})
    base = {r["dtype"]: r["peak_rss_mb"] for r in rows if r["corpus_scale"] == 1}
    for r in rows:
        r["rss_vs_scale_1"] = r["peak_rss_mb"] / base[r["dtype"]]
    print(f"\n{'scale':>5} {'dtype':>9} {'flows':>8} {'steps/s':>8} {'flows/s':>9} {'resident':>9} {'input eff':>9} "
          f"{'input flows/s':>13} {'GFLOP/step':>10} {'MFU':>6} {'peak RSS':>9} {'vs x1':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        print(f"{r['corpus_scale']:>5} {r['dtype']:>9} {r['flows']:>8} {r['steps_per_s']:>8.2f} {r['flows_per_s']:>9.0f} "
              f"{r['resident_steps_per_s']:>9.2f} {r['input_efficiency']:>9.2f} {r['input_flows_per_s']:>13,.0f} "
              f"{r['flops_per_step'] / 1e9:>10.3g} "
              f"{mfu:>6} {r['peak_rss_mb']:>7.0f}MB {r['rss_vs_scale_1']:>6.2f}")
    print(f"device: {rows[0]['device']} x {rows[0]['devices']}; resident = steps/s of the same step on a batch kept "
          f"on the device; input eff = steps/s over resident steps/s; input flows/s = the input pipeline alone "
          f"(train.prefetch threads)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
