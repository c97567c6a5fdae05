"""A built dataset's packet bytes laid out for speed: one fixed-size raw row per flow, memory-mapped.

    python -m pclip_jax.data.fixed DATASET_DIR        # once per built dataset (the build command does it itself)

A built dataset (`pclip_jax.data.build`, TFDS array_record) stores each flow as a serialised tf.Example: reading a
training batch's packet bytes means one protobuf parse per flow (~0.1 ms), about 8,000 flows/s per core. Beside it,
DATASET_DIR/fixed/ holds each split's `bytes` feature as one .npy file ([N, K, B] uint8, rows in the split's
order, the order TFDS's random-access source gives), so a batch is one gather from a memory-mapped array (1,024
flows in well under a millisecond once the pages are cached). The small per-flow columns and the labels are
read once from the tf.Examples, as before (`flow_source.prepare_from_dataset`).

`manifest.json` records the shapes and the array_record files (names and sizes) the rows came from: a dataset
rebuilt since (other files) is reported stale, never read with the old rows. The folder is written under a
temporary name and renamed, so a killed conversion leaves nothing half-written. No pickle: `np.load` with
`allow_pickle=False`.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from pclip_jax.plumbing import files

FIXED_DIR = "fixed"
MANIFEST = "manifest.json"
FORMAT = 1
KEYS = ("bytes",)  # the features read per batch (flow_source._DISK_TENSORS)


class StaleFixedError(ValueError):
    """DATASET_DIR/fixed/ does not belong to the dataset beside it (rebuilt since, or damaged)."""


def _source_files(dataset_dir: pathlib.Path, split: str) -> dict[str, int]:
    """{array_record file name: size} of one split of a built dataset."""
    return {p.name: p.stat().st_size for p in sorted(dataset_dir.glob(f"*-{split}.array_record*"))}


def _fixed_name(split: str, key: str) -> str:
    return f"{split}.{key}.npy"


def write_fixed(dataset_dir: str | pathlib.Path, chunk: int = 4096, progress: bool = True) -> pathlib.Path:
    """Writes DATASET_DIR/fixed/ (see the module docstring) from the built dataset's records; returns its path.
    Rewrites it when it is missing or stale, leaves an up-to-date one as it is."""
    import tensorflow_datasets as tfds
    from tqdm import tqdm

    dataset_dir = pathlib.Path(dataset_dir).expanduser()
    if not (dataset_dir / "dataset_info.json").is_file():
        raise FileNotFoundError(f"{dataset_dir}: not a built dataset (no dataset_info.json)")
    target = dataset_dir / FIXED_DIR
    try:
        if open_fixed(dataset_dir) is not None:
            return target
    except StaleFixedError as e:
        print(f"[fixed] {e}; writing it again", file=sys.stderr)
    builder = tfds.builder_from_directory(str(dataset_dir))
    sources = builder.as_data_source()
    features = builder.info.features
    manifest = {"format": FORMAT, "splits": {}}
    with files.atomic_path(target) as tmp:
        tmp.mkdir()
        for split in sorted(sources):
            source = sources[split]
            raw = source.data_source  # the serialised tf.Examples
            n = len(source)
            entry = {"rows": n, "source_files": _source_files(dataset_dir, split), "arrays": {}}
            for key in KEYS:
                shape, dtype = tuple(features[key].shape), np.dtype(features[key].np_dtype)
                out = np.lib.format.open_memmap(tmp / _fixed_name(split, key), mode="w+", dtype=dtype,
                                                shape=(n, *shape))
                for start in tqdm(range(0, n, chunk), desc=f"fixed {split}.{key}", unit="chunk", file=sys.stderr,
                                  disable=not progress, dynamic_ncols=True):
                    stop = min(start + chunk, n)
                    for j, record in enumerate(raw.__getitems__(list(range(start, stop)))):
                        out[start + j] = _feature(record, key, dtype, shape)
                out.flush()
                del out
                entry["arrays"][key] = {"shape": [n, *shape], "dtype": dtype.str}
            manifest["splits"][split] = entry
        files.write_json(tmp / MANIFEST, manifest)
    return target


def _feature(record: bytes, key: str, dtype, shape) -> np.ndarray:
    """One tensor feature of a serialised tf.Example as TFDS wrote it: raw bytes, or an int64 / float list."""
    from tensorflow_datasets.proto import tf_example_pb2

    feature = tf_example_pb2.Example.FromString(record).features.feature[key]
    kind = feature.WhichOneof("kind")
    if kind == "bytes_list":
        return np.frombuffer(feature.bytes_list.value[0], dtype).reshape(shape)
    return np.asarray(getattr(feature, kind).value, dtype).reshape(shape)


def open_fixed(dataset_dir: str | pathlib.Path, splits: Optional[Sequence[str]] = None) -> Optional[dict]:
    """{split: {key: read-only memory-mapped array}} of DATASET_DIR/fixed/, or None when there is none.
    Raises StaleFixedError when it does not match the dataset's array_record files or its own manifest."""
    dataset_dir = pathlib.Path(dataset_dir).expanduser()
    folder = dataset_dir / FIXED_DIR
    if not (folder / MANIFEST).is_file():
        return None
    try:
        manifest = files.read_json(folder / MANIFEST)
    except ValueError as e:
        raise StaleFixedError(f"{folder}: unreadable {MANIFEST} ({e})") from None
    if manifest.get("format") != FORMAT:
        raise StaleFixedError(f"{folder}: format {manifest.get('format')}, this version reads {FORMAT}")
    out = {}
    for split, entry in manifest["splits"].items():
        if splits is not None and split not in splits:
            continue
        if _source_files(dataset_dir, split) != entry["source_files"]:
            raise StaleFixedError(f"{folder}: written from other {split} array_record files than the dataset's "
                                  f"(rebuilt since?); run python -m pclip_jax.data.fixed {dataset_dir}")
        out[split] = {}
        for key, spec in entry["arrays"].items():
            path = folder / _fixed_name(split, key)
            try:
                array = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as e:
                raise StaleFixedError(f"{path}: unreadable ({e})") from None
            if list(array.shape) != spec["shape"] or array.dtype.str != spec["dtype"]:
                raise StaleFixedError(f"{path}: {array.dtype.str} {list(array.shape)}, the manifest says "
                                      f"{spec['dtype']} {spec['shape']}")
            out[split][key] = array
    return out


