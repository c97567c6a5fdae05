"""Packet tower: a flow's first K packets (masked bytes + size/direction/timing/flags) → one vector.

Design (small on purpose; PacketCLIP's point is efficiency):
1. Bytes: each byte value gets an embedding, plus a learned embedding of its offset within the packet (a byte at
   offset 9 of an IPv4 header means "protocol", at offset 40 it is payload), so the tower can read header fields
   and cleartext protocol structure at fixed positions.
2. Patches: groups of `patch_size` consecutive bytes are flattened and projected to `width` → B/patch tokens per
   packet; a per-packet attention pooling (a learned query) summarises them into one packet token. Cost is linear
   in K×B, unlike a byte-level transformer.
3. Packet features (log size, direction, log inter-arrival time, TCP flag bits, "is padding") are projected and
   added to the packet token, with a learned packet-index embedding.
4. With `names`: the flow's server-name vector (pclip_jax/text/name_features.py) is projected into one more token,
   masked when the flow has no name, so packets can attend to it (a DNS query and a TLS session to the same
   name are different traffic).
5. A `depth`-layer pre-LN transformer over the K packet tokens (padding packets masked), then masked mean pooling.

Defaults (the settings' `model` section: width 192, depth 3, heads 6, patch 8; K=16, B=128) with server names give
1,076,160 parameters and 47.1 MFLOPs per flow (docs/model.md).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from pclip_jax.plumbing.settings import PacketTowerFields  # the field list, shared with the settings' model section


# Sizes at or above this share the last row of the size table (the log size still tells them apart).
MAX_EMBEDDED_SIZE = 1535


@dataclasses.dataclass(frozen=True)
class PacketTowerConfig(PacketTowerFields):
    """The architecture (`PacketTowerFields`: width, depth, heads, patch_size, pool_queries, byte_dim, mlp_ratio,
    dropout, name_fusion, size_embed_dim; `size_embed_dim` > 0: a learned vector per exact packet size
    0..MAX_EMBEDDED_SIZE joins the features) and what the job takes from other settings sections."""
    packets: int = 16          # K
    bytes: int = 128           # B
    names: bool = False        # a server-name token (needs `name_vec` inputs)
    dtype: Any = jnp.float32   # compute dtype (bf16 on accelerators); parameters stay float32


def packet_features(sizes, iat, tcp_flags):
    """[..., K] raw per-packet sequences → [..., K, 13] float features (no learned parameters)."""
    sizes = sizes.astype(jnp.float32)
    present = (sizes != 0).astype(jnp.float32)
    log_size = jnp.log1p(jnp.abs(sizes)) / 8.0
    direction = jnp.sign(sizes)
    log_iat = jnp.log1p(jnp.maximum(iat.astype(jnp.float32), 0.0) * 1e3) / 10.0  # ms scale
    # Flag bits by float arithmetic (exact for 0..255), not shifts or remainders: exporters (ONNX) handle it with no special case.
    shifted = jnp.floor(tcp_flags.astype(jnp.float32)[..., None] / 2.0 ** jnp.arange(8))
    bits = shifted - 2.0 * jnp.floor(shifted / 2.0)
    return jnp.concatenate(
        [log_size[..., None], direction[..., None], log_iat[..., None], present[..., None],
         (1.0 - present)[..., None], bits], axis=-1)


class _Block(nn.Module):
    width: int
    heads: int
    mlp_ratio: int
    dropout: float
    dtype: Any

    @nn.compact
    def __call__(self, x, mask, deterministic: bool):
        attn_mask = nn.make_attention_mask(mask, mask)
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.MultiHeadDotProductAttention(num_heads=self.heads, dtype=self.dtype, dropout_rate=self.dropout,
                                            deterministic=deterministic)(y, y, mask=attn_mask)
        x = x + y
        y = nn.LayerNorm(dtype=self.dtype)(x)
        y = nn.Dense(self.width * self.mlp_ratio, dtype=self.dtype)(y)
        y = nn.gelu(y)
        y = nn.Dense(self.width, dtype=self.dtype)(y)
        y = nn.Dropout(self.dropout)(y, deterministic=deterministic)
        return x + y


class PacketTower(nn.Module):
    """`__call__(bytes [N,K,B] uint8, sizes [N,K], iat [N,K], tcp_flags [N,K][, name_vec [N,D]]) -> [N, width]`
    (unnormalised; `name_vec` only with `config.names`, all zeros for a flow without a name)."""
    config: PacketTowerConfig

    @nn.compact
    def __call__(self, byte_rows, sizes, iat, tcp_flags, name_vec=None, deterministic: bool = True):
        cfg = self.config
        if cfg.names and name_vec is None:
            raise ValueError("this packet tower reads server names: pass name_vec (pclip_jax.text.name_features)")
        n, k, b = byte_rows.shape
        if b % cfg.patch_size:
            raise ValueError(f"bytes per packet ({b}) must be a multiple of patch_size ({cfg.patch_size})")
        # The lookup stays float32 and its result is cast: its gradient is a scatter-add of every byte position onto
        # 256 rows, and in bfloat16 that scatter runs on emulated bf16 atomics on GPUs (measured on an H200: the
        # bf16 training step took 8x the float32 one). Same values forward; the gradient is summed in float32.
        x = nn.Embed(256, cfg.byte_dim, dtype=jnp.float32, name="byte_embed")(
            byte_rows.astype(jnp.int32)).astype(cfg.dtype)
        offset = self.param("byte_offset_embed", nn.initializers.normal(0.02), (b, cfg.byte_dim))
        x = x + offset.astype(cfg.dtype)
        patches = x.reshape(n, k, b // cfg.patch_size, cfg.patch_size * cfg.byte_dim)
        tokens = nn.gelu(nn.Dense(cfg.width, dtype=cfg.dtype, name="patch_proj")(patches))
        # Attention pooling of each packet's patch tokens with `pool_queries` learned queries (concatenated and
        # projected back to `width` when there are several).
        queries = self.param("pool_query", nn.initializers.normal(0.02), (cfg.pool_queries, cfg.width))
        scores = jnp.einsum("nkpd,qd->nkqp", tokens, queries.astype(cfg.dtype))
        scores = scores / jnp.sqrt(cfg.width).astype(cfg.dtype)
        weights = nn.softmax(scores.astype(jnp.float32), axis=-1).astype(cfg.dtype)
        packet_tokens = jnp.einsum("nkqp,nkpd->nkqd", weights, tokens).reshape(n, k, cfg.pool_queries * cfg.width)
        if cfg.pool_queries > 1:
            packet_tokens = nn.Dense(cfg.width, dtype=cfg.dtype, name="pool_proj")(packet_tokens)
        feats = packet_features(sizes, iat, tcp_flags).astype(cfg.dtype)
        if cfg.size_embed_dim:
            # The log size resolves neighbouring lengths poorly (123 and 127 bytes differ by 0.004 after log1p/8);
            # devices of one firmware, and many protocols, differ by exact message lengths. Row 0 = padding.
            size_index = jnp.minimum(jnp.abs(jnp.asarray(sizes)).astype(jnp.int32), MAX_EMBEDDED_SIZE)
            size_vec = nn.Embed(MAX_EMBEDDED_SIZE + 1, cfg.size_embed_dim, dtype=jnp.float32, name="size_embed",
                                embedding_init=nn.initializers.normal(0.02))(
                size_index).astype(cfg.dtype)
            feats = jnp.concatenate([feats, size_vec], axis=-1)
        packet_tokens = packet_tokens + nn.Dense(cfg.width, dtype=cfg.dtype, name="feature_proj")(feats)
        if k > cfg.packets:
            raise ValueError(f"{k} packets per flow, but the tower was built for {cfg.packets} (data.packets)")
        # Sized by the config, sliced to the input: a batch of short flows may come with fewer packet slots (the
        # ONNX export has towers for fewer slots; every slot past a flow's packets is masked: the same outputs).
        position = self.param("packet_index_embed", nn.initializers.normal(0.02), (cfg.packets, cfg.width))[:k]
        h = packet_tokens + position.astype(cfg.dtype)
        present = jnp.asarray(sizes) != 0
        # A flow always has >= 1 packet; guard anyway so an all-padding row cannot produce NaNs.
        present = present.at[:, 0].set(True)
        if cfg.names:
            name_vec = jnp.asarray(name_vec, jnp.float32)
            has_name = jnp.abs(name_vec).sum(-1) > 0
            name_token = nn.Dense(cfg.width, dtype=cfg.dtype, name="name_proj")(name_vec.astype(cfg.dtype))
            name_token = name_token + self.param("name_type_embed", nn.initializers.normal(0.02),
                                                 (cfg.width,)).astype(cfg.dtype)
            h = jnp.concatenate([name_token[:, None], h], axis=1)
            present = jnp.concatenate([has_name[:, None], present], axis=1)
        for i in range(cfg.depth):
            h = _Block(cfg.width, cfg.heads, cfg.mlp_ratio, cfg.dropout, cfg.dtype, name=f"block{i}")(
                h, present, deterministic)
        h = nn.LayerNorm(dtype=cfg.dtype, name="final_norm")(h)
        w = present.astype(cfg.dtype)[..., None]
        pooled = (h * w).sum(1) / w.sum(1)
        if cfg.names and cfg.name_fusion == "both":
            # Late path: the name reaches the output directly (no bias: a flow without a name adds exactly 0).
            pooled = pooled + nn.Dense(cfg.width, use_bias=False, dtype=cfg.dtype, name="name_out")(
                name_vec.astype(cfg.dtype))
        return pooled.astype(jnp.float32)
