"""A small deployment packet tower distilled from a workdir's trained one, for classify on one core.

The student is the same packet tower with a smaller architecture (`DeploymentTower`: width, depth, heads, patch
size, byte embedding width), trained to put each training flow where the trained tower puts it in the shared space
and to make the workdir's GNN answer as it answers for the trained tower: the loss is 1 − cos(student embedding,
trained embedding) plus `match_predictions` × the KL divergence of the GNN's level-1 distribution given the
student's embedding from the one given the trained embedding (the GNN frozen; 0 = the cosine alone). Where the
cosine is high but not 1, the GNN can still move an answer; matching its output spends the student's capacity
where the answers change. Level 1 only: the level-2 term (up to hundreds of applications, many near zero) was
fitted on the training flows and not carried to validation (KL 2.3 there against 0.2 in training on the
quickstart's workdir). The step with the lowest loss on the validation flows is kept. Everything after the packet tower is the workdir's own: the text head, the
graph's text embeddings, the GNN, its calibration (the temperatures and thresholds were fitted on the trained
tower's embeddings; the report says how far the student moves the answers). No labels are used.

Written to WORKDIR/deployment/: `tower.json` (the student's `model` section and the report), `params.msgpack`
(its packet tower and packet head; flax serialization, no pickle). `restore.load_deployment_towers` reads it back;
`classify --deployment` and `export --deployment` use it. The report compares both towers on the test flows:
mean cosine to the trained embeddings, the GNN's level-1 mAUC / accuracy / macro-F1 with each, the agreement of
their level-1 answers, and the packet tower's parameters and FLOPs per flow.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Sequence

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from pclip_jax.data.batches import augment_flows
from pclip_jax.plumbing import files, runtime
from pclip_jax.plumbing.settings import AugmentSettings
from pclip_jax.plumbing.metrics import classification_report
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.models import graph_tuples as kg_graphs
from pclip_jax.models.gnn import HierarchicalGNN, predict as gnn_predict
from pclip_jax.models.graph_tuples import labels_to_slots
from pclip_jax.models.two_towers import TwoTowers
from pclip_jax.training import experiment, train_gnn
from pclip_jax.training.restore import (DEPLOYMENT_DIR, PARAMS_FILE, STUDENT_KEYS, TOWER_JSON, load_classifier,
                                        student_settings)
from pclip_jax.training.towers import build_model, embed_flows, init_params, make_embed_fn, tower_inputs



@dataclasses.dataclass(frozen=True)
class DeploymentTower:
    """The student's architecture (the `model` fields it changes) and how it is trained."""
    width: int = 64
    depth: int = 1
    heads: int = 2
    patch_size: int = 16
    byte_dim: int = 8
    steps: int = 4000
    batch_size: int = 256
    learning_rate: float = 3e-3
    eval_every: int = 100
    seed: int = 0
    match_predictions: float = 0.1   # weight of the GNN-output KL term (0: follow the embeddings only)
    augment: bool = True             # consistent views: teacher and student read the same augmented flows

    def augmentation(self, settings) -> AugmentSettings:
        """What `augment` draws per step: another round-trip time (IAT ×[1/2, 2]), 10 % of the bytes and of the
        non-first packets dropped; server names hidden as in the workdir's own pre-training."""
        return AugmentSettings(iat_scale=2.0, byte_dropout=0.1, packet_dropout=0.1,
                               name_dropout=settings.train.augment.name_dropout) if self.augment else None

    def architecture(self) -> dict:
        return {"width": self.width, "depth": self.depth, "heads": self.heads, "patch_size": self.patch_size,
                "byte_dim": self.byte_dim}


