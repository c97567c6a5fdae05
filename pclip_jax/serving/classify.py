"""Classify the flows of any captures with a trained workdir, with explanations read off the model.

    python -m pclip_jax.classify --workdir DIR INPUT... [--mission NAME_OR_STATEMENT] [--out preds.jsonl]
                                 [--strict] [--top K] [--coverage P] [--explain-text N] [--workers W] [--compile-cache DIR|off]
                                 [--brief] [--quiet]
    python -m pclip_jax.classify --backend onnx --model EXPORT_DIR INPUT... [--threads T] [...]

Two backends give the same records (probabilities within 1e-4, tested): `jax` runs a workdir's checkpoints;
`onnx` runs an export of `python -m pclip_jax.export` with onnxruntime and never imports JAX, Flax or jraph (a
device with numpy, onnxruntime and `tokenizers` is enough). Start-up is paid once per run. Captures stream: a
background thread reads them a few captures ahead (`data.ingest.CaptureStream`) while the models load and while
the captures before are classified; small captures are joined until 8,192 flows are waiting, which go through the
models in batches of a few hundred, so memory holds a few captures at a time however many are given (`--strict`
reads all of them first, so that a problem fails the run before anything is written). The JAX backend keeps its
compiled programs in the workdir's `cache/xla` (JAX's persistent compilation cache; `--compile-cache DIR`
elsewhere, `off` not at all), so only the first run on a workdir compiles them.

Captures are ingested as `pclip_jax.ingest` does (same INPUT syntax, same packets/bytes/masking as the workdir's
config). Every flow is classified, also those the training filters would drop; a flow with fewer packets than the
config's `data.min_packets` is marked `"too_short": true` (the figures below hold for the others). A flow whose
calibrated level-1 probability is below the threshold fitted on the validation captures is marked
`"low_confidence": true`: the threshold is the lowest at which the validation flows kept were right at least 80 %
of the time (`training.calibration.selective_threshold`; the accuracy measured on test captures is in results.json's
`gnn.trust`). `"out_of_distribution"` is its own field: `"ood_score"` (the embedding's mean cosine similarity to its 5
nearest training flows; the class-text similarity for workdirs calibrated before 2026-12-07) below the validation
captures' 5 % quantile (docs/trust.md, "Out of mission"). `"prediction_set"`
gives, per level, the classes that hold the true one with probability `--coverage` (default 0.9): conformal sets
calibrated on the validation captures (split conformal, or capture-weighted when the validation captures say it
holds better on held-out captures: `calibration.choose_conformal_method`). Each flow goes through the packet tower (projected
embedding, as the GNN was trained on) and the hierarchical GNN over the workdir's knowledge graph, re-weighted by a
mission when one is given (a name from the graph's `missions:` or a free-text statement).

One JSON line per flow: `capture`, `flow_id`, `proto`, `client_ip`, `client_port`, `server_ip`, `server_port`,
`vlan`, `first_ts`, `last_ts`, packet/byte counts per direction, `too_short`, `low_confidence`, `out_of_distribution`,
`ood_score`,
`prediction_set` (`coverage`, `level1` and `level2` lists of node ids, most likely first), `level1` /
`level2` (predicted node `id`, `name`, `probability`, `calibrated_probability`; level 2 also
`conditional_probability` given the class, null when the chosen class has no applications), `alternatives` (the next `--top` nodes per level with probabilities) and `explanation` (the
path of chosen nodes with their probability, the flow's attention to each per GNN layer and the winning description,
plus the flow facts the text tower saw; see `pclip_jax.serving.explain`). `--brief` leaves out the winning
descriptions (`null`) and the flow facts (`null`): the detection stage then reads the graph once instead of once per
description slot, which live links at high packet rates want (docs/results.md, "Live streams").

Standard input (`-`), a FIFO, `--interface NAME` or `--live` classify a live stream instead: each flow's line as soon
as it has the packets the model reads, memory bounded on an endless stream (the live-stream section below).

JSON lines go to `--out` (default: stdout). The summary table, timings and `--explain-text` go to stdout when
`--out` is a file and to stderr when the JSON lines take stdout. Unreadable captures are reported (file, byte offset,
reason) and the rest is classified (exit 0); `--strict` makes any capture problem an error (exit 1).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import pathlib
import queue
import shutil
import subprocess
import sys
import threading
import time
from typing import Callable, Iterable, Iterator, Optional, Sequence, TextIO

import numpy as np
from tqdm import tqdm

try:
    import orjson
except ImportError:  # a JAX-free device installed with numpy, onnxruntime and tokenizers only
    orjson = None

from pclip_jax.data import capture
from pclip_jax.data.capture import file_size
from pclip_jax.data.flow_table import FlowTable
from pclip_jax.data.ingest import (CaptureStream, IngestConfig, IngestError, capture_jobs, ingest, keep_freed_memory,
                                   report_skipped)
from pclip_jax.data.live import LiveFlows
from pclip_jax.plumbing import errors
from pclip_jax.plumbing.settings import Settings
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.serving.explain import ExplainInfo, detection_arrays, detection_fn, explanation_text, explanations
from pclip_jax.text import prompts as text_lib
from pclip_jax.text.name_features import NameEncoder, with_name_features
from pclip_jax.training import calibration as calibration_lib

META_FIELDS = ("capture", "flow_id", "proto", "client_ip", "client_port", "server_ip", "server_port", "vlan",
               "first_ts", "last_ts", "c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes", "server_name")
# Flows per call of the GNN explainer: it compiles once per call, so calls are few and large.
DEFAULT_CHUNK = 8192


@contextlib.contextmanager
def _gc_paused():
    """Python's cyclic garbage collector paused while many small acyclic dicts are built (the records): its
    collections, triggered by every few hundred allocations, would otherwise walk all live records again and again
    (about half the time of building them on 13k flows). Refcounting still frees everything; the collector's
    previous state is restored."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def json_lines(records: Sequence[dict]) -> str:
    """The records as JSON lines. orjson (an install requirement, optional on a JAX-free device) encodes them
    8x faster than the standard library, which live links feel (docs/results.md, "Live streams"); the same
    values, compact separators (and null for a NaN, which the standard library writes as the invalid NaN)."""
    if orjson is None:
        return "".join(json.dumps(r) + "\n" for r in records)
    option = orjson.OPT_APPEND_NEWLINE | orjson.OPT_SERIALIZE_NUMPY
    return b"".join(orjson.dumps(r, option=option) for r in records).decode()


