"""The flows a job trains on, read on demand: from the in-memory flow table or from a built dataset on disk.

    prepared = prepare_from_dataset(settings.data)      # data.dataset = a built dataset (`pclip_jax.data.build`)
    rows = TableRows(prepared.table.tensors, prepared.train_idx)
    batch = rows.read(np.array([3, 17, 42]))             # {'bytes': [3, K, B], 'sizes', 'iat', 'tcp_flags'(, 'name_vec')}

A built dataset (array_record) is read through TFDS's random-access data source (`as_data_source`): its labels and
small per-flow columns (sizes, inter-arrival times, flags, statistics: about 200 bytes a flow) are read once; the
packet bytes stay on disk (`DiskColumn`) and each batch reads and decodes its own rows, in the process that trains
on them. Pre-training prepares batches ahead in threads (`Prefetcher`). Batches remain a pure function of
(seed, step), so resuming and the process count change nothing.
"""
from __future__ import annotations

import collections
import pathlib
import sys
from typing import Callable, Protocol, Sequence

import numpy as np

from pclip_jax.data.input_pipeline import get_many
from pclip_jax.data import splits as splits_lib
from pclip_jax.data.flow_table import NAME_KEY, FlowTable
from pclip_jax.data.prepare import PreparedFlows, check_split, keep_every_class_in_train

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
            source, local = self.sources[p], rows[at] - self.offsets[p]
            raw = getattr(source, "data_source", None)  # TFDS's array_record source: serialised tf.Examples
            if raw is not None:
                # Parse this one feature, not all 25 of every example (TFDS's decoding is ~0.8 ms an example).
                for j, record in zip(at, raw.__getitems__(local.tolist())):
                    out[j] = _feature_from_record(record, self.key, self.dtype, self.shape[1:])
            else:
                for j, e in zip(at, get_many(source, local)):
                    out[j] = e[self.key]
        return out


def _feature_from_record(record: bytes, key: str, dtype, shape) -> np.ndarray:
    """One feature of a serialised tf.Example as TFDS wrote it (raw bytes, or an int64 / float list)."""
    return _feature_value(_parse(record)[key], dtype, shape)


def _parse(record: bytes):
    from tensorflow_datasets.proto import tf_example_pb2

    return tf_example_pb2.Example.FromString(record).features.feature


def _feature_value(feature, dtype, shape):
    """A parsed tf.Example feature as TFDS wrote it: text, raw bytes, or an int64 / float list."""
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        if dtype is str:
            return _text(feature.bytes_list.value[0]) if feature.bytes_list.value else ""
        return np.frombuffer(feature.bytes_list.value[0], dtype).reshape(shape)
    values = getattr(feature, kind).value
    return np.asarray(values, dtype).reshape(shape) if shape else dtype(values[0])


class NameColumn:
    """Server-name vectors made when rows are asked for (a built dataset keeps the names, not the vectors), each
    distinct name once, kept in a table of the distinct names (768 bytes a name): memory grows with the distinct
    names, not with the flows, and a batch's vectors are one gather."""

    def __init__(self, encoder, names: np.ndarray):
        self.encoder = encoder
        self.distinct, self.inverse = np.unique(np.asarray(names).astype(str), return_inverse=True)
        self.inverse = self.inverse.reshape(-1).astype(np.int32)
        self.shape, self.dtype = (len(self.inverse), int(encoder.dim)), np.dtype(np.float16)
        self._table = np.zeros((len(self.distinct), self.shape[1]), self.dtype)  # rows of unseen names: zeros
        self._seen = np.zeros(len(self.distinct), bool)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        which = self.inverse[np.atleast_1d(np.asarray(rows, np.int64))]
        self.ensure(which)
        return self._table[which]

    def ensure(self, which: np.ndarray) -> None:
        """Encodes the distinct names `which` (indices into `distinct`) not encoded yet."""
        new = np.unique(which[~self._seen[which]])
        if len(new):  # prefetch threads may encode the same names at once, with the same values
            self._table[new] = np.asarray(self.encoder(self.distinct[new]), self.dtype)
            self._seen[new] = True  # after the vectors: a thread that sees the flag sees them

    def __getstate__(self):
        # Pickled to worker processes (data.batches) without the encoder: they read names encoded here
        # (`BatchRecipe.for_workers`) and fail on any other rather than load a text model each.
        return {**self.__dict__, "encoder": None}

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self.encoder is None:
            self.encoder = _no_encoder


def _no_encoder(names):
    raise RuntimeError(f"server names {list(names)[:3]} were not encoded before the worker processes started "
                       f"(BatchRecipe.for_workers)")


