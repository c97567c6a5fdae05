"""Training, inference and evaluation of the hierarchical GNN on frozen flow embeddings.

Data-parallel with the shared machinery: `jax.pmap` over the local devices (one device works too), gradients and
metrics summed over the `batch` axis so the loss equals the single-device loss on the whole step; checkpoints,
resume, NaN guard, logging and the validation-best parameters through the loop pre-training uses too
(`pclip_jax.training.loop`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from pclip_jax.plumbing import files, runtime
from pclip_jax.training import loop
from pclip_jax.plumbing.runtime import count_params
from pclip_jax.plumbing.settings import GnnTrainConfig  # the field list, shared with the settings' gnn
from pclip_jax.models import graph_tuples as kg_graphs
from pclip_jax.models.gnn import (GnnConfig, HierarchicalGNN, flops_per_flow, graph_mask, init_params,
                                  per_level_outputs, predict, top_down_decisions)
from pclip_jax.graph.missions import Mission, apply_mission
from pclip_jax.graph.schema import KnowledgeGraph
from pclip_jax.plumbing.metrics import by_application_novelty, classification_report, per_capture_accuracy

AXIS = "batch"
# Under the stage's directory (the workdir's `gnn/`): the last states, and the validation-best parameters.
CHECKPOINTS = "gnn_checkpoints"
BEST_CHECKPOINTS = "checkpoints_best"
SETTINGS_STAMP = "gnn_settings.json"   # what the checkpoints were trained with
# Options that change how a run logs or saves, not what it trains: a resume may change them.
_NOT_STAMPED = ("log_every", "checkpoint_every", "keep_checkpoints")


@dataclasses.dataclass(frozen=True, eq=False)
class PreparedKG:
    """A knowledge graph ready for the GNN: its layout, cached text embeddings and the mission's log-prior."""
    kg: KnowledgeGraph
    layout: kg_graphs.KGLayout
    text: dict            # from graphs.kg_text_embeddings: nodes [M, Dt], descriptions, description_mask
    prior: np.ndarray     # [M] log-prior per node (0 = neutral)
    mission: Mission | None = None

    @property
    def embeddings(self) -> np.ndarray:
        return self.text["nodes"]


def prepare_kg(kg: KnowledgeGraph, encode: Callable[[Sequence[str]], np.ndarray],
               cache_dir: str | pathlib.Path | None = None, encoder_name: str = "",
               mission: Mission | None = None) -> PreparedKG:
    """Applies `mission` (if any) and embeds the descriptions once (cached under `cache_dir`)."""
    prior = np.zeros(len(kg.nodes), np.float32)
    if mission is not None:
        kg, prior = apply_mission(kg, mission)
    text = kg_graphs.kg_text_embeddings(kg, encode, cache_dir, encoder_name)
    return PreparedKG(kg, kg_graphs.kg_layout(kg), text, prior, mission)


def _slots(prepared: PreparedKG, level1, level2) -> tuple[np.ndarray, np.ndarray]:
    level1 = np.asarray(level1)
    level2 = np.asarray(level2) if level2 is not None else None
    if level1.dtype.kind in "iu" and (level2 is None or level2.dtype.kind in "iu"):
        y2 = np.full(len(level1), -1, np.int32) if level2 is None else level2.astype(np.int32)
        return level1.astype(np.int32), y2
    y1, y2, unknown = kg_graphs.labels_to_slots(prepared.layout, [str(x) for x in level1],
                                                None if level2 is None else [str(x) for x in level2])
    if unknown["level1"] or unknown["level2"]:
        print(f"labels without a node in graph {prepared.kg.name!r} (left out of that level's loss): "
              f"level1 {unknown['level1']}, level2 {dict(list(unknown['level2'].items())[:10])}"
              f"{' ...' if len(unknown['level2']) > 10 else ''}", file=sys.stderr)
    return y1, y2


def _loss_terms(model, params, graphs, kg_emb, layout, class_weight, rng):
    """Per-device sums (not means) so the psum over devices gives the exact loss of the whole step."""
    out = model.apply({"params": params}, graphs, kg_emb, deterministic=rng is None,
                      rngs=None if rng is None else {"dropout": rng})
    lv = per_level_outputs(out, layout)
    real = graph_mask(graphs)
    y1, y2 = graphs.globals["level1"], graphs.globals["level2"]
    m1, m2 = real & (y1 >= 0), real & (y2 >= 0)
    nll1 = -jnp.take_along_axis(lv["logp1"], jnp.maximum(y1, 0)[:, None], 1)[:, 0]
    w1 = jnp.where(m1, class_weight[jnp.maximum(y1, 0)], 0.0)
    if lv["cond2"].shape[1]:
        nll2 = -jnp.take_along_axis(lv["cond2"], jnp.maximum(y2, 0)[:, None], 1)[:, 0]
    else:
        nll2 = jnp.zeros_like(nll1)
    pred1, pred2 = top_down_decisions(lv, layout)
    sums = {"nll1": (w1 * nll1).sum(), "w1": w1.sum(), "nll2": jnp.where(m2, nll2, 0.0).sum(),
            "count_level1": m1.sum().astype(jnp.float32), "count_level2": m2.sum().astype(jnp.float32),
            "correct1": jnp.where(m1, pred1 == y1, False).sum().astype(jnp.float32),
            "correct2": jnp.where(m2, pred2 == y2, False).sum().astype(jnp.float32)}
    return sums


