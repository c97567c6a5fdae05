"""Hierarchical GNN over per-flow knowledge graphs (Flax linen + jraph), tiny and explainable.

Inputs are frozen: the flow node starts from the packet tower's embedding (`graphs.globals["flow"]`, [G, Dp]) and
every KG node from the text embedding of its descriptions (`kg_embeddings`, [M, Dt], cached once per graph). Only
this module is trained for detection.

Architecture (per call):
1. Input projections to width H: Dense(Dp→H) for flows, Dense(Dt→H) for the KG table (applied once to the [M, Dt]
   table, then gathered per node), plus a learned level embedding (mission / class / application / flow).
2. `num_layers` rounds of multi-head attention message passing (GAT/transformer style): each edge s→r computes
   q(h_r)·(k(h_s) + e_type) per head, softmax over the receiver's incoming edges (`jraph.segment_softmax`), sums
   v(h_s) + e_type weighted by it, then residual + LayerNorm and a small MLP. The edge types (parent→child,
   child→parent, related, flow→node, node→flow) let the flow read the graph and the graph read the flow.
3. Node scores: s_n = <W_q h_flow, W_k h_n> / sqrt(H) + prior_n (+ a learned multiple of cos(flow input, node
   text) when both live in the same space). No per-class weights: a class is scored from its description
   embedding, so classes that exist only as text are scored zero-shot.

Consistency across levels (a child never outranks its parent's decision):
* Scores become *conditional* distributions among siblings: P(n | parent(n)) = softmax of s over the children of
  the same parent (segment log-softmax keyed by the parent's node index), and marginals follow the chain rule
  P(app) = P(class) · P(app | class). Hence P(app) ≤ P(its class) for every app, and the level-2 marginals of a
  class's children sum to that class's probability.
* Decisions are top-down: the level-1 decision is the argmax class; the level-2 decision is the argmax among the
  children of that class only (a class without children in the graph has level-2 decision -1). So the chosen app's
  parent is always the chosen class.
* Losses per level: level 1 is cross-entropy of P(class); level 2 is cross-entropy of P(app | true class)
  (teacher-forced on the true parent), so the two levels train separate decisions and add up to -log P(path).

Factored (`factored=True`, the default): the graph's nodes pass messages along the graph's own edges only, and each
flow node reads them through the same attention layers (`_AttentionLayer.read`, the node→flow edges of the
per-flow formulation). Nothing on the graph side depends on a flow, so it is computed once per model
(`graph_constants`) and a flow costs a few dot products per node (1.46 MFLOPs on the shipped nDPI graph against
57.1 for the per-flow formulation, `factored=False`, in which every flow carries its own copy of the graph and
the nodes also read the flow). The module keeps the per-flow graph layout for training and losses;
`dense_forward` computes the same outputs on dense arrays for inference and the ONNX export (tested equal).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import jraph
import numpy as np

from pclip_jax.plumbing import runtime
from pclip_jax.plumbing.settings import GnnConfig  # the field list, shared with the settings' gnn.model
from pclip_jax.models.graph_tuples import EDGE_TYPES, FLOW_LEVEL, KGLayout

NUM_LEVEL_EMBEDDINGS = FLOW_LEVEL + 1


class _AttentionLayer(nn.Module):
    hidden: int
    num_heads: int
    mlp_ratio: int
    dropout: float

    def setup(self):
        self.query = nn.Dense(self.hidden, use_bias=False)
        self.key_value = nn.Dense(2 * self.hidden, use_bias=False)
        self.edge_type = nn.Embed(len(EDGE_TYPES), 2 * self.hidden)
        self.out = nn.Dense(self.hidden)
        self.norm_attn = nn.LayerNorm()
        self.mlp_in = nn.Dense(self.mlp_ratio * self.hidden)
        self.mlp_out = nn.Dense(self.hidden)
        self.norm_mlp = nn.LayerNorm()
        self.drop = nn.Dropout(self.dropout)

    def _update(self, h, msg, deterministic):
        h = self.norm_attn(h + self.drop(self.out(msg), deterministic=deterministic))
        y = self.mlp_out(nn.gelu(self.mlp_in(h)))
        return self.norm_mlp(h + self.drop(y, deterministic=deterministic))

    def __call__(self, h, senders, receivers, edge_type, deterministic: bool):
        """Message passing along the edges: every receiver attends over its incoming edges."""
        n = h.shape[0]
        heads, dh = self.num_heads, self.hidden // self.num_heads
        q = self.query(h)[receivers]
        k, v = jnp.split(self.key_value(h)[senders] + self.edge_type(edge_type), 2, axis=-1)
        logits = (q * k).reshape(-1, heads, dh).sum(-1) / np.sqrt(dh)                    # [E, heads]
        alpha = jraph.segment_softmax(logits, receivers, num_segments=n)                   # over incoming edges
        msg = jax.ops.segment_sum(alpha[..., None] * v.reshape(-1, heads, dh), receivers, num_segments=n)
        return self._update(h, msg.reshape(n, self.hidden), deterministic), alpha

    def read(self, flow_h, node_h, deterministic: bool):
        """The flow nodes [..., G, H] attend over all graph nodes [..., M, H] along node→flow edges (the same
        parameters and arithmetic as `__call__` on those edges): keys and values are computed once for the M
        nodes, so a flow costs M dot products per head, not a pass over its own copy of the graph. Leading
        dimensions batch independent graphs (e.g. one per description slot)."""
        heads, dh = self.num_heads, self.hidden // self.num_heads
        q = self.query(flow_h)
        q = q.reshape(q.shape[:-1] + (heads, dh))
        kv = self.key_value(node_h) + self.edge_type(jnp.array(EDGE_TYPES.index("node_to_flow")))
        k, v = (x.reshape(x.shape[:-1] + (heads, dh)) for x in jnp.split(kv, 2, axis=-1))
        alpha = jax.nn.softmax(jnp.einsum("...ghd,...mhd->...gmh", q, k) / np.sqrt(dh), axis=-2)  # [..., G, M, h]
        msg = jnp.einsum("...gmh,...mhd->...ghd", alpha, v)
        return self._update(flow_h, msg.reshape(msg.shape[:-2] + (self.hidden,)), deterministic), alpha


def split_flow_input(flow: jnp.ndarray, flow_features: int) -> tuple[jnp.ndarray, jnp.ndarray | None]:
    """The flow input [..., Dp + F] → (the shared-space embedding [..., Dp], the F extra features or None)."""
    if not flow_features:
        return flow, None
    return flow[..., :-flow_features], flow[..., -flow_features:]


def _segment_log_softmax(x, segments, num_segments):
    m = jax.ops.segment_max(x, segments, num_segments=num_segments)
    m = jax.lax.stop_gradient(jnp.where(jnp.isfinite(m), m, 0.0))
    z = jax.ops.segment_sum(jnp.exp(x - m[segments]), segments, num_segments=num_segments)
    return x - (jnp.log(z) + m)[segments]


class HierarchicalGNN(nn.Module):
    """`HierarchicalGNN(config).apply(variables, graphs, kg_embeddings)` → dict of per-node arrays:

    * `score` [N]: raw node score (logit among siblings);
    * `cond_logp` [N]: log P(node | parent) (0 for the root, flow and padding nodes);
    * `logp` [N]: log P(node), the marginal along the path from the root;
    * `attention`: tuple, one [E, heads] array per layer (softmax over each receiver's incoming edges);
    * `flow_index` [G]: index of each graph's flow node; `node_graph` [N]: graph of each node;
    * `flow_query` [G, H]: the flow's final query vector (used to score single descriptions).
    """
    config: GnnConfig

    @nn.compact
    def __call__(self, graphs: jraph.GraphsTuple, kg_embeddings: jnp.ndarray, deterministic: bool = True
                 ) -> dict[str, Any]:
        cfg = self.config
        nodes = graphs.nodes
        n = nodes["kg_index"].shape[0]
        g = graphs.n_node.shape[0]
        node_graph = jnp.repeat(jnp.arange(g), graphs.n_node, total_repeat_length=n)
        flow_index = jnp.cumsum(graphs.n_node) - graphs.n_node
        kg_index = nodes["kg_index"]
        is_kg = kg_index >= 0
        flow_raw, extra = split_flow_input(graphs.globals["flow"].astype(jnp.float32), cfg.flow_features)
        text_raw = kg_embeddings.astype(jnp.float32)

        flow_h = nn.Dense(cfg.hidden, name="flow_in")(flow_raw)                       # [G, H]
        if extra is not None:
            flow_h = flow_h + nn.Dense(cfg.hidden, name="features_in")(extra)
        text_h = nn.Dense(cfg.hidden, name="text_in")(text_raw)                       # [M, H], once per call
        level_embed = nn.Embed(NUM_LEVEL_EMBEDDINGS, cfg.hidden, name="level")
        norm_in = nn.LayerNorm(name="norm_in")
        layers = [_AttentionLayer(cfg.hidden, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, name=f"layer_{i}")
                  for i in range(cfg.num_layers)]
        score_query = nn.Dense(cfg.hidden, name="score_query", kernel_init=nn.initializers.zeros)
        score_key = nn.Dense(cfg.hidden, name="score_key")
        similarity = cfg.similarity_prior and flow_raw.shape[-1] == text_raw.shape[-1]
        if similarity:
            scale = self.param("similarity_scale", nn.initializers.constant(cfg.similarity_init), ())
            fn = flow_raw / jnp.maximum(jnp.linalg.norm(flow_raw, axis=-1, keepdims=True), 1e-6)
            tn = text_raw / jnp.maximum(jnp.linalg.norm(text_raw, axis=-1, keepdims=True), 1e-6)

        if cfg.factored:
            score, flow_query, attention = self._factored(graphs, text_h, flow_h, level_embed, norm_in, layers,
                                                          score_query, score_key, deterministic)
            if similarity:
                m = text_raw.shape[0]
                idx = jnp.minimum(flow_index[:, None] + 1 + jnp.arange(m)[None, :], n - 1)
                score = score.at[idx].add(scale * (fn @ tn.T), mode="drop")
        else:
            h = jnp.where(is_kg[:, None], text_h[jnp.maximum(kg_index, 0)], flow_h[node_graph])
            h = norm_in(h + level_embed(nodes["level"]))
            attention = []
            for layer in layers:
                h, alpha = layer(h, graphs.senders, graphs.receivers, graphs.edges["type"], deterministic)
                attention.append(alpha)
            # Zero-initialised: at step 0 the learned term is 0 and the scores are the towers' zero-shot
            # similarities (plus the mission prior); training adds corrections from there.
            flow_query = score_query(h[flow_index])
            keys = score_key(h)                                                        # [N, H]
            score = (flow_query[node_graph] * keys).sum(-1) / np.sqrt(cfg.hidden) + nodes["prior"]
            if similarity:
                score = score + scale * (fn[node_graph] * tn[jnp.maximum(kg_index, 0)]).sum(-1)

        # Conditional log-softmax among siblings: segment = global index of the parent node. Nodes without a
        # parent (root, flow, padding) get a singleton segment of their own, n + their index, which cannot collide
        # with a parent's index.
        valid = jraph.get_node_padding_mask(graphs) & is_kg
        has_parent = valid & (nodes["parent"] >= 0)
        parent_global = jnp.where(has_parent, nodes["parent"] + flow_index[node_graph], 0)
        segment = jnp.where(has_parent, parent_global, n + jnp.arange(n))
        score = jnp.where(valid, score, 0.0)
        cond = jnp.where(has_parent, _segment_log_softmax(score, segment, 2 * n), 0.0)
        logp = cond
        for _ in range(2):  # depth of the hierarchy below the root: propagate the chain rule level by level
            logp = cond + jnp.where(has_parent, logp[parent_global], 0.0)
        return {"score": score, "cond_logp": cond, "logp": logp, "attention": tuple(attention),
                "flow_index": flow_index, "node_graph": node_graph, "flow_query": flow_query}

    def _factored(self, graphs, text_h, flow_h, level_embed, norm_in, layers, score_query, score_key,
                  deterministic):
        """The factored formulation: graph nodes pass messages along the graph's own edges only (once per call,
        independent of the flows), each flow node reads them (`_AttentionLayer.read`). Returns the per-node flat
        arrays of the per-flow formulation — score [N] (prior included, similarity not yet), flow_query [G, H],
        attention per layer [E, heads] (non-zero on node→flow edges only) — so losses, predictions and
        explanations are unchanged. The graph's own edges come from `globals["kg_senders"]` etc. (row 0; every
        row is the same); a flow graph's edges follow `graphs.kg_layout`'s order: graph edges, M flow→node, then
        M node→flow."""
        nodes = graphs.nodes
        n, m = nodes["kg_index"].shape[0], text_h.shape[0]
        e_total = graphs.senders.shape[0]
        gl = graphs.globals
        per_flow, flow_query, alphas = _factored_core(
            text_h, flow_h, gl["kg_level"][0], gl["kg_senders"][0], gl["kg_receivers"][0], gl["kg_edge_type"][0],
            level_embed, norm_in, layers, score_query, score_key, deterministic)
        e_per = gl["kg_senders"].shape[1] + 2 * m
        flow_index = jnp.cumsum(graphs.n_node) - graphs.n_node
        edge_offset = jnp.cumsum(graphs.n_edge) - graphs.n_edge
        to_flow = edge_offset[:, None] + (e_per - m) + jnp.arange(m)[None, :]          # [G, M] node→flow edges
        attention = tuple(jnp.zeros((e_total, a.shape[-1]), a.dtype).at[to_flow].set(a, mode="drop")
                          for a in alphas)
        idx = flow_index[:, None] + 1 + jnp.arange(m)[None, :]
        score = nodes["prior"] + jnp.zeros((n,), per_flow.dtype).at[idx].set(per_flow, mode="drop")
        return score, flow_query, attention


def _factored_core(text_h, flow_h, kg_level, kg_senders, kg_receivers, kg_edge_type, level_embed, norm_in, layers,
                   score_query, score_key, deterministic):
    """The factored GNN on dense arrays: `_graph_side` then `_flow_side`. Returns the learned score term per
    (flow, node) [G, M], the flows' final queries [G, H] and each layer's attention of the flows over the nodes
    [G, M, heads]."""
    states = _graph_side(text_h, kg_level, kg_senders, kg_receivers, kg_edge_type, level_embed, norm_in, layers,
                         deterministic)
    return _flow_side(flow_h, states, level_embed, norm_in, layers, score_query, score_key, deterministic)


def _graph_side(text_h, kg_level, kg_senders, kg_receivers, kg_edge_type, level_embed, norm_in, layers,
                deterministic):
    """The M graph nodes' message passing along the graph's own edges, independent of the flows: the node states
    [M, H] that the flows read at each layer, then the final ones (num_layers + 1 arrays)."""
    h_kg = norm_in(text_h + level_embed(kg_level))                                      # [M, H]
    states = [h_kg]
    for layer in layers:
        h_kg, _ = layer(h_kg, kg_senders, kg_receivers, kg_edge_type, deterministic)
        states.append(h_kg)
    return states


def _flow_side(flow_h, states, level_embed, norm_in, layers, score_query, score_key, deterministic):
    """The flows [..., G, H] reading the node states of `_graph_side` ([..., M, H] each) layer by layer: the
    learned score term [..., G, M], the final queries and each layer's attention [..., G, M, heads]."""
    f = norm_in(flow_h + level_embed(jnp.asarray(FLOW_LEVEL)))
    alphas = []
    for layer, h_kg in zip(layers, states):
        f, alpha = layer.read(f, h_kg, deterministic)
        alphas.append(alpha)
    flow_query = score_query(f)
    keys = score_key(states[-1])
    per_flow = jnp.einsum("...gh,...mh->...gm", flow_query, keys) / np.sqrt(flow_query.shape[-1])
    return per_flow, flow_query, alphas


