"""Explanations read off the GNN itself, as JSON-ready dicts and as text.

For each flow:
* `path`: the chosen node at each level (top-down decision) with P(node) and P(node | parent);
* `attention`: the attention the flow node gave to each node on that path (edges node → flow; softmax over all the
  flow's incoming edges), per layer, averaged over heads — the share of the flow's update that came from that node;
* `winning_description`: for each chosen node, the description that the model scores highest for this flow. The
  GNN is run once per description slot with every node's text embedding replaced by that description's embedding,
  and the node's score for the flow is compared across its descriptions (so the choice is the model's, not a
  separate similarity);
* `alternatives`: the next most likely classes (and applications) with their probabilities;
* `flow_facts`: the templated facts of the flow that the text side saw, when the caller passes them.

Two steps, so a runtime without JAX explains the same way: `detection_arrays` runs the GNN (JAX) and returns plain
arrays (`ARRAY_KEYS`); the ONNX detection model returns the same arrays; `explanations` turns them into the dicts
with numpy only, from an `ExplainInfo` (the graph's names and descriptions, JSON-serialisable).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np

from pclip_jax.training.calibration import scale

# Per flow: prob1 [C1] = P(class), prob2 [C2] = P(app), cond2 [C2] = P(app | class), attention [L, M] (mean over
# heads of the flow's attention to each KG node per layer), slot_scores [S, M] (each node's score under each of its
# description slots).
ARRAY_KEYS = ("prob1", "prob2", "cond2", "attention", "slot_scores")
# The brief detection (`dense_detection(..., descriptions=False)`): no slot scores, so the GNN reads the graph
# once instead of once per description slot (a third of the work on the shipped graphs); explanations then have no
# winning description.
BRIEF_KEYS = ARRAY_KEYS[:-1]


@dataclasses.dataclass(frozen=True)
class ExplainInfo:
    """What explanations need besides the model's arrays: node ids, names and descriptions in KG order, the class
    slots of both levels and the parent slot of every level-2 slot."""
    graph: str
    mission: Optional[str]
    node_ids: tuple
    node_names: tuple
    descriptions: tuple          # per node, a tuple of its descriptions (slot order)
    level1: tuple                # KG index of each level-1 slot
    level2: tuple
    level2_parent_slot: tuple    # level-1 slot of each level-2 slot's parent
    root: int

    @classmethod
    def from_prepared(cls, prepared) -> "ExplainInfo":
        """From a `train_gnn.PreparedKG` (mission applied)."""
        kg, layout = prepared.kg, prepared.layout
        return cls(graph=kg.name, mission=prepared.mission.name if prepared.mission is not None else None,
                   node_ids=tuple(n.id for n in kg.nodes), node_names=tuple(n.name for n in kg.nodes),
                   descriptions=tuple(tuple(n.descriptions) for n in kg.nodes),
                   level1=tuple(int(i) for i in layout.level_nodes[1]),
                   level2=tuple(int(i) for i in layout.level_nodes[2]),
                   level2_parent_slot=tuple(int(i) for i in layout.level2_parent_slot),
                   root=int(kg.index(kg.root.id)))

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "ExplainInfo":
        return cls(**{**d, **{k: tuple(tuple(x) if isinstance(x, list) else x for x in d[k])
                              for k in ("node_ids", "node_names", "descriptions", "level1", "level2",
                                        "level2_parent_slot")}})


def top_down(prob1: np.ndarray, cond2: np.ndarray, level2_parent_slot: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The level-1 argmax, then the level-2 argmax among that class's children (-1 when it has none): the rule of
    `gnn.top_down_decisions`, in numpy."""
    pred1 = np.argmax(prob1, axis=-1)
    if cond2.shape[1] == 0:
        return pred1, np.full_like(pred1, -1)
    allowed = np.asarray(level2_parent_slot)[None, :] == pred1[:, None]
    pred2 = np.argmax(np.where(allowed, cond2, -np.inf), axis=-1)
    return pred1, np.where(allowed.any(-1), pred2, -1)


