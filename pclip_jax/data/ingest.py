"""One call from capture files/folders to a FlowTable (`data.flow_table`): workers, progress, summary.

This module and everything it imports must stay free of JAX (start-up time of the ingest CLI).
"""
from __future__ import annotations

import dataclasses
import multiprocessing
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

from pclip_jax.data import capture, flows, tensors
from pclip_jax.data.flow_table import FlowTable


class IngestError(RuntimeError):
    """Raised in strict mode when any capture had a problem; the message lists every problem."""


@dataclasses.dataclass(frozen=True)
class IngestConfig:
    """How captures become flows and tensors (see docs/architecture.md, "The flow table")."""

    packets: int = 16  # K: packets per flow in the tensors
    bytes: int = 128  # B: bytes per packet, from the IP header on
    idle_timeout: float = 120.0  # seconds
    active_timeout: float = 1800.0  # seconds
    mask: bool = True  # zero shortcut fields (docs/masking.md)
    strict: bool = False  # any capture problem raises IngestError
    workers: int = 1  # processes; files are spread over them
    chunk_bytes: int = 16 << 20  # read size (two buffers of this size are held)
    payload_rows: bool = False  # tensor rows from the first K packets that carry payload (bare ACKs skipped)

    @classmethod
    def from_data_config(cls, data_config, **overrides) -> "IngestConfig":
        """The ingest settings of a model config's `data` block (what its packet tower was trained on)."""
        d = data_config
        return cls(packets=int(d.packets), bytes=int(d.bytes), mask=bool(d.mask),
                   payload_rows=bool(d.payload_rows), **overrides)

    def __post_init__(self):
        for name in ("packets", "bytes", "workers", "chunk_bytes"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"IngestConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.idle_timeout <= 0 or self.active_timeout <= 0:
            raise ValueError("IngestConfig timeouts must be > 0")


def empty_table(config: IngestConfig) -> FlowTable:
    """A table with no flows and the right column types and tensor shapes."""
    return FlowTable(*_columns(Path("."), flows.FlowTracker(config.packets, config.bytes).finish(), config),
                     list(tensors.STATS_NAMES), {})


def _ip_strings(addr: np.ndarray, ver: np.ndarray) -> np.ndarray:
    """Address rows uint8 [n, 16] (IPv4 in the first 4 bytes) -> strings; formatted once per distinct address."""
    if not len(addr):
        return np.zeros(0, dtype="<U1")
    rows = np.concatenate([addr, ver[:, None].astype(np.uint8)], axis=1)
    uniq, inv = np.unique(rows.view("V17").ravel(), return_inverse=True)
    text = []
    for b in uniq.tolist():
        text.append(socket.inet_ntop(socket.AF_INET, b[:4]) if b[16] == 4 else
                    socket.inet_ntop(socket.AF_INET6, b[:16]))
    return np.array(text, dtype=str)[inv.ravel()]


def _columns(capture_name, f: dict, config: IngestConfig):
    """Turn the tracker's per-flow arrays into the flow table's meta columns and tensors."""
    key = f["key"]
    n = len(key)
    lo_a, hi_a = key[:, 3:19], key[:, 21:37]
    lo_p = key[:, 19].astype(np.int64) << 8 | key[:, 20]
    hi_p = key[:, 37].astype(np.int64) << 8 | key[:, 38]
    ver = key[:, 39]
    c_lo = f["client_lo"]
    meta = {
        "capture": np.full(n, str(capture_name), dtype=object).astype(str) if n else np.zeros(0, "<U1"),
        "flow_id": np.arange(n, dtype=np.int64),
        "proto": key[:, 0].astype(np.int64),
        "client_ip": _ip_strings(np.where(c_lo[:, None], lo_a, hi_a), ver),
        "server_ip": _ip_strings(np.where(c_lo[:, None], hi_a, lo_a), ver),
        "client_port": np.where(c_lo, lo_p, hi_p),
        "server_port": np.where(c_lo, hi_p, lo_p),
        "vlan": key[:, 1].astype(np.int64) << 8 | key[:, 2],
        "first_ts": f["first_ts"] / 1e9,
        "last_ts": f["last_ts"] / 1e9,
        "c2s_packets": f["pk"][:, 0].copy(),
        "s2c_packets": f["pk"][:, 1].copy(),
        "c2s_bytes": f["wb"][:, 0].copy(),
        "s2c_bytes": f["wb"][:, 1].copy(),
        "server_name": f["server_name"],
    }
    tens = {
        "bytes": f["bytes"],
        "sizes": f["sizes"],
        "iat": f["iat"],
        "tcp_flags": f["tcp_flags"],
        "num_packets": np.minimum(f["nrow"], config.packets).astype(np.int32),
        "stats": f["stats"],
    }
    return meta, tens


def ingest_file(path: str | os.PathLike, name: str, config: IngestConfig,
                on_batch: Callable[[int, int], None] | None = None) -> FlowTable:
    """Read one capture into a FlowTable; ``name`` goes into the ``capture`` column and error messages.

    ``on_batch(bytes_read, packets)`` is called after each chunk (progress). Problems end up in
    ``summary['errors']``; this never raises for bad capture content.
    """
    t0 = time.perf_counter()
    errors: list[capture.CaptureError] = []
    size = capture.file_size(path)  # 0 for a stream
    expected = size // 2000  # a generous guess (real captures: about 5 kB per flow); more is added if needed
    tracker = flows.FlowTracker(config.packets, config.bytes, config.idle_timeout, config.active_timeout,
                                config.mask, expected_flows=expected, payload_rows=config.payload_rows)
    counts = dict(packets=0, ip_packets=0, later_fragments=0, non_ip=0, malformed=0)
    done = 0
    for batch in capture.read_batches(path, errors, config.chunk_bytes, name=name):
        h = capture.parse_headers(batch)
        tracker.add(batch, h, counts["packets"])
        tracker.expire()
        kinds = np.bincount(h.kind, minlength=4)
        counts["packets"] += len(batch)
        counts["ip_packets"] += int(kinds[capture.FLOW])
        counts["later_fragments"] += int(kinds[capture.LATER_FRAGMENT])
        counts["non_ip"] += int(kinds[capture.NON_IP])
        counts["malformed"] += int(kinds[capture.MALFORMED])
        if on_batch is not None:
            # About the end of the chunk in the file (a compressed file's offsets are decompressed ones: clamped).
            pos = min(int(batch.rec_off[-1] + 16 + batch.caplen[-1]), size)
            on_batch(pos - done, len(batch))
            done = pos
    meta, tens = _columns(name, tracker.finish(), config)
    per_file = dict(counts, flows=len(meta["flow_id"]), errors=len(errors))
    summary = {
        "files": 1,
        "packets": counts["packets"],
        "flows": len(meta["flow_id"]),
        "later_fragments": counts["later_fragments"],
        "non_ip_packets": counts["non_ip"],
        "malformed_packets": counts["malformed"],
        "errors": [e.as_dict() for e in errors],
        "per_file": {name: per_file},
        "seconds": time.perf_counter() - t0,
    }
    return FlowTable(meta, tens, list(tensors.STATS_NAMES), summary)


def keep_freed_memory() -> bool:
    """Process-wide glibc malloc tuning for a process that streams captures (the CLIs call it first; a library
    never changes it for its caller). Every chunk allocates and frees the same few megabytes of temporaries; by
    default glibc hands freed memory back to the kernel and page-faults it in again on the next chunk, which costs
    about 0.15-0.2 s of kernel time per million packets. Keeping up to 1 GB of freed memory (M_TRIM_THRESHOLD) and
    serving blocks below 32 MB from the heap (M_MMAP_THRESHOLD, glibc's own dynamic ceiling) removes that for
    ~16 MB more peak memory. Returns whether it applied (glibc only; elsewhere nothing changes)."""
    import ctypes

    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_trim_threshold, 1 << 30)) and bool(mallopt(m_mmap_threshold, 32 << 20))


