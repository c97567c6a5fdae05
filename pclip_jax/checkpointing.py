"""Orbax checkpoints: periodic saves, keep N, automatic resume from the workdir."""
from __future__ import annotations

import pathlib
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def manager(directory: str | pathlib.Path, save_every: int, keep: int) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, int(save_every)), max_to_keep=int(keep),
                                           create=True)
    return ocp.CheckpointManager(pathlib.Path(directory).absolute(), options=options)


def restore_latest(mngr: ocp.CheckpointManager, target: Any) -> tuple[Any, Optional[int]]:
    """Restores the newest checkpoint into the structure of `target` (an unreplicated pytree), or returns it."""
    step = mngr.latest_step()
    if step is None:
        return target, None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return mngr.restore(step, args=ocp.args.StandardRestore(abstract)), step


def save(mngr: ocp.CheckpointManager, step: int, state: Any, force: bool = False) -> bool:
    return mngr.save(step, args=ocp.args.StandardSave(state), force=force)