class FixedColumn:
    """One feature of a dataset's splits in the fixed layout: `column[rows]` gathers those rows from the
    memory-mapped arrays. Rows are numbered across `arrays` in order (e.g. train, then test), as `DiskColumn`
    numbers them, with the same interface (`shape`, `dtype`, `len`, integer-array indexing)."""

    def __init__(self, arrays: Sequence[np.ndarray]):
        self.arrays = list(arrays)
        self.offsets = np.cumsum([0] + [len(a) for a in self.arrays])
        self.shape = (int(self.offsets[-1]),) + tuple(self.arrays[0].shape[1:])
        self.dtype = self.arrays[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        rows = np.atleast_1d(np.asarray(rows, np.int64))
        if len(self.arrays) == 1 or (len(rows) and rows.max() < self.offsets[1] and rows.min() >= 0):
            return np.asarray(self.arrays[0][rows])  # training batches: all in the first split
        out = np.empty((len(rows),) + self.shape[1:], self.dtype)
        part = np.searchsorted(self.offsets, rows, side="right") - 1
        if len(rows) and (rows.min() < 0 or rows.max() >= self.shape[0]):
            raise IndexError(f"rows outside 0..{self.shape[0] - 1}")
        for p in np.unique(part).tolist():
            at = np.flatnonzero(part == p)
            out[at] = self.arrays[p][rows[at] - self.offsets[p]]
        return out

    def __reduce__(self):  # worker processes (data.batches) reopen the files rather than receive the rows
        return _reopen, ([(a.filename, a.shape, a.dtype.str) if isinstance(a, np.memmap) else a
                          for a in self.arrays],)


def _reopen(specs) -> FixedColumn:
    arrays = []
    for spec in specs:
        if isinstance(spec, tuple):
            path, shape, dtype = spec
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            if array.shape != tuple(shape) or array.dtype.str != dtype:
                raise StaleFixedError(f"{path}: changed since it was opened")
            arrays.append(array)
        else:
            arrays.append(spec)
    return FixedColumn(arrays)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pclip_jax.data.fixed", description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset_dir", help="a built dataset (data_dir/name/config/version)")
    args = parser.parse_args(argv)
    path = write_fixed(args.dataset_dir)
    print(json.dumps({"fixed": str(path), **files.read_json(path / MANIFEST)["splits"]}), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (FileNotFoundError, ValueError) as e:
        print(f"pclip_jax.data.fixed: {e}", file=sys.stderr)
        sys.exit(2)