def _worker(args):
    path, name, config = args
    return ingest_file(path, name, config)


def capture_jobs(inputs: Sequence[str | os.PathLike], skipped: list | None = None) -> list[tuple[str, str]]:
    """(path, name) of every capture file under `inputs` (files and folders, searched recursively), in the order
    `ingest` reads them; the name is the path relative to the input it was found under (`-`, standard input, is
    named `-`). Raises FileNotFoundError for an input that does not exist, before anything is read. Folder entries
    that are not read (FIFOs, devices, non-captures) are appended to `skipped` as {"file", "reason"}."""
    found: list = []
    jobs = [(str(path), str(path.relative_to(root)) if str(path) != capture.STDIN else capture.STDIN)
            for path, root in capture.find_captures(inputs, found)]
    if skipped is not None:
        skipped.extend({"file": str(path), "reason": reason} for path, reason in found)
    return jobs


def report_skipped(skipped: Sequence[dict], write: Callable[[str], None]) -> None:
    """Name every folder entry that was not read: special files one line each (a user put them there for a
    reason), the regular files that are not captures in one line with the first few names."""
    special = [s for s in skipped if not s["reason"].startswith("not a capture")]
    other = [s for s in skipped if s["reason"].startswith("not a capture")]
    for s in special:
        write(f"warning: {s['file']}: skipped: {s['reason']}")
    if other:
        names = ", ".join(s["file"] for s in other[:3]) + (", ..." if len(other) > 3 else "")
        write(f"note: {len(other):,} file(s) in the folders are not captures and were skipped ({names}; "
              f"all named in the summary's skipped_files)")


