"""A mission knowledge graph built from the labels when no graph covers them (`gnn.kg = ''`).

mission → level-1 classes → level-2 leaves (where the labels have a second level), each with plain-language
descriptions generated from its name and from facts of its *training* flows only (transport, packets and bytes per
flow, duration, the most common server names): test flows never shape the text. The main job writes the graph to
`WORKDIR/kg.yaml`; edit it (better descriptions, aliases, missions) and rerun with the same workdir to use the
edited graph. `python -m pclip_jax.kg.generate` drafts richer descriptions with an LLM when an endpoint is given.
"""
from __future__ import annotations

from collections import Counter
from typing import Sequence

import numpy as np

from pclip_jax.graph.schema import KnowledgeGraph, display_name, parse_kg

_TRANSPORT = {6: "TCP", 17: "UDP", 1: "ICMP", 58: "ICMPv6"}


def _facts(meta: dict, rows: np.ndarray) -> str:
    """One sentence of facts about a group of flows."""
    if not len(rows):
        return ""
    proto = Counter(_TRANSPORT.get(int(p), f"IP protocol {int(p)}") for p in np.asarray(meta["proto"])[rows])
    total = sum(proto.values())
    transports = " and ".join(f"{name} ({100 * n / total:.0f} %)" for name, n in proto.most_common(2))
    packets = np.asarray(meta["c2s_packets"])[rows] + np.asarray(meta["s2c_packets"])[rows]
    size = np.asarray(meta["c2s_bytes"])[rows] + np.asarray(meta["s2c_bytes"])[rows]
    duration = np.asarray(meta["last_ts"], np.float64)[rows] - np.asarray(meta["first_ts"], np.float64)[rows]
    up = float(np.sum(np.asarray(meta["c2s_bytes"])[rows])) / max(float(np.sum(size)), 1.0)
    text = (f"mostly {transports} flows of about {int(np.median(packets))} packets and {int(np.median(size))} bytes, "
            f"lasting {float(np.median(duration)):.1f} s, {100 * up:.0f} % of the bytes sent by the client")
    names = Counter(n for n in np.asarray(meta["server_name"]).astype(str)[rows] if n) if "server_name" in meta \
        else Counter()
    if names:
        text += "; server names such as " + ", ".join(n for n, _ in names.most_common(3))
    return text


def graph_from_labels(meta: dict, train_rows: Sequence[int], name: str = "labels",
                      statement: str = "") -> KnowledgeGraph:
    """The graph of the level1/level2 labels of `train_rows` (flows the model is fitted on)."""
    rows = np.asarray(train_rows, np.int64)
    level1 = np.asarray(meta["level1"]).astype(str)
    level2 = np.asarray(meta["level2"]).astype(str) if "level2" in meta else np.full(len(level1), "")
    classes = sorted(set(level1[rows].tolist()) - {""})
    if not classes:
        raise ValueError("no training flow has a level-1 label: cannot build a knowledge graph from the labels")
    root = f"{name}_mission"
    nodes = [{"id": root, "level": 0, "name": statement or f"Classify the traffic of {name}",
              "descriptions": [statement or f"Tell which of {len(classes)} classes each network flow of {name} "
                                            f"belongs to: {', '.join(display_name(c) for c in classes[:12])}"
                                            f"{' ...' if len(classes) > 12 else ''}."]}]
    for c in classes:
        mine = rows[level1[rows] == c]
        nodes.append({"id": c, "level": 1, "parent": root, "name": display_name(c),
                      "descriptions": [f"Network traffic of {display_name(c)}.",
                                       f"{display_name(c)}: {_facts(meta, mine)}."]})
    # A leaf id is unique in a graph: a level-2 label under several classes (nDPI's HTTP under Web and under
    # Streaming) is the leaf of the class with most of its training flows; its flows under the other classes keep
    # their level-1 class and have no level 2 (the GNN's rule for a leaf whose parent disagrees).
    pairs = Counter((level2[r], level1[r]) for r in rows if level2[r] and level1[r] and level2[r] not in classes)
    owner: dict = {}
    for (leaf, c), n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0])):
        owner.setdefault(leaf, c)
    for c in classes:
        mine = rows[level1[rows] == c]
        for leaf in sorted(leaf for leaf, parent in owner.items() if parent == c):
            leaf_rows = mine[level2[mine] == leaf]
            nodes.append({"id": leaf, "level": 2, "parent": c, "name": display_name(leaf),
                          "descriptions": [f"Network traffic of {display_name(leaf)}, a kind of {display_name(c)}.",
                                           f"{display_name(leaf)}: {_facts(meta, leaf_rows)}."]})
    return parse_kg({"name": name, "description": f"Built from the labels of {name} by pclip_jax "
                                                  "(pclip_jax/graph/from_labels.py); edit freely.",
                     "nodes": nodes}, source=f"graph built from the labels of {name}")