def explanations(arrays: dict, info: ExplainInfo, flow_facts: Sequence[str] | None = None, top_k: int = 3,
                 calibration: dict | None = None) -> list[dict]:
    """One explanation dict per flow (see the module docstring) from `detection_arrays`-style arrays. With
    `calibration` (WORKDIR/gnn/calibration.json) each level also gets `calibrated_probability`."""
    t1 = (calibration or {}).get("level1_temperature")
    t2 = (calibration or {}).get("level2_temperature")
    prob1, prob2, cond2 = (np.asarray(arrays[k], np.float64) for k in ("prob1", "prob2", "cond2"))
    attention = np.asarray(arrays["attention"])
    slot_scores = np.asarray(arrays["slot_scores"]) if "slot_scores" in arrays else None   # None: brief arrays
    n = len(prob1)
    if not n:
        return []
    pred1, pred2 = top_down(prob1, cond2, info.level2_parent_slot)
    cal1 = scale(prob1, t1) if t1 else None
    cal2 = scale(prob2, t2) if t2 and prob2.shape[1] else None
    names1 = [info.node_ids[m] for m in info.level1]
    names2 = [info.node_ids[m] for m in info.level2]
    rows = np.arange(n)
    has2 = pred2 >= 0
    k2c = np.maximum(pred2, 0)  # clipped for gathers; rows without a level-2 choice are not read
    # Everything per flow is gathered for all flows at once and turned into Python values in one call each.
    node1 = np.asarray(info.level1)[pred1]
    node2 = np.asarray(info.level2)[k2c] if prob2.shape[1] else np.zeros(n, np.int64)
    p1_chosen = prob1[rows, pred1].tolist()
    p2_chosen = prob2[rows, k2c].tolist() if prob2.shape[1] else [0.0] * n
    c2_chosen = cond2[rows, k2c].tolist() if prob2.shape[1] else [0.0] * n
    cal1_chosen = cal1[rows, pred1].tolist() if cal1 is not None else None
    cal2_chosen = cal2[rows, k2c].tolist() if cal2 is not None else None
    att1 = attention[rows, :, node1].tolist()
    att2 = attention[rows, :, node2].tolist()
    att_root = attention[:, :, info.root].tolist()
    scores1 = slot_scores[rows, :, node1].tolist() if slot_scores is not None else [None] * n
    scores2 = slot_scores[rows, :, node2].tolist() if slot_scores is not None else [None] * n
    alt1_idx = np.argsort(-prob1, axis=1)[:, :top_k + 1]
    alt1_p = np.take_along_axis(prob1, alt1_idx, 1).tolist()
    alt1_idx = alt1_idx.tolist()
    if prob2.shape[1]:
        alt2_idx = np.argsort(-prob2, axis=1)[:, :top_k + 1]
        alt2_p = np.take_along_axis(prob2, alt2_idx, 1).tolist()
        alt2_idx = alt2_idx.tolist()

    def step(level, m, prob, cond, att, scores):
        descriptions = info.descriptions[m]
        if scores is None:  # brief: the descriptions were not scored
            winning, by_description = None, None
        else:
            scores = scores[:len(descriptions)]
            winning = descriptions[scores.index(max(scores))] if len(descriptions) else None
            by_description = dict(zip(descriptions, scores))
        return {
            "level": level, "id": info.node_ids[m], "name": info.node_names[m], "probability": prob,
            "conditional_probability": cond,
            "attention": att,
            "winning_description": winning,
            "description_scores": by_description,
        }

    out: list[dict] = []
    for i, (k1, k2, m1, m2, ok2) in enumerate(zip(pred1.tolist(), pred2.tolist(), node1.tolist(), node2.tolist(),
                                                  has2.tolist())):
        path = [step(1, m1, p1_chosen[i], p1_chosen[i], att1[i], scores1[i])]
        if ok2:
            path.append(step(2, m2, p2_chosen[i], c2_chosen[i], att2[i], scores2[i]))
        alt1 = [{"id": names1[j], "probability": p} for j, p in zip(alt1_idx[i], alt1_p[i]) if j != k1]
        alt2 = [{"id": names2[j], "probability": p} for j, p in zip(alt2_idx[i], alt2_p[i])
                if j != k2] if prob2.shape[1] else []
        out.append({
            "graph": info.graph,
            "mission": info.mission,
            "level1": {"id": names1[k1], "probability": p1_chosen[i],
                       **({"calibrated_probability": cal1_chosen[i]} if cal1 is not None else {})},
            "level2": {"id": names2[k2], "probability": p2_chosen[i], "conditional_probability": c2_chosen[i],
                       **({"calibrated_probability": cal2_chosen[i]} if cal2 is not None else {})}
            if ok2 else None,
            "path": path,
            "mission_attention": att_root[i],
            "alternatives": {"level1": alt1[:top_k], "level2": alt2[:top_k]},
            "flow_facts": None if flow_facts is None else flow_facts[i],
        })
    return out


