"""From a data config to the flows an experiment uses: ingest (cached) → labels → filters → capture split.

Everything downstream (pre-training, evaluation, GNN, benchmarks) starts from `prepare_flows(config.data, workdir)`,
so every experiment filters and splits the same documented way.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from pclip_jax import __version__
from pclip_jax.data import capture, flow_table, flows, names, tensors
from pclip_jax.data import ingest as ingest_module
from pclip_jax.data import labels as labels_lib
from pclip_jax.data import splits as splits_lib
from pclip_jax.data import taxonomy
from pclip_jax.data.capture import find_captures
from pclip_jax.data.download import download_ndpi
from pclip_jax.data.flow_table import FlowTable
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.plumbing.files import exclusive_lock
from pclip_jax.plumbing.settings import DataSettings, split_input


@dataclasses.dataclass
class PreparedFlows:
    table: FlowTable                 # filtered flows (labelled)
    train_idx: np.ndarray            # rows of `table`
    test_idx: np.ndarray
    val_idx: np.ndarray              # validation captures, carved out of train (model selection only)
    class_names: list[str]           # evaluated level-1 classes (enough train flows), sorted
    class_ids: np.ndarray            # [N] index into class_names, -1 = class not evaluated
    dropped: dict                    # reason → flow count (filters and class thresholds)
    split_captures: dict             # split → sorted capture names
    taxonomy: dict = dataclasses.field(default_factory=dict)  # where level1/level2 came from (data/taxonomy.py)
    sources: list = dataclasses.field(default_factory=list)  # source names of a mixed corpus (meta "source")
    train_pool_idx: Optional[np.ndarray] = None  # all training rows when `train_idx` is a `data.fraction` subset
    split_notes: list = dataclasses.field(default_factory=list)  # what `check_split` changed, in words

    def source_rows(self, idx: np.ndarray, name: str) -> np.ndarray:
        """The rows of `idx` that come from source `name` of a mixed corpus."""
        idx = np.asarray(idx)
        return idx[np.asarray(self.table.meta["source"]).astype(str)[idx] == name]

    def applications(self, idx: np.ndarray) -> list[str]:
        """Sorted distinct applications (level-2 labels) of the flows `idx` ('' = no application, left out): the
        "seen" set of `metrics.by_application_novelty` when `idx` are the flows a model was fitted on."""
        return sorted(set(np.asarray(self.table.meta["level2"]).astype(str)[idx].tolist()) - {""})

    def novel(self, idx: np.ndarray) -> np.ndarray:
        """[len(idx)] bool: whether each flow's application (level 2) has no flow in the training split (all of its
        captures, whatever `data.fraction` keeps): the novel side of novelty detection. Flows without an
        application are not novel."""
        pool = self.train_idx if self.train_pool_idx is None else self.train_pool_idx
        apps = np.asarray(self.table.meta["level2"]).astype(str)
        mine = apps[np.asarray(idx, np.int64)]
        return (mine != "") & ~np.isin(mine, self.applications(pool))


def resolve_inputs(data_config: DataSettings) -> tuple[list[str], str]:
    """(capture inputs, label spec) from the settings: `inputs`, else `manual_dir` with pcap/ and result/."""
    if data_config.inputs:
        return list(data_config.inputs), data_config.labels
    root = pathlib.Path(data_config.manual_dir).expanduser() if data_config.manual_dir else None
    if root is None or not root.exists():
        if root is not None:
            print(f"[data] {root} does not exist: downloading the nDPI corpus instead", file=sys.stderr)
        root = download_ndpi()
    for pcap_dir, result_dir in ((root / "pcap", root / "result"),
                                 (root / "tests/cfgs/default/pcap", root / "tests/cfgs/default/result")):
        if pcap_dir.is_dir():
            return [str(pcap_dir)], data_config.labels or f"ndpi:{result_dir}"
    raise FileNotFoundError(
        f"data.manual_dir={root}: no pcap/ (flat layout) or tests/cfgs/default/pcap (nDPI source layout) inside. "
        "Point --config.data.manual_dir at ../shared/data/ndpi or an unpacked nDPI source archive.")


@dataclasses.dataclass(frozen=True)
class Source:
    """Captures with one label spec. A mixed corpus (`data.inputs` with "PATH=LABELS" entries) has several: one
    pre-training corpus, split by capture within each source, evaluated per source."""
    name: str        # '' for the one source of a plain run; else unique, from the path (meta "source")
    inputs: tuple
    labels: str


GENERIC_FOLDERS = ("pcap", "pcaps", "captures", "data")


def _source_name(path: str, taken: set) -> str:
    p = pathlib.Path(path)
    name = p.stem if p.suffix else p.name
    if name.lower() in GENERIC_FOLDERS and p.parent.name:  # ../shared/data/ndpi/pcap → ndpi
        name = p.parent.name
    unique, n = name or "source", 2
    while unique in taken:
        unique, n = f"{name}-{n}", n + 1
    taken.add(unique)
    return unique


def resolve_sources(data_config: DataSettings) -> list[Source]:
    """The sources of a run: one (`resolve_inputs`) unless `data.inputs` gives entries their own label specs; then
    one per entry, entries without a spec taking `data.labels`."""
    if not data_config.mixed:
        inputs, spec = resolve_inputs(data_config)
        return [Source("", tuple(inputs), spec)]
    taken: set = set()
    sources = []
    for entry in data_config.inputs:
        path, spec = split_input(entry)
        sources.append(Source(_source_name(path, taken), (path,), data_config.labels if spec is None else spec))
    return sources


def _tagged(table: FlowTable, source: str) -> FlowTable:
    """The table with a `source` column and capture names prefixed by the source (names stay unique across
    sources, and a capture's flows stay together in splits and per-capture votes)."""
    meta = dict(table.meta)
    meta["source"] = np.full(len(table), source, dtype=object).astype(str)
    meta["capture"] = np.char.add(f"{source}/", np.asarray(table.meta["capture"]).astype(str))
    return dataclasses.replace(table, meta=meta)


def _aligned(tables: list[FlowTable]) -> list[FlowTable]:
    """Tables with the same meta columns in the same order: a column one source lacks (a label kind's extra
    columns, or every label column of an unlabelled source) is filled with '' (text) or 0."""
    order: list = []
    for t in tables:
        order += [k for k in t.meta if k not in order]
    out = []
    for t in tables:
        meta = {}
        for k in order:
            if k in t.meta:
                meta[k] = t.meta[k]
            else:
                like = next(o.meta[k] for o in tables if k in o.meta)
                meta[k] = (np.full(len(t), "", dtype=like.dtype) if like.dtype.kind in "UOS"
                           else np.zeros(len(t), like.dtype))
        out.append(dataclasses.replace(t, meta=meta))
    return out


def _mixed_report(reports: dict) -> dict:
    """One taxonomy report for a mixed corpus: each source's, and the flows without a class summed."""
    unknown: dict = {}
    for name, r in reports.items():
        for label, n in r.get("labels_without_class", {}).items():
            unknown[f"{name}/{label}"] = n
    return {"source": "mixed", "sources": reports, "labels_without_class": unknown,
            "flows_without_class": int(sum(r.get("flows_without_class", 0) for r in reports.values()))}


def _fingerprint(inputs: Sequence[str], label_spec: str) -> list:
    """(path, size, mtime) of every capture and label file, so that a changed corpus is ingested again."""
    files = [path for path, _ in find_captures(inputs)]
    kind, _, target = (label_spec or "").partition(":")
    if kind in ("ndpi", "csv") and target:
        root = pathlib.Path(target)
        files += sorted(root.rglob("*.out")) if root.is_dir() else [root]
    return [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files if f.exists()]


def _ingest_code_digest() -> str:
    """Digest of the modules and data files that decide a flow table's content: a changed parser, mask or label
    rule invalidates cached tables even without a version bump."""
    h = hashlib.sha256()
    for mod in (capture, flow_table, flows, ingest_module, labels_lib, names, tensors):
        h.update(pathlib.Path(mod.__file__).read_bytes())
    if capture._capture_c is not None:  # the compiled helpers as built (equal output to the above, but a fix there
        h.update(pathlib.Path(capture._capture_c.__file__).read_bytes())  # must not be hidden by the cache)
    for f in sorted(pathlib.Path(labels_lib.__file__).parent.glob("*.yaml")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def flow_table_cache(inputs: Sequence[str], label_spec: str, ingest_config: IngestConfig,
                     cache_root: pathlib.Path) -> pathlib.Path:
    """Where ``ingest_cached`` keeps the table of these inputs, labels, settings and ingest code."""
    key = json.dumps({"version": __version__, "code": _ingest_code_digest(),
                      "inputs": [str(pathlib.Path(i).resolve()) for i in inputs],
                      "files": _fingerprint(inputs, label_spec), "labels": label_spec,
                      "ingest": dataclasses.asdict(ingest_config)}, sort_keys=True, default=str)
    return cache_root / ("flows-" + hashlib.sha256(key.encode()).hexdigest()[:12])


def cache_lock(cache: pathlib.Path) -> pathlib.Path:
    """The lock file processes hold while they build or read the cached table ``cache``."""
    return cache.with_name(cache.name + ".lock")


def ingest_cached(inputs: Sequence[str], label_spec: str, ingest_config: IngestConfig,
                  cache_root: pathlib.Path, progress: bool = True) -> FlowTable:
    """Ingests and labels once; later runs with the same inputs and settings load the cached flow table.

    The cache is written atomically (`FlowTable.save`); one that cannot be read (damaged on disk, or left by an
    older version that wrote in place) is rebuilt with a warning that names it. Processes that share the cache (the
    processes of a multi-process job on one machine) take turns: the first builds the table, the others wait and
    load it, instead of racing to swap in the same directory."""
    cache = flow_table_cache(inputs, label_spec, ingest_config, cache_root)
    waiting = f"[data] waiting for another process to build the flow table {cache}"
    with exclusive_lock(cache_lock(cache), waiting=waiting):
        if cache.exists():
            try:
                return FlowTable.load(cache)
            except (OSError, ValueError) as e:
                print(f"[data] warning: cached flow table {cache} is unreadable ({str(e).splitlines()[0]}); "
                      f"rebuilding it", file=sys.stderr)
        table = ingest(inputs, ingest_config, progress=progress)
        if label_spec:
            table = labels_lib.attach_labels(table, label_spec, progress=progress, inputs=inputs)
        table.save(cache)
    return table


def keep_every_class_in_train(table: FlowTable, train_idx, val_idx, level: str):
    """Validation captures holding a class that no training capture has go back to train (whole captures):
    a class with a single training capture must not lose all its training flows to model selection."""
    labels = np.asarray(table.meta[level]).astype(str)
    captures = np.asarray(table.meta["capture"]).astype(str)
    missing = set(labels[val_idx]) - set(labels[train_idx]) - {""}
    if not missing:
        return train_idx, val_idx
    back = set(captures[val_idx][np.isin(labels[val_idx], sorted(missing))])
    to_train = np.isin(captures[val_idx], sorted(back))
    return np.sort(np.concatenate([train_idx, val_idx[to_train]])), val_idx[~to_train]


def check_split(table: FlowTable, train_idx, val_idx, test_idx, class_ids, class_names: list, level: str,
                data_config: DataSettings) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Before any training: the test captures must hold two evaluated classes (else one line says what is
    missing and what to do); validation captures holding fewer are repaired with whole training captures or
    folded into training (`splits.ensure_validation_classes`), and what was done is said (returned as notes). Without
    validation, pre-training keeps its last step, the probe the default L2, the GNN its last step, and no
    calibration temperature is fitted."""
    present = sorted({class_names[k] for k in np.asarray(class_ids)[np.asarray(test_idx, np.int64)].tolist()
                      if k >= 0})
    if len(present) < 2:
        raise ValueError(
            f"the test captures hold {len(present)} evaluated {level} class(es) {present} of {len(class_names)}: "
            f"per-class AUC needs two; add captures of other classes (each class needs >= 2 captures to be on both "
            f"sides) or raise data.test_fraction (now {data_config.test_fraction})")
    notes = []
    if data_config.validation_fraction > 0:
        captures = np.asarray(table.meta["capture"]).astype(str)
        train_idx, val_idx, note = splits_lib.ensure_validation_classes(captures, class_ids, train_idx, val_idx)
        if note:
            if not len(val_idx):
                note += ("; pre-training and the GNN keep their last step, the probe its default L2, and no "
                         "calibration temperature is fitted")
            notes.append(note)
            print(f"[data] {note}", file=sys.stderr)
    return train_idx, val_idx, notes


def _split(table: FlowTable, data_config: DataSettings, level: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(train, validation, test) rows: by capture (validation = whole training captures), by time (validation =
    the last part in time of each capture's training part) or by application (the nDPI tasks: validation = whole
    training captures of seen applications, or of other held-out applications; flows outside the task are in no
    split, `splits.split_seen_applications` / `split_novel_applications`)."""
    if data_config.split in splits_lib.APPLICATION_SPLITS:
        if not np.any(np.asarray(table.meta.get("level2", np.zeros(0, str))).astype(str) != ""):
            raise ValueError(f"data.split={data_config.split!r} needs applications (level-2 labels) and these flows "
                             f"have none; use data.split='capture'")
        split_fn = (splits_lib.split_seen_applications if data_config.split == "seen_applications"
                    else functools.partial(splits_lib.split_novel_applications, class_column=level,
                                           seen_test_fraction=data_config.seen_test_fraction))
        split = split_fn(table, test_fraction=data_config.test_fraction, seed=data_config.split_seed,
                         validation_fraction=data_config.validation_fraction)
        return split["train"], split.get("validation", np.zeros((0,), np.int64)), split["test"]
    if data_config.split == "time":
        outer = splits_lib.split_by_time(table, data_config.test_fraction)
        train_idx, test_idx = outer["train"], outer["test"]
        val_idx = np.zeros((0,), np.int64)
        if data_config.validation_fraction > 0:
            inner = splits_lib.split_by_time(table.select(train_idx), data_config.validation_fraction)
            train_idx, val_idx = train_idx[inner["train"]], train_idx[inner["test"]]
        return train_idx, val_idx, test_idx
    split = splits_lib.split_by_capture(table, test_fraction=data_config.test_fraction, seed=data_config.split_seed,
                                        label_column=level)
    train_idx, test_idx = np.asarray(split["train"]), np.asarray(split["test"])
    val_idx = np.zeros((0,), np.int64)
    if data_config.validation_fraction > 0:
        # A second capture-disjoint split of the training captures only, so the test split is the same with or
        # without validation.
        inner = splits_lib.split_by_capture(table.select(train_idx), test_fraction=data_config.validation_fraction,
                                            seed=data_config.split_seed, label_column=level)
        train_idx, val_idx = train_idx[np.asarray(inner["train"])], train_idx[np.asarray(inner["test"])]
        train_idx, val_idx = keep_every_class_in_train(table, train_idx, val_idx, level)
    return train_idx, val_idx, test_idx


def _split_per_source(table: FlowTable, data_config: DataSettings, level: str):
    """`_split` within each source of a mixed corpus (every source keeps its classes on both sides)."""
    if "source" not in table.meta:
        return _split(table, data_config, level)
    sources = np.asarray(table.meta["source"]).astype(str)
    parts: tuple[list, list, list] = ([], [], [])
    for name in sorted(set(sources.tolist())):
        rows = np.flatnonzero(sources == name)
        try:
            for part, idx in zip(parts, _split(table.select(rows), data_config, level)):
                part.append(rows[np.asarray(idx, np.int64)])
        except ValueError as e:
            raise ValueError(f"data.inputs source {name!r}: {e}") from None
    train_idx, val_idx, test_idx = (np.sort(np.concatenate(p)) for p in parts)
    return train_idx, val_idx, test_idx


def prepare_flows(data_config: DataSettings, cache_root: str | pathlib.Path, progress: bool = True,
                  kg=None) -> PreparedFlows:
    """The experiment's flows from the data settings; ingested tables are cached under `cache_root`
    (`Workdir.cache_dir(settings.data)`). `kg`, the mission's knowledge graph, may name the classes
    (`data.taxonomy`)."""
    sources = resolve_sources(data_config)
    ingest_config = IngestConfig.from_data_config(data_config)
    cache_root = pathlib.Path(cache_root)
    tables, reports = [], {}
    for source in sources:  # each source ingested (cached on its own) and named with its own taxonomy
        table = ingest_cached(source.inputs, source.labels, ingest_config, cache_root, progress)
        table, reports[source.name] = taxonomy.resolve_levels(table, data_config.taxonomy, kg)
        tables.append(_tagged(table, source.name) if source.name else table)
        if source.name:
            print(f"[data] source {source.name!r}: {len(table)} flows, labels {source.labels or '(none)'}, classes "
                  f"from the {reports[source.name]['source']}", file=sys.stderr)
    if len(sources) == 1 and not sources[0].name:
        table, levels = tables[0], reports[""]
    else:
        table, levels = FlowTable.concat(_aligned(tables)), _mixed_report(reports)
    if levels.get("flows_without_class"):
        print(f"[data] classes from the {levels['source']} taxonomy: {levels['flows_without_class']} labelled flows "
              f"have a label it does not know, left unlabelled: {dict(list(levels['labels_without_class'].items())[:8])}",
              file=sys.stderr)
    level = data_config.label_level
    table, dropped = splits_lib.filter_flows(table, min_packets=data_config.min_packets,
                                            drop_one_way=data_config.drop_one_way, drop_unlabelled=True,
                                            label_column=level)
    train_idx, val_idx, test_idx = _split_per_source(table, data_config, level)
    labels = np.asarray(table.meta[level]).astype(str)
    # Classes are chosen on all training captures (validation included), so validation never changes the
    # evaluated class set.
    names, counts = np.unique(labels[np.concatenate([train_idx, val_idx])], return_counts=True)
    class_names = sorted(n for n, c in zip(names, counts) if c >= data_config.min_class_flows and n)
    lookup = {n: i for i, n in enumerate(class_names)}
    class_ids = np.array([lookup.get(x, -1) for x in labels], dtype=np.int32)
    dropped = dict(dropped)
    dropped["class_below_min_train_flows"] = int((class_ids == -1).sum())
    notes: list = []
    if data_config.split in splits_lib.APPLICATION_SPLITS:
        # Flows of the split's captures that the application task leaves out (docs/labels.md, "nDPI tasks").
        dropped["outside_application_task"] = int(len(table) - len(train_idx) - len(val_idx) - len(test_idx))
    if class_names:
        train_idx, val_idx, notes = check_split(table, train_idx, val_idx, test_idx, class_ids, class_names, level,
                                                data_config)
        if data_config.split in splits_lib.APPLICATION_SPLITS and notes:
            # Captures moved to validation change the training applications: keep the task's promise.
            before = len(val_idx) + len(test_idx)
            val_idx, test_idx = splits_lib.restrict_to_task(table.meta["level2"], data_config.split, train_idx,
                                                            val_idx, test_idx, data_config.seen_test_fraction > 0)
            if len(val_idx) + len(test_idx) < before:
                moved = before - len(val_idx) - len(test_idx)
                dropped["outside_application_task"] += moved
                notes.append(f"{moved} validation/test flows left out: after that move their application no longer "
                             f"fits data.split={data_config.split!r}")
    train_pool_idx = None
    if data_config.fraction < 1.0:
        train_pool_idx = np.asarray(train_idx)
        train_idx = np.asarray(splits_lib.fraction_subset(table, train_idx, data_config.fraction,
                                                          data_config.split_seed, level))
    captures = np.asarray(table.meta["capture"]).astype(str)
    if not len(class_names):
        raise ValueError(f"no {level} class has {data_config.min_class_flows} training flows (data.min_class_flows): "
                         f"{dict(zip(names.tolist(), counts.tolist()))}; classes came from the {levels['source']} "
                         f"(data.taxonomy={data_config.taxonomy!r})")
    small = {str(n): int(c) for n, c in zip(names, counts) if n and c < data_config.min_class_flows}
    if small:
        print(f"[data] {len(small)} {level} classes have fewer than {data_config.min_class_flows} training flows and "
              f"are not evaluated (data.min_class_flows): {dict(list(small.items())[:10])}", file=sys.stderr)
    print(f"[data] {len(table)} flows after filters; train {len(train_idx)} / validation {len(val_idx)} / "
          f"test {len(test_idx)}; "
          f"{len(class_names)} {level} classes", file=sys.stderr)
    return PreparedFlows(table=table, train_idx=train_idx, test_idx=test_idx, val_idx=val_idx,
                         class_names=class_names,
                         class_ids=class_ids, dropped=dropped,
                         split_captures={"train": sorted(set(captures[train_idx])),
                                         "validation": sorted(set(captures[val_idx])),
                                         "test": sorted(set(captures[test_idx]))},
                         taxonomy=levels, sources=[s.name for s in sources if s.name], train_pool_idx=train_pool_idx,
                         split_notes=notes)