def _py(values: np.ndarray) -> list:
    return np.asarray(values).tolist()


@dataclasses.dataclass
class Engine:
    """A trained model as classify runs it, whichever runtime: `embed(tensors, indices) -> z [N, Dp]` (the packet
    tower), `detect(z, descriptions=True) -> arrays` (the GNN's `serving.explain.ARRAY_KEYS` arrays; `BRIEF_KEYS`
    without descriptions), and what explanations and the low-confidence rule read. Built by `jax_engine` (a workdir) or `onnx_engine` (an export, without JAX)."""
    backend: str
    settings: Settings
    info: ExplainInfo
    calibration: Optional[dict]
    node_text: np.ndarray          # class and application text embeddings (OOD score of older workdirs)
    embed: Callable
    detect: Callable
    load_seconds: float
    names: Optional[NameEncoder] = None   # server-name vectors; None: from the settings' text encoder
    ood_bank: Optional[np.ndarray] = None  # training embeddings of the nearest-neighbour OOD score
    _set_thresholds: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def min_packets(self) -> int:
        return self.settings.data.min_packets

    def set_thresholds(self, coverage: float) -> tuple[Optional[float], Optional[float]]:
        """q̂ of the level-1 and level-2 prediction sets at `coverage` (None: not calibrated), computed once per
        coverage: the capture-CV method searches its level over 100 capture halves, far too slow per chunk."""
        if coverage not in self._set_thresholds:
            self._set_thresholds[coverage] = tuple(
                calibration_lib.set_threshold(self.calibration, level, coverage) for level in ("level1", "level2"))
        return self._set_thresholds[coverage]


def jax_engine(workdir, mission: Optional[str] = None, clf=None) -> Engine:
    """The JAX backend: the workdir's towers and GNN (`restore.load_classifier`, or an already loaded `clf`)."""
    # the jax backend on use: the onnx backend runs without JAX
    from pclip_jax.training.towers import embed_flows
    from pclip_jax.training.restore import load_classifier

    clf = clf or load_classifier(workdir, mission)
    fns = {True: detection_fn(clf.gnn_config, clf.gnn_params, clf.kg)}
    # The factored GNN runs densely: larger batches amortise the call (the per-flow one keeps its padding budget).
    batch = 256 if clf.gnn_config.factored else 64

    def detect(z, descriptions: bool = True):
        if descriptions not in fns:  # the brief one compiles on first use
            fns[descriptions] = detection_fn(clf.gnn_config, clf.gnn_params, clf.kg, descriptions)
        return detection_arrays(clf.gnn_config, clf.gnn_params, clf.kg, z, batch, fn=fns[descriptions])

    return Engine(
        backend="jax", settings=clf.settings, info=ExplainInfo.from_prepared(clf.kg), calibration=clf.calibration,
        node_text=calibration_lib.ood_node_text(clf.kg),
        embed=lambda tensors, idx: embed_flows(clf.embed_fn, clf.replicated_params, tensors, idx,
                                               clf.settings.eval.batch_size)[1],
        detect=detect,
        load_seconds=clf.load_seconds, ood_bank=clf.ood_bank)


def onnx_engine(model_dir, mission: Optional[str] = None, threads: int = 0) -> Engine:
    """The ONNX backend: an export of `pclip_jax.serving.export`, run by onnxruntime (JAX is not imported)."""
    # onnxruntime (optional extra) only for the onnx backend
    from pclip_jax.serving.onnx_runtime import OnnxModel

    t0 = time.perf_counter()
    model = OnnxModel(model_dir, threads=threads)
    if mission is not None and mission != model.mission:
        raise ValueError(f"--mission {mission!r}: {model_dir} was exported with mission {model.mission!r}, which "
                         "is part of its detection model; export again with --mission")
    return Engine(backend="onnx", settings=model.settings, info=model.info, calibration=model.calibration,
                  node_text=model.node_text, embed=model.embed, detect=model.detect,
                  load_seconds=time.perf_counter() - t0, names=model.names, ood_bank=model.ood_bank)