def slot_tables(prepared) -> np.ndarray:
    """[S, M, Dt]: the KG text table with every node's text replaced by its d-th description (a node with fewer
    descriptions repeats its first one in the empty slots; `explanations` reads only its real ones)."""
    desc, mask = prepared.text["descriptions"], prepared.text["description_mask"]
    return np.stack([np.where(mask[:, d:d + 1], desc[:, d], desc[:, 0]) for d in range(desc.shape[1])])


def dense_detection(model_config, params, prepared, descriptions: bool = True):
    """A pure function of the flow embeddings [G, Dp] → the `ARRAY_KEYS` arrays as [G, ...] (attention [G, L, M],
    slot_scores [G, S, M]), for the factored GNN, with its parameters, the graph and the mission as constants: what
    `detection_fn` compiles and `pclip_jax.serving.export` converts to ONNX. `descriptions=False`: the
    `BRIEF_KEYS` arrays only (the node table alone, no description slots)."""
    import jax
    import jax.numpy as jnp

    # JAX/jraph only for the jax backend (the onnx path imports this module)
    from pclip_jax.models import gnn as gnn_lib

    # The graph side is computed here, once per model, for the node table and every description slot's table
    # (one stack): the returned function holds it as constants and computes only what depends on the flows.
    tables = np.asarray(prepared.embeddings)[None]
    if descriptions:
        tables = np.concatenate([tables, slot_tables(prepared)])
    structure = gnn_lib.dense_structure(prepared.layout, prepared.prior)
    constants = jax.tree.map(np.asarray, jax.jit(
        lambda t: gnn_lib.graph_constants(model_config, params, t, structure))(jnp.asarray(tables)))
    l1, l2 = structure.level_nodes

    def run(z):
        scores, alphas, _ = gnn_lib.dense_scores(model_config, params, z, constants, structure)   # [T, G, M]
        cond, logp = gnn_lib.dense_hierarchy(scores[0], structure)
        out = {"prob1": jnp.exp(logp[:, l1]), "prob2": jnp.exp(logp[:, l2]), "cond2": jnp.exp(cond[:, l2]),
               "attention": jnp.stack([a[0].mean(-1) for a in alphas], axis=1)}
        if descriptions:
            out["slot_scores"] = jnp.swapaxes(scores[1:], 0, 1)
        return out

    return run


