"""Data-parallel plumbing shared by pre-training and the GNN: replicate, shard, unreplicate.

Each process feeds its local devices: a global batch is cut into `process_count` slices, each process takes its own
and reshapes it to [local_devices, per_device, ...] for `jax.pmap`.
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from pclip_jax.compat import replicate_local, tree_map


def replicate(tree: Any) -> Any:
    return replicate_local(tree)


def _first_replica(x):
    # Copy device 0's shard to the host instead of indexing the device-sharded array: indexing dispatches an XLA
    # gather across all local devices for every leaf, which is slow and was seen to abort the CPU runtime under
    # load with 8 host devices.
    shards = getattr(x, "addressable_shards", None)
    if shards:
        return np.asarray(shards[0].data)[0, ...]
    return np.asarray(x)[0, ...]


def unreplicate(tree: Any) -> Any:
    """Host (numpy) copy of the first replica of a replicated tree."""
    return tree_map(_first_replica, tree)


def process_slice(global_size: int) -> slice:
    """This process's rows of a global batch of `global_size` rows."""
    n = jax.process_count()
    if global_size % n:
        raise ValueError(f"global batch {global_size} is not divisible by the {n} processes")
    per = global_size // n
    start = jax.process_index() * per
    return slice(start, start + per)


def shard(batch: Any) -> Any:
    """[local_batch, ...] numpy → [local_devices, local_batch / local_devices, ...]."""
    d = jax.local_device_count()

    def _reshape(x):
        x = np.asarray(x)
        if x.shape[0] % d:
            raise ValueError(f"local batch {x.shape[0]} is not divisible by the {d} local devices")
        return x.reshape((d, x.shape[0] // d) + x.shape[1:])

    return tree_map(_reshape, batch)


def global_batch_size(requested: int) -> int:
    """Rounds a requested global batch up to a multiple of the total device count."""
    n = jax.device_count()
    return max(n, ((requested + n - 1) // n) * n)