@dataclasses.dataclass(frozen=True)
class DenseStructure:
    """One knowledge graph's structure as constants for `dense_forward` (numpy; see `dense_structure`)."""
    node_level: np.ndarray      # int32 [M]
    node_parent: np.ndarray     # int32 [M], -1 for the root
    senders: np.ndarray         # int32 [E_kg], the graph's own edges in KG indices
    receivers: np.ndarray
    edge_type: np.ndarray
    prior: np.ndarray           # float32 [M], the mission's log-prior
    level_nodes: tuple          # KG indices of the level-1 and level-2 nodes (class slot order)


def dense_structure(layout: KGLayout, prior: np.ndarray | None = None) -> DenseStructure:
    kg_edges = layout.edge_type < EDGE_TYPES.index("flow_to_node")
    m = layout.num_kg_nodes
    return DenseStructure(
        node_level=layout.node_level.astype(np.int32), node_parent=layout.node_parent.astype(np.int32),
        senders=(layout.senders[kg_edges] - 1).astype(np.int32),
        receivers=(layout.receivers[kg_edges] - 1).astype(np.int32),
        edge_type=layout.edge_type[kg_edges].astype(np.int32),
        prior=np.zeros(m, np.float32) if prior is None else np.asarray(prior, np.float32),
        level_nodes=(np.asarray(layout.level_nodes[1]), np.asarray(layout.level_nodes[2])))