def ingest_tables(jobs: Sequence[tuple[str, str]], config: IngestConfig,
                  on_batch: Callable[[int, int], None] | None = None) -> Iterator[FlowTable]:
    """One FlowTable per capture of `jobs` (`capture_jobs`), in that order, each as soon as it is read, so a caller
    can work on one capture's flows while later ones are read and never holds them all. With `config.workers` > 1
    that many processes read ahead. `on_batch(bytes, packets)` reports progress (per chunk in one process, per
    file with workers; the bytes of a file add up to its size)."""
    if config.workers > 1 and len(jobs) > 1 and all(path != capture.STDIN for path, _ in jobs):
        # fork is quick; but never fork a process that has started JAX's (or other) threads.
        threaded = (sys.platform == "darwin" or threading.active_count() > 1
                    or any(m in sys.modules for m in ("jax", "tensorflow", "torch")))
        ctx = multiprocessing.get_context("spawn" if threaded else "fork")
        with ctx.Pool(min(config.workers, len(jobs))) as pool:
            work = [(path, name, config) for path, name in jobs]
            for (path, _), t in zip(jobs, pool.imap(_worker, work, chunksize=1)):
                if on_batch is not None:
                    on_batch(capture.file_size(path), t.summary["packets"])
                yield t
        return
    for path, name in jobs:
        done = [0]

        def tick(nb, npk):
            done[0] += nb
            if on_batch is not None:
                on_batch(nb, npk)

        t = ingest_file(path, name, config, tick)
        if on_batch is not None:
            on_batch(max(0, capture.file_size(path) - done[0]), 0)
        yield t


class CaptureStream:
    """`ingest_tables(jobs, config)` on a background thread that reads at most `depth` captures ahead of the
    consumer: iterating gives the per-capture FlowTables in order while the next ones are read (the compiled
    reader, file reads and numpy release the GIL for much of their time), and memory holds a few captures, not
    all of them. An exception in the reader is raised by the iteration that reaches it; `close()` (or leaving a
    `with` block) stops the reader after the capture it is on."""

    _END = object()

    def __init__(self, jobs: Sequence[tuple[str, str]], config: IngestConfig, depth: int = 4):
        import queue

        self._queue: "queue.Queue" = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(list(jobs), config), name="capture-stream",
                                        daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _read(self, jobs, config) -> None:
        try:
            for table in ingest_tables(jobs, config):
                if not self._put(table):
                    return
            self._put(self._END)
        except BaseException as e:  # handed to the consumer, raised where it iterates
            self._put(e)

    def __iter__(self) -> Iterator[FlowTable]:
        while True:
            item = self._queue.get()
            if item is self._END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> "CaptureStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def report_problems(t: FlowTable, write: Callable[[str], None]) -> None:
    """One warning line per capture problem of `t` (file, byte offset, reason)."""
    for e in t.summary["errors"]:
        write(f"warning: {e['file']}: byte {e['offset']}: {e['reason']}")


def ingest(inputs: Sequence[str | os.PathLike], config: IngestConfig = IngestConfig(),
           progress: bool = True) -> FlowTable:
    """Ingest capture files and folders (searched recursively) into one FlowTable.

    ``capture`` holds each file's path relative to the input it was found under. Problems with a file
    are reported in ``summary['errors']`` (file, byte offset, reason) and on stderr; flows read before
    the problem are kept. With ``config.strict`` any problem raises IngestError after all files are read.
    """
    from tqdm import tqdm

    t0 = time.perf_counter()
    skipped: list[dict] = []
    jobs = capture_jobs(inputs, skipped)
    total = sum(capture.file_size(p) for p, _ in jobs)
    bar = tqdm(total=total, unit="B", unit_scale=True, desc="ingest", disable=not progress, file=sys.stderr,
               dynamic_ncols=True)
    n_pk = [0]

    def tick(nbytes, npk):
        n_pk[0] += npk
        bar.update(nbytes)
        bar.set_postfix(pkts=n_pk[0], pps=f"{n_pk[0] / max(time.perf_counter() - t0, 1e-9):,.0f}", refresh=False)

    write = (lambda m: bar.write(m, file=sys.stderr)) if progress else (lambda m: print(m, file=sys.stderr))
    report_skipped(skipped, write)
    parts: list[FlowTable] = []
    for t in ingest_tables(jobs, config, tick):
        parts.append(t)
        report_problems(t, write)
    bar.close()
    table = FlowTable.concat(parts) if parts else empty_table(config)
    s = table.summary
    s["files"] = len(jobs)
    for k in ("packets", "flows", "later_fragments", "non_ip_packets", "malformed_packets"):
        s.setdefault(k, 0)
    s.setdefault("errors", [])
    s.setdefault("per_file", {})
    s["skipped_files"] = skipped
    s["seconds"] = time.perf_counter() - t0
    s["packets_per_s"] = s["packets"] / max(s["seconds"], 1e-9)
    s["config"] = dataclasses.asdict(config)
    if config.strict and s["errors"]:
        raise IngestError("\n".join(f"{e['file']}: byte {e['offset']}: {e['reason']}" for e in s["errors"]))
    return table
