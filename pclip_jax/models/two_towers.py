"""Two towers in one embedding space: packet tower + text features, projection heads, temperature and bias.

The text side takes *text features*: either cached sentence embeddings from the frozen text tower (locked-text
tuning, the default: the encoder runs once per distinct text, not per step) or the output of a trainable text
encoder passed in as `text_encoder` (then the batch carries token ids). Following big_vision's two-tower model,
the model owns the temperature (`logit_scale`, stored as a log) and the SigLIP bias.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import flax.linen as nn
import jax.numpy as jnp

from pclip_jax.plumbing.settings import TwoTowerFields  # the field list, shared with the settings' model section
from pclip_jax.models.packet_tower import PacketTower, PacketTowerConfig


@dataclasses.dataclass(frozen=True)
class TwoTowerConfig(TwoTowerFields):
    """The shared space (`TwoTowerFields`: embed_dim), the packet tower, and the temperature and bias at start."""
    packet: PacketTowerConfig = PacketTowerConfig()
    init_temperature: float = 10.0   # logit scale = exp(log(10)) at start
    init_bias: float = -10.0         # SigLIP's recommended start
    max_log_scale: float = 4.6052    # log(100), the CLIP clamp


def _l2_normalize(x, eps=1e-6):
    return x / jnp.sqrt(jnp.maximum((x * x).sum(-1, keepdims=True), eps))


class TwoTowers(nn.Module):
    config: TwoTowerConfig
    text_encoder: Optional[nn.Module] = None  # only when the text tower is tuned

    def setup(self):
        cfg = self.config
        self.packet_tower = PacketTower(cfg.packet)
        self.packet_head = nn.Dense(cfg.embed_dim, name="packet_head")
        self.text_head = nn.Dense(cfg.embed_dim, name="text_head")
        self.log_scale = self.param("logit_scale", nn.initializers.constant(jnp.log(cfg.init_temperature)), ())
        self.bias = self.param("logit_bias", nn.initializers.constant(cfg.init_bias), ())

    def packet_features(self, batch, deterministic=True):
        """Packet-tower output before projection (what the linear probe and the GNN use)."""
        return self.packet_tower(batch["bytes"], batch["sizes"], batch["iat"], batch["tcp_flags"],
                                 batch.get("name_vec"), deterministic=deterministic)

    def embed_packets(self, batch, deterministic=True):
        return _l2_normalize(self.packet_head(self.packet_features(batch, deterministic)))

    def embed_text(self, text_features=None, tokens=None):
        """Projected, normalised text embeddings from cached features [N, Dt] or, when tuned, from token ids."""
        if tokens is not None:
            if self.text_encoder is None:
                raise ValueError("token ids given but the model has no trainable text encoder")
            text_features = self.text_encoder(tokens["input_ids"], tokens["attention_mask"])
        return _l2_normalize(self.text_head(text_features))

    def logit_params(self):
        return jnp.minimum(self.log_scale, self.config.max_log_scale), self.bias

    def __call__(self, batch, text_features=None, tokens=None, deterministic=True):
        zp = self.embed_packets(batch, deterministic)
        zt = self.embed_text(text_features, tokens)
        scale, bias = self.logit_params()
        return zp, zt, scale, bias
