"""Contrastive pre-training of the packet tower against the text tower, data-parallel over all local devices.

`train_and_evaluate(config, workdir)` is the library entry point (`pclip_jax.main` only parses flags):
data (ingest → labels → filters → capture split) → text features (frozen tower, cached) → pmap training with a
global contrastive loss, orbax checkpoints and automatic resume → evaluation (zero-shot and linear probe) →
`workdir/results.json`.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from tqdm import tqdm

from pclip_jax import checkpointing, losses, parallel
from pclip_jax import text as text_lib
from pclip_jax.compat import count_params, maybe_initialize_distributed
from pclip_jax.data.prepare import PreparedFlows, prepare_flows
from pclip_jax.name_features import NAME_KEY, attach_name_features, name_dim
from pclip_jax.metric_writer import MetricWriter
from pclip_jax.models.packet_tower import PacketTowerConfig
from pclip_jax.models.two_towers import TwoTowerConfig, TwoTowers
from pclip_jax.text_features import TextFeaturizer, cached_text_features

AXIS = "batch"
TENSOR_KEYS = ("bytes", "sizes", "iat", "tcp_flags")  # per-packet inputs of the packet tower [N, K, ...]


def tower_inputs(tensors: dict, idx) -> dict:
    """The packet tower's inputs for flows `idx`: the per-packet tensors, and server-name vectors when present."""
    batch = {k: tensors[k][idx] for k in TENSOR_KEYS}
    if NAME_KEY in tensors:
        batch[NAME_KEY] = tensors[NAME_KEY][idx]
    return batch


class NanLossError(FloatingPointError):
    pass


class TrainState(train_state.TrainState):
    pass


# ----------------------------------------------------------------------------------------------- model & state

def model_config(config: ml_collections.ConfigDict) -> TwoTowerConfig:
    m = config.model
    dtype = jnp.bfloat16 if config.train.dtype == "bfloat16" else jnp.float32
    packet = PacketTowerConfig(packets=config.data.packets, bytes=config.data.bytes, patch_size=m.patch_size,
                               pool_queries=m.get("pool_queries", 1),
                               byte_dim=m.byte_dim, width=m.width, depth=m.depth, heads=m.heads,
                               mlp_ratio=m.mlp_ratio, dropout=m.dropout,
                               names=bool(config.data.get("use_names", False)),
                               name_fusion=m.get("name_fusion", "token"), dtype=dtype)
    return TwoTowerConfig(packet=packet, embed_dim=m.embed_dim)


def text_trained(config) -> bool:
    """Whether the text encoder is trained with the packet tower: tuned (`text.trainable`) or from scratch."""
    return bool(config.text.get("trainable", False) or config.text.get("from_scratch", False))


def text_module(config):
    """The text encoder module: all-MiniLM-L6-v2's architecture, or `BertConfig.small()` from scratch."""
    from pclip_jax.models.bert import BertConfig, BertEncoder
    from pclip_jax.models.text_tower import load_text_encoder

    dtype = jnp.bfloat16 if config.train.dtype == "bfloat16" else jnp.float32
    if config.text.get("from_scratch", False):
        tokenizer = load_text_encoder(config.text.encoder)[2]
        return BertEncoder(BertConfig.small(vocab_size=max(tokenizer.vocab_size, 30522),
                                            max_position_embeddings=max(config.text.max_len, 64)), dtype=dtype)
    return load_text_encoder(config.text.encoder, dtype=dtype)[0]


def build_model(config) -> TwoTowers:
    """The two towers; a tuned or from-scratch text encoder is part of the model, a locked one is not."""
    if not text_trained(config):
        return TwoTowers(model_config(config))
    return TwoTowers(model_config(config), text_encoder=text_module(config))


def text_featurizer(config, params=None) -> TextFeaturizer:
    """Text features for prompts and graph descriptions: the pretrained encoder, or the trained one in `params`."""
    from pclip_jax.text_features import params_tag

    if params is not None and "text_encoder" in params:
        return TextFeaturizer(config.text.encoder, config.text.max_len, config.text.batch_size,
                              params=params["text_encoder"], tag=params_tag(params["text_encoder"]),
                              module=text_module(config))
    return TextFeaturizer(config.text.encoder, config.text.max_len, config.text.batch_size)


