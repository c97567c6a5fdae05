"""Orbax checkpoints with integrity: periodic saves, keep N, resume from the newest *intact* checkpoint.

A checkpoint holds the training state (orbax item `default`) and, from pre-training, the data iterator's state
(item `data_iterator`, JSON: `data.batches.StepBatches.get_state`), so a resumed run continues the same batches;
checkpoints written before it had that item restore as before.

Each finished save records a SHA-256 of its step directory in `DIR/digests.json`. A restore checks the digest
first (a truncated file, an emptied `_METADATA` or a flipped bit is caught before orbax reads anything), says which
step is damaged and falls back to the next older intact one. A writing run moves damaged steps aside (to
`DIR/damaged-STEP`) so that it can save that step again; a reading one leaves them.
"""
from __future__ import annotations

import logging
import pathlib
import sys
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from pclip_jax.plumbing import files

DIGESTS_FILE = "digests.json"
STATE_ITEM = "default"            # the saved tree (the item name orbax gives a checkpoint of one item)
DATA_ITEM = "data_iterator"       # the training data iterator's state (JSON), when the loop gave one


class CheckpointError(RuntimeError):
    """No intact checkpoint could be restored; the message names the directory and each damaged step."""


class Checkpoints:
    """A checkpoint directory: `save(step, tree)`, `restore(target)`, `close()`."""

    def __init__(self, directory: str | pathlib.Path, save_every: int = 1, keep: int = 1, writable: bool = True):
        self.directory = pathlib.Path(directory).absolute()
        self.writable = writable
        if not writable and not self.directory.is_dir():
            raise FileNotFoundError(f"{self.directory}: no checkpoints")
        # A reader never saves; orbax's read_only mode would only add warnings, so it is enforced here instead.
        options = ocp.CheckpointManagerOptions(save_interval_steps=max(1, int(save_every)),
                                               max_to_keep=int(keep) if writable else None, create=writable)
        # Two named items from the start: a manager left to guess takes a checkpoint with a `default` item for a
        # one-item checkpoint and refuses to restore it as two.
        self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=(STATE_ITEM, DATA_ITEM))
        self.data_state: Optional[dict] = None  # the data iterator state of the checkpoint restored last, if any

    # ------------------------------------------------------------------------------------------- digests
    def _digests(self) -> dict:
        path = self.directory / DIGESTS_FILE
        try:
            return {int(k): v for k, v in files.read_json(path).items()} if path.is_file() else {}
        except (ValueError, AttributeError):
            print(f"[checkpoint] {path}: unreadable digest list; checkpoints are checked by loading them",
                  file=sys.stderr)
            return {}

    def _record_digests(self) -> None:
        if jax.process_index() != 0:
            return
        steps = set(self.manager.all_steps())
        digests = {s: d for s, d in self._digests().items() if s in steps}
        for step in steps - set(digests):
            digests[step] = files.tree_digest(self.directory / str(step))
        files.write_json(self.directory / DIGESTS_FILE, {str(k): v for k, v in sorted(digests.items())})

    # ------------------------------------------------------------------------------------------- save
    def save(self, step: int, tree: Any, force: bool = False, data_state: Optional[dict] = None) -> bool:
        """Saves `tree` at `step` (when the interval says so or `force`), with the data iterator's state
        `data_state` (JSON) beside it when given; the digest is recorded once written."""
        if not self.writable:
            raise RuntimeError(f"{self.directory}: opened for reading, not for saving")
        items = {STATE_ITEM: ocp.args.StandardSave(tree)}
        if data_state is not None:
            items[DATA_ITEM] = ocp.args.JsonSave(data_state)
        saved = self.manager.save(step, args=ocp.args.Composite(**items), force=force)
        if saved:
            self.manager.wait_until_finished()
            self._record_digests()
        return saved

    # ------------------------------------------------------------------------------------------- restore
    def latest_step(self) -> Optional[int]:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, target: Any = None, step: Optional[int] = None) -> tuple[Any, Optional[int]]:
        """(tree, step) of the newest intact checkpoint, restored into the structure of `target` (an unreplicated
        pytree of arrays or ShapeDtypeStructs; None = as saved), or (target, None) when there is none.
        Raises CheckpointError when checkpoints exist but none is intact. With `step`, that checkpoint only
        (CheckpointError when it is missing or damaged)."""
        steps = sorted(self.manager.all_steps(), reverse=True)
        if step is not None:
            if step not in steps:
                raise CheckpointError(f"{self.directory}: no checkpoint of step {step} (steps: {sorted(steps)})")
            steps = [step]
        if not steps:
            return target, None
        digests = self._digests()
        damaged = []
        abstract = None if target is None else jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        for step in steps:
            reason = None
            want = digests.get(step)
            if want is not None and files.tree_digest(self.directory / str(step)) != want:
                reason = "its files differ from the digest recorded when it was saved"
            else:
                try:
                    items = {STATE_ITEM: ocp.args.StandardRestore(abstract) if abstract is not None
                             else ocp.args.StandardRestore()}
                    if (self.directory / str(step) / DATA_ITEM).is_dir():
                        items[DATA_ITEM] = ocp.args.JsonRestore()
                    with _quiet_orbax():
                        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
                    self.data_state = restored[DATA_ITEM] if DATA_ITEM in items else None
                    return restored[STATE_ITEM], step
                except Exception as e:  # orbax raises many types for damaged files; all mean "not usable"
                    reason = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else 'unreadable'}"
            damaged.append(step)
            print(f"[checkpoint] {self.directory}/{step}: damaged ({reason}); trying an older checkpoint",
                  file=sys.stderr)
        if self.writable and step is None:
            self._move_aside(damaged)
            print(f"[checkpoint] {self.directory}: no intact checkpoint (damaged steps {damaged}, moved to "
                  f"damaged-STEP); starting from scratch", file=sys.stderr)
            return target, None
        raise CheckpointError(f"{self.directory}: no intact checkpoint (damaged steps: {damaged})")

    def restore_for_training(self, target: Any) -> tuple[Any, Optional[int]]:
        """`restore`, then damaged steps newer than the restored one are moved aside so they can be saved again."""
        newer_before = sorted(self.manager.all_steps())
        tree, step = self.restore(target)
        if step is not None and self.writable:
            self._move_aside([s for s in newer_before if s > step])
        return tree, step

    def _move_aside(self, steps) -> None:
        if not steps or jax.process_index() != 0:
            return
        for step in steps:
            src = self.directory / str(step)
            if src.exists():
                dst = self.directory / f"damaged-{step}"
                n = 1
                while dst.exists():
                    dst, n = self.directory / f"damaged-{step}.{n}", n + 1
                src.rename(dst)
        self.manager.reload()
        self._record_digests()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class _quiet_orbax:
    """Orbax logs a traceback per failing read thread; the caller reports one line instead."""

    def __enter__(self):
        self._logger = logging.getLogger("absl")
        self._level = self._logger.level
        self._logger.setLevel(logging.CRITICAL)

    def __exit__(self, *exc):
        self._logger.setLevel(self._level)
        return False
