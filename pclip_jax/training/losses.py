"""Contrastive losses over a named device axis (CLIP softmax and SigLIP sigmoid).

Each device holds its shard of the batch: packet embeddings `zp` [b, d], text embeddings `zt` [b, d] (both L2
normalised), a validity mask [b] (False for padding rows) and an integer class id [b] (-1 = unknown). The shards are
all-gathered so that every device computes *its rows* of the global similarity matrix; padding columns are masked
out (padding never counts as a negative) and padding rows contribute nothing.

Scaling: each device returns `local_sum * n_devices / n_valid_global`, so `lax.pmean` over the axis equals the
single-device loss on the concatenated batch, and `pmean` of the per-device gradients equals its gradient (the
transpose of `all_gather` routes every device's cotangents back to the shard that produced them).

`axis_name=None` runs the same code on one device (the reference the pmap test compares against).

Positives: with `multi_positive=True` (default), a flow's positives are all texts of the batch that describe the
same class (class id >= 0), not only its own text: in-batch texts of the same class are not false negatives. Rows
whose class is unknown use the diagonal only.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp

_NEG = -1e9


def _gather(x: jnp.ndarray, axis_name: Optional[str]) -> jnp.ndarray:
    if axis_name is None:
        return x
    return jax.lax.all_gather(x, axis_name, tiled=True)


def _axis_info(axis_name: Optional[str], local_batch: int):
    if axis_name is None:
        return 0, 1
    return jax.lax.axis_index(axis_name), jax.lax.psum(1, axis_name)


def _positive_mask(local_classes, all_classes, row_offset, local_batch):
    """[b, n*b] bool: same known class, or the row's own pair."""
    cols = jnp.arange(all_classes.shape[0])
    own = cols[None, :] == (row_offset + jnp.arange(local_batch))[:, None]
    same = (local_classes[:, None] == all_classes[None, :]) & (local_classes[:, None] >= 0)
    return own | same


def _soft_xent(logits, positives, col_valid):
    logits = jnp.where(col_valid[None, :], logits, _NEG)
    targets = (positives & col_valid[None, :]).astype(logits.dtype)
    targets = targets / jnp.maximum(targets.sum(-1, keepdims=True), 1.0)
    return -(targets * jax.nn.log_softmax(logits, axis=-1)).sum(-1)


def clip_loss(zp, zt, valid, classes, logit_scale, axis_name=None, multi_positive=True):
    """Symmetric CLIP softmax loss. Returns (loss, metrics) on each device; see the module docstring."""
    b = zp.shape[0]
    index, n_dev = _axis_info(axis_name, b)
    all_zp, all_zt = _gather(zp, axis_name), _gather(zt, axis_name)
    all_valid, all_classes = _gather(valid, axis_name), _gather(classes, axis_name)
    scale = jnp.exp(logit_scale)
    row_offset = index * b
    if multi_positive:
        positives = _positive_mask(classes, all_classes, row_offset, b)
    else:
        positives = _positive_mask(jnp.full_like(classes, -1), all_classes, row_offset, b)
    logits_p2t = scale * zp @ all_zt.T  # local rows of the global packet→text matrix
    logits_t2p = scale * zt @ all_zp.T
    per_row = 0.5 * (_soft_xent(logits_p2t, positives, all_valid) + _soft_xent(logits_t2p, positives, all_valid))
    rowmask = valid.astype(per_row.dtype)
    n_valid = all_valid.astype(per_row.dtype).sum()
    loss = (per_row * rowmask).sum() * n_dev / jnp.maximum(n_valid, 1.0)
    metrics = _retrieval_metrics(logits_p2t, logits_t2p, positives, all_valid, rowmask, n_dev, n_valid)
    return loss, metrics


def sigmoid_loss(zp, zt, valid, classes, logit_scale, logit_bias, axis_name=None, multi_positive=True):
    """SigLIP pairwise sigmoid loss, normalised per valid row like big_vision. Returns (loss, metrics)."""
    b = zp.shape[0]
    index, n_dev = _axis_info(axis_name, b)
    all_zt = _gather(zt, axis_name)
    all_valid, all_classes = _gather(valid, axis_name), _gather(classes, axis_name)
    row_offset = index * b
    if multi_positive:
        positives = _positive_mask(classes, all_classes, row_offset, b)
    else:
        positives = _positive_mask(jnp.full_like(classes, -1), all_classes, row_offset, b)
    logits = jnp.exp(logit_scale) * zp @ all_zt.T + logit_bias
    sign = jnp.where(positives, 1.0, -1.0)
    pair_valid = (valid[:, None] & all_valid[None, :]).astype(logits.dtype)
    per_pair = -jax.nn.log_sigmoid(sign * logits) * pair_valid
    rowmask = valid.astype(logits.dtype)
    n_valid = all_valid.astype(logits.dtype).sum()
    loss = per_pair.sum() * n_dev / jnp.maximum(n_valid, 1.0)
    all_zp = _gather(zp, axis_name)
    logits_t2p = jnp.exp(logit_scale) * zt @ all_zp.T + logit_bias
    metrics = _retrieval_metrics(logits, logits_t2p, positives, all_valid, rowmask, n_dev, n_valid)
    return loss, metrics


def _retrieval_metrics(logits_p2t, logits_t2p, positives, col_valid, rowmask, n_dev, n_valid):
    """In-batch retrieval accuracy (top-1 is a positive) and logit statistics, scaled like the loss."""
    masked_p2t = jnp.where(col_valid[None, :], logits_p2t, _NEG)
    masked_t2p = jnp.where(col_valid[None, :], logits_t2p, _NEG)
    hit_p2t = jnp.take_along_axis(positives, masked_p2t.argmax(-1)[:, None], axis=1)[:, 0]
    hit_t2p = jnp.take_along_axis(positives, masked_t2p.argmax(-1)[:, None], axis=1)[:, 0]
    norm = n_dev / jnp.maximum(n_valid, 1.0)
    pair_valid = rowmask[:, None] * col_valid[None, :].astype(rowmask.dtype)
    n_pairs = jnp.maximum(pair_valid.sum(), 1.0)
    pos = positives.astype(rowmask.dtype) * pair_valid
    neg = (1.0 - positives.astype(rowmask.dtype)) * pair_valid
    return {
        "p2t_accuracy": (hit_p2t * rowmask).sum() * norm,
        "t2p_accuracy": (hit_t2p * rowmask).sum() * norm,
        # Per-device means; pmean over devices gives the average of per-device means (a statistic, not exact).
        "logits_mean": (logits_p2t * pair_valid).sum() / n_pairs,
        "logits_pos_mean": (logits_p2t * pos).sum() / jnp.maximum(pos.sum(), 1.0),
        "logits_neg_mean": (logits_p2t * neg).sum() / jnp.maximum(neg.sum(), 1.0),
    }