def classify_flows(engine: Engine, table, indices: Optional[np.ndarray] = None, top_k: int = 3,
                   timings: Optional[dict] = None, coverage: float = calibration_lib.DEFAULT_COVERAGE,
                   brief: bool = False) -> list[dict]:
    """One prediction record per flow of `table` (a `FlowTable`) at `indices` (default: all), in that order;
    prediction sets hold the truth with probability `coverage` (`calibration.conformal_threshold`). `brief`: the
    path's nodes without their winning description (the detection stage reads the graph once instead of once per
    description slot) and no flow facts; every other field the same.

    `timings`, when given, accumulates seconds per part (`embed`, `facts`, `gnn_explain`, `records`).
    """
    idx = np.arange(len(table)) if indices is None else np.asarray(indices, np.int64)
    if not len(idx):
        return []
    timings = {} if timings is None else timings

    def tick(name, t):
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t

    t = time.perf_counter()
    table = with_name_features(table, engine.settings, engine.names)
    z = engine.embed(table.tensors, idx)
    tick("embed", t)
    t = time.perf_counter()
    meta = table.meta
    first, last = np.asarray(meta["first_ts"], np.float64)[idx], np.asarray(meta["last_ts"], np.float64)[idx]
    facts = None if brief else text_lib.flow_facts_batch(
        table.tensors["sizes"][idx], table.tensors["iat"][idx], table.tensors["num_packets"][idx],
        np.asarray(meta["proto"])[idx], duration=last - first)
    tick("facts", t)
    t = time.perf_counter()
    arrays = engine.detect(z, descriptions=not brief)
    with _gc_paused():
        expls = explanations(arrays, engine.info, facts, top_k, engine.calibration)
    cal = engine.calibration or {}
    ood = ood_score = None
    if "ood_threshold" in cal:
        ood_score = calibration_lib.flow_ood_scores(z, cal, engine.node_text, engine.ood_bank)
        ood = None if ood_score is None else ood_score < cal["ood_threshold"]
    tick("gnn_explain", t)

    t = time.perf_counter()
    cols = {c: _py(np.asarray(meta[c])[idx]) for c in META_FIELDS}
    packets = np.asarray(meta["c2s_packets"])[idx] + np.asarray(meta["s2c_packets"])[idx]
    short = _py(packets < engine.min_packets)
    p1 = calibration_lib.calibrated_probabilities(arrays["prob1"], cal, "level1")
    low = _py(p1.max(1) < calibration_lib.low_confidence_threshold(cal))
    sets = prediction_set_ids(arrays, engine.info, cal, coverage, engine.set_thresholds(coverage))
    names = dict(zip(engine.info.node_ids, engine.info.node_names))
    with _gc_paused():
        records = _records(expls, cols, short, low, None if ood is None else ood.tolist(),
                           None if ood_score is None else ood_score.tolist(), sets, names)
    tick("records", t)
    return records


def prediction_set_ids(arrays: dict, info: ExplainInfo, cal: Optional[dict], coverage: float,
                       thresholds: Optional[tuple] = None) -> Optional[list]:
    """Per flow {"coverage", "level1": [ids], "level2": [ids]}: the conformal prediction sets of both levels
    (`calibration.prediction_sets` at the workdir's stored scores), most likely first; None without them.
    `thresholds`: (q̂ level 1, q̂ level 2) when already computed (`Engine.set_thresholds`)."""
    q1, q2 = thresholds if thresholds is not None else (
        calibration_lib.set_threshold(cal, level, coverage) for level in ("level1", "level2"))
    if q1 is None:
        return None
    ids1 = np.asarray([info.node_ids[m] for m in info.level1], dtype=object)
    ids2 = np.asarray([info.node_ids[m] for m in info.level2], dtype=object)
    level1 = _ranked_sets(calibration_lib.calibrated_probabilities(arrays["prob1"], cal, "level1"), q1, ids1)
    level2 = _ranked_sets(calibration_lib.calibrated_probabilities(arrays["prob2"], cal, "level2"), q2, ids2) \
        if q2 is not None and len(ids2) else [None] * len(level1)
    return [{"coverage": coverage, "level1": a, "level2": b} for a, b in zip(level1, level2)]


def _ranked_sets(proba: np.ndarray, threshold: float, ids: np.ndarray) -> list[list]:
    """Each row's prediction set (`calibration.prediction_sets`) as ids, most likely first. A set holds the classes
    with p ≥ 1 − q̂ plus the most likely one, so it is the first |set| classes of the row ranked by p (ties kept
    in class order, as argmax breaks them): one argsort of the whole batch, then a slice per row."""
    sizes = calibration_lib.prediction_sets(proba, threshold).sum(1).tolist()
    ranked = ids[np.argsort(-proba, axis=1, kind="stable")].tolist()
    return [row[:k] for row, k in zip(ranked, sizes)]