class _Bound:
    """The GNN's submodules bound to trained parameters, for the dense formulation outside `HierarchicalGNN`."""

    def __init__(self, config: GnnConfig, params: Any):
        def bound(module, name):
            return module.bind({"params": params[name]})

        h = config.hidden
        self.layers = [bound(_AttentionLayer(h, config.num_heads, config.mlp_ratio, config.dropout), f"layer_{i}")
                       for i in range(config.num_layers)]
        self.text_in, self.flow_in = bound(nn.Dense(h), "text_in"), bound(nn.Dense(h), "flow_in")
        self.features_in = bound(nn.Dense(h), "features_in") if config.flow_features else None
        self.flow_features = config.flow_features
        self.level = bound(nn.Embed(NUM_LEVEL_EMBEDDINGS, h), "level")
        self.norm_in = bound(nn.LayerNorm(), "norm_in")
        self.score_query, self.score_key = bound(nn.Dense(h), "score_query"), bound(nn.Dense(h), "score_key")
        self.similarity_scale = params.get("similarity_scale")


def _normalize(x):
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def graph_constants(config: GnnConfig, params: Any, kg_embeddings: jnp.ndarray, structure: "DenseStructure"
                    ) -> dict:
    """What the factored GNN computes from the graph alone, once per model (not per flow or per call): the node
    states each layer's flows read, and the normalised node texts of the similarity term. `kg_embeddings` is one
    text table [M, Dt] or a stack [T, M, Dt] (e.g. the description slots), giving arrays with that leading T."""
    if not config.factored:
        raise ValueError("the dense formulation needs the factored GNN (gnn.model.factored=True)")
    b = _Bound(config, params)
    tables = jnp.asarray(kg_embeddings, jnp.float32)

    def one(table):
        return _graph_side(b.text_in(table), jnp.asarray(structure.node_level), jnp.asarray(structure.senders),
                           jnp.asarray(structure.receivers), jnp.asarray(structure.edge_type), b.level, b.norm_in,
                           b.layers, True)

    states = one(tables) if tables.ndim == 2 else [jnp.stack(x) for x in zip(*[one(t) for t in tables])]
    return {"states": states, "text_normalized": _normalize(tables)}


