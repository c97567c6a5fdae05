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
from pclip_jax import text as text_lib
from pclip_jax.kg import schema, train_gnn
from pclip_jax.kg.missions import resolve_mission
from pclip_jax.models.two_towers import TwoTowerConfig
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
    return blend_pretraining_prompts(train_gnn.prepare_kg(kg, encode, cache_dir=None, mission=mission), config,
                                     encode)


def blend_pretraining_prompts(pkg, config, encode):
    """With `gnn.node_prompts`: a node that names a class or application with pre-training phrasings
    (pclip_jax/data/class_descriptions.yaml) gets, as its text embedding, the normalised mean over its own
    descriptions *and* the zero-shot prompts the towers were aligned on, so the untrained GNN's similarity term
    starts from the zero-shot decision instead of from the graph's differently worded descriptions (in place;
    the per-description embeddings that explanations choose from are the graph's own)."""
    if not config.gnn.get("node_prompts", False):
        return pkg
    descriptions = text_lib.load_class_descriptions(config.text.get("descriptions") or None)
    nodes = pkg.text["nodes"] = np.array(pkg.text["nodes"], np.float32)
    desc, mask = pkg.text["descriptions"], pkg.text["description_mask"]
    chosen = [m for m, node in enumerate(pkg.kg.nodes)
              if node.level >= 1 and text_lib.has_phrasings(node.id, descriptions)]
    if not chosen:
        return pkg
    prompts = [text_lib.class_prompts(pkg.kg.nodes[m].id, descriptions) for m in chosen]
    emb = np.array(encode([t for p in prompts for t in p]), np.float32)  # one call: one batch pass, one cache file
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)
    start = 0
    for m, p in zip(chosen, prompts):
        mean = np.concatenate([desc[m][mask[m]], emb[start:start + len(p)]]).mean(0)
        nodes[m] = mean / max(float(np.linalg.norm(mean)), 1e-9)
        start += len(p)
    return pkg


def gnn_train_config(config, params=None) -> dict:
    """GnnTrainConfig fields from the experiment config; with the pre-trained `params`, the GNN's similarity
    term starts at the towers' learned temperature (the zero-shot logits)."""
    g = config.gnn
    model = dict(g.model)
    if params is not None and g.get("similarity_from_temperature", True):
        max_log_scale = TwoTowerConfig().max_log_scale
        model["similarity_init"] = float(np.exp(min(float(params["logit_scale"]), max_log_scale)))
    return {"model": model, "batch_size": g.batch_size, "num_steps": g.num_steps,
            "learning_rate": g.learning_rate, "weight_decay": g.weight_decay, "warmup_steps": g.warmup_steps,
            "seed": config.train.seed, "log_every": g.log_every, "checkpoint_every": g.checkpoint_every}


def gnn_validator(gcfg, pkg, prepared, level1, z_val):
    """GNN params → level-1 mAUC on the validation captures (early stopping), or None without them."""
    val = prepared.val_idx
    if z_val is None or not len(val):
        return None
    names1 = pkg.layout.class_names(1)
    y_val = np.array([names1.index(x) if x in names1 else -1 for x in level1[val]])
    known = (y_val >= 0) & (prepared.class_ids[val] >= 0)
    if len(np.unique(y_val[known])) < 2:
        return None

    def validate(gnn_params) -> float:
        prob1 = train_gnn.predict_arrays(gcfg, gnn_params, z_val[known], pkg)["prob1"]
        return metrics_lib.classification_report(y_val[known], prob1, names1)["mauc"]

    return validate