def _records(expls, cols, short, low, ood, ood_score, sets, names) -> list[dict]:
    """The JSON-ready record of each flow (module docstring) from its explanation and its table columns."""
    records = []
    for i, e in enumerate(expls):
        rec = {c: cols[c][i] for c in META_FIELDS}
        calibrated = e["level1"].get("calibrated_probability")
        rec["out_of_distribution"] = None if ood is None else bool(ood[i])
        rec["ood_score"] = None if ood_score is None else float(ood_score[i])
        rec["too_short"] = bool(short[i])
        rec["low_confidence"] = bool(low[i])
        rec["prediction_set"] = None if sets is None else sets[i]
        rec["level1"] = {"id": e["level1"]["id"], "name": names[e["level1"]["id"]],
                         "probability": e["level1"]["probability"], "calibrated_probability": calibrated}
        rec["level2"] = None if e["level2"] is None else {
            "id": e["level2"]["id"], "name": names[e["level2"]["id"]],
            "probability": e["level2"]["probability"],
            "conditional_probability": e["level2"]["conditional_probability"],
            "calibrated_probability": e["level2"].get("calibrated_probability")}
        rec["alternatives"] = e["alternatives"]
        rec["explanation"] = {"graph": e["graph"], "mission": e["mission"], "path": e["path"],
                              "mission_attention": e["mission_attention"], "flow_facts": e["flow_facts"]}
        records.append(rec)
    return records


class Summary:
    """Counts and mean probability per predicted level-1 class, accumulated over records."""

    def __init__(self):
        self.count: dict[str, int] = {}
        self.prob: dict[str, float] = {}
        self.low_confidence = 0
        self.too_short = 0
        self.out_of_distribution = 0
        self.set_sizes = 0
        self.no_level2 = 0

    def add(self, records: Sequence[dict]) -> None:
        for r in records:
            c = r["level1"]["id"]
            self.count[c] = self.count.get(c, 0) + 1
            self.prob[c] = self.prob.get(c, 0.0) + r["level1"]["probability"]
            self.low_confidence += bool(r["low_confidence"])
            self.too_short += bool(r["too_short"])
            self.out_of_distribution += bool(r["out_of_distribution"])
            self.set_sizes += len(r["prediction_set"]["level1"]) if r["prediction_set"] else 0
            self.no_level2 += r["level2"] is None

    @property
    def flows(self) -> int:
        return sum(self.count.values())

    def as_dict(self) -> dict:
        return {"flows": self.flows, "low_confidence": self.low_confidence, "too_short": self.too_short,
                "out_of_distribution": self.out_of_distribution,
                "mean_prediction_set_level1": self.set_sizes / max(self.flows, 1),
                "without_level2": self.no_level2,
                "level1": {c: {"flows": n, "mean_probability": self.prob[c] / n}
                           for c, n in sorted(self.count.items(), key=lambda kv: (-kv[1], kv[0]))}}

    def table(self) -> str:
        d = self.as_dict()
        width = max([len("level-1 class")] + [len(c) for c in d["level1"]])
        lines = [f"{'level-1 class':<{width}}  {'flows':>7}  {'share':>6}  {'mean p':>6}"]
        for c, v in d["level1"].items():
            lines.append(f"{c:<{width}}  {v['flows']:>7}  {v['flows'] / max(d['flows'], 1):>6.1%}  "
                         f"{v['mean_probability']:>6.3f}")
        lines.append(f"{'total':<{width}}  {d['flows']:>7}")
        return "\n".join(lines)


@dataclasses.dataclass
class ClassifyRun:
    """What `classify_captures` did: the summary, capture problems and timings (seconds)."""
    summary: dict
    errors: list
    files: int
    timings: dict


def _compilation_counter():
    from pclip_jax.plumbing.runtime import CompilationCounter  # JAX only for the jax backend
    return CompilationCounter()


