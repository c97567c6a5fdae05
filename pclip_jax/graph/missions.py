"""Missions: what the user wants to detect, as a selection and weighting of the knowledge graph.

A mission names focus nodes (e.g. "find VPN tunnels and remote access" → `VPN/Tunnel`, `RemoteAccess`), optional
weights per node, and optional extra nodes that exist only as text. Applying a mission gives

* a subgraph: with `keep_others: false` only the root, the focus nodes, their ancestors and their descendants stay;
  with `keep_others: true` (default) every node stays, so the model can still say "something else";
* a log-prior per node, `log(weight)` (weight 1 = neutral), which the GNN adds to the node's score before the
  per-level softmax (`graphs.build_batch(..., node_prior=...)`), so a mission can favour its classes at inference
  without retraining.

Zero-shot: the GNN scores a node from the embedding of its descriptions (no per-class output weights), so a class
added by a mission (`extra_nodes`) or by editing the YAML is scored through its description embedding even though no
training flow carried that label.

Missions live in a graph's YAML under `missions:`::

    missions:
      vpn_remote_access:
        statement: find VPN tunnels and remote access
        focus: [VPN/Tunnel, RemoteAccess]
        weights: {VPN/Tunnel: 2.0}
        keep_others: true
        extra_nodes:            # same fields as graph nodes
          - {id: Tor, level: 2, parent: VPN/Tunnel, name: Tor, descriptions: ["Tor onion routing ..."]}
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from pclip_jax.graph.schema import KGNode, KGValidationError, KnowledgeGraph, parse_kg

_MISSION_FIELDS = {"statement", "focus", "weights", "keep_others", "extra_nodes"}


@dataclasses.dataclass(frozen=True)
class Mission:
    """A selection and weighting of a knowledge graph."""
    name: str
    statement: str
    focus: tuple[str, ...] = ()
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    keep_others: bool = True
    extra_nodes: tuple[KGNode, ...] = ()


def parse_mission(name: str, raw: Mapping[str, Any], source: str = "<mission>") -> Mission:
    """A `Mission` from its YAML mapping; errors name the mission and the field."""
    where = f"{source}: mission {name!r}"
    if not isinstance(raw, Mapping):
        raise KGValidationError(f"{where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - _MISSION_FIELDS
    if unknown:
        raise KGValidationError(f"{where}: unknown field(s) {sorted(unknown)}; allowed {sorted(_MISSION_FIELDS)}")
    weights = {}
    for k, v in (raw.get("weights") or {}).items():
        try:
            weights[str(k)] = float(v)
        except (TypeError, ValueError):
            raise KGValidationError(f"{where}: weight of {k!r} must be a number, got {v!r}") from None
        if not weights[str(k)] > 0 or not math.isfinite(weights[str(k)]):
            raise KGValidationError(f"{where}: weight of {k!r} must be a positive finite number, got {v!r}")
    extra = ()
    if raw.get("extra_nodes"):
        # Parse the extra nodes with a stand-in root so the schema checks (descriptions, levels) apply to them.
        extra = tuple(_parse_extra_nodes(raw["extra_nodes"], where))
    return Mission(name, str(raw.get("statement", name)), tuple(str(f) for f in raw.get("focus") or ()),
                   weights, bool(raw.get("keep_others", True)), extra)


def _parse_extra_nodes(raw_nodes: Any, where: str) -> list[KGNode]:
    if not isinstance(raw_nodes, list):
        raise KGValidationError(f"{where}: 'extra_nodes' must be a list of nodes")
    out = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, Mapping):
            raise KGValidationError(f"{where}: extra_nodes[{i}] must be a mapping")
        # Validate the node fields alone: give it a throwaway root and parent chain of the right levels.
        level = raw.get("level")
        stub = [{"id": "__root__", "level": 0, "descriptions": ["root"]}]
        if isinstance(level, int) and level == 2:
            stub.append({"id": "__l1__", "level": 1, "parent": "__root__", "descriptions": ["class"]})
        node = dict(raw)
        node["parent"] = "__root__" if level == 1 else "__l1__"
        kg = parse_kg({"nodes": stub + [node]}, source=f"{where}: extra_nodes[{i}]")
        parsed = kg.node(str(raw.get("id")).strip())
        out.append(dataclasses.replace(parsed, parent=str(raw.get("parent")) if raw.get("parent") else None))
    return out


def missions_of(kg: KnowledgeGraph) -> dict[str, Mission]:
    """The missions declared in the graph's YAML."""
    return {name: parse_mission(name, raw, kg.name) for name, raw in kg.missions.items()}


