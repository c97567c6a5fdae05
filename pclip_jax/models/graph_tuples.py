"""Per-flow jraph graphs over a knowledge graph, padded to fixed budgets so jit and pmap compile once.

Every flow gets its own copy of the knowledge graph plus one flow node:

* node 0 of each graph is the flow node; node 1 + m is KG node m (graph order of `KnowledgeGraph.nodes`);
* edges: parent→child and child→parent along the hierarchy, both directions of each `related` edge, flow→node
  from the flow to every candidate node and node→flow back (the flow's attention over candidates is what the
  explanation reports). Candidates are all KG nodes: the graphs are small (tens to a few hundred nodes), and
  scoring every class keeps zero-shot classes reachable.

Features are *indices*, not copies of embeddings, so a batch stays small: the flow embedding sits in
`globals["flow"]` [G, Dp] and KG nodes carry `nodes["kg_index"]` into the text-embedding table [M, Dt] that the GNN
receives once per call (cached once per graph, see `kg_text_embeddings`).

Node fields: `kg_index` (int32, -1 for the flow node), `level` (0..2 KG levels, 3 = flow), `parent` (int32, index of
the parent node *within the graph*, -1 for none), `prior` (float32 log-prior from a mission, 0 = neutral).
Edge field: `type` (see EDGE_TYPES). Globals: `flow` [G, Dp], `level1`, `level2` (int32 class slots at each level,
-1 = unknown; padding graphs get -1 too), and the graph's own edges in KG indices, one identical row per graph
(`kg_senders`, `kg_receivers`, `kg_edge_type` [G, E_kg]) and node levels (`kg_level` [G, M]) for the
factored GNN.
"""
from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sys
from typing import Callable, Iterator, Sequence

import jraph
import numpy as np

from pclip_jax.graph.schema import KnowledgeGraph

EDGE_TYPES = ("parent_to_child", "child_to_parent", "related", "flow_to_node", "node_to_flow")
FLOW_LEVEL = 3


@dataclasses.dataclass(frozen=True, eq=False)
class KGLayout:
    """The static structure of one knowledge graph as arrays (shared by every flow graph of a batch)."""
    kg: KnowledgeGraph
    node_level: np.ndarray          # int32 [M]
    node_parent: np.ndarray         # int32 [M], KG index of the parent, -1 for the root
    level_nodes: tuple[np.ndarray, ...]   # level_nodes[l]: KG indices of level-l nodes (class slot order)
    level2_parent_slot: np.ndarray  # int32 [C2]: level-1 slot of each level-2 node's parent
    senders: np.ndarray             # int32 [E] local (within one flow graph)
    receivers: np.ndarray           # int32 [E]
    edge_type: np.ndarray           # int32 [E]
    node_to_flow_edge: np.ndarray   # int32 [M]: local edge index of the edge KG node m → flow

    @property
    def num_kg_nodes(self) -> int:
        return len(self.node_level)

    @property
    def nodes_per_graph(self) -> int:
        return 1 + self.num_kg_nodes

    @property
    def edges_per_graph(self) -> int:
        return len(self.senders)

    def class_names(self, level: int) -> list[str]:
        return [self.kg.nodes[i].id for i in self.level_nodes[level]]

    def slot(self, level: int, node_id: str) -> int:
        """Class slot of `node_id` at `level`."""
        return self.class_names(level).index(node_id)