def classify_captures(workdir: str | pathlib.Path | None, inputs: Sequence[str], out: str | pathlib.Path | TextIO,
                      mission: Optional[str] = None,
                      top_k: int = 3, strict: bool = False, workers: int = 1, progress: bool = True,
                      explain_text: int = 0, report: Optional[TextIO] = None,
                      chunk: int = DEFAULT_CHUNK, backend: str = "jax", model: str | pathlib.Path | None = None,
                      threads: int = 0, read_ahead: int = 4,
                      coverage: float = calibration_lib.DEFAULT_COVERAGE, brief: bool = False) -> ClassifyRun:
    """Ingests `inputs`, classifies every flow and writes one JSON line per flow to `out` (a path, opened only once
    the models are loaded, or an open text stream), in capture order and flow order within a capture.

    `backend`: "jax" runs the workdir `workdir`; "onnx" runs the export `model` (`pclip_jax.serving.export`) with
    onnxruntime and `threads` intra-op threads (0: all cores), without importing JAX.
    Captures stream: a background reader ingests up to `read_ahead` captures ahead while the models load and while
    earlier captures are classified, and flows go through the models in groups of about `chunk`, so memory holds a
    few captures' flows, not all of them (one large capture is still read whole: its flows end with the file).
    With `strict`, every capture is read first and any problem raises `IngestError` before a model is loaded or a
    line written. The first `explain_text` explanations are also written as text to `report`. Timings: `load`
    (towers, graph, GNN), `ingest` (reading the captures, overlapped with the rest), `wait` (time classification
    waited for captures), `classify` (packet tower + GNN + explanations, the `embed`/`facts`/`gnn_explain`/`records`
    parts), `write`, `total` (end to end). `brief`: `classify_flows`' brief records.
    """
    t_start = time.perf_counter()
    if not 0 < coverage < 1:
        raise ValueError(f"--coverage {coverage}: must be between 0 and 1 (e.g. 0.9)")
    if backend not in ("jax", "onnx"):
        raise ValueError(f"--backend {backend!r}: must be jax or onnx")
    if backend == "onnx" and model is None:
        raise ValueError("--backend onnx needs --model DIR, an export written by python -m pclip_jax.export")
    if backend == "jax" and workdir is None:
        raise ValueError("--backend jax needs --workdir, a workdir trained by python -m pclip_jax.main")
    # Settings and the list of captures first: a missing input (or, with --strict, a capture problem) fails before
    # the models are loaded.
    if backend == "jax":
        settings = Workdir(workdir).read_settings()
    else:
        # onnxruntime (optional extra) only for the onnx backend
        from pclip_jax.serving.onnx_runtime import read_export_settings
        settings = read_export_settings(model)
    ingest_config = IngestConfig.from_data_config(settings.data, strict=strict, workers=workers)
    skipped: list = []
    jobs = capture_jobs(inputs, skipped)
    report_skipped(skipped, lambda line: print(f"[classify] {line}", file=sys.stderr))
    if not jobs:
        print(f"[classify] warning: no capture files found in {list(map(str, inputs))}", file=sys.stderr)
    size_of = {name: file_size(path) for path, name in jobs}  # progress in capture bytes (0 for a stream)
    with contextlib.ExitStack() as stack:
        if strict:
            whole = ingest(inputs, ingest_config, progress=progress)  # raises IngestError on any problem
            tables: Iterable = [whole] if len(whole) else []
        else:
            tables = stack.enter_context(CaptureStream(jobs, ingest_config, depth=read_ahead))
        # Programs compiled for this run, and how many came from the persistent cache (the CLI turns it on).
        compilations = stack.enter_context(_compilation_counter()) if backend == "jax" else None
        engine = jax_engine(workdir, mission) if backend == "jax" else onnx_engine(model, mission, threads)
        if engine.names is None and settings.data.use_names:
            engine.names = NameEncoder(settings.text.encoder)  # loaded once for every group of captures
        timings = {"load": engine.load_seconds, "ingest": 0.0, "wait": 0.0, "classify": 0.0, "write": 0.0}
        parts: dict = {}
        summary = Summary()
        problems: list = []
        shown = 0
        bar = tqdm(total=sum(size_of.values()), desc="classify", unit="B", unit_scale=True, file=sys.stderr,
                   disable=not progress or not jobs, dynamic_ncols=True)
        if isinstance(out, (str, pathlib.Path)):
            out = stack.enter_context(open(out, "w"))
        t_wait = time.perf_counter()
        for group in _groups(tables, chunk):
            timings["wait"] += time.perf_counter() - t_wait
            timings["ingest"] += group.summary.get("seconds", 0.0)
            for e in group.summary.get("errors", []):
                problems.append(e)
                if not strict:  # strict: ingest already printed them
                    bar.write(f"warning: {e['file']}: byte {e['offset']}: {e['reason']}", file=sys.stderr)
            group = with_name_features(group, engine.settings, engine.names)
            for start in range(0, len(group), chunk):
                t = time.perf_counter()
                records = classify_flows(engine, group, np.arange(start, min(len(group), start + chunk)), top_k,
                                         parts, coverage, brief)
                timings["classify"] += time.perf_counter() - t
                t = time.perf_counter()
                out.write(json_lines(records))
                timings["write"] += time.perf_counter() - t
                summary.add(records)
                for r in records[:max(0, explain_text - shown)]:
                    print(_explanation_block(r), file=report or sys.stderr)
                    shown += 1
            bar.update(sum(size_of.get(name, 0) for name in group.summary.get("per_file", {})))
            bar.set_postfix(flows=summary.flows, flows_s=f"{summary.flows / max(timings['classify'], 1e-9):,.0f}",
                            refresh=False)
            t_wait = time.perf_counter()
        out.flush()
    bar.close()
    timings.update({f"classify_{k}": v for k, v in parts.items()})
    timings["total"] = time.perf_counter() - t_start
    if compilations is not None and compilations.directory:
        timings["compiled_programs"] = compilations.requests
        timings["programs_from_cache"] = compilations.hits
        timings["compilation_cache"] = compilations.directory
    return ClassifyRun(summary=summary.as_dict() | {"table": summary.table(), "mission": engine.info.mission,
                                                    "graph": engine.info.graph, "backend": engine.backend},
                       errors=problems, files=len(jobs), timings=timings)


def _groups(tables: Iterable, min_flows: int) -> Iterator[FlowTable]:
    """Consecutive per-capture tables joined until they hold `min_flows` flows (or the captures end), so the models
    see large batches however small the captures are."""
    pending, count = [], 0
    for t in tables:
        pending.append(t)
        count += len(t)
        if count >= min_flows:
            yield FlowTable.concat(pending)
            pending, count = [], 0
    if pending:
        yield FlowTable.concat(pending)


