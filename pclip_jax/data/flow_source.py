"""The flows a job trains on, read on demand: from the in-memory flow table or from a built dataset on disk.

    prepared = prepare_from_dataset(settings.data)      # data.dataset = a built dataset (`pclip_jax.data.build`)
    rows = TableRows(prepared.table.tensors, prepared.train_idx)
    batch = rows.read(np.array([3, 17, 42]))             # {'bytes': [3, K, B], 'sizes', 'iat', 'tcp_flags'(, 'name_vec')}

A built dataset (array_record) is read through TFDS's random-access data source (`as_data_source`): its labels and
small per-flow columns (sizes, inter-arrival times, flags, statistics: about 200 bytes a flow) are read once; the
packet bytes stay on disk (`DiskColumn`) and each batch reads and decodes its own rows, in the process that trains
on them. Pre-training prepares batches ahead in a thread (`Prefetcher`). Batches remain a pure function of
(seed, step), so resuming and the process count change nothing.
"""
from __future__ import annotations

import pathlib
import queue
import sys
import threading
from typing import Iterator, Protocol, Sequence

import numpy as np

from pclip_jax.data.input_pipeline import get_many
from pclip_jax.name_features import NAME_KEY

TENSOR_KEYS = ("bytes", "sizes", "iat", "tcp_flags")  # per-packet inputs of the packet tower [N, K, ...]
# Columns of a built dataset that `dataset_flows` keeps in memory: a few bytes to a few dozen per flow.
_SMALL_TENSORS = ("sizes", "iat", "tcp_flags", "num_packets", "stats")
_DISK_TENSORS = ("bytes",)  # K x B bytes a flow: read per batch
_META = {"capture": "capture", "flow_id": "flow_id", "proto": "proto", "first_ts": "first_ts", "last_ts": "last_ts",
         "c2s_packets": "c2s_packets", "s2c_packets": "s2c_packets", "c2s_bytes": "c2s_bytes",
         "s2c_bytes": "s2c_bytes", "level1": "level1_name", "level2": "level2", "label": "label", "app": "app",
         "category": "category", "encrypted": "encrypted", "server_name": "server_name"}


def tower_inputs(tensors: dict, idx) -> dict:
    """The packet tower's inputs for flows `idx`: the per-packet tensors, and server-name vectors when present."""
    batch = {k: tensors[k][idx] for k in TENSOR_KEYS}
    if NAME_KEY in tensors:
        batch[NAME_KEY] = tensors[NAME_KEY][idx]
    return batch


class FlowRows(Protocol):
    """What pre-training reads flows through: `len()` training rows, `read(rows)` → the tower inputs of those."""

    def __len__(self) -> int: ...

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]: ...


class TableRows:
    """Rows `index` of an in-memory tensor dict (a FlowTable's `tensors`)."""

    def __init__(self, tensors: dict, index: np.ndarray):
        self.tensors, self.index = tensors, np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def read(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        return tower_inputs(self.tensors, self.index[np.asarray(rows, np.int64)])


class DiskColumn:
    """One feature of a built dataset's splits, read on demand: `column[rows]` reads and decodes those rows only.

    Rows are numbered across `sources` in order (e.g. train, then test). Enough of the ndarray interface
    (`shape`, `dtype`, `len`, integer-array indexing) for the code that batches flows to use it unchanged."""

    def __init__(self, sources: Sequence, key: str):
        self.sources, self.key = list(sources), key
        self.offsets = np.cumsum([0] + [len(s) for s in self.sources])
        first = next((s for s in self.sources if len(s)), None)
        row = np.asarray(first[0][key]) if first is not None else np.zeros(0)
        self.shape, self.dtype = (int(self.offsets[-1]),) + row.shape, row.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        for p in np.unique(part).tolist():
            at = np.flatnonzero(part == p)
            for j, e in zip(at, get_many(self.sources[p], rows[at] - self.offsets[p])):
                out[j] = e[self.key]
        return out


class NameColumn:
    """Server-name vectors computed when rows are asked for (a built dataset keeps the names, not the vectors)."""

    def __init__(self, encoder, names: np.ndarray):
        self.encoder, self.names = encoder, np.asarray(names).astype(str)
        self.shape, self.dtype = (len(self.names), int(encoder.dim)), np.dtype(np.float16)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        return self.encoder(self.names[np.atleast_1d(np.asarray(rows, np.int64))])


def open_dataset(dataset_dir: str | pathlib.Path):
    """The TFDS builder of a dataset directory (data_dir/name/config/version), with a one-line error when the
    directory holds none."""
    import tensorflow_datasets as tfds

    path = pathlib.Path(dataset_dir).expanduser()
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"data.dataset={path}: not a built dataset (no dataset_info.json); build one with "
                                f"python -m pclip_jax.data.build NAME --manual_dir DIR --data_dir OUT")
    return tfds.builder_from_directory(str(path))


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _small_columns(source, chunk: int, desc: str, progress: bool) -> tuple[dict, dict]:
    """(meta, small tensors) of every row of a source, read in chunks; the packet bytes are not kept."""
    from tqdm import tqdm

    n = len(source)
    columns: dict[str, list] = {k: [] for k in (*_META, *_SMALL_TENSORS)}
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=not progress, file=sys.stderr,
                      dynamic_ncols=True):
        for e in get_many(source, np.arange(start, min(start + chunk, n))):
            for ours, theirs in _META.items():
                columns[ours].append(_text(e[theirs]) if isinstance(e[theirs], bytes) else e[theirs])
            for k in _SMALL_TENSORS:
                columns[k].append(np.asarray(e[k]))
    meta = {k: np.asarray(v, dtype=str if v and isinstance(v[0], str) else None) for k, v in columns.items()
            if k in _META}
    return meta, {k: np.stack(columns[k]) for k in _SMALL_TENSORS if columns[k]}


