"""Pre-training batches: a pure function of (seed, step), made ahead in threads or in worker processes (Grain), with
an iterator state that the checkpoint keeps.

    recipe = BatchRecipe.of(prepared, texts, settings.train, global_batch, mine)   # picklable, no JAX
    batches = StepBatches(recipe, start=0, stop=num_steps, workers=4, prefetch=2)
    batch = next(batches)          # the numpy batch of step 0 (this process's rows `mine`)
    batches.get_state()            # {'next_step': 1, 'fingerprint': ...}: saved with the checkpoint
    batches.close()

Everything a batch is made from sits in a `BatchRecipe` (the training rows' reader, their class ids, the text
features and variants, the sampling and augmentation settings): nothing in it imports JAX, so a worker process
never initialises an accelerator, and it pickles (once, when the workers start; a `fixed.FixedColumn` reopens its
memory-mapped files instead of carrying the rows). With `workers` > 0 the steps go to Grain's worker processes
(`grain.MapDataset.range(start, stop).map(recipe).mp_prefetch(...)`, through `compat.grain_process_prefetch`),
which hand the batches back in step order through shared memory; with 0, `prefetch` threads of this process make
them (`flow_source.Prefetcher`).

The iterator state is the next step and a fingerprint of the recipe: since a batch depends on (seed, step) only,
that is all a resumed run needs, whatever the number of workers (Grain's own multi-worker state is tied to the
worker count), and the fingerprint tells a run resumed on other data or settings from an exact resume.
"""
from __future__ import annotations

import collections
import dataclasses
import hashlib
import sys
from typing import Any, Callable, Optional

import numpy as np

from pclip_jax.data.flow_source import TENSOR_KEYS, FlowRows, NameColumn, Prefetcher, TableRows
from pclip_jax.data.flow_table import NAME_KEY


def sample_indices(step: int, n: int, batch: int, class_ids: np.ndarray, seed: int, balance: float) -> np.ndarray:
    """The global batch of step `step`: a deterministic function of (seed, step), so resume replays exactly.

    Flows are drawn with weight count(class)^-balance: 0 = uniform over flows, 1 = uniform over classes.
    """
    rng = np.random.default_rng([seed, step])
    counts = np.bincount(class_ids, minlength=class_ids.max() + 1).astype(np.float64)
    weights = counts[class_ids] ** (-balance)
    return rng.choice(n, size=batch, replace=n < batch, p=weights / weights.sum())


def augment_flows(batch: dict, rng: np.random.Generator, augment, mine: slice = slice(None),
                  batch_size: Optional[int] = None) -> dict:
    """Capture-invariance augmentations: what changes between two captures of the same application.

    * `iat_scale`: multiply each flow's inter-arrival times by a log-uniform factor in [1/s, s] (another network,
      another round-trip time);
    * `byte_dropout`: zero a random fraction of the payload/header bytes (other session ids, other randoms);
    * `packet_dropout`: drop non-first packets with this probability, shifting later ones up (lost ACKs,
      coalesced segments, another capture point);
    * `name_dropout`: hide the server name of this fraction of flows (Encrypted Client Hello, resumed sessions,
      flows whose handshake was not captured), so the tower does not depend on names alone.

    `batch` holds the rows `mine` of a global batch of `batch_size` rows (default: all of it). The random draws are
    made for the whole global batch and cut to `mine`, so a process that reads only its own rows augments them
    exactly as a single process augmenting the whole batch would.
    """
    batch = dict(batch)
    n, k = batch["sizes"].shape
    total = n if batch_size is None else batch_size
    if augment.iat_scale > 1:
        factor = np.exp(rng.uniform(-1, 1, size=(total, 1))[mine] * np.log(augment.iat_scale)).astype(np.float32)
        batch["iat"] = batch["iat"] * factor
    if augment.byte_dropout > 0:
        keep = rng.random((total,) + batch["bytes"].shape[1:])[mine] >= augment.byte_dropout
        batch["bytes"] = batch["bytes"] * keep.astype(np.uint8)
    if augment.packet_dropout > 0:
        drop = (rng.random((total, k))[mine] < augment.packet_dropout) & (batch["sizes"] != 0)
        drop[:, 0] = False
        order = np.argsort(drop, axis=1, kind="stable")  # kept packets first, in their original order
        for key in TENSOR_KEYS:
            arr = np.take_along_axis(batch[key], order.reshape(order.shape + (1,) * (batch[key].ndim - 2)), 1)
            dropped_sorted = np.take_along_axis(drop, order, 1)
            mask = dropped_sorted.reshape(dropped_sorted.shape + (1,) * (arr.ndim - 2))
            batch[key] = np.where(mask, np.zeros_like(arr), arr)
    if augment.name_dropout > 0 and NAME_KEY in batch:
        hide = rng.random(total)[mine] < augment.name_dropout
        batch[NAME_KEY] = np.where(hide[:, None], np.zeros_like(batch[NAME_KEY]), batch[NAME_KEY])
    return batch