def kg_layout(kg: KnowledgeGraph) -> KGLayout:
    """Arrays describing `kg` for graph building and for the GNN's per-level outputs."""
    m = len(kg.nodes)
    level = np.array([n.level for n in kg.nodes], np.int32)
    parent = np.array([kg.index(n.parent) if n.parent is not None else -1 for n in kg.nodes], np.int32)
    level_nodes = tuple(np.flatnonzero(level == lvl).astype(np.int32) for lvl in range(3))
    slot1 = {int(k): s for s, k in enumerate(level_nodes[1])}
    level2_parent_slot = np.array([slot1[int(parent[k])] for k in level_nodes[2]], np.int32)
    s, r, t = [], [], []

    def add(a, b, kind):
        s.append(a), r.append(b), t.append(EDGE_TYPES.index(kind))

    for k in range(m):  # local node ids: flow = 0, KG node k = 1 + k
        if parent[k] >= 0:
            add(1 + parent[k], 1 + k, "parent_to_child")
            add(1 + k, 1 + parent[k], "child_to_parent")
    for a, b in kg.related:
        add(1 + kg.index(a), 1 + kg.index(b), "related")
        add(1 + kg.index(b), 1 + kg.index(a), "related")
    for k in range(m):
        add(0, 1 + k, "flow_to_node")
    node_to_flow = np.zeros(m, np.int32)
    for k in range(m):
        node_to_flow[k] = len(s)
        add(1 + k, 0, "node_to_flow")
    return KGLayout(kg, level, parent, level_nodes, level2_parent_slot, np.array(s, np.int32),
                    np.array(r, np.int32), np.array(t, np.int32), node_to_flow)


@dataclasses.dataclass(frozen=True)
class PaddingBudget:
    """Fixed sizes of a padded batch (one padding graph absorbs the slack)."""
    n_node: int
    n_edge: int
    n_graph: int


def padding_budget(layout: KGLayout, batch_size: int) -> PaddingBudget:
    """The budget that fits `batch_size` flow graphs (+1 padding graph, +1 padding node)."""
    return PaddingBudget(batch_size * layout.nodes_per_graph + 1, batch_size * layout.edges_per_graph,
                         batch_size + 1)


def build_batch(layout: KGLayout, flow_embeddings: np.ndarray, level1: np.ndarray | None = None,
                level2: np.ndarray | None = None, budget: PaddingBudget | None = None,
                node_prior: np.ndarray | None = None) -> jraph.GraphsTuple:
    """One padded `GraphsTuple` holding a graph per flow.

    Args:
      layout: from `kg_layout`.
      flow_embeddings: float [B, Dp], the frozen packet-tower embedding of each flow.
      level1, level2: int [B] class slots (`labels_to_slots`), -1 unknown; None = all unknown.
      budget: padding budget (default: exactly `padding_budget(layout, B)`); a batch smaller than the budget is
        padded, so every batch of a run has the same shapes.
      node_prior: float [M] per-KG-node log-prior (from `missions.apply_mission`), default 0.
    """
    emb = np.asarray(flow_embeddings, np.float32)
    if emb.ndim != 2:
        raise ValueError(f"flow_embeddings must be [B, D], got shape {emb.shape}")
    b, m = emb.shape[0], layout.num_kg_nodes
    budget = budget or padding_budget(layout, b)
    if b + 1 > budget.n_graph:
        raise ValueError(f"batch of {b} flows exceeds the padding budget of {budget.n_graph - 1} graphs")
    y1 = np.full(b, -1, np.int32) if level1 is None else np.asarray(level1, np.int32)
    y2 = np.full(b, -1, np.int32) if level2 is None else np.asarray(level2, np.int32)
    if y1.shape != (b,) or y2.shape != (b,):
        raise ValueError(f"labels must have shape ({b},), got {y1.shape} and {y2.shape}")
    prior = np.zeros(m, np.float32) if node_prior is None else np.asarray(node_prior, np.float32)
    if prior.shape != (m,):
        raise ValueError(f"node_prior must have shape ({m},) for graph {layout.kg.name!r}, got {prior.shape}")

    per = layout.nodes_per_graph
    kg_index = np.tile(np.arange(-1, m, dtype=np.int32), b)
    level = np.tile(np.concatenate([[FLOW_LEVEL], layout.node_level]).astype(np.int32), b)
    parent = np.tile(np.concatenate([[-1], np.where(layout.node_parent >= 0, layout.node_parent + 1, -1)])
                     .astype(np.int32), b)
    prior_nodes = np.tile(np.concatenate([[0.0], prior]).astype(np.float32), b)
    offsets = (np.arange(b, dtype=np.int32) * per)[:, None]
    graph = jraph.GraphsTuple(
        nodes={"kg_index": kg_index, "level": level, "parent": parent, "prior": prior_nodes},
        edges={"type": np.tile(layout.edge_type, b)},
        senders=(layout.senders[None, :] + offsets).reshape(-1),
        receivers=(layout.receivers[None, :] + offsets).reshape(-1),
        n_node=np.full(b, per, np.int32), n_edge=np.full(b, layout.edges_per_graph, np.int32),
        globals={"flow": emb, "level1": y1, "level2": y2})
    padded = jraph.pad_with_graphs(graph, budget.n_node, budget.n_edge, budget.n_graph)
    pad = budget.n_graph - b
    padded.globals["level1"][b:] = -1   # padding graphs never carry a label
    padded.globals["level2"][b:] = -1
    padded.nodes["kg_index"][b * per:] = -1
    padded.nodes["parent"][b * per:] = -1
    padded.nodes["level"][b * per:] = FLOW_LEVEL
    # The graph's own edges (KG indices), the same row for every graph, padding ones included: the factored GNN
    # reads the structure here, valid even in a batch without a real graph (a device left without flows).
    kg_edges = layout.edge_type < EDGE_TYPES.index("flow_to_node")
    for key, values in (("kg_senders", layout.senders[kg_edges] - 1), ("kg_receivers", layout.receivers[kg_edges] - 1),
                        ("kg_edge_type", layout.edge_type[kg_edges]), ("kg_level", layout.node_level)):
        padded.globals[key] = np.broadcast_to(values.astype(np.int32), (budget.n_graph, len(values))).copy()
    assert pad >= 1
    return padded