def _explanation_block(r: dict) -> str:
    low = " (low confidence)" if r["low_confidence"] else ""
    return (f"{r['capture']} #{r['flow_id']} proto {r['proto']} {r['client_ip']}:{r['client_port']} -> "
            f"{r['server_ip']}:{r['server_port']}{low}\n"
            f"{explanation_text(r['explanation'] | {'alternatives': r['alternatives']})}\n")


def format_report(run: ClassifyRun) -> str:
    """The summary table, capture problems and throughput as printed by the CLI."""
    s, t = run.summary, run.timings
    n = s["flows"]

    def rate(sec):
        return f"{n / sec:,.{0 if n / max(sec, 1e-9) >= 10 else 1}f} flows/s" if sec > 0 and n else "-"

    mission = "" if s["mission"] is None else f", mission {s['mission']!r}"
    lines = [f"classified {n:,} flows from {run.files} capture(s) with graph {s['graph']!r}{mission} "
             f"({s.get('backend', 'jax')} backend); "
             f"{len(run.errors)} capture problem(s)", s["table"],
             f"low confidence (calibrated probability below the threshold fitted on validation captures): "
             f"{s['low_confidence']:,}; too short (fewer packets than training kept): {s['too_short']:,}; "
             f"out of distribution: {s['out_of_distribution']:,}; mean level-1 prediction set "
             f"{s['mean_prediction_set_level1']:.2f} classes; no application-level decision: {s['without_level2']:,}",
             f"classify stage (packet tower + GNN + explanations, compilation included): {t['classify']:.2f} s, "
             f"{rate(t['classify'])}"
             f"  [embed {t.get('classify_embed', 0):.2f} s, GNN+explain {t.get('classify_gnn_explain', 0):.2f} s, "
             f"facts {t.get('classify_facts', 0):.2f} s, records {t.get('classify_records', 0):.2f} s]",
             f"end to end: {t['total']:.2f} s, {rate(t['total'])}  [load {t['load']:.2f} s, "
             f"ingest {t['ingest']:.2f} s, write {t['write']:.2f} s]"]
    if s.get("answers"):  # a live stream: how the flows were answered (the live-stream section of pclip_jax/serving/classify.py)
        lines.append(f"stream: {s.get('packets', 0):,} packets; answers: "
                     + ", ".join(f"{k} {v:,}" for k, v in sorted(s["answers"].items())))
    if t.get("compiled_programs"):
        lines.append(f"XLA programs: {t['compiled_programs']}, {t['programs_from_cache']} of them loaded from the "
                     f"persistent compilation cache ({t['compilation_cache']})")
    for e in run.errors:
        lines.append(f"problem: {e['file']}: byte {e['offset']}: {e['reason']}")
    return "\n".join(lines)

# --------------------------------------------------------------------------------------------------------------
# Live streams: each flow's line as soon as the model can answer it
#
# Classify a live packet stream: each flow's JSON line as soon as the model can answer it.
#
#     tcpdump -i eth0 -U -w - | python -m pclip_jax.classify --backend onnx --model EXPORT -
#     python -m pclip_jax.classify --backend onnx --model EXPORT --interface eth0 [--final]
#
# `classify` switches to this path for standard input (`-`), FIFOs, `--interface` and `--live`. A reader thread takes
# packets as they arrive and tracks flows (`data.live.LiveFlows`: the ingest flow tracker, same timeouts, masking and
# server names); a flow is answered when it holds the K packets the model reads (`"answer": "early"`), or when it
# ends, is evicted by the cap on tracked flows, or must free its page of packet rows before (`"ended"`, `"evicted"`,
# `"partial"`: answered with the packets it has). Answers wait at most `--max-delay-ms` (default 20 ms) to be batched
# through the models, and each batch of lines is flushed. `--final` adds a line with the flow's totals when an
# answered flow ends (`"final": true`). Memory is bounded however long the stream runs (`data.live`).
#
# Times are the packets' own (as ingest): flows expire as later packets arrive; the end of the stream answers the rest.
# A record's `last_ts` is the newest packet of the flow the answer saw, so `now - last_ts` on a live link is the
# answer's latency from that packet (benchmarks/live_classify.py measures it).

FINAL_FIELDS = ("capture", "flow_id", "first_ts", "last_ts", "c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes")
STREAM_CHUNK = 1 << 20  # most bytes read at once from a stream (it returns what has arrived, up to this)


@dataclasses.dataclass
class LiveOptions:
    final: bool = False            # a line with the totals when an answered flow ends
    max_flows: int = 100_000       # flows tracked at once (counters); the idlest leave first
    max_pages: int = 64            # pages of packet rows (page_flows flows each) held at once
    page_flows: int = 1024
    max_delay: float = 0.02        # seconds an answer may wait to be batched through the models
    batch_flows: int = 256         # answers waiting this many flows go through the models without waiting more
    answer_chunk: int = 1024       # flows through the models and into records at once at most (peak memory)
    coverage: float = calibration_lib.DEFAULT_COVERAGE   # prediction sets' coverage (--coverage)
    brief: bool = False            # records without winning descriptions and flow facts (--brief)


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