def _make_train_step(model, layout, optimizer, level_weights):
    def step(state, graphs, kg_emb, class_weight, rng):
        rng = jax.random.fold_in(jax.random.fold_in(rng, state["step"]), jax.lax.axis_index(AXIS))

        def objective(params):
            s = _loss_terms(model, params, graphs, kg_emb, layout, class_weight, rng)
            tot = jax.lax.stop_gradient(jax.lax.psum({k: s[k] for k in ("w1", "count_level2")}, AXIS))
            loss = (level_weights[0] * s["nll1"] / jnp.maximum(tot["w1"], 1e-9)
                    + level_weights[1] * s["nll2"] / jnp.maximum(tot["count_level2"], 1.0))
            return loss, s

        (_, sums), grads = jax.value_and_grad(objective, has_aux=True)(state["params"])
        grads = jax.lax.psum(grads, AXIS)
        sums = jax.lax.psum(sums, AXIS)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        metrics = {"loss_level1": sums["nll1"] / jnp.maximum(sums["w1"], 1e-9),
                   "loss_level2": sums["nll2"] / jnp.maximum(sums["count_level2"], 1.0),
                   "accuracy_level1": sums["correct1"] / jnp.maximum(sums["count_level1"], 1.0),
                   "accuracy_level2": sums["correct2"] / jnp.maximum(sums["count_level2"], 1.0),
                   "grad_norm": optax.tree_utils.tree_norm(grads)}
        metrics["loss"] = level_weights[0] * metrics["loss_level1"] + level_weights[1] * metrics["loss_level2"]
        return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics
    return step


def train_gnn(config: Any, train_embeddings: np.ndarray, train_labels_level1, train_labels_level2,
              kg: PreparedKG, workdir: str | pathlib.Path, progress: bool = True,
              validate: Callable[[Any], float] | None = None, eval_every: int = 25,
              validation_level: int = 1) -> tuple[Any, list[dict]]:
    """Trains the GNN head on frozen flow embeddings through the shared loop (`pclip_jax.training.loop`); resumes from
    `workdir/gnn_checkpoints` when present.

    Args:
      config: `GnnTrainConfig` or a ConfigDict/mapping with its fields.
      train_embeddings: float [N, Dp] packet-tower embeddings.
      train_labels_level1 / train_labels_level2: class slots (int, -1 unknown) or label names (str, '' unknown,
        matched to nodes by id/name/alias).
      kg: `prepare_kg(...)` output.
      workdir: checkpoints (`gnn_checkpoints/`, the best in `checkpoints_best/`) and metrics (`metrics_gnn.jsonl`,
        TensorBoard) go here.
      validate: optional params → score on held-out captures (higher is better), computed on the untrained head
        and every `eval_every` steps; the best parameters are kept on disk (a resumed run remembers them) and
        returned (early stopping); `validation_level` names the level it scores in logs and metrics.
    Returns:
      (params, history): unreplicated parameters and the logged metrics (list of dicts with `step`).
    """
    cfg = GnnTrainConfig.from_config(config)
    emb = np.asarray(train_embeddings, np.float32)
    y1, y2 = _slots(kg, train_labels_level1, train_labels_level2)
    if len(emb) != len(y1):
        raise ValueError(f"{len(emb)} embeddings but {len(y1)} labels")
    if not (y1 >= 0).any():
        raise ValueError(f"no training flow has a level-1 label known to graph {kg.kg.name!r}")
    workdir = pathlib.Path(workdir)
    _start_over_if_settings_changed(workdir, cfg)
    n_dev = jax.local_device_count()
    per_device = max(1, math.ceil(cfg.batch_size / n_dev))
    layout = kg.layout
    model = HierarchicalGNN(cfg.model)

    counts = np.bincount(y1[y1 >= 0], minlength=len(layout.level_nodes[1])).astype(np.float32)
    class_weight = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1.0)), 0.0) if cfg.class_balanced \
        else np.ones_like(counts)
    class_weight = class_weight / max((class_weight * counts).sum() / max(counts.sum(), 1.0), 1e-9)

    sample = kg_graphs.build_batch(layout, emb[:1], budget=kg_graphs.padding_budget(layout, per_device),
                                   node_prior=kg.prior)
    params = init_params(cfg.model, jax.random.PRNGKey(cfg.seed), sample, kg.embeddings)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.learning_rate, max(1, cfg.warmup_steps),
                                                  max(cfg.num_steps, cfg.warmup_steps + 1), cfg.learning_rate * 0.05)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                            optax.adamw(schedule, weight_decay=cfg.weight_decay))
    state = {"params": params, "opt_state": jax.jit(optimizer.init)(params), "step": jnp.zeros((), jnp.int32)}

    p_step = runtime.pmap(_make_train_step(model, layout, optimizer, cfg.model.level_loss_weights), axis_name=AXIS,
                         donate_argnums=(0,))
    r_kg = runtime.replicate(jnp.asarray(kg.embeddings))
    r_cw = runtime.replicate(jnp.asarray(class_weight, jnp.float32))
    r_rng = runtime.replicate(jax.random.PRNGKey(cfg.seed + 1))
    labelled = np.flatnonzero(y1 >= 0)

    def batches_from(start: int):
        data_rng = np.random.default_rng(cfg.seed)

        def epochs():
            while True:
                yield from kg_graphs.device_batches(layout, emb[labelled], y1[labelled], y2[labelled], n_dev,
                                                    per_device, data_rng, kg.prior)

        it = epochs()
        for _ in range(start):  # skip the batches consumed before a resume: the resumed run sees the same ones
            next(it)
        return it

    spec = loop.LoopSpec(name="gnn", num_steps=cfg.num_steps, log_every=cfg.log_every,
                         checkpoint_every=cfg.checkpoint_every, keep_checkpoints=cfg.keep_checkpoints,
                         eval_every=eval_every, validate_initial=True,
                         validation_metric=f"validation_level{validation_level}_mauc",
                         validation_label=f"validation level-{validation_level} mAUC",
                         nan_hint=f"lower gnn.learning_rate (now {cfg.learning_rate}) or check the embeddings for NaN",
                         postfix=(("loss", "loss"), ("acc1", "accuracy_level1")))
    result = loop.run(spec, state, lambda s, graphs: p_step(s, graphs, r_kg, r_cw, r_rng), batches_from,
                      checkpoint_dir=workdir / CHECKPOINTS, metrics_dir=workdir, metrics_name="gnn",
                      params_of=lambda s: s["params"], validate=validate, best_dir=workdir / BEST_CHECKPOINTS,
                      progress=progress)
    return result.params, result.history


