"""Fine-tuning (`train.finetune_steps` > 0): the packet tower trained on the labelled training flows with a linear
class head and cross-entropy, as the peers' encoders are (issue 31, item 4).

A copy of the pre-trained packet tower and a zero-initialised head over the packet features (the probe's input)
are trained together: class-balanced batches (`train.class_balance`), the pre-training augmentations
(`train.augment`), dropout on, AdamW with warm-up and cosine decay to `train.finetune_learning_rate`; the step
with the best validation mAUC is kept (the last one without validation captures). The frozen pre-trained tower
is untouched: zero-shot, the probe, the GNN, classes added by description and classify keep reading it. The
fine-tuned tower's answers are one more evaluation (`finetuned` answer files, results.json → `finetuned`), which
the benchmark protocol may declare on validation like the others. Runs on one device (the towers are small).
"""
from __future__ import annotations

import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm import tqdm

from pclip_jax.data.batches import augment_flows, sample_indices
from pclip_jax.data.flow_source import tower_inputs
from pclip_jax.models.two_towers import TwoTowers
from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.plumbing import runtime
from pclip_jax.plumbing.settings import Settings
from pclip_jax.plumbing.workdir import Workdir

EVALUATION = "finetuned"  # the answer files' and results.json's name


def _softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


def finetune(settings: Settings, workdir: Workdir, prepared, model: TwoTowers, params, progress: bool = True
             ) -> Optional[dict]:
    """Fine-tunes a copy of the packet tower (module docstring); writes the `finetuned` answer files and returns
    results.json's `finetuned` block (the test report, `validation_mauc`, `best_step`, `seconds`), or None when
    `train.finetune_steps` is 0."""
    cfg = settings.train
    if cfg.finetune_steps <= 0:
        return None
    t0 = time.perf_counter()
    names = prepared.class_names
    tensors = prepared.table.tensors
    labelled = {split: idx[prepared.class_ids[idx] >= 0] for split, idx in
                (("train", np.asarray(prepared.train_idx)), ("validation", np.asarray(prepared.val_idx)),
                 ("test", np.asarray(prepared.test_idx)))}
    train_rows = labelled["train"]
    y_train = prepared.class_ids[train_rows]
    frozen = {k: v for k, v in params.items() if k not in ("packet_tower", "text_encoder")}
    probe_batch = tower_inputs(tensors, train_rows[:1])
    width = jax.eval_shape(lambda p: model.apply({"params": p}, probe_batch, method=TwoTowers.packet_features),
                           {k: v for k, v in params.items() if k != "text_encoder"}).shape[-1]
    trainable = {"packet_tower": params["packet_tower"],
                 "head": {"kernel": jnp.zeros((width, len(names)), jnp.float32),
                          "bias": jnp.zeros((len(names),), jnp.float32)}}
    warmup = min(cfg.warmup_steps, cfg.finetune_steps // 10 + 1)
    schedule = optax.warmup_cosine_decay_schedule(0.0, cfg.finetune_learning_rate, warmup, cfg.finetune_steps)
    optimizer = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                            optax.adamw(schedule, weight_decay=cfg.weight_decay))
    opt_state = optimizer.init(trainable)

    def logits_of(p, batch, deterministic, rng=None):
        feats = model.apply({"params": {**frozen, "packet_tower": p["packet_tower"]}}, batch, deterministic,
                            method=TwoTowers.packet_features, rngs=None if deterministic else {"dropout": rng})
        return feats.astype(jnp.float32) @ p["head"]["kernel"] + p["head"]["bias"]

    @jax.jit
    def step(p, opt_state, batch, y, rng):
        def loss_fn(q):
            return optax.softmax_cross_entropy_with_integer_labels(logits_of(q, batch, False, rng), y).mean()
        loss, grads = jax.value_and_grad(loss_fn)(p)
        updates, opt_state = optimizer.update(grads, opt_state, p)
        return optax.apply_updates(p, updates), opt_state, loss

    predict = jax.jit(lambda p, batch: logits_of(p, batch, True))
    batch_size = min(cfg.batch_size, max(len(train_rows), 1))

    def probabilities(p, rows: np.ndarray) -> np.ndarray:
        out = []
        for i in range(0, len(rows), batch_size):
            idx = rows[i:i + batch_size]
            take = np.concatenate([idx, np.repeat(idx[:1], batch_size - len(idx))]) if len(idx) < batch_size else idx
            out.append(np.asarray(predict(p, tower_inputs(tensors, take)))[:len(idx)])
        return _softmax(np.concatenate(out)) if out else np.zeros((0, len(names)), np.float32)

    val_rows = labelled["validation"]
    y_val = prepared.class_ids[val_rows]
    every = max(1, min(cfg.eval_every or cfg.finetune_steps, cfg.finetune_steps // 4 or 1))
    best = (-np.inf, trainable, 0)
    history = []
    rng = np.random.default_rng([cfg.seed, 7])
    key = jax.random.PRNGKey(cfg.seed)
    bar = tqdm(range(1, cfg.finetune_steps + 1), desc="fine-tuning", disable=not progress, file=sys.stderr)
    for i in bar:
        pick = sample_indices(i, len(train_rows), batch_size, y_train, cfg.seed + 1, cfg.class_balance)
        batch = augment_flows(tower_inputs(tensors, train_rows[pick]), rng, cfg.augment)
        trainable, opt_state, loss = step(trainable, opt_state, batch, jnp.asarray(y_train[pick]),
                                          jax.random.fold_in(key, i))
        if i % every == 0 or i == cfg.finetune_steps:
            val_mauc = (metrics_lib.classification_report(y_val, probabilities(trainable, val_rows), names)["mauc"]
                        if len(val_rows) else None)
            history.append({"step": i, "loss": float(loss), "validation_mauc": val_mauc})
            bar.set_postfix(loss=f"{float(loss):.3f}", val_mauc="-" if val_mauc is None else f"{val_mauc:.4f}")
            if val_mauc is not None and np.isfinite(val_mauc) and val_mauc > best[0]:
                best = (val_mauc, runtime.tree_map(np.asarray, trainable), i)
    if best[2] == 0:  # no validation captures (or no finite validation mAUC): the last step
        best = (float("nan"), trainable, cfg.finetune_steps)
    chosen = best[1]
    captures = np.asarray(prepared.table.meta["capture"]).astype(str)
    scores = {}
    for split in ("validation", "test"):
        rows = labelled[split]
        if not len(rows):
            continue
        scores[split] = probabilities(chosen, rows)
        workdir.save_answers(EVALUATION, split, prepared.class_ids[rows], scores[split], captures[rows], names,
                             prepared.novel(rows))
    test_rows = labelled["test"]
    y_test = prepared.class_ids[test_rows]
    report = metrics_lib.classification_report(y_test, scores["test"], names)
    report["by_application_novelty"] = metrics_lib.by_application_novelty(
        y_test, scores["test"], names, np.asarray(prepared.table.meta["level2"]).astype(str)[test_rows],
        prepared.applications(prepared.train_idx))
    report["per_capture"] = metrics_lib.per_capture_accuracy(y_test, scores["test"], captures[test_rows], names)
    report.update(best_step=best[2], validation_mauc=best[0], steps=cfg.finetune_steps, history=history,
                  seconds=round(time.perf_counter() - t0, 1))
    print(f"[finetune] {cfg.finetune_steps} steps, kept step {best[2]} (validation mAUC {best[0]:.4f}); test mAUC "
          f"{report['mauc']:.4f}, macro-F1 {report['macro_f1']:.4f}", file=sys.stderr)
    return report