def dense_scores(config: GnnConfig, params: Any, flows: jnp.ndarray, constants: dict, structure: "DenseStructure"
                 ) -> tuple[jnp.ndarray, list, jnp.ndarray]:
    """The factored GNN's node scores for a batch of flows [G, Dp] as dense arrays, without per-flow graphs: the
    same parameters and arithmetic as `HierarchicalGNN` with `factored=True` on `graphs.build_batch` graphs
    (tested). `constants`: `graph_constants` (one table, or a stack of T). Returns score [(T,) G, M] (the logit
    among siblings, prior and similarity included), each layer's attention [(T,) G, M, heads] and the final
    queries."""
    b = _Bound(config, params)
    flow_raw, extra = split_flow_input(jnp.asarray(flows, jnp.float32), b.flow_features)
    flow_h = b.flow_in(flow_raw)
    if extra is not None:
        flow_h = flow_h + b.features_in(extra)
    per_flow, flow_query, alphas = _flow_side(flow_h, constants["states"], b.level, b.norm_in,
                                              b.layers, b.score_query, b.score_key, True)
    score = per_flow + jnp.asarray(structure.prior)
    if b.similarity_scale is not None and flow_raw.shape[-1] == constants["text_normalized"].shape[-1]:
        score = score + b.similarity_scale * jnp.einsum("gd,...md->...gm", _normalize(flow_raw),
                                                        constants["text_normalized"])
    return score, alphas, flow_query