def tower_cost(model: TwoTowers, params, batch: dict) -> tuple[int, float]:
    """(parameters of the packet tower and head, FLOPs per flow of `embed_packets` on one flow)."""
    count = sum(runtime.count_params(params[k]) for k in STUDENT_KEYS)
    one = runtime.tree_map(lambda x: x[:1], batch)
    flops = runtime.compiled_flops(lambda p, b: model.apply({"params": p}, b, method=TwoTowers.embed_packets),
                                   params, one, on_cpu=True)
    return count, flops


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def gnn_distributions(clf, batch_size: int):
    """A jittable `z [B, D] -> (log P(level-1 class) [B, C1], log P(application) [B, C2])` through the workdir's
    frozen GNN, for batches of exactly `batch_size` flows (the graph batch is built once; only the flows'
    embeddings change), and the same for numpy arrays of any length (the teacher's targets)."""
    layout, kg = clf.kg.layout, clf.kg
    budget = kg_graphs.padding_budget(layout, batch_size)
    model = HierarchicalGNN(clf.gnn_config)
    kg_text = jnp.asarray(kg.embeddings)
    params = clf.gnn_params
    dim = clf.towers.settings.model.embed_dim
    # As device arrays: jraph indexes the graph's arrays with traced values, which numpy arrays refuse.
    template = runtime.tree_map(jnp.asarray, kg_graphs.build_batch(layout, np.zeros((batch_size, dim), np.float32),
                                                                   budget=budget, node_prior=kg.prior))

    def log_probs(z):
        flow = jnp.concatenate([z, jnp.zeros((budget.n_graph - batch_size, z.shape[1]), z.dtype)])
        graphs = template._replace(globals={**template.globals, "flow": flow})
        out = gnn_predict(model, params, graphs, kg_text, layout)
        tiny = 1e-7  # P(application) is a product of two softmaxes: exactly 0 for an app under an unlikely class
        return jnp.log(out["prob1"][:batch_size] + tiny), jnp.log(out["prob2"][:batch_size] + tiny)

    return log_probs


def _kl(logp_teacher, logp_student):
    """Mean KL(teacher || student) over flows."""
    return jnp.mean(jnp.sum(jnp.exp(logp_teacher) * (logp_teacher - logp_student), axis=-1))


