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
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pclip_jax.kg import graphs as kg_graphs
from pclip_jax.kg.gnn import GnnConfig, HierarchicalGNN, predict


def _forward_fn(model: HierarchicalGNN, layout: kg_graphs.KGLayout):
    # One compiled function serves both the prediction and the per-description scores (same shapes).
    return jax.jit(lambda p, g, t: predict(model, p, g, t, layout))


def explain_flows(model_config: GnnConfig, params: Any, prepared, flow_embeddings: np.ndarray,
                  flow_facts: Sequence[str] | None = None, top_k: int = 3, batch_size: int = 64,
                  calibration: dict | None = None) -> list[dict]:
    """One explanation dict per flow (see the module docstring). `prepared` is `train_gnn.prepare_kg(...)`.
    With `calibration` (WORKDIR/gnn/calibration.json) each level also gets `calibrated_probability`."""
    from pclip_jax.calibration import scale

    t1 = (calibration or {}).get("level1_temperature")
    t2 = (calibration or {}).get("level2_temperature")
    layout, kg = prepared.layout, prepared.kg
    model = HierarchicalGNN(model_config)
    pred_fn = _forward_fn(model, layout)
    emb = np.asarray(flow_embeddings, np.float32)
    table = jnp.asarray(prepared.embeddings)
    desc, desc_mask = prepared.text["descriptions"], prepared.text["description_mask"]
    per, budget = layout.nodes_per_graph, kg_graphs.padding_budget(layout, batch_size)
    names1, names2 = layout.class_names(1), layout.class_names(2)
    out: list[dict] = []
    for start in range(0, len(emb), batch_size):
        chunk = emb[start:start + batch_size]
        b = len(chunk)
        graphs = kg_graphs.build_batch(layout, chunk, budget=budget, node_prior=prepared.prior)
        res = jax.device_get(pred_fn(params, graphs, table))
        # Score of every node under each description slot: [slots, N]. A node with fewer descriptions repeats its
        # first one in the empty slots (masked out below).
        slot_scores = []
        for d in range(desc.shape[1]):
            t = np.where(desc_mask[:, d:d + 1], desc[:, d], desc[:, 0])
            slot_scores.append(np.asarray(pred_fn(params, graphs, jnp.asarray(t))["outputs"]["score"]))
        slot_scores = np.stack(slot_scores)
        attn = [np.asarray(a).mean(-1) for a in res["outputs"]["attention"]]   # per layer [E]
        e_per = layout.edges_per_graph
        for i in range(b):
            p1, p2, c2 = res["prob1"][i], res["prob2"][i], res["cond2"][i]
            k1, k2 = int(res["pred1"][i]), int(res["pred2"][i])
            chosen = [(1, layout.level_nodes[1][k1], float(p1[k1]), float(p1[k1]))]
            if k2 >= 0:
                chosen.append((2, layout.level_nodes[2][k2], float(p2[k2]), float(c2[k2])))
            path = []
            for level, m, prob, cond in chosen:
                node = kg.nodes[m]
                edge = i * e_per + layout.node_to_flow_edge[m]
                valid = np.flatnonzero(desc_mask[m])
                scores = slot_scores[valid, i * per + 1 + m]
                best = int(valid[np.argmax(scores)])
                path.append({
                    "level": level, "id": node.id, "name": node.name, "probability": prob,
                    "conditional_probability": cond,
                    "attention": [float(a[edge]) for a in attn],
                    "winning_description": node.descriptions[best],
                    "description_scores": {node.descriptions[int(v)]: float(s) for v, s in zip(valid, scores)},
                })
            alt1 = [{"id": names1[j], "probability": float(p1[j])} for j in np.argsort(-p1)[:top_k + 1] if j != k1]
            alt2 = [{"id": names2[j], "probability": float(p2[j])} for j in np.argsort(-p2)[:top_k + 1]
                    if j != k2] if len(p2) else []
            root_edge = i * e_per + layout.node_to_flow_edge[kg.index(kg.root.id)]
            out.append({
                "graph": kg.name,
                "mission": prepared.mission.name if prepared.mission is not None else None,
                "level1": {"id": names1[k1], "probability": float(p1[k1]),
                           **({"calibrated_probability": float(scale(p1[None], t1)[0, k1])} if t1 else {})},
                "level2": {"id": names2[k2], "probability": float(p2[k2]), "conditional_probability": float(c2[k2]),
                           **({"calibrated_probability": float(scale(p2[None], t2)[0, k2])} if t2 else {})}
                if k2 >= 0 else None,
                "path": path,
                "mission_attention": [float(a[root_edge]) for a in attn],
                "alternatives": {"level1": alt1[:top_k], "level2": alt2[:top_k]},
                "flow_facts": None if flow_facts is None else flow_facts[start + i],
            })
    return out


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
