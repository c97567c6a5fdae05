"""The few JAX calls whose API drifted across versions, wrapped in one place.

Everything else in the project calls these helpers instead of the drifting API, so a JAX upgrade touches this
file only (tested versions: see setup.cfg).
"""
from __future__ import annotations

from typing import Any, Callable

import jax


def tree_map(fn: Callable, tree: Any, *rest: Any) -> Any:
    """`jax.tree.map` (jax.tree_map was removed in 0.6)."""
    return jax.tree.map(fn, tree, *rest)


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays or ShapeDtypeStructs (works on `jax.eval_shape` output)."""
    total = 0
    for leaf in jax.tree.leaves(tree):
        size = 1
        for dim in leaf.shape:
            size *= int(dim)
        total += size
    return total


def compiled_flops(fn: Callable, *args: Any, on_cpu: bool = False, **kwargs: Any) -> float:
    """FLOPs of `fn(*args)` from XLA's cost analysis of the compiled program.

    Convention: XLA counts a multiply-add as 2 FLOPs. `cost_analysis()` returned a list of dicts (one per program)
    before JAX 0.4.30 and a dict after; both are handled. Returns 0.0 when the backend reports nothing.
    `on_cpu`: compile for the CPU whatever the default backend. XLA:GPU's count leaves out the matrix products it
    hands to cuBLAS (an H200 reported 0.66 GFLOPs a flow for ET-BERT-base against the CPU program's 22.7, and
    per-flow counts that changed with the batch), so FLOPs for MFU are counted on the CPU program.
    """
    if on_cpu:
        args, kwargs = jax.device_put((args, kwargs), jax.devices("cpu")[0])
    compiled = jax.jit(fn).lower(*args, **kwargs).compile()
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    return float((analysis or {}).get("flops", 0.0))


def pmap(fn: Callable, axis_name: str, donate_argnums: tuple = ()) -> Callable:
    """`jax.pmap` over the local devices. pmap is in maintenance mode (implemented on `shard_map` since JAX 0.8);
    every data-parallel step of the project goes through here, so moving to `shard_map` is one place."""
    return jax.pmap(fn, axis_name=axis_name, donate_argnums=donate_argnums)


def replicate_local(tree: Any) -> Any:
    """One copy of every leaf per local device, as `jax.pmap` expects (leading axis = local devices).

    Replaces `jax.device_put_replicated` (deprecated in JAX 0.8, removed later): the stacked copies are placed with
    a sharding over the local devices, so pmap consumes them without another transfer.
    """
    import numpy as np

    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("local_devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("local_devices"))
    n = len(devices)
    return jax.tree.map(lambda x: jax.device_put(np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), sharding),
                        tree)


def shard_local(tree: Any) -> Any:
    """Leaves [local_devices, ...] placed one slice per local device, as `jax.pmap` expects (replaces the
    deprecated `jax.device_put_sharded`)."""
    import numpy as np

    devices = jax.local_devices()
    mesh = jax.sharding.Mesh(np.array(devices), ("local_devices",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("local_devices"))
    return jax.tree.map(lambda x: jax.device_put(np.asarray(x), sharding), tree)


def maybe_initialize_distributed() -> bool:
    """Calls `jax.distributed.initialize()` only when the environment asks for a multi-process run.

    Explicit: JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID (launch/multihost.sh). Auto-detected
    (Cloud TPU pods, SLURM, Open MPI): PCLIP_DISTRIBUTED=1. A plain single-host run sets neither and is left alone
    (initialize() would otherwise wait for a coordinator).
    """
    import os

    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if (address or os.environ.get("PCLIP_DISTRIBUTED") == "1") and jax.config.jax_platforms == "cpu":
        # CPU devices of several processes talk through gloo (the default CPU collectives are single-process).
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if address:
        jax.distributed.initialize(coordinator_address=address,
                                   num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAX_PROCESS_ID"]))
        return True
    if os.environ.get("PCLIP_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        return True
    return False