def detection_fn(model_config, params, prepared, descriptions: bool = True):
    """A compiled function: flow embeddings [G, Dp] (numpy) → the `ARRAY_KEYS` arrays (numpy, [G, ...]; without
    `descriptions` the `BRIEF_KEYS` ones). The factored GNN runs densely (`dense_detection`, no per-flow graphs);
    the per-flow formulation builds its graphs with a padding budget of the call's size."""
    import jax
    import jax.numpy as jnp

    # JAX/jraph only for the jax backend (the onnx path imports this module)
    from pclip_jax.models import gnn as gnn_lib

    if model_config.factored:
        compiled = jax.jit(dense_detection(model_config, params, prepared, descriptions))
        return lambda z: jax.device_get(compiled(jnp.asarray(z, jnp.float32)))

    # JAX/jraph only for the jax backend (the onnx path imports this module)
    from pclip_jax.models import graph_tuples as kg_graphs

    layout = prepared.layout
    table, slots = jnp.asarray(prepared.embeddings), jnp.asarray(slot_tables(prepared))
    model = gnn_lib.HierarchicalGNN(model_config)
    pred_fn = jax.jit(lambda p, g, t: gnn_lib.predict(model, p, g, t, layout))
    per, m, e_per = layout.nodes_per_graph, layout.num_kg_nodes, layout.edges_per_graph

    def run_graphs(z):
        b = len(z)
        graphs = kg_graphs.build_batch(layout, z, budget=kg_graphs.padding_budget(layout, b),
                                       node_prior=prepared.prior)
        res = jax.device_get(pred_fn(params, graphs, table))
        nodes = np.arange(b)[:, None] * per + 1 + np.arange(m)[None, :]                 # [b, M]
        edges = np.arange(b)[:, None] * e_per + layout.node_to_flow_edge[None, :]      # [b, M]
        out = {"prob1": res["prob1"][:b], "prob2": res["prob2"][:b], "cond2": res["cond2"][:b],
               "attention": np.stack([np.asarray(a).mean(-1)[edges] for a in res["outputs"]["attention"]], axis=1)}
        if descriptions:
            out["slot_scores"] = np.stack([np.asarray(pred_fn(params, graphs, slots[d])["outputs"]["score"])[nodes]
                                           for d in range(slots.shape[0])], axis=1)
        return out

    return run_graphs


def detection_arrays(model_config, params, prepared, flow_embeddings: np.ndarray, batch_size: int = 64,
                     fn=None) -> dict:
    """`ARRAY_KEYS` arrays for all flows, in fixed-size padded batches (one compilation); `fn` from
    `detection_fn` to reuse a compiled one (its keys: `BRIEF_KEYS` for a brief one)."""
    fn = fn or detection_fn(model_config, params, prepared)
    emb = np.asarray(flow_embeddings, np.float32)
    parts = []
    for start in range(0, len(emb), batch_size):
        chunk = emb[start:start + batch_size]
        pad = batch_size - len(chunk)
        padded = np.concatenate([chunk, np.repeat(chunk[:1], pad, axis=0)]) if pad else chunk
        parts.append({k: np.asarray(v)[:len(chunk)] for k, v in fn(padded).items()})
    if not parts:
        return {k: np.zeros((0,)) for k in ARRAY_KEYS}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def explain_flows(model_config, params: Any, prepared, flow_embeddings: np.ndarray,
                  flow_facts: Sequence[str] | None = None, top_k: int = 3, batch_size: int = 64,
                  calibration: dict | None = None) -> list[dict]:
    """One explanation dict per flow (see the module docstring). `prepared` is `train_gnn.prepare_kg(...)`.
    With `calibration` (WORKDIR/gnn/calibration.json) each level also gets `calibrated_probability`."""
    arrays = detection_arrays(model_config, params, prepared, flow_embeddings, batch_size)
    return explanations(arrays, ExplainInfo.from_prepared(prepared), flow_facts, top_k, calibration)


def explanation_text(expl: dict) -> str:
    """A few readable lines for one explanation dict."""
    lines = []
    for step in expl["path"]:
        lvl = "class" if step["level"] == 1 else "application"
        att = ", ".join(f"{a:.2f}" for a in step["attention"])
        cond = "" if step["level"] == 1 else f" ({step['conditional_probability']:.2f} given the class)"
        lines.append(f"{lvl}: {step['name']} p={step['probability']:.2f}{cond}; flow attention per layer [{att}]")
        lines.append(f"  because: \"{step['winning_description']}\"")
    alts = ", ".join(f"{a['id']} {a['probability']:.2f}" for a in expl["alternatives"]["level1"])
    if alts:
        lines.append(f"alternatives: {alts}")
    if expl.get("flow_facts"):
        lines.append(f"flow facts: {expl['flow_facts']}")
    return "\n".join(lines)
