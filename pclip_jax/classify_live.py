"""Classify a live packet stream: each flow's JSON line as soon as the model can answer it.

    tcpdump -i eth0 -U -w - | python -m pclip_jax.classify --backend onnx --model EXPORT -
    python -m pclip_jax.classify --backend onnx --model EXPORT --interface eth0 [--final]

`classify` switches to this path for standard input (`-`), FIFOs, `--interface` and `--live`. A reader thread takes
packets as they arrive and tracks flows (`data.live.LiveFlows`: the ingest flow tracker, same timeouts, masking and
server names); a flow is answered when it holds the K packets the model reads (`"answer": "early"`), or when it
ends, is evicted by the cap on tracked flows, or must free its page of packet rows before (`"ended"`, `"evicted"`,
`"partial"`: answered with the packets it has). Answers wait at most `--max-delay-ms` (default 20 ms) to be batched
through the models, and each batch of lines is flushed. `--final` adds a line with the flow's totals when an
answered flow ends (`"final": true`). Memory is bounded however long the stream runs (`data.live`).

Times are the packets' own (as ingest): flows expire as later packets arrive; the end of the stream answers the rest.
A record's `last_ts` is the newest packet of the flow the answer saw, so `now - last_ts` on a live link is the
answer's latency from that packet (benchmarks/live_classify.py measures it).
"""
from __future__ import annotations

import dataclasses
import json
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Optional, TextIO

import numpy as np

from pclip_jax import classify as classify_lib
from pclip_jax.data import capture
from pclip_jax.data.ingest import FlowTable, IngestConfig
from pclip_jax.data.live import LiveFlows

FINAL_FIELDS = ("capture", "flow_id", "first_ts", "last_ts", "c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes")
STREAM_CHUNK = 1 << 20  # most bytes read at once from a stream (it returns what has arrived, up to this)


@dataclasses.dataclass
class LiveOptions:
    final: bool = False            # a line with the totals when an answered flow ends
    max_flows: int = 100_000       # flows tracked at once (counters); the idlest leave first
    max_pages: int = 64            # pages of packet rows (page_flows flows each) held at once
    page_flows: int = 1024
    max_delay: float = 0.02        # seconds an answer may wait to be batched through the models
    batch_flows: int = 256         # answers batched through the models at once at most


def interface_command(interface: str) -> list[str]:
    """The capture program for `--interface` (tcpdump, else dumpcap), writing pcap to its standard output
    unbuffered; a clear error naming the way out when neither is installed."""
    if shutil.which("tcpdump"):
        return ["tcpdump", "-i", interface, "-U", "-s", "0", "-w", "-"]
    if shutil.which("dumpcap"):
        return ["dumpcap", "-i", interface, "-q", "-F", "pcap", "-w", "-"]
    raise FileNotFoundError(f"--interface {interface}: needs tcpdump or dumpcap on the PATH (e.g. apt install "
                            f"tcpdump), or pipe a capture in: tcpdump -i {interface} -U -w - | python -m "
                            f"pclip_jax.classify ... -")


def _read(path: str, name: str, config: IngestConfig, options: LiveOptions, answers: "queue.Queue",
          errors: list, live_state: dict) -> None:
    """Reader thread: packets → LiveFlows → answers on the queue; None at the end (an exception is handed over)."""
    try:
        live = LiveFlows(config, name=name, max_flows=options.max_flows, page_flows=options.page_flows,
                         max_pages=options.max_pages, final=options.final)
        live_state["live"] = live
        for batch in capture.read_batches(path, errors, STREAM_CHUNK, name=name):
            for a in live.add(batch):
                answers.put(a)
        for a in live.flush():
            answers.put(a)
        answers.put(None)
    except BaseException as e:  # raised where the consumer takes it
        answers.put(e)


def final_records(table: FlowTable) -> list[dict]:
    cols = {c: np.asarray(table.meta[c]).tolist() for c in FINAL_FIELDS}
    return [{**{c: cols[c][i] for c in FINAL_FIELDS}, "final": True} for i in range(len(table))]


