"""Inference and training speed of PacketCLIP and every peer on the device at hand, in float32 and bfloat16.

    python benchmarks/model_speed.py [--config configs/default.py] [--size published] [--models pclip,etbert,...]
        [--batch 1024[,8192]] [--dtypes float32,bfloat16] [--reps 20] [--json OUT]

Cost in FLOPs (`benchmarks/flops_params.py`) says what a model asks of a chip; this says what the chip gives: on
the same device, at the same batch, for each model

* inference: flows/s of the compiled forward pass (PacketCLIP: packet tower + the factored GNN's per-flow side,
  its graph side computed once, as `classify` does; a peer: its classifier), FLOPs per flow from the program
  compiled for the CPU (a multiply-add = 2 FLOPs; XLA:GPU's own count leaves out the cuBLAS matrix products);
* training: flows/s of one optimizer step (PacketCLIP: the pmap-sharded contrastive pre-training step of
  `pclip_jax.training.pretrain` over all local devices, its global batch `--batch`, its FLOPs those of the global
  batch with the optimizer update counted once; a peer: the suite's fine-tuning step,
  `pclip_bench.peers.train.make_finetune_step`), FLOPs per step, MFU where the device's peak is known;
* device memory of one training step (arguments, outputs and temporaries, from XLA's memory analysis).

Inputs are random arrays of the real shapes (speed does not depend on the values); nothing is read from disk, so
this runs on a bare accelerator host. Peers run at `--size` (`published`: the papers' sizes, ET-BERT = BERT-base
with its 60,005-token vocabulary). bfloat16 runs the model in bfloat16 on float32 master weights (PacketCLIP:
`train.dtype=bfloat16`; ET-BERT: its BERT layers' compute dtype; other peers: floating parameters and inputs cast
in the step). On GPUs XLA may run float32
matrix products as TF32; MFU is against the dense bfloat16 peak either way (a lower bound for float32).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pclip_bench.costs import peak_flops  # noqa: E402

PEER_NAMES = ("etbert", "yatc", "netmamba", "cnn1d", "fsnet")
NUM_CLASSES = 16  # classifier width of the peers (speed barely depends on it)


def _timed(fn, reps: int) -> float:
    """Seconds per call of `fn()` (which returns arrays), after two untimed calls (compilation, first placement)."""
    import jax

    for _ in range(2):
        jax.block_until_ready(fn())
    start = time.perf_counter()
    out = None
    for _ in range(reps):
        out = fn()
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / reps


def _memory_mb(compiled) -> float | None:
    """Device memory one call of a compiled program needs (arguments + outputs + temporaries, aliased buffers
    counted once), from XLA's memory analysis; None where the backend reports none."""
    try:
        m = compiled.memory_analysis()
        m = m[0] if isinstance(m, (list, tuple)) else m
        total = (m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
                 - m.alias_size_in_bytes)
    except Exception:  # noqa: BLE001 — not every backend/version implements it
        return None
    return total / 2 ** 20