def prepare_from_dataset(data_config, name_encoder=None, chunk: int = 2048, progress: bool = True):
    """The PreparedFlows of a built dataset (`data.dataset`): its train and test splits, read once for the labels
    and the small per-flow columns; the packet bytes stay on disk (`DiskColumn`) and server-name vectors are made
    per batch (`NameColumn`, when `name_encoder` is given), so host memory does not grow with the packet data.

    Test = the dataset's test split (capture-disjoint, made by its builder); validation = whole training captures
    (`data.validation_fraction`, as `prepare_flows` does); `data.fraction` subsets the training flows. The
    builder's filters and labels are used as built."""
    from pclip_jax.data import splits as splits_lib
    from pclip_jax.data.ingest import FlowTable
    from pclip_jax.data.prepare import PreparedFlows, keep_every_class_in_train

    builder = open_dataset(data_config.dataset)
    sources = builder.as_data_source()
    missing = {"train", "test"} - set(sources)
    if missing:
        raise ValueError(f"data.dataset={data_config.dataset}: no {sorted(missing)} split (splits: {sorted(sources)})")
    built = dict(builder.info.metadata.get("config", {}))
    for field in ("packets", "bytes", "mask"):
        if field in built and built[field] != getattr(data_config, field):
            raise ValueError(f"data.dataset={data_config.dataset} was built with {field}={built[field]} but "
                             f"data.{field}={getattr(data_config, field)}; set --config.data.{field}={built[field]}")
    parts = [_small_columns(sources[s], chunk, f"{s} labels", progress) for s in ("train", "test")]
    meta = {k: np.concatenate([m[k] for m, _ in parts]) for k in parts[0][0]}
    tensors = {k: np.concatenate([t[k] for _, t in parts]) for k in parts[0][1]}
    tensors.update({k: DiskColumn([sources["train"], sources["test"]], k) for k in _DISK_TENSORS})
    if name_encoder is not None:
        tensors[NAME_KEY] = NameColumn(name_encoder, meta["server_name"])
    table = FlowTable(meta, tensors, list(builder.info.metadata.get("stats_names", [])), {})
    level = data_config.label_level
    n_train = len(sources["train"])
    train_idx, test_idx = np.arange(n_train), np.arange(n_train, len(meta["capture"]))
    val_idx = np.zeros(0, np.int64)
    if data_config.validation_fraction > 0:
        light = FlowTable({k: meta[k][train_idx] for k in ("capture", level)}, {}, [], {})
        inner = splits_lib.split_by_capture(light, data_config.validation_fraction, data_config.split_seed, level)
        train_idx, val_idx = keep_every_class_in_train(table, train_idx[inner["train"]], train_idx[inner["test"]],
                                                       level)
    labels = meta[level].astype(str)
    names, counts = np.unique(labels[np.concatenate([train_idx, val_idx])], return_counts=True)
    class_names = sorted(str(n) for n, c in zip(names, counts) if c >= data_config.min_class_flows and n)
    if not class_names:
        raise ValueError(f"data.dataset={data_config.dataset}: no {level} class has {data_config.min_class_flows} "
                         f"training flows (data.min_class_flows)")
    lookup = {c: i for i, c in enumerate(class_names)}
    class_ids = np.array([lookup.get(x, -1) for x in labels.tolist()], np.int32)
    if data_config.fraction < 1.0:
        train_idx = splits_lib.fraction_subset(table, train_idx, data_config.fraction, data_config.split_seed, level)
    captures = meta["capture"].astype(str)
    print(f"[data] {data_config.dataset}: {len(captures)} flows; train {len(train_idx)} / validation {len(val_idx)} "
          f"/ test {len(test_idx)}; {len(class_names)} {level} classes", file=sys.stderr)
    return PreparedFlows(table=table, train_idx=train_idx, test_idx=test_idx, val_idx=val_idx,
                         class_names=class_names, class_ids=class_ids,
                         dropped={**dict(builder.info.metadata.get("dropped", {})),
                                  "class_below_min_train_flows": int((class_ids == -1).sum())},
                         split_captures={"train": sorted(set(captures[train_idx])),
                                         "validation": sorted(set(captures[val_idx])),
                                         "test": sorted(set(captures[test_idx]))},
                         taxonomy={"source": "dataset", "dataset": str(data_config.dataset)})


class Prefetcher:
    """Runs an iterator in a background thread, `depth` items ahead (batch reads overlap the device step).

    Order and content are the iterator's own, so prefetching never changes what training sees."""

    _DONE = object()

    def __init__(self, iterator: Iterator, depth: int = 2):
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._fill, args=(iterator,), daemon=True, name="prefetch")
        self._thread.start()

    def _fill(self, iterator):
        try:
            for item in iterator:
                while not self._stop.is_set():
                    try:
                        self._queue.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if self._stop.is_set():
                    return
            self._queue.put((self._DONE, None))
        except BaseException as e:  # re-raised in the consumer, with its traceback
            self._queue.put((self._DONE, e))

    def __iter__(self):
        return self

    def __next__(self):
        item, error = self._queue.get()
        if error is not None:
            raise error
        if item is self._DONE:
            raise StopIteration
        return item

    def close(self) -> None:
        self._stop.set()