def classify_stream(engine: "classify_lib.Engine", path: str, out: TextIO, options: LiveOptions = LiveOptions(),
                    top_k: int = 3, name: Optional[str] = None, progress: bool = True,
                    report: Optional[TextIO] = None) -> "classify_lib.ClassifyRun":
    """Classify the stream at `path` (`-`, a FIFO, a device, or a file replayed as a stream) with a loaded
    `engine`, writing each answer's JSON line to `out` as soon as it is ready (module docstring)."""
    name = name or str(path)
    config = IngestConfig.from_data_config(engine.settings.data)
    answers: "queue.Queue" = queue.Queue(maxsize=1024)
    errors: list = []
    live_state: dict = {}
    reader = threading.Thread(target=_read, args=(str(path), name, config, options, answers, errors, live_state),
                              name="live-reader", daemon=True)
    t_start = time.perf_counter()
    reader.start()
    print(f"[live] models loaded ({engine.load_seconds:.1f} s); answering the flows of {name}", file=sys.stderr,
          flush=True)
    summary = classify_lib.Summary()
    timings = {"load": engine.load_seconds, "ingest": 0.0, "wait": 0.0, "classify": 0.0, "write": 0.0}
    parts: dict = {}
    kinds: dict = {}
    pending: list = []  # (kind, table) waiting for the models
    oldest = None
    reported = 0
    done = False
    while not done:
        timeout = options.max_delay if oldest is None else max(0.0, oldest + options.max_delay - time.monotonic())
        t = time.perf_counter()
        try:
            item = answers.get(timeout=timeout)
        except queue.Empty:
            item = "flush"
        timings["wait"] += time.perf_counter() - t
        if isinstance(item, BaseException):
            raise item
        if item is None:
            done = True
        elif item != "flush":
            if item.kind == "final":
                t = time.perf_counter()
                out.writelines(json.dumps(r) + "\n" for r in final_records(item.table))
                out.flush()
                timings["write"] += time.perf_counter() - t
                kinds["final"] = kinds.get("final", 0) + len(item.table)
            else:
                pending.append(item)
                oldest = oldest if oldest is not None else time.monotonic()
        waiting = sum(len(a.table) for a in pending)
        due = oldest is not None and time.monotonic() - oldest >= options.max_delay
        if pending and (done or due or waiting >= options.batch_flows):
            _answer(engine, pending, out, top_k, timings, parts, summary, kinds)
            pending, oldest = [], None
        while reported < len(errors):
            e = errors[reported].as_dict()
            print(f"warning: {e['file']}: byte {e['offset']}: {e['reason']}", file=report or sys.stderr)
            reported += 1
    reader.join()
    live = live_state.get("live")
    timings.update({f"classify_{k}": v for k, v in parts.items()})
    timings["total"] = time.perf_counter() - t_start
    extra = {"answers": kinds}
    if live is not None:
        extra["packets"] = live.packet_counts["packets"]
    return classify_lib.ClassifyRun(
        summary=summary.as_dict() | {"table": summary.table(), "mission": engine.info.mission,
                                     "graph": engine.info.graph, "backend": engine.backend} | extra,
        errors=[e.as_dict() for e in errors], files=1, timings=timings)


def _answer(engine, pending, out, top_k, timings, parts, summary, kinds) -> None:
    """The pending answers through the models, their lines written and flushed."""
    table = FlowTable.concat([a.table for a in pending])
    kind = np.concatenate([np.full(len(a.table), a.kind) for a in pending])
    t = time.perf_counter()
    records = classify_lib.classify_flows(engine, table, None, top_k, parts)
    timings["classify"] += time.perf_counter() - t
    t = time.perf_counter()
    for r, k in zip(records, kind.tolist()):
        r["answer"] = k
        kinds[k] = kinds.get(k, 0) + 1
    out.writelines(json.dumps(r) + "\n" for r in records)
    out.flush()
    timings["write"] += time.perf_counter() - t
    summary.add(records)


def start_interface(interface: str) -> tuple[subprocess.Popen, str]:
    """Start the capture program on `interface`; returns it and the path its output is read from."""
    proc = subprocess.Popen(interface_command(interface), stdout=subprocess.PIPE)
    return proc, f"/dev/fd/{proc.stdout.fileno()}"
