"""Contrastive pre-training of the packet tower against the text tower, data-parallel over all local devices.

`pretrain(settings, workdir, prepared, texts, model)` runs (or resumes) it through the shared training loop
(`pclip_jax.training.loop`): a pmapped step with a global contrastive loss (`pclip_jax.training.losses`),
batches that are a pure function of (seed, step), orbax checkpoints, and the validation-best parameters kept on
disk. The whole job is
`pclip_jax.job.train_and_evaluate`.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pclip_jax.plumbing import runtime
from pclip_jax.training import loop, losses
from pclip_jax.text import prompts as text_lib
from pclip_jax.data.batches import (BatchRecipe, StepBatches, augment_flows, batch_from_rows,  # noqa: F401
                                    sample_indices)
from pclip_jax.data.flow_source import FlowRows, TableRows
from pclip_jax.data.prepare import PreparedFlows
from pclip_jax.training.towers import (AXIS, class_text_features, embed_flows, init_params, load_descriptions,
                                       make_embed_fn, zero_shot_scores)
from pclip_jax.plumbing.metrics import classification_report
from pclip_jax.models.text_tower import load_text_encoder
from pclip_jax.models.two_towers import TwoTowers
from pclip_jax.data.flow_table import NAME_KEY
from pclip_jax.plumbing.settings import Settings
from pclip_jax.text.feature_cache import TextFeaturizer, cached_text_features
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.training.state import TrainState, create_state, make_optimizer  # noqa: F401  (tests use create_state)

def make_train_step(model: TwoTowers, settings: Settings):
    """The pre-training step, pmap-sharded over the local devices (`runtime.pmap`, axis `AXIS`)."""
    return runtime.pmap(train_step_fn(model, settings), axis_name=AXIS, donate_argnums=(0,))


def train_step_fn(model: TwoTowers, settings: Settings):
    """The pre-training step (state, batch, rng) → (state, metrics) before it is mapped over devices: it reduces
    over the axis `AXIS` (gradients, metrics, the global contrastive loss), bound by `make_train_step`'s pmap, or
    by `jax.vmap(..., axis_name=AXIS)` to compile it for one device (benchmarks/model_speed.py counts its FLOPs so)."""
    loss_name, multi_positive = settings.train.loss, settings.train.multi_positive
    _, schedule = make_optimizer(settings.train)

    def step_fn(state: TrainState, batch, rng):
        rng = jax.random.fold_in(jax.random.fold_in(rng, state.step), jax.lax.axis_index(AXIS))

        def loss_fn(params):
            if "input_ids" in batch:  # tuned text tower: encode the sampled texts in the step
                tokens = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
                zp, zt, scale, bias = model.apply({"params": params}, batch, tokens=tokens, deterministic=False,
                                                  rngs={"dropout": rng})
            else:
                zp, zt, scale, bias = model.apply({"params": params}, batch, text_features=batch["text"],
                                                  deterministic=False, rngs={"dropout": rng})
            if loss_name == "clip":
                return losses.clip_loss(zp, zt, batch["valid"], batch["class_id"], scale, AXIS, multi_positive)
            return losses.sigmoid_loss(zp, zt, batch["valid"], batch["class_id"], scale, bias, AXIS, multi_positive)

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, AXIS)
        metrics = jax.lax.pmean({**metrics, "loss": loss}, AXIS)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["temperature"] = jnp.exp(jnp.minimum(state.params["logit_scale"], model.config.max_log_scale))
        metrics["learning_rate"] = schedule(state.step)
        return state.apply_gradients(grads=grads), metrics

    return step_fn


# ----------------------------------------------------------------------------------------------- texts

@dataclasses.dataclass
class TrainTexts:
    features: np.ndarray       # [T, Dt] frozen text features of the distinct texts
    variants: np.ndarray       # [N_train, V] index into features
    texts: list[str]
    tokens: Optional[dict] = None  # [T, L] token ids and mask of the distinct texts (tuned text tower only)
    name_text: Optional[np.ndarray] = None  # [T] bool: the text is a server name's (`text.name_texts`)


def pretraining_flows(prepared: PreparedFlows, settings: Settings) -> tuple[PreparedFlows, Optional[np.ndarray]]:
    """(the flows pre-training runs on, the table rows whose labels it must not see or None).

    The prepared flows themselves, unless `data.unlabelled_pretraining` is on and `train_idx` is a `data.fraction`
    subset: then every training row of the split, those outside the fraction with class id -1 (sampled as one
    bucket of their own, positives of their own text only in the loss) and hidden from the texts (facts only)."""
    pool = prepared.train_pool_idx
    if not settings.data.unlabelled_pretraining or pool is None or len(pool) == len(prepared.train_idx):
        return prepared, None
    hidden = np.zeros(len(prepared.table), bool)
    hidden[pool] = True
    hidden[prepared.train_idx] = False
    class_ids = np.where(hidden, -1, prepared.class_ids).astype(prepared.class_ids.dtype)
    print(f"[data] pre-training on all {len(pool)} training flows, {int(hidden.sum())} of them with labels hidden "
          f"(data.unlabelled_pretraining); probe and GNN on the {len(prepared.train_idx)} of the fraction",
          file=sys.stderr)
    return dataclasses.replace(prepared, train_idx=np.asarray(pool), class_ids=class_ids), hidden


def build_train_texts(prepared: PreparedFlows, settings: Settings, featurizer: TextFeaturizer, cache_dir,
                      hidden: Optional[np.ndarray] = None) -> TrainTexts:
    """V text variants per training flow (class descriptions + flow facts, sampled), embedded once. A flow whose
    row is set in `hidden` (a table-length mask, `pretraining_flows`) gets its facts only: no label reaches it."""
    table = prepared.table
    descriptions = load_descriptions(settings.text, settings.gnn.kg)
    rng = np.random.default_rng(settings.train.seed)
    level = settings.data.label_level
    # A flow's names, general → specific: the evaluated level and its application / leaf; evaluated at level 2
    # (a device), the general name is its level-1 class (the device type).
    labels = np.asarray(table.meta["level1" if level == "level2" else level]).astype(str)
    apps = np.asarray(table.meta["level2"]).astype(str) if "level2" in table.meta else labels
    idx = prepared.train_idx
    duration = np.asarray(table.meta["last_ts"], np.float64)[idx] - np.asarray(table.meta["first_ts"], np.float64)[idx]
    facts = text_lib.flow_facts_batch(table.tensors["sizes"][idx], table.tensors["iat"][idx],
                                      table.tensors["num_packets"][idx], np.asarray(table.meta["proto"])[idx],
                                      duration=duration)
    vocabulary: dict[str, int] = {}
    name_vocabulary: set[int] = set()
    p_name = settings.text.name_texts
    server = (np.asarray(table.meta["server_name"]).astype(str)[idx]
              if p_name > 0 and "server_name" in table.meta else None)
    variants = np.zeros((len(prepared.train_idx), settings.text.variants_per_flow), np.int32)
    for v in range(settings.text.variants_per_flow):
        # An application named only when allowed, or when the applications are the evaluated classes (level 2).
        name_apps = settings.text.application_texts or level == "level2"
        names = [["", ""] if hidden is not None and hidden[i] else [labels[i], apps[i] if name_apps else ""]
                 for i in prepared.train_idx]
        texts = text_lib.sample_flow_texts(rng, names, facts, descriptions, p_facts=settings.text.p_facts)
        swapped = np.zeros(len(texts), bool)
        if server is not None:
            texts, swapped = text_lib.with_name_texts(rng, texts, server, p_name)
        for row, t in enumerate(texts):
            variants[row, v] = vocabulary.setdefault(t, len(vocabulary))
            if swapped[row]:
                name_vocabulary.add(int(variants[row, v]))
    texts = list(vocabulary)
    name_text = None
    if server is not None:
        name_text = np.zeros(len(texts), bool)
        name_text[sorted(name_vocabulary)] = True
        print(f"[text] names as text: {int((server != '').sum())} of {len(idx)} training flows have a server name; "
              f"{int(np.isin(variants, sorted(name_vocabulary)).sum())} of {variants.size} text variants are a name's "
              f"(text.name_texts {p_name})", file=sys.stderr)
    print(f"[text] {len(texts)} distinct texts for {len(prepared.train_idx)} training flows", file=sys.stderr)
    if settings.text.trained:
        enc = featurizer.tokenizer.encode(texts, settings.text.max_len)
        tokens = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        return TrainTexts(features=np.zeros((len(texts), 1), np.float32), variants=variants, texts=texts,
                          tokens=tokens, name_text=name_text)
    return TrainTexts(features=cached_text_features(featurizer, texts, cache_dir), variants=variants, texts=texts,
                      name_text=name_text)


# ----------------------------------------------------------------------------------------------- sampling

# sample_indices, augment_flows: pclip_jax.data.batches (no JAX there: worker processes make batches with them)


def make_train_batch(prepared: PreparedFlows, texts: TrainTexts, rows: np.ndarray, step: int, seed: int,
                     augment=None, flows: Optional[FlowRows] = None, mine: slice = slice(None)) -> dict:
    """This process's part `mine` of the global batch `rows` (indices into prepared.train_idx).

    `flows` reads the tower inputs of training rows (default: prepared.table's tensors). Only the rows `mine` are
    read; augmentation and text variants are drawn for all of `rows`, so every process count trains on the same
    global batch (`data.batches.batch_from_rows`)."""
    flows = flows if flows is not None else TableRows(prepared.table.tensors, prepared.train_idx)
    return batch_from_rows(flows, np.asarray(prepared.class_ids)[prepared.train_idx], texts.features,
                           texts.variants, texts.tokens, rows, step, seed, augment, mine, texts.name_text)


# ----------------------------------------------------------------------------------------------- the stage

def pretrain(settings: Settings, workdir: Workdir, prepared: PreparedFlows, texts: TrainTexts, model: TwoTowers,
             progress: bool = True, validate: Optional[Callable[[Any], float]] = None,
             flows: Optional[FlowRows] = None) -> tuple[Any, int]:
    """Runs (or resumes) pre-training; returns (host params, steps done).

    With `validate` (params → score on the validation captures, higher is better), the score is computed every
    `train.eval_every` steps and the best parameters are kept in the workdir's `checkpoints_best`; they are
    returned instead of the last ones (model selection on captures that neither training nor the test split
    contain). `flows` reads the training flows' tower inputs (`data.flow_source`: a built dataset's random-access
    source, default the in-memory `prepared.table`, which must then carry the name vectors when the settings use
    names: `name_features.with_name_features`).
    """
    if flows is None and settings.data.use_names and NAME_KEY not in prepared.table.tensors:
        raise ValueError("data.use_names is on but the flow table has no name vectors: call "
                         "name_features.with_name_features(table, settings) first")
    train = settings.train
    rng = jax.random.PRNGKey(train.seed)
    init_rng, step_rng = jax.random.split(rng)
    text_params = None
    if model.text_encoder is not None and not settings.text.from_scratch:
        text_params = load_text_encoder(settings.text.encoder)[1]  # tuned: start from the pretrained weights
    state = create_state(settings, model, init_rng, texts.features.shape[1], text_params)
    global_batch = runtime.global_batch_size(train.batch_size)
    p_step = make_train_step(model, settings)
    step_rngs = runtime.replicate(step_rng)
    # The global batch's rows, augmentation and text variants, of which this process reads and prepares only its
    # own: every process count sees the same batch, so a multi-process run equals one process.
    recipe = BatchRecipe.of(prepared, texts, train, global_batch, runtime.process_slice(global_batch), flows)
    prefetchers = []

    def batches_from(start: int):
        # Made and split per device ahead of their step in the prefetch threads; placed on the devices on this
        # thread just before the step (`runtime.shard_local`, asynchronous on accelerators): device transfers from
        # the prefetch threads while this thread compiled crashed XLA:CPU in the long-lived test process.
        prefetchers.append(StepBatches(recipe, start, stop=train.num_steps, workers=train.workers,
                                       prefetch=train.prefetch, post=runtime.shard))
        return prefetchers[-1]

    spec = loop.LoopSpec(name="pre-training", num_steps=train.num_steps, log_every=train.log_every,
                         checkpoint_every=train.checkpoint_every, keep_checkpoints=train.keep_checkpoints,
                         eval_every=train.eval_every or train.checkpoint_every, stop_after=train.stop_after,
                         examples_per_step=global_batch, validation_metric="validation_zero_shot_mauc",
                         validation_label="validation zero-shot mAUC",
                         nan_hint=f"lower train.learning_rate (now {train.learning_rate}) or set "
                                  f"train.dtype='float32'",
                         postfix=(("loss", "loss"), ("acc", "p2t_accuracy"), ("steps_s", "steps_per_sec"),
                                  ("flows_s", "flows_per_sec")))
    try:
        result = loop.run(spec, state, lambda s, batch: p_step(s, runtime.shard_local(batch), step_rngs), batches_from,
                          checkpoint_dir=workdir.checkpoints, metrics_dir=workdir.path, metrics_name="train",
                          params_of=lambda s: s.params, validate=validate, best_dir=workdir.best_checkpoints,
                          progress=progress)
    finally:  # also when a step fails (NaN loss): no batch threads left behind
        for p in prefetchers:
            p.close()
    return result.params, result.steps


def make_validator(settings: Settings, model: TwoTowers, prepared: PreparedFlows, featurizer, cache_dir):
    """params → zero-shot mAUC on the validation captures (None when there is no validation split)."""
    idx = prepared.val_idx[prepared.class_ids[prepared.val_idx] >= 0]
    if len(idx) == 0:
        return None
    y = prepared.class_ids[idx]
    names = prepared.class_names
    prompt_feats, prompt_class, _ = class_text_features(names, featurizer, load_descriptions(settings.text, settings.gnn.kg),
                                                        cache_dir)
    embed_fn = make_embed_fn(model)

    def validate(params) -> float:
        _, z = embed_flows(embed_fn, runtime.replicate(params), prepared.table.tensors, idx,
                           settings.eval.batch_size)
        scores = zero_shot_scores(params, model, z, prompt_feats, prompt_class, len(names))
        return classification_report(y, scores, names)["mauc"]

    return validate
