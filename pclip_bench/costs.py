"""Parameters and FLOPs per flow of PacketCLIP's stages, from `jax.eval_shape` and the compiled programs (XLA's
cost analysis; a multiply-add = 2 FLOPs). Used by `benchmarks/flops_params.py` and the peer suite."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from pclip_jax.plumbing.runtime import compiled_flops, count_params

BATCH = 64

# Dense bf16 peak FLOP/s per chip, by device kind (float32 runs use the same peak: their MFU is a lower bound).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12,
              "TPU v5p": 459e12, "TPU v6 lite": 918e12}


def peak_flops(device) -> float | None:
    """The dense bf16 peak of `device` (a jax Device) where its kind is known, else None."""
    kind = getattr(device, "device_kind", "")
    return next((v for k, v in PEAK_FLOPS.items() if k.lower() in kind.lower()), None)


def packet_tower_cost(settings) -> dict:
    """{'params', 'flops_per_flow'} of the packet tower of `settings` (Settings)."""
    # only the cost that needs it loads it: callers of `peak_flops` (train_throughput) load no model
    from pclip_jax.training import towers
    from pclip_jax.models.packet_tower import PacketTower

    tower = PacketTower(towers.model_config(settings).packet)
    b = towers.dummy_batch(settings, BATCH)
    args = (b["bytes"], b["sizes"], b["iat"], b["tcp_flags"], b.get("name_vec"))
    shapes = jax.eval_shape(lambda: tower.init(jax.random.PRNGKey(0), *args))
    params = tower.init(jax.random.PRNGKey(0), *args)
    flops = compiled_flops(lambda p, *a: tower.apply(p, *a), params, *args) / BATCH
    return {"params": count_params(shapes), "flops_per_flow": flops}


def two_tower_heads_cost(settings) -> dict:
    # only the cost that needs it loads it: callers of `peak_flops` (train_throughput) load no model
    from pclip_jax.training import towers
    from pclip_jax.models.two_towers import TwoTowers

    model = TwoTowers(towers.model_config(settings))
    shapes = jax.eval_shape(lambda: towers.init_params(model, settings, jax.random.PRNGKey(0)))
    counts = towers.param_counts(shapes)
    return {"params": counts["trainable_total"], "projection_heads": counts["projection_heads"]}


def bert_cost(bert_config, seq_len: int) -> dict:
    # only the cost that needs it loads it: callers of `peak_flops` (train_throughput) load no model
    from pclip_jax.models.bert import BertEncoder

    model = BertEncoder(bert_config)
    ids = jnp.ones((1, seq_len), jnp.int32)
    mask = jnp.ones((1, seq_len), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), ids, mask))
    flops = compiled_flops(lambda p, i, m: model.apply(p, i, m), shapes, ids, mask)
    return {"params": count_params(shapes), "flops_per_input": flops, "seq_len": seq_len}


def gnn_cost(settings) -> dict:
    """{'params', 'flops_per_flow', 'kg', 'kg_nodes'} of the detection stage on the graph `gnn.kg`."""
    # only the cost that needs it loads it: callers of `peak_flops` (train_throughput) load no model
    from pclip_jax.models import graph_tuples as kg_graphs
    from pclip_jax.models.gnn import HierarchicalGNN, flops_per_flow
    from pclip_jax.training.detection import gnn_train_config, load_graph

    kg = load_graph(settings.gnn.kg)
    layout = kg_graphs.kg_layout(kg)
    gcfg = gnn_train_config(settings).model
    dim = settings.model.embed_dim
    # Shapes only: FLOPs and parameter counts do not depend on the embedding values.
    flows = np.zeros((BATCH, dim), np.float32)
    kg_emb = jnp.zeros((len(kg.nodes), dim), jnp.float32)
    graphs = kg_graphs.build_batch(layout, flows)
    model = HierarchicalGNN(gcfg)
    params = jax.jit(model.init)(jax.random.PRNGKey(0), graphs, kg_emb)["params"]
    return {"params": count_params(params), "flops_per_flow": flops_per_flow(gcfg, params, graphs, kg_emb),
            "kg": kg.name, "kg_nodes": len(kg.nodes)}


def peer_cost(name: str, size: str = "published", num_classes: int = 10) -> dict:
    """{'params', 'flops_per_flow'} of a peer (pclip_bench/peers/models.py) at `size`, from abstract shapes (nothing
    allocated): parameters of the classifier, FLOPs of its compiled forward pass on a batch of 8."""
    # only the cost that needs it loads it: callers of `peak_flops` (train_throughput) load no model
    from pclip_bench.peers import models as peer_models

    spec = peer_models.PEERS[name]
    module = spec.build(num_classes, size)
    n = 8
    tensors = {"bytes": np.zeros((n, 16, 320), np.uint8), "sizes": np.full((n, 16), 100, np.int32),
               "iat": np.zeros((n, 16), np.float32)}
    x = spec.features(tensors, np.arange(n))
    shapes = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), x))["params"]
    flops = compiled_flops(lambda p, xx: module.apply({"params": p}, xx), shapes, x) / n
    return {"params": count_params(shapes), "flops_per_flow": flops, "size": size}
