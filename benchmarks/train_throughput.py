"""Pre-training throughput through the real input pipeline, and whether host memory stays flat in corpus size.

    python benchmarks/train_throughput.py --config configs/quickstart.py --corpus-scale 10 --steps 50 --workdir W
        [--dtypes float32,bfloat16] [--workers 1,2] [--reads 40] [--manual-dir ../shared/data/ndpi]
        [--set KEY=VALUE ...] [--json OUT]

For scale 1 and each scale S asked for, the nDPI corpus is built as a dataset (`pclip_jax.data.build`'s builder,
array_record) S times over: copy c of capture X is `copyC/X` with its times shifted by c days. Each (scale, dtype)
then trains in a fresh process, reading batches from that dataset through its random-access source
(`pclip_jax.data.batches`: each step reads only its batch's rows, from the dataset's fixed layout when it has one,
`pclip_jax.data.fixed`; made ahead in threads, or in `train.workers` processes), and reports:

* steps/s and flows/s of pre-training (after the first, compiling, steps);
* the same step on one batch kept on the device, and the input-bound ratio: step time through the real pipeline
  over step time on the device-resident batch (1 = the input costs the step nothing);
* the input pipeline alone (sample, read, augment, text variants, shard), with the packet bytes read from the fixed
  layout and parsed from the tf.Examples: flows per CPU second (per core), flows per wall second in one thread and
  with N worker processes (`--workers`);
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
    from pclip_jax.data import fixed

    fixed.write_fixed(str(builder.data_dir), progress=False)  # what `python -m pclip_jax.data.build` writes too
    return pathlib.Path(str(builder.data_dir))


def input_only(recipe, shard, global_batch: int, reads: int, workers: list[int], prefetch: int) -> dict:
    """The input pipeline alone (sample, read, augment, text variants, shard), no training:

    * per core: batches made one after another in this thread, flows per CPU second of this process
      (`time.process_time`: what one core does, however busy the machine is), and per wall second;
    * with N worker processes (`data.batches.StepBatches`, Grain): flows per wall second once they run (their
      start, spawning and importing, reported apart)."""
    from pclip_jax.data.batches import StepBatches

    recipe(10 ** 6)  # first touch: page cache, name vectors
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for step in range(reads):
        shard(recipe(step))
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    out = {"per_core_flows_per_cpu_s": reads * global_batch / cpu, "one_thread_flows_per_s": reads * global_batch / wall,
           "workers": {}}
    for n in workers:
        t0 = time.perf_counter()
        feed = StepBatches(recipe, 0, workers=n, prefetch=prefetch, post=shard)
        next(feed)
        started = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(reads):
            next(feed)
        out["workers"][str(n)] = {"flows_per_s": reads * global_batch / (time.perf_counter() - t1),
                                  "start_seconds": round(started, 2)}
        feed.close()
    return out


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def train_child(dataset_dir: str, config_path: str, overrides: list[str], steps: int, workdir: str,
                workers: list[int], reads: int) -> dict:
    """Runs in its own process: trains `steps` pre-training steps from the dataset, then times the same step on a
    device-resident batch, and the input pipeline alone (both readers: the fixed layout and the tf.Examples).
    Returns the figures."""
    import jax
    import numpy as np

    from pclip_jax.plumbing import runtime
    from pclip_jax.training import towers as embedding, pretrain as train
    from pclip_jax.training import experiment
    from pclip_bench.costs import peak_flops
    from pclip_jax.plumbing.config_files import load_config
    from pclip_jax.data import flow_source
    from pclip_jax.data.batches import BatchRecipe
    from pclip_jax.data.flow_source import TableRows
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
    global_batch = runtime.global_batch_size(settings.train.batch_size)
    mine = runtime.process_slice(global_batch)

    # The input pipeline alone, before training (the same recipe pre-training uses), with the packet bytes read
    # from the dataset's fixed layout (data.reader=fixed) and parsed from its tf.Examples (data.reader=tfds).
    inputs = {}
    sources = flow_source.open_dataset(dataset_dir).as_data_source()
    for reader in ("fixed", "tfds"):
        tensors = {**prepared.table.tensors, **flow_source.disk_columns(dataset_dir, sources, reader)}
        r = BatchRecipe.of(prepared, texts, settings.train, global_batch, mine, TableRows(tensors, prepared.train_idx))
        inputs[reader] = input_only(r, runtime.shard, global_batch, reads if reader == "fixed" else max(3, reads // 10),
                                    workers if reader == "fixed" else [], settings.train.prefetch)
        print(f"[train_throughput] input only ({reader}): {json.dumps(inputs[reader])}", file=sys.stderr, flush=True)

    rss_before = _rss_mb()
    t0 = time.perf_counter()
    train.pretrain(settings, wd, prepared, texts, model, progress=False)
    wall = time.perf_counter() - t0
    logged = [json.loads(x) for x in (wd.path / "metrics_train.jsonl").read_text().splitlines()]
    logged = [r for r in logged if "steps_per_sec" in r]
    timed = logged[1:] or logged  # the first window includes compilation
    steps_per_s = float(np.mean([r["steps_per_sec"] for r in timed]))
    known = np.maximum(prepared.class_ids[prepared.train_idx], 0)

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
            # real pipeline step time / device-resident step time (issue 33's budget: <= 1.1 on an accelerator)
            "input_bound_ratio": resident_steps_per_s / steps_per_s, "train_workers": settings.train.workers,
            "reader": settings.data.reader, "input_only": inputs,
            "input_flows_per_s": inputs["fixed"]["one_thread_flows_per_s"],
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
    parser.add_argument("--workers", default="1,2",
                        help="worker-process counts to time the input pipeline alone with (comma list)")
    parser.add_argument("--reads", type=int, default=40, help="batches per input-only measurement")
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
                    "overrides": [*args.overrides, f"train.dtype={dtype}"], "steps": args.steps, "workdir": str(run),
                    "workers": [int(w) for w in args.workers.split(",") if w.strip()], "reads": args.reads}
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
    print(f"\n{'scale':>5} {'dtype':>9} {'flows':>8} {'steps/s':>8} {'flows/s':>9} {'resident':>9} {'bound':>6} "
          f"{'GFLOP/step':>10} {'MFU':>6} {'peak RSS':>9} {'vs x1':>6}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        print(f"{r['corpus_scale']:>5} {r['dtype']:>9} {r['flows']:>8} {r['steps_per_s']:>8.2f} {r['flows_per_s']:>9.0f} "
              f"{r['resident_steps_per_s']:>9.2f} {r['input_bound_ratio']:>6.2f} {r['flops_per_step'] / 1e9:>10.3g} "
              f"{mfu:>6} {r['peak_rss_mb']:>7.0f}MB {r['rss_vs_scale_1']:>6.2f}")
    print(f"device: {rows[0]['device']} x {rows[0]['devices']}; train.workers {rows[0]['train_workers']}; resident = "
          f"steps/s of the same step on a batch kept on the device; bound = input-bound ratio, resident steps/s over "
          f"steps/s through the real pipeline (step time real / resident)")
    print(f"\ninput pipeline alone (sample, read, augment, texts, shard; global batch {rows[0]['global_batch']}), "
          f"flows/s:")
    print(f"{'scale':>5} {'reader':>7} {'per core (CPU s)':>17} {'one thread':>11} " +
          " ".join(f"{w + ' workers':>11}" for w in rows[0]["input_only"]["fixed"]["workers"]) +
          f" {'fixed/tfds per core':>20}")
    for r in rows:
        if r["dtype"] != rows[0]["dtype"]:
            continue
        for reader, m in r["input_only"].items():
            ratio = m["per_core_flows_per_cpu_s"] / r["input_only"]["tfds"]["per_core_flows_per_cpu_s"]
            print(f"{r['corpus_scale']:>5} {reader:>7} {m['per_core_flows_per_cpu_s']:>17,.0f} "
                  f"{m['one_thread_flows_per_s']:>11,.0f} " +
                  " ".join(f"{m['workers'][w]['flows_per_s']:>11,.0f}" if w in m["workers"] else f"{'—':>11}"
                           for w in r["input_only"]["fixed"]["workers"]) +
                  f" {ratio:>20.1f}")
    print("per core = flows per CPU second of the process making batches one after another (time.process_time); "
          "one thread / N workers = flows per wall second (N Grain worker processes, after they started)")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