def _random_tensors(n: int, packets: int, nbytes: int, seed: int = 0) -> dict:
    """Flow tensors of the ingest contract's shapes, random values (sizes signed by direction)."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(40, 1500, (n, packets)) * rng.choice([-1, 1], (n, packets))
    return {"bytes": rng.integers(0, 256, (n, packets, nbytes), dtype=np.uint8), "sizes": sizes.astype(np.int32),
            "iat": rng.exponential(0.05, (n, packets)).astype(np.float32),
            "tcp_flags": rng.integers(0, 64, (n, packets), dtype=np.uint8)}


def peer_speed(name: str, size: str, batch: int, dtype: str, reps: int) -> dict:
    """One peer at `size`: forward and fine-tuning step on a batch of `batch` random flows."""
    import jax
    import jax.numpy as jnp

    from pclip_jax.plumbing.runtime import compiled_flops, count_params
    from pclip_bench.peers import models as peer_models
    from pclip_bench.peers.train import PeerTrainConfig, cast_floating, make_finetune_step, peer_optimizer

    spec = peer_models.PEERS[name]
    module = spec.build(NUM_CLASSES, size)
    compute = jnp.bfloat16 if dtype == "bfloat16" else None
    if compute is not None and "dtype" in {f.name for f in dataclasses.fields(module)}:
        # A module with its own compute dtype (ET-BERT's BERT layers) computes in it; casting its parameters would
        # not reach layers whose dtype is set explicitly.
        module, compute = module.clone(dtype=compute), None
    x = jax.tree.map(jnp.asarray, spec.features(_random_tensors(batch, 16, 320), np.arange(batch)))
    y = jnp.asarray(np.arange(batch) % NUM_CLASSES, jnp.int32)
    rng = jax.random.PRNGKey(0)
    params = jax.jit(lambda r, xx: module.init({"params": r, "dropout": r}, xx, r, method=module.init_all)["params"]
                     )(rng, jax.tree.map(lambda a: a[:2], x))

    def apply(p, xx):
        return module.apply({"params": cast_floating(p, compute)}, cast_floating(xx, compute))

    forward = jax.jit(apply).lower(params, x).compile()
    infer_s = _timed(lambda: forward(params, x), reps)
    infer_flops = compiled_flops(apply, params, x, on_cpu=True) / batch

    config = PeerTrainConfig()
    tx = peer_optimizer(config.learning_rate, 1000, config)
    state = [params, tx.init(params)]
    step_fn = make_finetune_step(module, spec, tx, jnp.ones(NUM_CLASSES), compute)
    step_flops = compiled_flops(step_fn, state[0], state[1], x, y, rng, on_cpu=True)
    step = jax.jit(step_fn, donate_argnums=(0, 1)).lower(state[0], state[1], x, y, rng).compile()
    memory = _memory_mb(step)

    def one_step():
        state[0], state[1], loss = step(state[0], state[1], x, y, rng)
        return loss

    train_s = _timed(one_step, reps)
    return {"model": name, "size": size, "dtype": dtype, "batch": batch, "params": count_params(params),
            "infer_flows_per_s": batch / infer_s, "infer_flops_per_flow": infer_flops,
            "train_flows_per_s": batch / train_s, "train_flops_per_step": step_flops,
            "train_step_ms": train_s * 1e3, "train_step_memory_mb": memory}


def pclip_speed(config_path: str, overrides: list[str], batch: int, dtype: str, reps: int) -> dict:
    """PacketCLIP: inference (tower + factored GNN per-flow side) and the pmap-sharded pre-training step."""
    import jax
    import jax.numpy as jnp

    from pclip_jax.plumbing import runtime
    from pclip_jax.training import towers as embedding, pretrain as train
    from pclip_jax.plumbing.runtime import compiled_flops, count_params
    from pclip_jax.plumbing.config_files import load_config
    from pclip_jax.models import graph_tuples as kg_graphs
    from pclip_jax.models.gnn import dense_scores, dense_structure, graph_constants, init_params
    from pclip_jax.training.detection import gnn_train_config, load_graph
    from pclip_jax.models.two_towers import TwoTowers
    from pclip_jax.plumbing.settings import from_config

    settings = from_config(load_config(config_path, [*overrides, f"train.dtype={dtype}"]))
    model = embedding.build_model(settings)
    text_dim = 384
    state = train.create_state(settings, model, jax.random.PRNGKey(0), text_dim)
    flows = _random_tensors(batch, settings.data.packets, settings.data.bytes)
    rng = np.random.default_rng(1)
    inputs = {**embedding.dummy_batch(settings, batch, text_dim), **flows}
    inputs["text"] = rng.standard_normal((batch, text_dim)).astype(np.float32)
    inputs["class_id"] = (np.arange(batch) % NUM_CLASSES).astype(np.int32)
    if settings.data.use_names:
        from pclip_jax.data.flow_table import NAME_KEY

        inputs[NAME_KEY] = rng.standard_normal((batch, settings.model.name_dim)).astype(np.float16)

    # Inference: the deployed path (one device): tower + projection, then the GNN's per-flow side.
    kg = load_graph(settings.gnn.kg)
    layout = kg_graphs.kg_layout(kg)
    gcfg = gnn_train_config(settings).model
    structure = dense_structure(layout)
    kg_emb = jnp.asarray(rng.standard_normal((len(kg.nodes), text_dim)), jnp.float32)
    sample = kg_graphs.build_batch(layout, np.zeros((2, settings.model.embed_dim), np.float32))
    gnn_params = init_params(gcfg, jax.random.PRNGKey(0), sample, kg_emb)
    constants = jax.jit(lambda p: graph_constants(gcfg, p, kg_emb, structure))(gnn_params)
    tower_inputs = {k: jnp.asarray(v) for k, v in inputs.items() if k not in ("text", "valid", "class_id")}

    def detect_fn(params, gparams, consts, batch_in):
        z = model.apply({"params": params}, batch_in, method=TwoTowers.embed_packets)
        return dense_scores(gcfg, gparams, z.astype(jnp.float32), consts, structure)[0]

    detect = jax.jit(detect_fn).lower(state.params, gnn_params, constants, tower_inputs).compile()
    infer_s = _timed(lambda: detect(state.params, gnn_params, constants, tower_inputs), reps)
    infer_flops = compiled_flops(detect_fn, state.params, gnn_params, constants, tower_inputs, on_cpu=True) / batch

    # Training: the job's own pmap-sharded step over every local device, global batch `batch`.
    global_batch = runtime.global_batch_size(batch)
    train_inputs = {k: v[:global_batch] for k, v in inputs.items()}
    on_device = runtime.shard_local(runtime.shard(train_inputs))
    p_step = train.make_train_step(model, settings)
    rstate, rngs = runtime.replicate(state), runtime.replicate(jax.random.PRNGKey(1))
    memory = _memory_mb(p_step.lower(rstate, on_device, rngs).compile())
    # FLOPs of the whole global batch on one (CPU) device: the same step, its device axis bound by vmap.
    step_flops = compiled_flops(jax.vmap(train.train_step_fn(model, settings), axis_name=embedding.AXIS),
                                jax.tree.map(lambda a: jnp.asarray(a)[None], state),
                                jax.tree.map(lambda a: a[None], train_inputs), jax.random.PRNGKey(1)[None],
                                on_cpu=True)
    holder = [rstate]

    def one_step():
        holder[0], metrics = p_step(holder[0], on_device, rngs)
        return metrics["loss"]

    train_s = _timed(one_step, reps)
    counts = embedding.param_counts(state.params)
    return {"model": "pclip", "size": "config", "dtype": dtype, "batch": batch,
            "params": counts["packet_tower"] + count_params(gnn_params),
            "pretraining_trainable_params": counts["trainable_total"],
            "infer_flows_per_s": batch / infer_s, "infer_flops_per_flow": infer_flops,
            "train_flows_per_s": global_batch / train_s, "train_flops_per_step": step_flops,
            "train_step_ms": train_s * 1e3, "train_step_memory_mb": memory}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "default.py"), help="PacketCLIP's config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="PacketCLIP config override (repeatable)")
    parser.add_argument("--size", default="published", choices=("published", "cpu"), help="the peers' size")
    parser.add_argument("--models", default="pclip," + ",".join(PEER_NAMES))
    parser.add_argument("--batch", default="1024", help="batch size, or a comma list of them (each measured)")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--reps", type=int, default=20, help="timed calls per measurement (after 2 untimed)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = sorted(set(models) - {"pclip", *PEER_NAMES})
    if unknown:
        parser.error(f"--models: unknown {', '.join(unknown)} (known: pclip, {', '.join(PEER_NAMES)})")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    bad = sorted(set(dtypes) - {"float32", "bfloat16"})
    if bad:
        parser.error(f"--dtypes: unknown {', '.join(bad)} (float32, bfloat16)")
    try:
        batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
    except ValueError:
        parser.error(f"--batch: integers, comma-separated, got {args.batch!r}")
    if not batches or min(batches) < 1 or args.reps < 1:
        parser.error("--batch and --reps must be >= 1")

    import jax

    device = jax.local_devices()[0]
    peak = peak_flops(device)
    rows = []
    for name, batch, dtype in ((n, b, d) for n in models for b in batches for d in dtypes):
        print(f"[model_speed] {name} ({dtype}, batch {batch}) ...", file=sys.stderr, flush=True)
        try:
            row = (pclip_speed(args.config, args.overrides, batch, dtype, args.reps) if name == "pclip"
                   else peer_speed(name, args.size, batch, dtype, args.reps))
        except Exception as e:  # noqa: BLE001 — one model out of memory must not cost the others' rows
            if "RESOURCE_EXHAUSTED" not in str(e) and "out of memory" not in str(e).lower():
                raise
            print(f"[model_speed] {name} ({dtype}) at batch {batch}: out of device memory, skipped "
                  f"(run it alone with a smaller --batch)", file=sys.stderr, flush=True)
            continue
        row["config"] = pathlib.Path(args.config).stem if name == "pclip" else None
        row["mfu"] = (row["train_flops_per_step"] / (row["train_step_ms"] / 1e3) / (peak * jax.local_device_count())
                      if peak else None)
        row["device"], row["devices"] = device.device_kind, jax.local_device_count()
        rows.append(row)
        print("RESULT " + json.dumps(row), file=sys.stderr, flush=True)

    print(f"\n{'model':<10}{'batch':>7}{'dtype':>10}{'params':>14}{'MFLOPs/flow':>13}{'infer flows/s':>15}"
          f"{'train flows/s':>15}{'GFLOP/step':>12}{'MFU':>7}{'step MB':>9}")
    for r in rows:
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "—"
        mem = f"{r['train_step_memory_mb']:.0f}" if r["train_step_memory_mb"] is not None else "—"
        print(f"{r['model']:<10}{r['batch']:>7}{r['dtype']:>10}{r['params']:>14,d}{r['infer_flops_per_flow'] / 1e6:>13.1f}"
              f"{r['infer_flows_per_s']:>15,.0f}{r['train_flows_per_s']:>15,.0f}"
              f"{r['train_flops_per_step'] / 1e9:>12.1f}{mfu:>7}{mem:>9}")
    base = {(r["dtype"], r["batch"]): r for r in rows if r["model"] == "pclip"}
    for r in rows:
        if r["model"] == "pclip" and r["dtype"] == "bfloat16" and ("float32", r["batch"]) in base:
            f32 = base[("float32", r["batch"])]
            print(f"pclip at batch {r['batch']}: bfloat16 trains {r['train_flows_per_s'] / f32['train_flows_per_s']:.2f}x "
                  f"the flows/s of float32")
    for r in rows:
        if r["model"] != "pclip" and (r["dtype"], r["batch"]) in base:
            b = base[(r["dtype"], r["batch"])]
            print(f"pclip vs {r['model']} ({r['dtype']}): inference {b['infer_flows_per_s'] / r['infer_flows_per_s']:.1f}x "
                  f"the flows/s, training {b['train_flows_per_s'] / r['train_flows_per_s']:.1f}x")
    print(f"device: {device.device_kind} x {jax.local_device_count()}; batch {args.batch}; peers at size "
          f"{args.size}; params: PacketCLIP = packet tower + GNN (deployed), a peer = its classifier")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