def classify_stream(engine: "Engine", path: str, out: TextIO, options: LiveOptions = LiveOptions(),
                    top_k: int = 3, name: Optional[str] = None, progress: bool = True,
                    report: Optional[TextIO] = None) -> "ClassifyRun":
    """Classify the stream at `path` (`-`, a FIFO, a device, or a file replayed as a stream) with a loaded
    `engine`, writing each answer's JSON line to `out` as soon as it is ready (module docstring)."""
    name = name or str(path)
    config = IngestConfig.from_data_config(engine.settings.data)
    # Few answers wait for the models: when they fall behind, the reader blocks and the pipe backs up to the capture
    # program, instead of the queue holding flows (1,024 answers let RSS climb from 330 to 610 MB on a stream read
    # faster than it was classified; 64 keep it within 3 %, at the same throughput: docs/results.md, "Live path").
    answers: "queue.Queue" = queue.Queue(maxsize=64)
    errors: list = []
    live_state: dict = {}
    reader = threading.Thread(target=_read, args=(str(path), name, config, options, answers, errors, live_state),
                              name="live-reader", daemon=True)
    t_start = time.perf_counter()
    reader.start()
    print(f"[live] models loaded ({engine.load_seconds:.1f} s); answering the flows of {name}", file=sys.stderr,
          flush=True)
    summary = Summary()
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
                out.write(json_lines(final_records(item.table)))
                out.flush()
                timings["write"] += time.perf_counter() - t
                kinds["final"] = kinds.get("final", 0) + len(item.table)
            else:
                pending.append(item)
                oldest = oldest if oldest is not None else time.monotonic()
        waiting = sum(len(a.table) for a in pending)
        due = oldest is not None and time.monotonic() - oldest >= options.max_delay
        if pending and (done or due or waiting >= options.batch_flows):
            _answer(engine, pending, out, top_k, timings, parts, summary, kinds, options)
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
    return ClassifyRun(
        summary=summary.as_dict() | {"table": summary.table(), "mission": engine.info.mission,
                                     "graph": engine.info.graph, "backend": engine.backend} | extra,
        errors=[e.as_dict() for e in errors], files=1, timings=timings)


def _answer(engine, pending, out, top_k, timings, parts, summary, kinds, options: LiveOptions) -> None:
    """The pending answers through the models, their lines written and flushed, at most `answer_chunk` flows at a
    time: many flows can come due at once (a burst of idle timeouts; the end of the stream answers every flow still
    tracked), and their records all at once were 400 MB more peak memory than the steady state on a 6M-packet
    replay (docs/results.md, "Live path")."""
    table = FlowTable.concat([a.table for a in pending])
    kind = np.concatenate([np.full(len(a.table), a.kind) for a in pending]).tolist()
    for start in range(0, len(table), options.answer_chunk):
        rows = np.arange(start, min(len(table), start + options.answer_chunk))
        t = time.perf_counter()
        records = classify_flows(engine, table, rows, top_k, parts, options.coverage, options.brief)
        timings["classify"] += time.perf_counter() - t
        t = time.perf_counter()
        for r, k in zip(records, kind[start:start + len(rows)]):
            r["answer"] = k
            kinds[k] = kinds.get(k, 0) + 1
        out.write(json_lines(records))
        out.flush()
        timings["write"] += time.perf_counter() - t
        summary.add(records)


def start_interface(interface: str) -> tuple[subprocess.Popen, str]:
    """Start the capture program on `interface`; returns it and the path its output is read from."""
    proc = subprocess.Popen(interface_command(interface), stdout=subprocess.PIPE)
    return proc, f"/dev/fd/{proc.stdout.fileno()}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m pclip_jax.classify", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("inputs", nargs="*", metavar="INPUT",
                    help="capture files or folders (searched recursively), `-` (standard input) or a FIFO")
    ap.add_argument("--workdir", default=None, help="a workdir trained by pclip_jax.main (with the GNN stage); "
                                                     "the JAX backend")
    ap.add_argument("--backend", choices=("jax", "onnx"), default="jax",
                    help="jax: the workdir's checkpoints (default); onnx: an export (--model) run by onnxruntime, "
                         "without JAX")
    ap.add_argument("--model", default=None, metavar="DIR", help="an export of python -m pclip_jax.export "
                                                                 "(--backend onnx)")
    ap.add_argument("--threads", type=int, default=0, help="onnxruntime threads (--backend onnx; 0 = all cores)")
    ap.add_argument("--mission", default=None, metavar="NAME_OR_STATEMENT",
                    help="a mission of the graph (e.g. vpn_remote_access) or a free-text statement")
    ap.add_argument("--out", default=None, metavar="PATH", help="JSON lines output (default: stdout)")
    ap.add_argument("--strict", action="store_true", help="any capture problem is an error (exit 1)")
    ap.add_argument("--coverage", type=float, default=calibration_lib.DEFAULT_COVERAGE, metavar="P",
                    help="prediction sets hold the true class with this probability (default 0.9)")
    ap.add_argument("--top", type=int, default=3, metavar="K", help="alternatives per level (default 3)")
    ap.add_argument("--brief", action="store_true",
                    help="records without the winning description of each chosen node and without flow facts: the "
                         "detection stage reads the graph once instead of once per description slot (live links)")
    ap.add_argument("--explain-text", type=int, default=0, metavar="N",
                    help="print the first N explanations as text")
    ap.add_argument("--workers", type=int, default=1, help="ingest processes")
    ap.add_argument("--compile-cache", default=None, metavar="DIR",
                    help="--backend jax: keep compiled XLA programs here and reuse them in later runs (default: the "
                         "workdir's cache/xla; 'off' compiles every run afresh)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    live = ap.add_argument_group("live streams: `-`, FIFOs and --interface always; "
                                 "files with --live")
    live.add_argument("--interface", default=None, metavar="NAME",
                      help="capture live on this interface (through tcpdump or dumpcap) instead of INPUT")
    live.add_argument("--live", action="store_true",
                      help="answer each flow as soon as it has the packets the model reads (default for streams)")
    live.add_argument("--final", action="store_true", help="also a line with each answered flow's totals when it ends")
    live.add_argument("--max-flows", type=int, default=100_000, metavar="N",
                      help="flows tracked at once; beyond, the idlest are answered and dropped (default 100,000)")
    live.add_argument("--max-delay-ms", type=float, default=20.0, metavar="MS",
                      help="how long an answer may wait to be batched through the models (default 20 ms)")
    return ap


