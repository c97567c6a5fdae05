"""Training a peer as its paper does, on the suite's splits: self-supervised pre-training on the training captures'
flows (where the peer has it), then supervised fine-tuning of the whole model with class-balanced cross-entropy
(the trees use balanced class weights too), AdamW with warm-up and cosine decay, and model selection: the
parameters with the best validation-capture mAUC (checked every `eval_every` steps) are the ones tested. Batches
are a pure function of (seed, step).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.plumbing.runtime import compiled_flops, count_params
from pclip_bench.peers.models import PeerSpec


@dataclasses.dataclass(frozen=True)
class PeerTrainConfig:
    pretrain_steps: int = 300
    steps: int = 600
    batch_size: int = 64
    learning_rate: float = 1e-3
    pretrain_learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    eval_every: int = 100
    seed: int = 0


@dataclasses.dataclass
class FittedPeer:
    module: Any
    params: Any
    info: dict  # trainable_params, train_seconds, pretrain_loss first/last, best_step, validation_mauc


def _take(x, rows):
    return jax.tree.map(lambda a: a[rows], x)


def _count(x) -> int:
    return len(jax.tree.leaves(x)[0])


def peer_optimizer(lr: float, steps: int, config: PeerTrainConfig):
    """AdamW with warm-up and cosine decay to `steps`, global-norm clipping at 1: every peer's (pre-)training."""
    warmup = min(config.warmup_steps, max(steps // 10, 1))
    schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(steps, warmup + 1))
    return optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=config.weight_decay))


def _batches(n: int, batch: int, seed: int, step: int) -> np.ndarray:
    return np.random.default_rng([seed, step]).integers(0, n, size=min(batch, max(n, 1)))


def predict_proba(module, params, x, batch_size: int = 256) -> np.ndarray:
    """Class probabilities [N, C] of a fitted peer."""
    fn = jax.jit(lambda p, xb: jax.nn.softmax(module.apply({"params": p}, xb), -1))
    n = _count(x)
    out = []
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(start + batch_size, n))
        pad = batch_size - len(rows) if n > batch_size else 0  # one compiled shape for all full-size batches
        xb = _take(x, np.concatenate([rows, np.full(pad, rows[-1])]) if pad else rows)
        out.append(np.asarray(fn(params, xb))[:len(rows)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def flops_per_flow(module, params, x_one) -> float:
    """Inference FLOPs per flow from the compiled program (a multiply-add = 2 FLOPs), measured on a batch of 8."""
    xb = _take(x_one, np.zeros(8, np.int64))
    return compiled_flops(lambda p, xx: module.apply({"params": p}, xx), params, xb) / 8


def make_finetune_step(module, spec: PeerSpec, tx, class_weights, compute_dtype=None):
    """One fine-tuning step (params, opt_state, x, y, key) → (params, opt_state, loss), not jitted: class-weighted
    cross-entropy, plus the peer's pre-training loss where it has an auxiliary weight (FS-Net). `compute_dtype`
    (e.g. bfloat16) runs the model in that precision on float32 master weights (the suite trains in float32;
    `benchmarks/model_speed.py` times both)."""
    def step_fn(p, s, xb, yb, key):
        k_drop, k_mask = jax.random.split(key)
        xc = cast_floating(xb, compute_dtype)

        def loss_fn(q):
            q = cast_floating(q, compute_dtype)
            logits = module.apply({"params": q}, xc, deterministic=False, rngs={"dropout": k_drop})
            ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), yb)
            loss = (ce * class_weights[yb]).sum() / jnp.maximum(class_weights[yb].sum(), 1e-6)
            if spec.aux_weight:
                loss = loss + spec.aux_weight * module.apply({"params": q}, xc, k_mask, method=module.pretrain_loss,
                                                             rngs={"dropout": k_drop}).astype(jnp.float32)
            return loss

        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(grads, s, p)
        return optax.apply_updates(p, updates), s, loss

    return step_fn