def batch_from_rows(flows: FlowRows, class_ids: np.ndarray, text_features: np.ndarray, variants: np.ndarray,
                    tokens: Optional[dict], rows: np.ndarray, step: int, seed: int, augment=None,
                    mine: slice = slice(None), name_text: Optional[np.ndarray] = None) -> dict:
    """This process's part `mine` of the global batch `rows` (indices of training rows: `flows` reads their tower
    inputs, `class_ids[rows]` are their classes, `variants[rows]` index their texts). Only the rows `mine` are
    read; augmentation and text variants are drawn for all of `rows`, so every process count trains on the same
    global batch. `name_text` [texts] marks the texts that are a server name's: a flow paired with one has its
    own name input hidden (it must say the name from the traffic)."""
    rng = np.random.default_rng([seed, step, 1])
    own = rows[mine]
    batch = flows.read(own)
    if augment is not None:
        batch = augment_flows(batch, rng, augment, mine, len(rows))
    variant = rng.integers(0, variants.shape[1], size=len(rows))[mine]
    chosen = variants[own, variant]
    if name_text is not None and NAME_KEY in batch:
        hide = name_text[chosen]
        batch[NAME_KEY] = np.where(hide[:, None], np.zeros_like(batch[NAME_KEY]), batch[NAME_KEY])
    if tokens is not None:
        batch["input_ids"] = tokens["input_ids"][chosen]
        batch["attention_mask"] = tokens["attention_mask"][chosen]
    else:
        batch["text"] = text_features[chosen].astype(np.float32, copy=False)
    batch["valid"] = np.ones(len(own), bool)
    batch["class_id"] = class_ids[own]
    return batch


@dataclasses.dataclass
class BatchRecipe:
    """What the batch of a step is made from; `recipe(step)` → this process's numpy batch of that step. Picklable
    and free of JAX (see the module docstring)."""
    flows: FlowRows                  # the training rows' tower inputs
    class_ids: np.ndarray            # [train rows] class id (-1: label hidden)
    text_features: np.ndarray        # [T, Dt]
    variants: np.ndarray             # [train rows, V] index into text_features
    tokens: Optional[dict]           # tuned text tower: token ids and mask of the texts
    global_batch: int
    seed: int
    class_balance: float
    augment: Any                     # settings.AugmentSettings (or None)
    mine: slice = dataclasses.field(default_factory=lambda: slice(None))  # this process's rows of the batch
    name_text: Optional[np.ndarray] = None  # [T] bool: texts that are a server name's (their flow's name hidden)

    def __post_init__(self):
        # Sampling weights: a class id of -1 (labels hidden) is a bucket of its own.
        classes = np.asarray(self.class_ids)
        self._known = np.where(classes >= 0, classes, classes.max() + 1) if len(classes) else classes

    @classmethod
    def of(cls, prepared, texts, train, global_batch: int, mine: slice = slice(None),
           flows: Optional[FlowRows] = None) -> "BatchRecipe":
        """The recipe of pre-training on `prepared` (data.prepare.PreparedFlows) with `texts` (train.TrainTexts)
        and `train` (settings.TrainSettings); `flows` reads the training rows (default: the in-memory table's)."""
        if flows is None:
            tensors = prepared.table.tensors
            flows = TableRows({k: tensors[k] for k in (*TENSOR_KEYS, NAME_KEY) if k in tensors}, prepared.train_idx)
        return cls(flows=flows, class_ids=np.asarray(prepared.class_ids)[prepared.train_idx],
                   text_features=texts.features, variants=texts.variants, tokens=texts.tokens,
                   global_batch=global_batch, seed=train.seed, class_balance=train.class_balance,
                   augment=train.augment, mine=mine, name_text=getattr(texts, "name_text", None))

    def __len__(self) -> int:
        return len(self.flows)

    def rows(self, step: int) -> np.ndarray:
        return sample_indices(step, len(self.flows), self.global_batch, self._known, self.seed, self.class_balance)

    def __call__(self, step: int) -> dict:
        return batch_from_rows(self.flows, self.class_ids, self.text_features, self.variants, self.tokens,
                               self.rows(step), step, self.seed, self.augment, self.mine, self.name_text)

    def fingerprint(self) -> str:
        """A digest of what decides the batches (rows, classes, texts, sampling and augmentation settings): equal
        fingerprints and steps give equal batches."""
        h = hashlib.sha256()
        h.update(repr((len(self.flows), self.global_batch, self.seed, self.class_balance, self.augment,
                       self.mine, self.text_features.shape, self.variants.shape)).encode())
        for a in (self.class_ids, self.variants) + ((self.name_text,) if self.name_text is not None else ()):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()[:16]

    def for_workers(self) -> "BatchRecipe":
        """This recipe ready to be pickled to worker processes: every server name of the training rows encoded
        here (a worker has no text encoder)."""
        index = getattr(self.flows, "index", None)
        column = getattr(self.flows, "tensors", {}).get(NAME_KEY)
        if isinstance(column, NameColumn) and index is not None:
            column.ensure(column.inverse[index])
        return self