def labels_to_slots(layout: KGLayout, level1_names: Sequence[str], level2_names: Sequence[str] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Class slots for dataset labels, matched to KG nodes by id, name or alias (case-insensitive).

    A known level-2 label fills in a missing level-1 label with its parent; a level-2 label whose parent disagrees
    with the level-1 label is dropped (level-1 wins). Returns (level1 [N], level2 [N], counts of unmatched labels).
    """
    kg = layout.kg
    names1 = layout.class_names(1)
    names2 = layout.class_names(2)
    n = len(level1_names)
    level2_names = [""] * n if level2_names is None else list(level2_names)
    y1 = np.full(n, -1, np.int32)
    y2 = np.full(n, -1, np.int32)
    unknown = {"level1": {}, "level2": {}, "conflicts": 0}
    cache: dict = {}
    for i, (a, b) in enumerate(zip(level1_names, level2_names)):
        for lvl, name, out, names in ((1, a, y1, names1), (2, b, y2, names2)):
            if name is None or str(name) == "":
                continue
            key = (lvl, str(name))
            if key not in cache:
                node = kg.resolve(str(name), level=lvl)
                cache[key] = names.index(node) if node is not None else -1
            out[i] = cache[key]
            if out[i] < 0:
                unknown[f"level{lvl}"][str(name)] = unknown[f"level{lvl}"].get(str(name), 0) + 1
        if y2[i] >= 0:
            parent_slot = layout.level2_parent_slot[y2[i]]
            if y1[i] < 0:
                y1[i] = parent_slot
            elif y1[i] != parent_slot:
                y2[i] = -1
                unknown["conflicts"] += 1
    return y1, y2, unknown


def iterate_batches(layout: KGLayout, flow_embeddings: np.ndarray, level1: np.ndarray, level2: np.ndarray,
                    batch_size: int, rng: np.random.Generator | None = None,
                    node_prior: np.ndarray | None = None) -> Iterator[jraph.GraphsTuple]:
    """Padded batches over all flows (shuffled when `rng` is given); every batch has the same budget, the last
    one padded."""
    n = len(flow_embeddings)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    budget = padding_budget(layout, batch_size)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield build_batch(layout, flow_embeddings[idx], level1[idx], level2[idx], budget, node_prior)


def stack_device_batches(batches: Sequence[jraph.GraphsTuple]) -> jraph.GraphsTuple:
    """Stacks per-device padded batches (same budget) on a leading device axis for `jax.pmap`."""
    shapes = {tuple(np.shape(x) for x in jraph_leaves(b)) for b in batches}
    if len(shapes) != 1:
        raise ValueError("per-device batches must share one padding budget to be stacked for pmap")
    return jraph.GraphsTuple(*[
        {k: np.stack([getattr(b, f)[k] for b in batches]) for k in getattr(batches[0], f)}
        if isinstance(getattr(batches[0], f), dict) else np.stack([getattr(b, f) for b in batches])
        for f in jraph.GraphsTuple._fields])


def device_batches(layout: KGLayout, flow_embeddings: np.ndarray, level1: np.ndarray, level2: np.ndarray,
                   num_devices: int, per_device_batch: int, rng: np.random.Generator | None = None,
                   node_prior: np.ndarray | None = None) -> Iterator[jraph.GraphsTuple]:
    """Batches for pmap: each step takes num_devices × per_device_batch flows, pads each device's share to the
    same budget and stacks them ([num_devices, ...] leading axis). Devices left without flows get an all-padding
    batch, masked out of loss and metrics."""
    n = len(flow_embeddings)
    order = rng.permutation(n) if rng is not None else np.arange(n)
    budget = padding_budget(layout, per_device_batch)
    step = num_devices * per_device_batch
    for start in range(0, n, step):
        idx = order[start:start + step]
        parts = [idx[d * per_device_batch:(d + 1) * per_device_batch] for d in range(num_devices)]
        yield stack_device_batches([build_batch(layout, flow_embeddings[p], level1[p], level2[p], budget,
                                                node_prior) for p in parts])


def jraph_leaves(g: jraph.GraphsTuple) -> list:
    out = []
    for f in g:
        out.extend(f.values() if isinstance(f, dict) else [f])
    return out


# -- cached text embeddings of the KG ------------------------------------------------------------------------------

def kg_texts(kg: KnowledgeGraph) -> tuple[list[str], np.ndarray]:
    """All descriptions of the graph, flattened, and the KG index each belongs to."""
    texts, owner = [], []
    for i, n in enumerate(kg.nodes):
        for d in n.descriptions:
            texts.append(d)
            owner.append(i)
    return texts, np.array(owner, np.int32)


def kg_text_embeddings(kg: KnowledgeGraph, encode: Callable[[Sequence[str]], np.ndarray],
                       cache_dir: str | pathlib.Path | None = None, encoder_name: str = "",
                       progress: bool = True) -> dict[str, np.ndarray]:
    """Text embeddings of every node, computed once and cached (`cache_dir/kg-<hash>.npz`, no pickle).

    A node's embedding is the normalised mean of its descriptions' normalised embeddings. Returns
    `{"nodes": [M, Dt], "descriptions": [M, Dmax, Dt], "description_mask": bool [M, Dmax]}` (per-description
    embeddings are used to name the winning description in explanations).
    """
    texts, owner = kg_texts(kg)
    key = hashlib.sha256("\x00".join([encoder_name, kg.name] + [f"{o}:{t}" for o, t in zip(owner, texts)])
                         .encode()).hexdigest()[:16]
    path = pathlib.Path(cache_dir) / f"kg-{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    if progress:
        print(f"embedding {len(texts)} descriptions of knowledge graph {kg.name!r}", file=sys.stderr)
    emb = np.asarray(encode(texts), np.float32)
    if emb.shape[0] != len(texts):
        raise ValueError(f"text encoder returned {emb.shape[0]} embeddings for {len(texts)} texts")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)
    m = len(kg.nodes)
    dmax = int(np.bincount(owner, minlength=m).max())
    desc = np.zeros((m, dmax, emb.shape[1]), np.float32)
    mask = np.zeros((m, dmax), bool)
    fill = np.zeros(m, np.int32)
    for e, o in zip(emb, owner):
        desc[o, fill[o]], mask[o, fill[o]] = e, True
        fill[o] += 1
    nodes = desc.sum(1) / fill[:, None]
    nodes /= np.maximum(np.linalg.norm(nodes, axis=1, keepdims=True), 1e-9)
    out = {"nodes": nodes.astype(np.float32), "descriptions": desc, "description_mask": mask}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(path, **out)
    return out