def dummy_batch(config, n: int = 1, text_dim: int = 384) -> dict:
    k, b = config.data.packets, config.data.bytes
    return {"bytes": np.zeros((n, k, b), np.uint8), "sizes": np.ones((n, k), np.int32),
            "iat": np.zeros((n, k), np.float32), "tcp_flags": np.zeros((n, k), np.uint8),
            "text": np.zeros((n, text_dim), np.float32), "valid": np.ones((n,), bool),
            "class_id": np.zeros((n,), np.int32),
            **({NAME_KEY: np.zeros((n, name_dim(config)), np.float16)}
               if config.data.get("use_names", False) else {})}


def init_params(model: TwoTowers, config, rng, text_dim: int = 384, text_params=None):
    """Initial parameters; a trainable text encoder starts from `text_params` (the pretrained weights)."""
    batch = dummy_batch(config, 1, text_dim)
    if model.text_encoder is None:
        return model.init(rng, batch, text_features=jnp.asarray(batch["text"]))["params"]
    length = config.text.max_len
    tokens = {"input_ids": jnp.zeros((1, length), jnp.int32), "attention_mask": jnp.ones((1, length), jnp.int32)}
    params = model.init(rng, batch, tokens=tokens)["params"]
    if text_params is not None:
        params = {**params, "text_encoder": text_params}
    return params


def param_counts(params) -> dict:
    counts = {name: count_params(sub) for name, sub in params.items()}
    return {"packet_tower": counts.get("packet_tower", 0),
            "projection_heads": counts.get("packet_head", 0) + counts.get("text_head", 0),
            "temperature_bias": counts.get("logit_scale", 0) + counts.get("logit_bias", 0),
            "trainable_total": sum(counts.values())}


def make_optimizer(train_config) -> optax.GradientTransformation:
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train_config.learning_rate, warmup_steps=train_config.warmup_steps,
        decay_steps=max(train_config.num_steps, train_config.warmup_steps + 1), end_value=0.0)
    return optax.chain(optax.clip_by_global_norm(train_config.grad_clip),
                       optax.adamw(schedule, weight_decay=train_config.weight_decay)), schedule


def create_state(config, model: TwoTowers, rng, text_dim: int = 384, text_params=None) -> TrainState:
    tx, _ = make_optimizer(config.train)
    params = init_params(model, config, rng, text_dim, text_params)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)


# ----------------------------------------------------------------------------------------------- steps

def make_train_step(model: TwoTowers, config):
    loss_name, multi_positive = config.train.loss, config.train.multi_positive
    _, schedule = make_optimizer(config.train)

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
            if loss_name == "sigmoid":
                return losses.sigmoid_loss(zp, zt, batch["valid"], batch["class_id"], scale, bias, AXIS,
                                           multi_positive)
            raise ValueError(f"train.loss must be 'clip' or 'sigmoid', got {loss_name!r}")

        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        grads = jax.lax.pmean(grads, AXIS)
        metrics = jax.lax.pmean({**metrics, "loss": loss}, AXIS)
        metrics["grad_norm"] = optax.tree.norm(grads)
        metrics["temperature"] = jnp.exp(jnp.minimum(state.params["logit_scale"], model.config.max_log_scale))
        metrics["learning_rate"] = schedule(state.step)
        return state.apply_gradients(grads=grads), metrics

    return jax.pmap(step_fn, axis_name=AXIS, donate_argnums=(0,))


def make_embed_fn(model: TwoTowers):
    """pmapped: batch → (packet features before projection, projected normalised packet embeddings)."""
    def embed(params, batch):
        feats = model.apply({"params": params}, batch, method=TwoTowers.packet_features)
        z = model.apply({"params": params}, batch, method=TwoTowers.embed_packets)
        return feats, z
    return jax.pmap(embed, axis_name=AXIS)


