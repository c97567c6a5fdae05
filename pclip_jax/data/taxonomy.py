"""Open taxonomy: where an experiment's level-1 and level-2 classes come from.

The label step (`data/labels.py`) gives every flow a raw `label` and, through the label hierarchy, `level1` /
`level2`. That hierarchy knows nDPI's protocols and the service classes; a user's own labels (devices, attacks,
tunnel tools, folder names) it does not know. `resolve_levels` chooses, per dataset (`data.taxonomy`):

* `hierarchy`: the label hierarchy's level1/level2 (nDPI: `TLS.Google` → Web / Google);
* `graph`: the mission knowledge graph's levels: a raw label matched (id, name or alias) to a level-2 node takes
  that node and its parent, one matched to a level-1 node takes it with no level 2 (IoT Sentinel: `HueBridge` →
  Lighting / HueBridge);
* `raw`: the raw labels themselves as level-1 classes, no level 2 (any folder of captures);
* `auto` (default): `hierarchy` when it gives a level-1 class to at least half of the labelled flows, else `graph`
  when a graph is given and matches at least half of them, else `raw`.

The hierarchy comes first under `auto` because it is what the nDPI figures were measured with: nDPI's raw
labels are protocol names that the graph names only partly. Nothing is dropped silently: labels that the chosen
source does not know are counted in the report (and left unlabelled, so the filters count them too).
"""
from __future__ import annotations

import dataclasses
from collections import Counter
import numpy as np

from pclip_jax.data.flow_table import FlowTable

SOURCES = ("auto", "hierarchy", "graph", "raw")
COVERAGE = 0.5


def _graph_levels(labels: np.ndarray, kg) -> tuple[np.ndarray, np.ndarray]:
    level1 = np.full(len(labels), "", dtype=object)
    level2 = np.full(len(labels), "", dtype=object)
    for raw in np.unique(labels):
        if not raw:
            continue
        where = labels == raw
        node_id = kg.resolve(str(raw), level=2)
        if node_id is not None:
            level1[where], level2[where] = kg.node(node_id).parent, node_id
            continue
        node_id = kg.resolve(str(raw), level=1)
        if node_id is not None:
            level1[where] = node_id
    return level1, level2


def resolve_levels(table: FlowTable, source: str = "auto", kg=None) -> tuple[FlowTable, dict]:
    """A new table whose `level1` / `level2` columns come from the chosen source, and a report: `source`, the
    share of labelled flows each candidate covers, and the labels the chosen one does not know (flow counts)."""
    if source not in SOURCES:
        raise ValueError(f"data.taxonomy={source!r}: must be one of {', '.join(SOURCES)}")
    if "label" not in table.meta:
        return table, {"source": "none", "reason": "no labels attached"}
    labels = np.asarray(table.meta["label"]).astype(str)
    labelled = labels != ""
    n = max(int(labelled.sum()), 1)
    hier1 = np.asarray(table.meta["level1"]).astype(str)
    coverage = {"hierarchy": float((hier1[labelled] != "").sum() / n)}
    graph_levels = None
    if kg is not None:
        graph_levels = _graph_levels(labels, kg)
        coverage["graph"] = float((graph_levels[0][labelled] != "").sum() / n)
    if source == "graph" and kg is None:
        raise ValueError("data.taxonomy='graph' needs a knowledge graph (gnn.kg)")
    chosen = source
    if source == "auto":
        if coverage["hierarchy"] >= COVERAGE:
            chosen = "hierarchy"
        elif kg is not None and coverage["graph"] >= COVERAGE:
            chosen = "graph"
        else:
            chosen = "raw"
    meta = dict(table.meta)
    if chosen == "graph":
        meta["level1"] = graph_levels[0].astype(str)
        meta["level2"] = graph_levels[1].astype(str)
    elif chosen == "raw":
        meta["level1"] = np.where(labels == "Unknown", "", labels).astype(str)
        meta["level2"] = np.full(len(labels), "", dtype=str)
    level1 = np.asarray(meta["level1"]).astype(str)
    unknown = Counter(labels[labelled & (level1 == "")].tolist())
    report = {"source": chosen, "requested": source, "coverage": coverage,
              "labels_without_class": dict(unknown.most_common(50)),
              "flows_without_class": int(sum(unknown.values()))}
    return dataclasses.replace(table, meta=meta), report