def apply_mission(kg: KnowledgeGraph, mission: Mission) -> tuple[KnowledgeGraph, np.ndarray]:
    """The mission's subgraph and its per-node log-prior (float32 [num_nodes], graph order).

    Raises `KGValidationError` for a focus or weight that names no node, or an extra node that breaks the schema.
    """
    where = f"mission {mission.name!r} on graph {kg.name!r}"
    nodes = list(kg.nodes)
    for extra in mission.extra_nodes:
        if extra.id in kg:
            raise KGValidationError(f"{where}: extra node {extra.id!r} already exists in the graph")
        nodes.append(extra)
    try:
        full = kg.with_nodes(sorted(nodes, key=lambda n: n.level))
    except KGValidationError as e:
        raise KGValidationError(f"{where}: {e}") from None
    for name in list(mission.focus) + list(mission.weights):
        if name not in full:
            raise KGValidationError(f"{where}: unknown node {name!r} (known: {', '.join(full.level_ids(1))}, ...)")
    if mission.keep_others or not mission.focus:
        sub = full
    else:
        keep = {full.root.id}
        for f in list(mission.focus) + [n.id for n in mission.extra_nodes]:
            keep.update(full.path(f))
            keep.update(full.descendants(f))
        sub = full.with_nodes([n for n in full.nodes if n.id in keep], name=f"{kg.name}:{mission.name}")
    prior = np.zeros(len(sub.nodes), np.float32)
    for node_id, w in mission.weights.items():
        if node_id in sub:
            prior[sub.index(node_id)] = math.log(w)
    return sub, prior


def mission_from_statement(kg: KnowledgeGraph, statement: str,
                           encode: Callable[[Sequence[str]], np.ndarray] | None = None,
                           node_embeddings: np.ndarray | None = None, top_k: int = 2,
                           weight: float = 2.0) -> Mission:
    """A mission from free text: nodes whose name, id or alias appears in the statement, else (when an encoder and
    the graph's node embeddings are given) the `top_k` service classes nearest to the statement's embedding.
    Focus nodes get `weight`; everything else is kept."""
    text = statement.lower()
    focus = []
    for n in kg.nodes:
        if n.level == 0:
            continue
        keys = {n.id.lower(), n.name.lower(), *(a.lower() for a in n.aliases)}
        keys |= {k.split("/")[0] for k in keys if "/" in k}
        if any(len(k) >= 3 and re.search(rf"(?<![a-z0-9]){re.escape(k)}s?(?![a-z0-9])", text) for k in keys):
            focus.append(n.id)
    if not focus and encode is not None and node_embeddings is not None:
        q = np.asarray(encode([statement]), np.float32)[0]
        emb = np.asarray(node_embeddings, np.float32)
        sims = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q) + 1e-9)
        level1 = [kg.index(i) for i in kg.level_ids(1)]
        focus = [kg.nodes[i].id for i in sorted(level1, key=lambda i: -sims[i])[:top_k]]
    if not focus:
        raise KGValidationError(f"mission {statement!r}: matches no node of graph {kg.name!r}; name a class "
                                f"({', '.join(kg.level_ids(1))}) or pass a text encoder")
    return Mission(name=re.sub(r"[^a-z0-9]+", "_", text).strip("_")[:40] or "mission", statement=statement,
                   focus=tuple(focus), weights={f: weight for f in focus}, keep_others=True)


def resolve_mission(kg: KnowledgeGraph, mission: str | None, **kwargs) -> Mission | None:
    """`mission` is a mission name declared in the graph, a free-text statement, or None (no mission)."""
    if not mission:
        return None
    declared = missions_of(kg)
    if mission in declared:
        return declared[mission]
    return mission_from_statement(kg, mission, **kwargs)
