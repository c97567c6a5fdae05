"""The flow table: N flows as column arrays, the contract between ingest and every stage after it.

`FlowTable` holds `meta` (one 1-D array per column, the columns of `flows.csv`), `tensors` (first axis N: the
packet rows, sizes, inter-arrival times, TCP flags, valid rows, flow statistics) with `stats_names`, and the ingest
`summary`; `save`/`load` write and read `flows.csv`, `tensors.npz` (no pickle) and `summary.json` atomically.
The columns and tensors are described in docs/architecture.md ("The flow table"). Numpy only: no JAX.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import json
import os
import zipfile
from pathlib import Path
from typing import Sequence

import numpy as np

from pclip_jax.plumbing.files import atomic_path, read_json

META_COLUMNS = ("capture", "flow_id", "proto", "client_ip", "server_ip", "client_port", "server_port", "vlan",
                "first_ts", "last_ts", "c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes", "server_name")
LABEL_COLUMNS = ("label", "app", "category", "encrypted", "level1", "level2")
_INT_COLUMNS = {"flow_id", "proto", "client_port", "server_port", "vlan", "c2s_packets", "s2c_packets",
                "c2s_bytes", "s2c_bytes", "encrypted"}
_FLOAT_COLUMNS = {"first_ts", "last_ts"}
TENSOR_NAMES = ("bytes", "sizes", "iat", "tcp_flags", "num_packets", "stats")

# The tensor a model stage adds to a table (not ingest): the server name as a static text-embedding vector, float16
# [N, D] (`text.name_features`). Defined here, with the table, so that the data layer can carry it.
NAME_KEY = "name_vec"


@dataclasses.dataclass
class FlowTable:
    """N flows as column arrays: ``meta`` (flows.csv), ``tensors`` (first axis N), stats names and a summary."""

    meta: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]
    stats_names: list[str]
    summary: dict

    def __len__(self) -> int:
        return len(self.meta["flow_id"]) if "flow_id" in self.meta else 0

    def select(self, indices) -> "FlowTable":
        """A new table with the flows at ``indices`` (integer indices or a boolean mask); summary is copied."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.nonzero(idx)[0]
        return FlowTable({k: v[idx] for k, v in self.meta.items()}, {k: v[idx] for k, v in self.tensors.items()},
                         list(self.stats_names), json.loads(json.dumps(self.summary)))

    @staticmethod
    def concat(tables: Sequence["FlowTable"]) -> "FlowTable":
        """Concatenate tables with the same columns; summaries are merged (counts added, errors joined)."""
        tables = list(tables)
        if not tables:  # an empty table's columns and shapes come from an ingest config: `ingest.empty_table`
            raise ValueError("FlowTable.concat: no tables (data.ingest.empty_table(config) makes an empty one)")
        names = tables[0].stats_names
        for t in tables[1:]:
            if list(t.stats_names) != list(names) or list(t.meta) != list(tables[0].meta):
                raise ValueError("FlowTable.concat: tables have different columns or statistics")
        if len(tables) == 1:  # no copy of the (large) tensors
            t = tables[0]
            return FlowTable(dict(t.meta), dict(t.tensors), list(names), merge_summaries([t.summary]))
        meta = {k: np.concatenate([t.meta[k] for t in tables]) for k in tables[0].meta}
        tens = {k: np.concatenate([t.tensors[k] for t in tables]) for k in tables[0].tensors}
        return FlowTable(meta, tens, list(names), merge_summaries([t.summary for t in tables]))

    TABLE_FILES = ("flows.csv", "tensors.npz", "summary.json")

    def save(self, out_dir: str | os.PathLike) -> None:
        """Write ``flows.csv``, ``tensors.npz`` (no pickle) and ``summary.json`` into ``out_dir``, atomically: a kill
        mid-write leaves the previous table (or none), never a partial one. A new directory (or one holding only a
        table) is written beside it and swapped in; in a directory that holds other files too, each file is written
        to a temporary name and renamed, and nothing else in it is touched."""
        out = Path(out_dir)
        others = out.is_dir() and any(p.name not in self.TABLE_FILES for p in out.iterdir())
        if others:
            for name in self.TABLE_FILES:
                with atomic_path(out / name) as tmp:
                    self._write_file(name, tmp)
            return
        with atomic_path(out) as tmp:
            tmp.mkdir()
            # tensors.npz is one large write (the kernel's time, without the GIL) and flows.csv is Python string
            # formatting: done at the same time, the save costs about the larger of the two, not their sum.
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                npz = pool.submit(self._write_file, "tensors.npz", tmp / "tensors.npz")
                for name in self.TABLE_FILES:
                    if name != "tensors.npz":
                        self._write_file(name, tmp / name)
                npz.result()  # re-raises a failed write; the directory is then not swapped in

    def _write_file(self, name: str, path: Path) -> None:
        if name == "flows.csv":
            cols = list(self.meta)
            with open(path, "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(cols)
                step = 50_000  # rows per write: bounds the memory of the formatted strings
                for a in range(0, len(self), step):
                    w.writerows(zip(*(_csv_values(self.meta[c][a:a + step]) for c in cols)))
        elif name == "tensors.npz":
            _write_npz(path, {**self.tensors, "stats_names": np.array(self.stats_names)})
        else:
            with open(path, "w") as fh:
                json.dump(self.summary, fh, indent=1, default=_json_default)

    @classmethod
    def load(cls, out_dir: str | os.PathLike) -> "FlowTable":
        """Read a table written by ``save``."""
        d = Path(out_dir)
        for f in ("flows.csv", "tensors.npz", "summary.json"):
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f}: missing (not a FlowTable directory?)")
        with open(d / "flows.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        if not rows:
            raise ValueError(f"{d / 'flows.csv'}: empty file, expected a header row")
        header, body = rows[0], rows[1:]
        cols = list(zip(*body)) if body else [()] * len(header)
        meta = {}
        for name, vals in zip(header, cols):
            try:
                if name in _INT_COLUMNS:
                    meta[name] = np.array([int(v) for v in vals], np.int64)
                elif name in _FLOAT_COLUMNS:
                    meta[name] = np.array([float(v) for v in vals], np.float64)
                else:
                    meta[name] = np.array(vals, dtype=str)
            except ValueError as e:
                raise ValueError(f"{d / 'flows.csv'}: column {name!r}: {e}") from None
        try:
            with np.load(d / "tensors.npz", allow_pickle=False) as z:
                tens = {k: z[k] for k in z.files if k != "stats_names"}
                names = [str(x) for x in z["stats_names"]]
        except (zipfile.BadZipFile, EOFError, OSError, KeyError, ValueError) as e:
            raise ValueError(f"{d / 'tensors.npz'}: unreadable ({type(e).__name__}: {e})") from None
        summary = read_json(d / "summary.json")
        lengths = {k: len(v) for k, v in {**meta, **tens}.items()}
        if len(set(lengths.values())) > 1:
            raise ValueError(f"{d}: columns of different lengths {lengths} (a damaged table)")
        return cls(meta, tens, names, summary)


def _write_npz(path: Path, arrays: dict) -> None:
    """Like np.savez (uncompressed, readable by np.load), but writes each array's memory directly.

    np.savez copies arrays chunk by chunk through an iterator before writing; for the large byte tensor
    that copy is a noticeable share of an ingest run.
    """
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in arrays.items():
            arr = np.ascontiguousarray(arr)
            if arr.dtype.hasobject:
                raise ValueError(f"{path}: tensor {name!r} has dtype object (would need pickle)")
            with zf.open(name + ".npy", "w", force_zip64=True) as fh:
                np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
                if arr.size:
                    fh.write(memoryview(arr.reshape(-1)).cast("B"))


def _csv_values(col: np.ndarray):
    if col.dtype.kind == "f":
        return [repr(float(x)) for x in col.tolist()]
    return col.tolist()


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o)}")


def merge_summaries(summaries: Sequence[dict]) -> dict:
    """Add the counters of several summaries; join errors and per-file entries."""
    out: dict = {}
    for s in summaries:
        for k, v in s.items():
            if isinstance(v, bool) or k in ("config", "stats_names"):
                out.setdefault(k, v)
            elif isinstance(v, (int, float)):
                out[k] = out.get(k, 0) + v
            elif isinstance(v, list):
                out[k] = out.get(k, []) + list(v)
            elif isinstance(v, dict):
                merged = out.setdefault(k, {})
                for kk, vv in v.items():
                    if isinstance(vv, (int, float)) and not isinstance(vv, bool):
                        merged[kk] = merged.get(kk, 0) + vv
                    else:
                        merged[kk] = vv
            else:
                out.setdefault(k, v)
    return out