def dense_hierarchy(score: jnp.ndarray, structure: DenseStructure) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Node scores [G, M] → (log P(node | parent), log P(node)) [G, M], as the module's `cond_logp` and `logp`: a
    log-softmax within each group of siblings (Q groups, one per parent, as a constant one-hot [M, Q]: a masked
    max over [G, Q, M], then the sums as one matmul), then the chain rule down the two levels below the root (0
    for the root)."""
    parent = structure.node_parent
    has_parent = parent >= 0
    parents = np.unique(parent[has_parent])
    group = np.searchsorted(parents, np.maximum(parent, parents[0] if len(parents) else 0))   # [M]
    member = (has_parent[:, None] & (group[:, None] == np.arange(len(parents))[None, :])).astype(np.float32)
    top = jnp.max(jnp.where(jnp.asarray(member.T > 0)[None], score[:, None, :], -1e30), axis=-1)   # [G, Q]
    top = jax.lax.stop_gradient(top)
    shifted = jnp.exp(score - top[:, group]) * jnp.asarray(has_parent, jnp.float32)            # [G, M]
    lse = jnp.log(shifted @ jnp.asarray(member)) + top                                          # [G, Q]
    cond = jnp.where(jnp.asarray(has_parent)[None], score - lse[:, group], 0.0)
    parent_index = np.maximum(parent, 0)
    logp = cond
    for _ in range(2):  # the chain rule down the two levels below the root
        logp = cond + jnp.where(jnp.asarray(has_parent)[None], logp[:, parent_index], 0.0)
    return cond, logp


def dense_forward(config: GnnConfig, params: Any, flows: jnp.ndarray, kg_embeddings: jnp.ndarray,
                  structure: DenseStructure) -> dict[str, Any]:
    """`graph_constants`, `dense_scores` and `dense_hierarchy` for one text table: `score`, `cond_logp`, `logp`
    [G, M] (per KG node, as the module's per-node outputs), `attention` (per layer [G, M, heads]), `flow_query`
    [G, H], and per level `logp1` [G, C1], `logp2`, `cond2` [G, C2] (as `per_level_outputs`)."""
    constants = graph_constants(config, params, kg_embeddings, structure)
    score, alphas, flow_query = dense_scores(config, params, flows, constants, structure)
    cond, logp = dense_hierarchy(score, structure)
    l1, l2 = structure.level_nodes
    return {"score": score, "cond_logp": cond, "logp": logp, "attention": tuple(alphas), "flow_query": flow_query,
            "logp1": logp[:, l1], "logp2": logp[:, l2], "cond2": cond[:, l2]}


def _level_gather(per_node, flow_index, level_nodes):
    """[N] per-node values → [G, C] for the classes of one level (node = flow + 1 + KG index)."""
    return per_node[flow_index[:, None] + 1 + jnp.asarray(level_nodes)[None, :]]


def per_level_outputs(outputs: dict, layout: KGLayout) -> dict[str, jnp.ndarray]:
    """Dense per-level arrays from the per-node outputs: `logp1` [G, C1] (log P(class)), `logp2` [G, C2]
    (log P(app) = log P(class) + log P(app | class)), `cond2` [G, C2] (log P(app | class))."""
    fi = outputs["flow_index"]
    return {"logp1": _level_gather(outputs["logp"], fi, layout.level_nodes[1]),
            "logp2": _level_gather(outputs["logp"], fi, layout.level_nodes[2]),
            "cond2": _level_gather(outputs["cond_logp"], fi, layout.level_nodes[2])}


def graph_mask(graphs: jraph.GraphsTuple) -> jnp.ndarray:
    """True for real graphs, False for the padding graphs added by `jraph.pad_with_graphs`."""
    return jraph.get_graph_padding_mask(graphs)


def gnn_loss(outputs: dict, graphs: jraph.GraphsTuple, layout: KGLayout,
             level_weights: tuple[float, float] = (1.0, 1.0)) -> tuple[jnp.ndarray, dict[str, jnp.ndarray]]:
    """Per-level cross-entropy, padding graphs and unknown labels masked out.

    Level 1: -log P(class). Level 2: -log P(app | class) on flows whose app is known. Returns (weighted total,
    metrics) where metrics holds `loss_level1`, `loss_level2`, `accuracy_level1`, `accuracy_level2` (top-down
    decision) and the counts `count_level1`, `count_level2` used as weights (sums, so they can be combined across
    batches and devices).
    """
    lv = per_level_outputs(outputs, layout)
    real = graph_mask(graphs)
    y1, y2 = graphs.globals["level1"], graphs.globals["level2"]
    m1 = real & (y1 >= 0)
    m2 = real & (y2 >= 0)
    nll1 = -jnp.take_along_axis(lv["logp1"], jnp.maximum(y1, 0)[:, None], 1)[:, 0]
    nll2 = -jnp.take_along_axis(lv["cond2"], jnp.maximum(y2, 0)[:, None], 1)[:, 0] if lv["cond2"].shape[1] else \
        jnp.zeros_like(nll1)
    c1, c2 = m1.sum(), m2.sum()
    loss1 = jnp.where(m1, nll1, 0.0).sum() / jnp.maximum(c1, 1)
    loss2 = jnp.where(m2, nll2, 0.0).sum() / jnp.maximum(c2, 1)
    pred1, pred2 = top_down_decisions(lv, layout)
    metrics = {"loss_level1": loss1, "loss_level2": loss2,
               "accuracy_level1": jnp.where(m1, pred1 == y1, False).sum() / jnp.maximum(c1, 1),
               "accuracy_level2": jnp.where(m2, pred2 == y2, False).sum() / jnp.maximum(c2, 1),
               "count_level1": c1, "count_level2": c2}
    total = level_weights[0] * loss1 + level_weights[1] * loss2
    metrics["loss"] = total
    return total, metrics


def top_down_decisions(lv: dict, layout: KGLayout) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Level-1 argmax, then the level-2 argmax among that class's children (-1 when it has none)."""
    pred1 = jnp.argmax(lv["logp1"], axis=-1)
    if lv["cond2"].shape[1] == 0:
        return pred1, jnp.full_like(pred1, -1)
    allowed = jnp.asarray(layout.level2_parent_slot)[None, :] == pred1[:, None]
    masked = jnp.where(allowed, lv["cond2"], -jnp.inf)
    pred2 = jnp.where(allowed.any(-1), jnp.argmax(masked, axis=-1), -1)
    return pred1, pred2


def predict(model: HierarchicalGNN, params: Any, graphs: jraph.GraphsTuple, kg_embeddings: jnp.ndarray,
            layout: KGLayout) -> dict[str, jnp.ndarray]:
    """Per-level probabilities consistent across levels, and top-down decisions.

    Returns `prob1` [G, C1] = P(class), `prob2` [G, C2] = P(class)·P(app | class) (so prob2 ≤ prob1 of its parent,
    and a class's apps sum to the class), `cond2` [G, C2] = P(app | class), `pred1` [G], `pred2` [G] (-1 = none),
    `mask` [G] (real graphs), plus the raw per-node `outputs` for explanations. Wrap in `jax.jit` with the model and
    layout bound (e.g. `functools.partial`); it compiles once per padding budget.
    """
    outputs = model.apply({"params": params}, graphs, kg_embeddings, deterministic=True)
    lv = per_level_outputs(outputs, layout)
    pred1, pred2 = top_down_decisions(lv, layout)
    return {"prob1": jnp.exp(lv["logp1"]), "prob2": jnp.exp(lv["logp2"]), "cond2": jnp.exp(lv["cond2"]),
            "pred1": pred1, "pred2": pred2, "mask": graph_mask(graphs), "outputs": outputs}


def init_params(config: GnnConfig, rng: jax.Array, sample_graphs: jraph.GraphsTuple,
                kg_embeddings: jnp.ndarray) -> Any:
    """Initial parameters for the shapes of `sample_graphs` (any padded batch) and the KG table."""
    # Jitted: eager init would compile every small op separately (seconds on CPU).
    return jax.jit(HierarchicalGNN(config).init)(rng, sample_graphs, kg_embeddings)["params"]


def flops_per_flow(config: GnnConfig, params: Any, graphs: jraph.GraphsTuple, kg_embeddings: jnp.ndarray
                   ) -> float:
    """Inference FLOPs of the GNN per real flow, from XLA's cost analysis of the compiled forward pass on
    `graphs` (multiply-add = 2 FLOPs), divided by the number of real graphs in the batch. The text embeddings are
    inputs (cached), so the text tower costs nothing per flow; the GNN's projection of the KG table is counted and
    amortised over the batch."""
    model = HierarchicalGNN(config)
    def fn(p, gr, kg):
        return model.apply({"params": p}, gr, kg)["logp"]
    flops = runtime.compiled_flops(fn, params, graphs, kg_embeddings)
    real = int(np.asarray(jraph.get_graph_padding_mask(graphs)).sum())
    return flops / max(real, 1)