class StepBatches:
    """The batches of steps start, start + 1, ... (< stop), made ahead by `workers` processes (Grain) or, with 0,
    by `prefetch` threads. `post` (sharding over the local devices and the transfer to them) runs in a thread of
    its own `ahead` batches in advance, so a batch is on the device before its step asks for it. `get_state()` /
    `set_state()`: the next step and the recipe's fingerprint (module docstring)."""

    def __init__(self, recipe: Callable[[int], dict], start: int = 0, stop: Optional[int] = None, workers: int = 0,
                 prefetch: int = 2, post: Optional[Callable[[dict], Any]] = None, ahead: int = 2):
        self.recipe, self.workers, self.prefetch = recipe, int(workers), max(1, int(prefetch))
        self.stop = stop if stop is not None else sys.maxsize
        self._post, self._ahead = post or (lambda batch: batch), max(1, int(ahead))
        self._fingerprint = recipe.fingerprint() if hasattr(recipe, "fingerprint") else ""
        self._it = self._feeder = None
        self._start(start)

    def _start(self, step: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.close()
        self.next_step = self._requested = int(step)
        if self.workers > 0:
            # JAX only in the training process: worker processes unpickle this module to make batches, never JAX
            from pclip_jax.plumbing import runtime as compat

            recipe = self.recipe.for_workers() if hasattr(self.recipe, "for_workers") else self.recipe
            self._it = compat.grain_process_prefetch(recipe, self.next_step, self.stop, self.workers, self.prefetch)
        else:
            self._it = Prefetcher(self.recipe, self.next_step, depth=self.prefetch)
        # One thread: `next(self._it)` in step order, then `post` (which may start a device transfer).
        self._feeder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches-post")
        self._pending: collections.deque = collections.deque()
        self._fill()

    def _pull(self):
        return self._post({k: np.asarray(v) for k, v in next(self._it).items()})

    def _fill(self) -> None:
        while len(self._pending) < self._ahead and self._requested < self.stop:
            self._pending.append(self._feeder.submit(self._pull))
            self._requested += 1

    def __iter__(self):
        return self

    def __next__(self):
        if self.next_step >= self.stop:
            raise StopIteration
        batch = self._pending.popleft().result()  # re-raises what making the batch raised
        self.next_step += 1
        self._fill()
        return batch

    def get_state(self) -> dict:
        return {"next_step": self.next_step, "fingerprint": self._fingerprint}

    def set_state(self, state: dict) -> None:
        """Continues from a saved state: its next step (restarting the workers when that is not this one's)."""
        saved = state.get("fingerprint")
        if saved and self._fingerprint and saved != self._fingerprint:
            print(f"[data] the checkpoint's batches were made from other data or settings (fingerprint {saved}, "
                  f"now {self._fingerprint}): from step {state['next_step']} on, batches of today's", file=sys.stderr)
        if int(state["next_step"]) != self.next_step:
            self._start(int(state["next_step"]))

    def close(self) -> None:
        if self._feeder is not None:
            for future in self._pending:
                future.cancel()
            self._feeder.shutdown(wait=True, cancel_futures=True)
            self._feeder = None
        if self._it is not None:
            self._it.close()
            self._it = None