def cast_floating(tree, dtype):
    """`tree` with its floating-point leaves in `dtype` (integer and boolean leaves unchanged); None: unchanged."""
    if dtype is None:
        return tree
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def fit_peer(spec: PeerSpec, size: str, num_classes: int, x_train, y_train: np.ndarray, x_val, y_val: np.ndarray,
             config: PeerTrainConfig, progress: bool = True, x_pretrain=None) -> FittedPeer:
    """Pre-trains (if the peer has it) and fine-tunes `spec` at `size` on (x_train, y_train); selects the step
    with the best validation mAUC when validation flows of ≥ 2 classes exist, else keeps the last. `x_pretrain`:
    the inputs of the self-supervised pre-training (default `x_train`; more flows, unlabelled, when labels are
    scarce)."""
    from tqdm.auto import tqdm

    started = time.time()
    module = spec.build(num_classes, size)
    rng = jax.random.PRNGKey(config.seed)
    init_rng, drop_rng, mask_rng = jax.random.split(rng, 3)
    params = module.init({"params": init_rng, "dropout": drop_rng}, _take(x_train, np.arange(2)), mask_rng,
                         method=module.init_all)["params"]
    info: dict = {"trainable_params": count_params(params)}
    n = _count(x_train)

    if spec.pretrain and config.pretrain_steps > 0:
        x_pre = x_train if x_pretrain is None else x_pretrain
        n_pre = _count(x_pre)
        tx = peer_optimizer(config.pretrain_learning_rate, config.pretrain_steps, config)
        state = tx.init(params)

        @jax.jit
        def pre_step(p, s, xb, key):
            k_mask, k_drop = jax.random.split(key)
            loss, grads = jax.value_and_grad(lambda q: module.apply(
                {"params": q}, xb, k_mask, method=module.pretrain_loss, rngs={"dropout": k_drop}))(p)
            updates, s = tx.update(grads, s, p)
            return optax.apply_updates(p, updates), s, loss

        losses = []
        for step in tqdm(range(config.pretrain_steps), desc=f"{spec.name} pre-training", disable=not progress,
                         leave=False):
            xb = _take(x_pre, _batches(n_pre, config.batch_size, config.seed, step))
            params, state, loss = pre_step(params, state, xb, jax.random.fold_in(mask_rng, step))
            losses.append(float(loss))
        info["pretrain_loss_first"], info["pretrain_loss_last"] = float(np.mean(losses[:10])), \
            float(np.mean(losses[-10:]))

    counts = np.bincount(y_train, minlength=num_classes).astype(np.float32)
    weights = jnp.asarray(np.where(counts > 0, len(y_train) / np.maximum(num_classes * counts, 1.0), 0.0))
    tx = peer_optimizer(config.learning_rate, config.steps, config)
    state = tx.init(params)
    step_fn = jax.jit(make_finetune_step(module, spec, tx, weights))

    validate = _count(x_val) > 0 and len(np.unique(y_val)) >= 2
    best = (-np.inf, params, 0)
    losses = []
    for step in tqdm(range(1, config.steps + 1), desc=f"{spec.name} fine-tuning", disable=not progress,
                     leave=False):
        rows = _batches(n, config.batch_size, config.seed + 1, step)
        params, state, loss = step_fn(params, state, _take(x_train, rows), jnp.asarray(y_train[rows]),
                                      jax.random.fold_in(drop_rng, step))
        losses.append(float(loss))
        if validate and (step % config.eval_every == 0 or step == config.steps):
            proba = predict_proba(module, params, x_val)
            mauc = metrics_lib.classification_report(y_val, proba, [str(c) for c in range(num_classes)])["mauc"]
            if np.isfinite(mauc) and mauc > best[0]:
                best = (mauc, params, step)
    if validate and best[2]:
        info["validation_mauc"], params, info["best_step"] = float(best[0]), best[1], best[2]
    info["loss_first"], info["loss_last"] = float(np.mean(losses[:10])), float(np.mean(losses[-10:]))
    info["train_seconds"] = round(time.time() - started, 1)
    return FittedPeer(module, params, info)