def embed_flows(embed_fn, replicated_params, tensors: dict, indices: np.ndarray, batch_size: int,
                progress: bool = False, desc: str = "embedding flows") -> tuple[np.ndarray, np.ndarray]:
    """Packet features and embeddings of `indices`, in fixed-size padded batches (one compilation)."""
    d = jax.local_device_count()
    batch_size = max(d, (batch_size // d) * d)
    feats, embs = [], []
    for start in tqdm(range(0, len(indices), batch_size), desc=desc, disable=not progress, file=sys.stderr):
        idx = indices[start:start + batch_size]
        pad = batch_size - len(idx)
        take = np.concatenate([idx, np.repeat(idx[:1], pad)]) if pad else idx
        batch = tower_inputs(tensors, take)
        f, z = embed_fn(replicated_params, parallel.shard(batch))
        feats.append(np.asarray(f).reshape(batch_size, -1)[:len(idx)])
        embs.append(np.asarray(z).reshape(batch_size, -1)[:len(idx)])
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(feats), np.concatenate(embs)


# ----------------------------------------------------------------------------------------------- texts

@dataclasses.dataclass
class TrainTexts:
    features: np.ndarray       # [T, Dt] frozen text features of the distinct texts
    variants: np.ndarray       # [N_train, V] index into features
    texts: list[str]
    tokens: Optional[dict] = None  # [T, L] token ids and mask of the distinct texts (tuned text tower only)


def build_train_texts(prepared: PreparedFlows, config, featurizer: TextFeaturizer, cache_dir) -> TrainTexts:
    """V text variants per training flow (class descriptions + flow facts, sampled), embedded once."""
    table = prepared.table
    descriptions = text_lib.load_class_descriptions(config.text.get("descriptions") or None)
    rng = np.random.default_rng(config.train.seed)
    level = config.data.label_level
    labels = np.asarray(table.meta[level]).astype(str)
    apps = np.asarray(table.meta["level2"]).astype(str) if "level2" in table.meta else labels
    idx = prepared.train_idx
    duration = np.asarray(table.meta["last_ts"], np.float64)[idx] - np.asarray(table.meta["first_ts"], np.float64)[idx]
    facts = text_lib.flow_facts_batch(table.tensors["sizes"][idx], table.tensors["iat"][idx],
                                      table.tensors["num_packets"][idx], np.asarray(table.meta["proto"])[idx],
                                      duration=duration)
    vocabulary: dict[str, int] = {}
    variants = np.zeros((len(prepared.train_idx), config.text.variants_per_flow), np.int32)
    for v in range(config.text.variants_per_flow):
        names = [[labels[i], apps[i]] for i in prepared.train_idx]
        texts = text_lib.sample_flow_texts(rng, names, facts, descriptions, p_facts=config.text.p_facts)
        for row, t in enumerate(texts):
            variants[row, v] = vocabulary.setdefault(t, len(vocabulary))
    texts = list(vocabulary)
    print(f"[text] {len(texts)} distinct texts for {len(prepared.train_idx)} training flows", file=sys.stderr)
    if text_trained(config):
        enc = featurizer.tokenizer.encode(texts, config.text.max_len)
        tokens = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
        return TrainTexts(features=np.zeros((len(texts), 1), np.float32), variants=variants, texts=texts,
                          tokens=tokens)
    return TrainTexts(features=cached_text_features(featurizer, texts, cache_dir), variants=variants, texts=texts)


def class_text_features(class_names, featurizer: TextFeaturizer, descriptions, cache_dir):
    """Per class: the frozen features of each of its prompts ([P, Dt]) and the prompt's class index."""
    texts, class_index = text_lib.zero_shot_prompts(class_names, descriptions)
    feats = cached_text_features(featurizer, texts, cache_dir, progress=False)
    return feats, np.asarray(class_index, np.int32), texts


# ----------------------------------------------------------------------------------------------- sampling

def sample_indices(step: int, n: int, batch: int, class_ids: np.ndarray, seed: int, balance: float) -> np.ndarray:
    """The global batch of step `step`: a deterministic function of (seed, step), so resume replays exactly.

    Flows are drawn with weight count(class)^-balance: 0 = uniform over flows, 1 = uniform over classes.
    """
    rng = np.random.default_rng([seed, step])
    counts = np.bincount(class_ids, minlength=class_ids.max() + 1).astype(np.float64)
    weights = counts[class_ids] ** (-balance)
    return rng.choice(n, size=batch, replace=n < batch, p=weights / weights.sum())


def augment_flows(batch: dict, rng: np.random.Generator, augment) -> dict:
    """Capture-invariance augmentations: what changes between two captures of the same application.

    * `iat_scale`: multiply each flow's inter-arrival times by a log-uniform factor in [1/s, s] (another network,
      another round-trip time);
    * `byte_dropout`: zero a random fraction of the payload/header bytes (other session ids, other randoms);
    * `packet_dropout`: drop non-first packets with this probability, shifting later ones up (lost ACKs,
      coalesced segments, another capture point);
    * `name_dropout`: hide the server name of this fraction of flows (Encrypted Client Hello, resumed sessions,
      flows whose handshake was not captured), so the tower does not depend on names alone.
    """
    batch = dict(batch)
    n, k = batch["sizes"].shape
    if augment.iat_scale > 1:
        factor = np.exp(rng.uniform(-1, 1, size=(n, 1)) * np.log(augment.iat_scale)).astype(np.float32)
        batch["iat"] = batch["iat"] * factor
    if augment.byte_dropout > 0:
        keep = rng.random(batch["bytes"].shape) >= augment.byte_dropout
        batch["bytes"] = batch["bytes"] * keep.astype(np.uint8)
    if augment.packet_dropout > 0:
        drop = (rng.random((n, k)) < augment.packet_dropout) & (batch["sizes"] != 0)
        drop[:, 0] = False
        order = np.argsort(drop, axis=1, kind="stable")  # kept packets first, in their original order
        for key in TENSOR_KEYS:
            arr = np.take_along_axis(batch[key], order.reshape(order.shape + (1,) * (batch[key].ndim - 2)), 1)
            dropped_sorted = np.take_along_axis(drop, order, 1)
            mask = dropped_sorted.reshape(dropped_sorted.shape + (1,) * (arr.ndim - 2))
            batch[key] = np.where(mask, np.zeros_like(arr), arr)
    if augment.get("name_dropout", 0.0) > 0 and NAME_KEY in batch:
        hide = rng.random(n) < augment.name_dropout
        batch[NAME_KEY] = np.where(hide[:, None], np.zeros_like(batch[NAME_KEY]), batch[NAME_KEY])
    return batch


def make_train_batch(prepared: PreparedFlows, texts: TrainTexts, rows: np.ndarray, step: int, seed: int,
                     augment=None) -> dict:
    """rows index into prepared.train_idx."""
    rng = np.random.default_rng([seed, step, 1])
    flows = prepared.train_idx[rows]
    tensors = prepared.table.tensors
    batch = tower_inputs(tensors, flows)
    if augment is not None:
        batch = augment_flows(batch, rng, augment)
    variant = rng.integers(0, texts.variants.shape[1], size=len(rows))
    chosen = texts.variants[rows, variant]
    if texts.tokens is not None:
        batch["input_ids"] = texts.tokens["input_ids"][chosen]
        batch["attention_mask"] = texts.tokens["attention_mask"][chosen]
    else:
        batch["text"] = texts.features[chosen].astype(np.float32)
    batch["valid"] = np.ones(len(rows), bool)
    batch["class_id"] = prepared.class_ids[flows]
    return batch


# ----------------------------------------------------------------------------------------------- main loop

BEST_DIR = "checkpoints_best"


def train(config, workdir: pathlib.Path, prepared: PreparedFlows, texts: TrainTexts, model: TwoTowers,
          progress: bool = True, validate: Optional[Callable[[Any], float]] = None) -> tuple[Any, int]:
    """Runs (or resumes) pre-training; returns (unreplicated params, steps done).

    With `validate` (params → score on the validation captures, higher is better), the score is computed every
    `train.eval_every` steps and the best parameters are kept in `workdir/checkpoints_best`; they are returned
    instead of the last ones (early stopping by model selection, on captures that neither training nor the test
    split contain).
    """
    attach_name_features(prepared.table, config)  # a no-op when present or when the config does not use names
    rng = jax.random.PRNGKey(config.train.seed)
    init_rng, step_rng = jax.random.split(rng)
    text_params = None
    if model.text_encoder is not None and not config.text.get("from_scratch", False):
        from pclip_jax.models.text_tower import load_text_encoder
        text_params = load_text_encoder(config.text.encoder)[1]  # tuned: start from the pretrained weights
    state = create_state(config, model, init_rng, texts.features.shape[1], text_params)
    mngr = checkpointing.manager(workdir / "checkpoints", config.train.checkpoint_every,
                                 config.train.keep_checkpoints)
    state, restored = checkpointing.restore_latest(mngr, state)
    start = int(state.step)
    if restored is not None:
        print(f"[train] resumed from checkpoint at step {restored}", file=sys.stderr)
    num_steps = int(config.train.num_steps)
    # `stop_after` interrupts a run early with the schedule of the full run (resume tests, preemption drills).
    last_step = min(num_steps, int(config.train.get("stop_after", 0) or num_steps))
    global_batch = parallel.global_batch_size(config.train.batch_size)
    p_step = make_train_step(model, config)
    rstate = parallel.replicate(state)
    step_rngs = parallel.replicate(step_rng)
    train_classes = prepared.class_ids[prepared.train_idx]
    known = np.where(train_classes >= 0, train_classes, train_classes.max() + 1)
    writer = MetricWriter(workdir, "train")
    best = BestKeeper(workdir / BEST_DIR) if validate is not None else None
    eval_every = int(config.train.get("eval_every", 0) or config.train.checkpoint_every)
    bar = tqdm(total=num_steps, initial=start, desc="pre-training", unit="step", file=sys.stderr,
               disable=not progress or jax.process_index() != 0)
    pending, t0, last_logged = [], time.time(), start
    for step in range(start, last_step):
        rows = sample_indices(step, len(prepared.train_idx), global_batch, known, config.train.seed,
                              config.train.class_balance)
        rows = rows[parallel.process_slice(global_batch)]
        batch = make_train_batch(prepared, texts, rows, step, config.train.seed, config.train.get("augment"))
        rstate, metrics = p_step(rstate, parallel.shard(batch), step_rngs)
        pending.append(metrics)
        done = step + 1
        if done % config.train.log_every == 0 or done == last_step:
            history = jax.device_get(pending)
            pending = []
            for offset, m in enumerate(history):
                if not np.isfinite(m["loss"][0]):
                    raise NanLossError(f"loss became {m['loss'][0]} at step {last_logged + offset + 1}: stopping. "
                                       f"Try a lower train.learning_rate or train.dtype='float32'.")
            elapsed = max(time.time() - t0, 1e-9)
            summary = {k: float(np.mean([m[k][0] for m in history])) for k in history[-1]}
            summary["steps_per_sec"] = len(history) / elapsed
            summary["flows_per_sec"] = len(history) * global_batch / elapsed
            writer.write(done, summary)
            bar.set_postfix(loss=f"{summary['loss']:.3f}", acc=f"{summary['p2t_accuracy']:.2f}",
                            steps_s=f"{summary['steps_per_sec']:.1f}", flows_s=f"{summary['flows_per_sec']:.0f}")
            bar.update(len(history))
            t0, last_logged = time.time(), done
        if best is not None and (done % eval_every == 0 or done == last_step):
            params_now = jax.device_get(parallel.unreplicate(rstate).params)
            score = float(validate(params_now))
            improved = best.offer(done, score, params_now)
            writer.write(done, {"validation_zero_shot_mauc": score})
            bar.write(f"[train] step {done}: validation zero-shot mAUC {score:.4f}"
                      f"{' (best)' if improved else f' (best {best.score:.4f} at step {best.step})'}")
        if done % config.train.checkpoint_every == 0 or done == last_step:
            checkpointing.save(mngr, done, parallel.unreplicate(rstate), force=done == last_step)
    bar.close()
    writer.close()
    mngr.wait_until_finished()
    mngr.close()
    final = jax.device_get(parallel.unreplicate(rstate)).params
    if best is not None:
        params = best.load(final)
        if params is not None:
            print(f"[train] using the parameters of step {best.step} (validation zero-shot mAUC {best.score:.4f})",
                  file=sys.stderr)
            return params, max(start, last_step)
    return final, max(start, last_step)


class BestKeeper:
    """The best parameters by a validation score, on disk (orbax, one kept) so that a resumed run remembers them."""

    def __init__(self, directory: pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.mngr = checkpointing.manager(self.directory, 1, 1)
        meta = self.directory / "best.json"
        info = json.loads(meta.read_text()) if meta.is_file() else {}
        self.step, self.score = info.get("step"), info.get("score", -np.inf)

    def offer(self, step: int, score: float, params) -> bool:
        if not np.isfinite(score) or score <= self.score:
            return False
        checkpointing.save(self.mngr, step, params, force=True)
        self.mngr.wait_until_finished()
        self.step, self.score = step, score
        (self.directory / "best.json").write_text(json.dumps({"step": step, "score": score}))
        return True

    def load(self, like):
        if self.step is None:
            return None
        params, _ = checkpointing.restore_latest(self.mngr, like)
        self.mngr.close()
        return params


def make_validator(config, model: TwoTowers, prepared: PreparedFlows, featurizer, cache_dir):
    """params → zero-shot mAUC on the validation captures (None when there is no validation split)."""
    from pclip_jax import evaluate as evaluate_lib
    from pclip_jax.metrics import classification_report

    idx = prepared.val_idx[prepared.class_ids[prepared.val_idx] >= 0]
    if len(idx) == 0:
        return None
    y = prepared.class_ids[idx]
    names = prepared.class_names
    descriptions = text_lib.load_class_descriptions(config.text.get("descriptions") or None)
    prompt_feats, prompt_class, _ = class_text_features(names, featurizer, descriptions, cache_dir)
    embed_fn = make_embed_fn(model)

    def validate(params) -> float:
        _, z = embed_flows(embed_fn, parallel.replicate(params), prepared.table.tensors, idx, config.eval.batch_size)
        scores = evaluate_lib.zero_shot_scores(params, model, z, prompt_feats, prompt_class, len(names))
        return classification_report(y, scores, names)["mauc"]

    return validate


def save_config(config, workdir: pathlib.Path) -> None:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """The whole job: prepare data, pre-train (resuming if a checkpoint exists), evaluate, write results.json."""
    from pclip_jax import evaluate as evaluate_lib

    maybe_initialize_distributed()
    started = time.time()
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    save_config(config, workdir)
    prepared = prepare_flows(config.data, workdir)
    attach_name_features(prepared.table, config)
    cache_dir = pathlib.Path(config.data.get("cache_dir") or workdir / "cache")
    featurizer = text_featurizer(config)
    texts = build_train_texts(prepared, config, featurizer, cache_dir)
    model = build_model(config)
    t_train = time.time()
    validate = make_validator(config, model, prepared, featurizer, cache_dir)
    params, steps = train(config, workdir, prepared, texts, model, validate=validate)
    t_train = time.time() - t_train
    if model.text_encoder is not None:  # prompts and graph descriptions through the tuned text tower
        featurizer = text_featurizer(config, params)
    results, embeddings = evaluate_lib.evaluate_pretrained(config, workdir, prepared, model, params, featurizer)
    if config.gnn.enabled:
        from pclip_jax.kg import pipeline as kg_pipeline

        results["gnn"] = kg_pipeline.train_and_evaluate_gnn(config, workdir, prepared, model, params, featurizer,
                                                            embeddings, cache_dir)
    results.update({
        "devices": {"count": jax.device_count(), "local": jax.local_device_count(),
                    "platform": jax.devices()[0].platform, "processes": jax.process_count()},
        "train_steps": steps,
        "train_seconds": round(t_train, 1),
        "wall_seconds": round(time.time() - started, 1),
    })
    if jax.process_index() == 0:
        (workdir / "results.json").write_text(json.dumps(results, indent=2))
    return results