def open_dataset(dataset_dir: str | pathlib.Path):
    """The TFDS builder of a dataset directory (data_dir/name/config/version), with a one-line error when the
    directory holds none."""
    import tensorflow_datasets as tfds

    path = pathlib.Path(dataset_dir).expanduser()
    if not (path / "dataset_info.json").is_file():
        raise FileNotFoundError(f"data.dataset={path}: not a built dataset (no dataset_info.json); build one with "
                                f"python -m pclip_jax.data.build NAME --manual_dir DIR --data_dir OUT")
    return tfds.builder_from_directory(str(path))


def disk_columns(dataset_dir, sources: dict, reader: str = "auto") -> dict:
    """The per-batch columns (the packet bytes) of a built dataset's train and test splits: from its fixed
    layout (`pclip_jax.data.fixed`, memory-mapped raw rows) with `reader` 'fixed', or 'auto' when the dataset has
    one; else parsed from the tf.Examples (`DiskColumn`)."""
    # fixed imports this module (DiskColumn's protocol): imported here to keep the two out of an import circle
    from pclip_jax.data import fixed

    if reader != "tfds":
        try:
            arrays = fixed.open_fixed(dataset_dir, ("train", "test"))
        except fixed.StaleFixedError as e:
            if reader == "fixed":
                raise
            print(f"[data] {e}; reading the tf.Examples instead (slower)", file=sys.stderr)
            arrays = None
        if arrays is not None and {"train", "test"} <= set(arrays):
            return {k: fixed.FixedColumn([arrays["train"][k], arrays["test"][k]]) for k in _DISK_TENSORS}
        if reader == "fixed":
            raise FileNotFoundError(f"data.reader=fixed but {dataset_dir} has no fixed layout; write it with "
                                    f"python -m pclip_jax.data.fixed {dataset_dir}")
        print(f"[data] {dataset_dir}: no fixed layout, packet bytes parsed from the tf.Examples per batch (about "
              f"10x slower); python -m pclip_jax.data.fixed {dataset_dir} writes it", file=sys.stderr)
    return {k: DiskColumn([sources["train"], sources["test"]], k) for k in _DISK_TENSORS}


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _small_columns(source, chunk: int, desc: str, progress: bool) -> tuple[dict, dict]:
    """(meta, small tensors) of every row of a source, read in chunks; the packet bytes are not kept."""
    from tqdm import tqdm

    n = len(source)
    columns: dict[str, list] = {k: [] for k in (*_META, *_SMALL_TENSORS)}
    raw = getattr(source, "data_source", None)  # TFDS's array_record source: parse only these features
    spec = {}
    if raw is not None and n:
        first = source[0]  # dtypes and shapes as TFDS decodes them
        spec = {k: (str, ()) if isinstance(first[k], bytes) else (np.asarray(first[k]).dtype.type,
                                                                   np.shape(first[k]))
                for k in (*_META.values(), *_SMALL_TENSORS)}
    for start in tqdm(range(0, n, chunk), desc=desc, unit="chunk", disable=not progress, file=sys.stderr,
                      dynamic_ncols=True):
        rows = np.arange(start, min(start + chunk, n))
        if raw is not None:
            for record in raw.__getitems__(rows.tolist()):
                f = _parse(record)
                for ours, theirs in _META.items():
                    columns[ours].append(_feature_value(f[theirs], *spec[theirs]))
                for k in _SMALL_TENSORS:
                    columns[k].append(_feature_value(f[k], *spec[k]))
            continue
        for e in get_many(source, rows):
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
    tensors.update(disk_columns(data_config.dataset, sources, getattr(data_config, "reader", "auto")))
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
    train_idx, val_idx, notes = check_split(table, train_idx, val_idx, test_idx, class_ids, class_names, level,
                                            data_config)
    train_pool_idx = None
    if data_config.fraction < 1.0:
        train_pool_idx = np.asarray(train_idx)
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
                         taxonomy={"source": "dataset", "dataset": str(data_config.dataset)},
                         train_pool_idx=train_pool_idx, split_notes=notes)


class Prefetcher:
    """`make(step)` for step = start, start + 1, ... computed `depth` steps ahead by `depth` threads, returned in
    step order. Batches are a pure function of the step, so prefetching changes only when they are made (the
    array_record reads, protobuf parsing and numpy work release the GIL for much of their time)."""

    def __init__(self, make: Callable[[int], object], start: int = 0, depth: int = 2):
        from concurrent.futures import ThreadPoolExecutor

        self._make, self._next_step, self._depth = make, start, max(1, depth)
        self._pool = ThreadPoolExecutor(max_workers=self._depth, thread_name_prefix="prefetch")
        self._pending: collections.deque = collections.deque()
        self._fill()

    def _fill(self) -> None:
        while len(self._pending) < self._depth:
            self._pending.append(self._pool.submit(self._make, self._next_step))
            self._next_step += 1

    def __iter__(self):
        return self

    def __next__(self):
        batch = self._pending.popleft().result()  # re-raises what `make` raised, with its traceback
        self._fill()
        return batch

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