def _is_stream(path: str) -> bool:
    import stat as stat_lib
    if path == "-":
        return True
    try:
        mode = pathlib.Path(path).stat().st_mode
    except OSError:
        return False
    return stat_lib.S_ISFIFO(mode) or stat_lib.S_ISCHR(mode)


def _run_live(args, out, report):
    """The live path: one stream (standard input, a FIFO, a device, --interface, or a file with --live)."""
    inputs = [] if args.interface else list(args.inputs)
    if (args.interface and args.inputs not in ([], ["-"])) or (not args.interface and len(inputs) != 1):
        raise ValueError("a live stream is one input: `-`, a FIFO, a capture with --live, or --interface NAME alone")
    engine = jax_engine(args.workdir, args.mission) if args.backend == "jax" else \
        onnx_engine(args.model, args.mission, args.threads)
    if engine.names is None and engine.settings.data.use_names:
        engine.names = NameEncoder(engine.settings.text.encoder)
    options = LiveOptions(final=args.final, max_flows=args.max_flows, max_delay=args.max_delay_ms / 1000,
                          coverage=args.coverage, brief=args.brief)
    proc = None
    if args.interface:
        proc, path = start_interface(args.interface)
        name = args.interface
    else:
        path = name = inputs[0]
    try:
        return classify_stream(engine, path, out, options, top_k=args.top, name=name, progress=not args.quiet,
                               report=report)
    finally:
        if proc is not None:
            proc.terminate()


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    if args.top < 0 or args.explain_text < 0 or args.workers < 1 or args.threads < 0:
        print("error: --top, --explain-text and --threads must be >= 0, --workers >= 1", file=sys.stderr)
        return 2
    if not 0 < args.coverage < 1:
        print(f"error: --coverage {args.coverage}: must be between 0 and 1 (e.g. 0.9)", file=sys.stderr)
        return 2
    if (args.backend == "onnx") != (args.model is not None) or (args.backend == "jax" and args.workdir is None):
        print("error: --backend jax needs --workdir W; --backend onnx needs --model DIR (python -m "
              "pclip_jax.export --workdir W --out DIR writes one)", file=sys.stderr)
        return 2
    keep_freed_memory()  # a process that streams captures (pclip_jax/data/ingest.py)
    to_stdout = args.out in (None, "-")
    report = sys.stderr if to_stdout else sys.stdout
    with errors.cli_errors(args.verbose) as status, contextlib.ExitStack() as scope:
        if args.backend == "jax" and args.compile_cache != "off":
            # the jax backend on use: the onnx backend runs without JAX
            from pclip_jax.plumbing.runtime import restored_compilation_cache
            from pclip_jax.training.restore import use_compilation_cache
            scope.enter_context(restored_compilation_cache())  # process-wide: undone when main returns
            use_compilation_cache(args.workdir, args.compile_cache, tool="classify")
        if not args.inputs and not args.interface:
            raise ValueError("give captures, folders, `-` (standard input) or --interface NAME")
        if args.interface or args.live or any(_is_stream(str(p)) for p in args.inputs):
            with contextlib.ExitStack() as stack:
                out = sys.stdout if to_stdout else stack.enter_context(open(args.out, "w"))
                run = _run_live(args, out, report)
            print(format_report(run), file=report)
            return status.code
        try:
            run = classify_captures(args.workdir, args.inputs, sys.stdout if to_stdout else args.out,
                                    mission=args.mission, top_k=args.top, strict=args.strict, workers=args.workers,
                                    progress=not args.quiet, explain_text=args.explain_text, report=report,
                                    backend=args.backend, model=args.model, threads=args.threads,
                                    coverage=args.coverage, brief=args.brief)
        except IngestError as e:  # every problem capture on its own line: the user needs the whole list
            print(f"error: capture problems (--strict):\n{e}", file=sys.stderr)
            return 1
        print(format_report(run), file=report)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