def train_and_evaluate_gnn(config, workdir, prepared, model, params, featurizer, embeddings, cache_dir) -> dict:
    """Trains the GNN on the train flows' embeddings, evaluates it on the test flows of the evaluated classes."""
    workdir = pathlib.Path(workdir)
    pkg = prepare_workdir_kg(config, model, params, featurizer, cache_dir)
    meta = prepared.table.meta
    level1 = np.asarray(meta["level1"]).astype(str)
    level2 = np.asarray(meta["level2"]).astype(str)
    te = prepared.test_idx
    fit_on = config.gnn.get("fit_on", "train")
    parts = {"train": (prepared.train_idx, embeddings.get("train")),
             "validation": (prepared.val_idx, embeddings.get("validation"))}
    chosen = [parts[name] for name in fit_on.split("+")]
    if any(z is None or len(i) == 0 for i, z in chosen):
        raise ValueError(f"gnn.fit_on={fit_on!r}: that split is empty (data.validation_fraction=0?)")
    tr = np.concatenate([i for i, _ in chosen])
    z_fit = np.concatenate([z for _, z in chosen])
    gcfg = gnn_train_config(config, params)
    validate = None
    if "validation" not in fit_on:
        validate = gnn_validator(gcfg, pkg, prepared, level1, embeddings.get("validation"))
    gnn_params, _ = train_gnn.train_gnn(gcfg, z_fit, level1[tr], level2[tr], pkg, workdir / GNN_DIR,
                                        validate=validate, eval_every=config.gnn.get("eval_every", 25))
    # Evaluate on the same flows and classes as the linear probe (classes with enough training flows).
    keep = prepared.class_ids[te] >= 0
    block = train_gnn.evaluate_gnn(gcfg, gnn_params, embeddings["test"][keep], level1[te][keep],
                                   level2[te][keep], pkg, min_flows_level2=config.gnn.min_flows_level2,
                                   train_applications=prepared.applications(prepared.train_idx))
    probs = train_gnn.predict_arrays(gcfg, gnn_params, embeddings["test"][keep], pkg)["prob1"]
    names1 = pkg.layout.class_names(1)
    y1 = np.array([names1.index(x) if x in names1 else -1 for x in level1[te][keep]])
    ok = y1 >= 0
    metrics_lib.plot_roc(y1[ok], probs[ok], names1, workdir / "roc_gnn_level1.png",
                         "hierarchical GNN, level 1 (capture-disjoint test)")
    print(metrics_lib.format_table([("GNN level 1 (test)", block["level1"]),
                                    ("GNN level 2 (test)", block["level2"])]
                                   + metrics_lib.novelty_rows("GNN level 1", block["level1"])), file=sys.stderr)
    return block


def load_gnn(workdir, config, pkg):
    """Parameters of the GNN head trained in `workdir` (newest checkpoint under `WORKDIR/gnn/gnn_checkpoints`).

    Only the parameters are read (the optimizer state is skipped); they are checked against the shapes the
    workdir's config gives for graph `pkg` (`prepare_workdir_kg(...)` output), so a checkpoint from another config
    is a clear error, not a silent mismatch.
    """
    import jax
    import orbax.checkpoint as ocp

    from pclip_jax import checkpointing
    from pclip_jax.kg import graphs as kg_graphs
    from pclip_jax.kg.gnn import HierarchicalGNN

    ckpt_dir = pathlib.Path(workdir) / GNN_DIR / "gnn_checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no GNN checkpoints; train the workdir with config.gnn.enabled=True")
    model_cfg = train_gnn.GnnTrainConfig.from_config(gnn_train_config(config)).model
    sample = kg_graphs.build_batch(pkg.layout, np.zeros((1, int(config.model.embed_dim)), np.float32),
                                   node_prior=pkg.prior)
    # Shapes only: no compilation of the init function.
    expected = jax.eval_shape(HierarchicalGNN(model_cfg).init, jax.random.PRNGKey(0), sample,
                              jnp.asarray(pkg.embeddings))["params"]
    mngr = checkpointing.manager(ckpt_dir, 1, 1)
    try:
        step = mngr.latest_step()
        if step is None:
            raise FileNotFoundError(f"{ckpt_dir}: no finished GNN checkpoint")
        restored = mngr.restore(step, args=ocp.args.StandardRestore())
    finally:
        mngr.close()
    params = restored.get("params") if isinstance(restored, dict) else None
    if params is None:
        raise ValueError(f"{ckpt_dir}/{step}: checkpoint has no 'params' entry")
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:5]
        raise ValueError(f"{ckpt_dir}/{step}: GNN parameters do not match the workdir's config "
                         f"(first differences: {[(k, got.get(k), want.get(k)) for k in diff]} as (checkpoint, "
                         f"expected))")
    return jax.tree.map(jnp.asarray, params)
