"""The detection stage of the main job: the mission knowledge graph + hierarchical GNN on frozen towers.

Flow nodes get the projected packet embedding, KG nodes the projected text embedding of their descriptions (the
text head maps the frozen sentence features into the shared space), so flow–node similarity is meaningful from the
first GNN step and a node that exists only as text is scored zero-shot. Only the GNN is trained here.
"""
from __future__ import annotations

import pathlib
import sys

import jax.numpy as jnp
import numpy as np

from pclip_jax import metrics as metrics_lib
from pclip_jax.kg import schema, train_gnn
from pclip_jax.kg.missions import resolve_mission
from pclip_jax.text_features import cached_text_features

GNN_DIR = "gnn"


def kg_path(config) -> pathlib.Path:
    name = config.gnn.kg
    return pathlib.Path(name) if name.endswith((".yaml", ".yml")) else schema.shipped_kg_path(name)


def shared_space_encoder(model, params, featurizer, cache_dir):
    """texts → projected, normalised text embeddings in the shared space (frozen features cached on disk)."""
    from pclip_jax.models.two_towers import TwoTowers

    def encode(texts):
        feats = cached_text_features(featurizer, list(texts), cache_dir, progress=False)
        return np.asarray(model.apply({"params": params}, jnp.asarray(feats), method=TwoTowers.embed_text))

    return encode


def prepare_workdir_kg(config, model, params, featurizer, cache_dir, mission=None):
    kg = schema.load_kg(kg_path(config))
    mission = resolve_mission(kg, mission if mission is not None else (config.gnn.mission or None))
    encode = shared_space_encoder(model, params, featurizer, cache_dir)
    return train_gnn.prepare_kg(kg, encode, cache_dir=None, mission=mission)


def gnn_train_config(config) -> dict:
    g = config.gnn
    return {"model": dict(g.model), "batch_size": g.batch_size, "num_steps": g.num_steps,
            "learning_rate": g.learning_rate, "weight_decay": g.weight_decay, "warmup_steps": g.warmup_steps,
            "seed": config.train.seed, "log_every": g.log_every, "checkpoint_every": g.checkpoint_every}


def train_and_evaluate_gnn(config, workdir, prepared, model, params, featurizer, embeddings, cache_dir) -> dict:
    """Trains the GNN on the train flows' embeddings, evaluates it on the test flows of the evaluated classes."""
    workdir = pathlib.Path(workdir)
    pkg = prepare_workdir_kg(config, model, params, featurizer, cache_dir)
    meta = prepared.table.meta
    level1 = np.asarray(meta["level1"]).astype(str)
    level2 = np.asarray(meta["level2"]).astype(str)
    tr, te = prepared.train_idx, prepared.test_idx
    gcfg = gnn_train_config(config)
    gnn_params, _ = train_gnn.train_gnn(gcfg, embeddings["train"], level1[tr], level2[tr], pkg, workdir / GNN_DIR)
    # Evaluate on the same flows and classes as the linear probe (classes with enough training flows).
    keep = prepared.class_ids[te] >= 0
    block = train_gnn.evaluate_gnn(gcfg, gnn_params, embeddings["test"][keep], level1[te][keep],
                                   level2[te][keep], pkg, min_flows_level2=config.gnn.min_flows_level2)
    probs = train_gnn.predict_arrays(gcfg, gnn_params, embeddings["test"][keep], pkg)["prob1"]
    names1 = pkg.layout.class_names(1)
    y1 = np.array([names1.index(x) if x in names1 else -1 for x in level1[te][keep]])
    ok = y1 >= 0
    metrics_lib.plot_roc(y1[ok], probs[ok], names1, workdir / "roc_gnn_level1.png",
                         "hierarchical GNN, level 1 (capture-disjoint test)")
    print(metrics_lib.format_table([("GNN level 1 (test)", block["level1"]),
                                    ("GNN level 2 (test)", block["level2"])]), file=sys.stderr)
    return block
