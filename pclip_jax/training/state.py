"""The towers' training state: the optimizer of pre-training and the `TrainState` a towers checkpoint holds
(pre-training creates it; restoring a workdir builds its shape to read the checkpoint into).
"""
from __future__ import annotations

import optax
from flax.training import train_state

from pclip_jax.models.two_towers import TwoTowers
from pclip_jax.plumbing.settings import Settings, TrainSettings
from pclip_jax.training.towers import init_params

TrainState = train_state.TrainState


def make_optimizer(train: TrainSettings):
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=train.learning_rate, warmup_steps=train.warmup_steps,
        decay_steps=max(train.num_steps, train.warmup_steps + 1), end_value=0.0)
    return optax.chain(optax.clip_by_global_norm(train.grad_clip),
                       optax.adamw(schedule, weight_decay=train.weight_decay)), schedule


def create_state(settings: Settings, model: TwoTowers, rng, text_dim: int = 384, text_params=None) -> TrainState:
    tx, _ = make_optimizer(settings.train)
    params = init_params(model, settings, rng, text_dim, text_params)
    return TrainState.create(apply_fn=model.apply, params=params, tx=tx)