def distill(workdir: str, tower: DeploymentTower = DeploymentTower(), progress: bool = True,
            extra_inputs: Sequence[str] = ()) -> dict:
    """Trains the deployment tower of a finished workdir (module docstring) and returns its report.
    `extra_inputs`: captures of other traffic (never the workdir's validation or test captures) whose flows join
    the training flows as more places where the student learns to follow the trained tower (no labels)."""
    t0 = time.perf_counter()
    wd = Workdir(workdir)
    clf = load_classifier(wd)
    settings, teacher = clf.settings, clf.towers
    prepared = experiment.workdir_flows(settings, wd)
    tensors = prepared.table.tensors  # with server-name vectors (experiment.prepare_experiment)
    teacher_embed = make_embed_fn(teacher.model)
    replicated = runtime.replicate(teacher.params)

    def teacher_z(rows):
        return embed_flows(teacher_embed, replicated, tensors, np.asarray(rows), settings.eval.batch_size)[1]

    train_rows, val_rows = np.asarray(prepared.train_idx), np.asarray(prepared.val_idx)
    test_rows = np.asarray(prepared.test_idx)
    if not len(val_rows):
        val_rows = train_rows  # no validation captures: the step that best follows the tower on training flows
    z_val, z_test = teacher_z(val_rows), teacher_z(test_rows)
    # The flows the student learns from: the training flows, and the extra inputs' flows.
    fit = {k: v[train_rows] for k, v in tensors.items()}
    if extra_inputs:
        more = experiment.flows_as_trained(extra_inputs, settings)[0].tensors
        fit = {k: np.concatenate([v, more[k]]) for k, v in fit.items()}
    fit_rows = np.arange(len(fit["sizes"]))

    s_settings = student_settings(settings, tower.architecture())
    s_model = build_model(s_settings)
    init = init_params(s_model, s_settings, jax.random.PRNGKey(tower.seed))
    params = {**teacher.params, **{k: init[k] for k in STUDENT_KEYS}}
    trainable = {k: params[k] for k in STUDENT_KEYS}
    # The rest of the towers, without a trainable text encoder (embed_packets never reads it; a jit constant of
    # 22 M parameters otherwise).
    frozen = {k: v for k, v in params.items() if k not in STUDENT_KEYS and k != "text_encoder"}
    schedule = optax.warmup_cosine_decay_schedule(0.0, tower.learning_rate, min(100, tower.steps // 10 + 1),
                                                  tower.steps)
    optimizer = optax.adamw(schedule, weight_decay=1e-4)
    opt_state = optimizer.init(trainable)

    def embed(trainable, batch):
        return s_model.apply({"params": {**frozen, **trainable}}, batch, method=TwoTowers.embed_packets)

    w = float(tower.match_predictions)
    log_probs = gnn_distributions(clf, tower.batch_size)
    log_probs_jit = jax.jit(log_probs)

    def level1_log_probs(z: np.ndarray) -> np.ndarray:
        """The GNN's level-1 log-distribution for embeddings `z` (any number of flows; padded to whole batches)."""
        n, b = len(z), tower.batch_size
        padded = np.concatenate([z, np.zeros((-n % b, z.shape[1]), z.dtype)]).astype(np.float32)
        parts = [np.asarray(log_probs_jit(jnp.asarray(padded[i:i + b]))[0]) for i in range(0, len(padded), b)]
        return np.concatenate(parts)[:n] if parts else np.zeros((0, 1), np.float32)

    teacher_params = {k: v for k, v in teacher.params.items() if k != "text_encoder"}

    def objective(z, target, teacher_logp1):
        """Per batch: mean (1 - cosine) and the level-1 GNN-output KL (0 when not matched)."""
        cos_loss = jnp.mean(1.0 - jnp.sum(z * target, axis=-1))
        if w == 0:
            return cos_loss, jnp.zeros(())
        return cos_loss, _kl(teacher_logp1, log_probs(z)[0])

    @jax.jit
    def step(trainable, opt_state, batch):
        # The teacher reads the very batch the student reads (augmented or not): its targets are computed here,
        # so an augmented view never meets a target made for another view.
        target = teacher.model.apply({"params": teacher_params}, batch, method=TwoTowers.embed_packets)
        teacher_logp1 = log_probs(target)[0] if w else None

        def loss_fn(p):
            cos_loss, kl = objective(embed(p, batch), target, teacher_logp1)
            return cos_loss + w * kl
        loss, grads = jax.value_and_grad(loss_fn)(trainable)
        updates, opt_state = optimizer.update(grads, opt_state, trainable)
        return optax.apply_updates(trainable, updates), opt_state, loss

    embed_jit = jax.jit(embed)

    def student_z(trainable, rows):
        out = []
        for i in range(0, len(rows), tower.batch_size):
            idx = rows[i:i + tower.batch_size]
            pad = tower.batch_size - len(idx)
            take = np.concatenate([idx, np.repeat(idx[:1], pad)]) if pad else idx
            out.append(np.asarray(embed_jit(trainable, tower_inputs(tensors, take)))[:len(idx)])
        return np.concatenate(out) if out else np.zeros((0, settings.model.embed_dim), np.float32)

    t_val = level1_log_probs(z_val)

    def validation_loss(z_student) -> tuple[float, float, float]:
        """(loss, mean cosine, KL) of the validation flows, as in training (the KL is measured, and reported, also
        where it is not trained)."""
        cos = float(_cosine(z_student, z_val).mean())
        kl = float((np.exp(t_val) * (t_val - level1_log_probs(z_student))).sum(1).mean())
        return 1.0 - cos + w * kl, cos, kl

    rng = np.random.default_rng(tower.seed)
    augment = tower.augmentation(settings)
    best = (np.inf, None, 0, None)
    history = []
    bar = tqdm(range(1, tower.steps + 1), desc="distilling the deployment tower", disable=not progress,
               file=sys.stderr)
    for i in bar:
        pick = rng.integers(0, len(fit_rows), tower.batch_size)
        batch = tower_inputs(fit, pick)
        if augment:
            batch = augment_flows(batch, rng, augment)
        trainable, opt_state, loss = step(trainable, opt_state, batch)
        if i % tower.eval_every == 0 or i == tower.steps:
            val_loss, val_cos, val_kl = validation_loss(student_z(trainable, val_rows))
            history.append({"step": i, "loss": float(loss), "validation_loss": val_loss, "validation_cosine": val_cos,
                            "validation_kl": val_kl})
            bar.set_postfix(loss=f"{float(loss):.4f}", val_cos=f"{val_cos:.4f}", val_kl=f"{val_kl:.4f}")
            if val_loss < best[0]:
                best = (val_loss, runtime.tree_map(np.asarray, trainable), i, (val_cos, val_kl))
    trainable = best[1]
    report = {"architecture": tower.architecture(), "training": dataclasses.asdict(tower),
              "extra_inputs": [str(p) for p in extra_inputs], "training_flows": int(len(train_rows)),
              "extra_flows": int(len(fit_rows) - len(train_rows)),
              "best_step": best[2], "validation_loss": best[0], "validation_cosine": best[3][0],
              "validation_kl": best[3][1], "history": history}
    report.update(compare_towers(clf, prepared, test_rows, z_test, student_z(trainable, test_rows)))
    if len(prepared.val_idx):  # the same on the validation captures: what a choice between variants may read
        report["validation"] = compare_towers(clf, prepared, val_rows, z_val, student_z(trainable, val_rows),
                                              "validation")
    batch = tower_inputs(tensors, train_rows[:1])
    teacher_count, teacher_flops = tower_cost(teacher.model, {k: v for k, v in teacher.params.items()
                                                              if k != "text_encoder"}, batch)
    student_count, student_flops = tower_cost(s_model, {**frozen, **trainable}, batch)
    report["packet_tower"] = {"trained": {"params": teacher_count, "flops_per_flow": teacher_flops},
                              "deployment": {"params": student_count, "flops_per_flow": student_flops},
                              "flops_ratio": teacher_flops / max(student_flops, 1.0)}
    report["seconds"] = time.perf_counter() - t0
    out = wd.path / DEPLOYMENT_DIR
    out.mkdir(exist_ok=True)
    with files.atomic_path(out / PARAMS_FILE) as tmp:
        tmp.write_bytes(flax.serialization.to_bytes(trainable))
    files.write_json(out / TOWER_JSON, {"model": tower.architecture(), "report": report})
    return report


def compare_towers(clf, prepared, rows, z_full: np.ndarray, z_small: np.ndarray, part: str = "test") -> dict:
    """Both towers' embeddings of the flows `rows` (the test or validation flows, `part`) through the workdir's
    GNN: mean cosine, level-1 mAUC / accuracy / macro-F1 on the flows the job evaluates (classes with enough
    training flows, as results.json), and the share of all those flows whose level-1 answer is the same."""
    out = {f"{part}_flows": int(len(z_full)),
           f"{part}_cosine": float(_cosine(z_small, z_full).mean()) if len(z_full) else None}
    if not len(z_full):
        return out
    meta = prepared.table.meta
    rows = np.asarray(rows)
    y1, _, _ = labels_to_slots(clf.kg.layout, list(np.asarray(meta["level1"]).astype(str)[rows]),
                               list(np.asarray(meta["level2"]).astype(str)[rows]))
    p_full = train_gnn.predict_arrays(clf.gnn_train_config, clf.gnn_params, z_full, clf.kg)["prob1"]
    p_small = train_gnn.predict_arrays(clf.gnn_train_config, clf.gnn_params, z_small, clf.kg)["prob1"]
    out["level1_agreement"] = float((p_full.argmax(1) == p_small.argmax(1)).mean())
    known = (y1 >= 0) & (prepared.class_ids[rows] >= 0)
    if known.any():
        names = clf.kg.layout.class_names(1)
        for tag, p in (("trained", p_full), ("deployment", p_small)):
            r = classification_report(y1[known], p[known], names)
            out[f"level1_{tag}"] = {k: r[k] for k in ("mauc", "accuracy", "macro_f1")}
        out["level1_mauc_drop"] = out["level1_trained"]["mauc"] - out["level1_deployment"]["mauc"]
        out["level1_macro_f1_drop"] = out["level1_trained"]["macro_f1"] - out["level1_deployment"]["macro_f1"]
    return out