def _start_over_if_settings_changed(workdir: pathlib.Path, cfg: GnnTrainConfig) -> None:
    """Resume only checkpoints trained with these settings: GNN checkpoints without a stamp (older versions) or with
    other settings (e.g. `gnn.model.factored` changed, whose parameters have the same shapes) are moved to
    `previous-N/` and the GNN is trained again (minutes), rather than evaluated under settings they never had."""
    stamp = {k: v for k, v in json.loads(json.dumps(dataclasses.asdict(cfg))).items() if k not in _NOT_STAMPED}
    path = workdir / SETTINGS_STAMP
    old = [workdir / n for n in (CHECKPOINTS, BEST_CHECKPOINTS) if (workdir / n).exists()]
    if old and jax.process_index() == 0:
        stored = files.read_json(path) if path.is_file() else None
        if stored != stamp:
            n = 1
            while (workdir / f"previous-{n}").exists():
                n += 1
            aside = workdir / f"previous-{n}"
            aside.mkdir()
            for p in old + ([path] if path.is_file() else []):
                p.rename(aside / p.name)
            changed = "no settings stamp (an older version)" if stored is None else "other settings: " + ", ".join(
                sorted(k for k in stamp if stored.get(k) != stamp[k]))
            print(f"[gnn] {workdir}: checkpoints trained with {changed}; moved to {aside}, training the GNN again",
                  file=sys.stderr)
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        files.write_json(path, stamp)


def predict_arrays(config: Any, params: Any, embeddings: np.ndarray, kg: PreparedKG, batch_size: int = 256,
                   progress: bool = False) -> dict[str, np.ndarray]:
    """Predictions for many flows with one compiled function (fixed padding budget). Returns numpy `prob1`
    [N, C1], `prob2` [N, C2], `cond2`, `pred1`, `pred2` [N]."""
    cfg = GnnTrainConfig.from_config(config) if not isinstance(config, GnnConfig) else None
    model_cfg = config if isinstance(config, GnnConfig) else cfg.model
    model = HierarchicalGNN(model_cfg)
    fn = jax.jit(lambda p, g, t: {k: v for k, v in predict(model, p, g, t, kg.layout).items() if k != "outputs"})
    emb = np.asarray(embeddings, np.float32)
    budget = kg_graphs.padding_budget(kg.layout, batch_size)
    parts: dict[str, list] = {}
    t = jnp.asarray(kg.embeddings)
    for start in tqdm(range(0, len(emb), batch_size), desc="gnn predict", unit="batch", file=sys.stderr,
                      disable=not progress):
        chunk = emb[start:start + batch_size]
        out = jax.device_get(fn(params, kg_graphs.build_batch(kg.layout, chunk, budget=budget,
                                                              node_prior=kg.prior), t))
        for k in ("prob1", "prob2", "cond2", "pred1", "pred2"):
            parts.setdefault(k, []).append(np.asarray(out[k])[:len(chunk)])
    c1, c2 = len(kg.layout.level_nodes[1]), len(kg.layout.level_nodes[2])
    empty = {"prob1": (0, c1), "prob2": (0, c2), "cond2": (0, c2), "pred1": (0,), "pred2": (0,)}
    return {k: np.concatenate(parts[k]) if k in parts else np.zeros(empty[k]) for k in empty}


def evaluate_gnn(config: Any, params: Any, embeddings: np.ndarray, labels_level1, labels_level2,
                 kg: PreparedKG, min_flows_level2: int = 5, batch_size: int = 256, measure_flops: bool = True,
                 train_applications=None, captures=None) -> dict:
    """The `gnn` block of results.json: `trainable_params`, `flops_per_flow`, `level1`, `level2` (each with
    `mauc`, `accuracy`, `macro_f1`, `per_class_auc`, ...) and `hierarchical_accuracy` (both levels right, over
    flows whose app is known). `flops_per_flow` is measured on a batch of up to 64 of the flows (None when
    `measure_flops` is False). Level-2 AUCs are reported for applications with ≥ `min_flows_level2` test flows.
    With `train_applications`, level 1 also gets `by_application_novelty` (metrics.by_application_novelty); with
    `captures` (the flows' capture names), both levels get `per_capture` (majority vote per capture)."""
    cfg = GnnTrainConfig.from_config(config)
    y1, y2 = _slots(kg, labels_level1, labels_level2)
    pred = predict_arrays(cfg, params, embeddings, kg, batch_size)
    names1, names2 = kg.layout.class_names(1), kg.layout.class_names(2)
    k1 = y1 >= 0
    level1 = classification_report(y1[k1], pred["prob1"][k1], names1)
    if train_applications is not None:
        level1["by_application_novelty"] = by_application_novelty(
            y1[k1], pred["prob1"][k1], names1, np.asarray(labels_level2).astype(str)[k1], train_applications)
    k2 = y2 >= 0
    if k2.any():
        level2 = classification_report(y2[k2], pred["prob2"][k2], names2)
        level2["accuracy"] = float((pred["pred2"][k2] == y2[k2]).mean())  # top-down decision
    else:
        level2 = {"mauc": float("nan"), "accuracy": float("nan"), "macro_f1": float("nan"), "per_class_auc": {},
                  "support": {}, "num_flows": 0}
    enough = {n for n, c in level2["support"].items() if c >= min_flows_level2}
    level2["per_class_auc"] = {n: a for n, a in level2["per_class_auc"].items() if n in enough}
    level2["mauc"] = float(np.mean(list(level2["per_class_auc"].values()))) if level2["per_class_auc"] else \
        float("nan")
    level2["min_flows"] = min_flows_level2
    level1["accuracy_top_down"] = float((pred["pred1"][k1] == y1[k1]).mean()) if k1.any() else float("nan")
    if captures is not None:
        captures = np.asarray(captures).astype(str)
        if k1.any():
            level1["per_capture"] = per_capture_accuracy(y1[k1], pred["prob1"][k1], captures[k1], names1)
        if k2.any():
            level2["per_capture"] = per_capture_accuracy(y2[k2], pred["prob2"][k2], captures[k2], names2)
    hier = float(((pred["pred1"] == y1) & (pred["pred2"] == y2))[k2].mean()) if k2.any() else float("nan")
    return {"trainable_params": count_params(params),
            "flops_per_flow": gnn_flops_per_flow(cfg.model, params, kg, np.asarray(embeddings[:64], np.float32))
            if measure_flops else None,
            "level1": level1, "level2": level2, "hierarchical_accuracy": hier,
            "num_flows": int(len(y1)), "graph": kg.kg.name}


def gnn_flops_per_flow(model_config: GnnConfig, params: Any, kg: PreparedKG, embeddings: np.ndarray) -> float:
    """FLOPs per flow of the GNN forward pass, measured on a full batch of `len(embeddings)` flows."""
    emb = np.asarray(embeddings, np.float32)
    batch = kg_graphs.build_batch(kg.layout, emb, node_prior=kg.prior)
    return flops_per_flow(model_config, params, batch, jnp.asarray(kg.embeddings))
