"""The peers as Flax modules, read from their papers (no code copied), at two sizes: `published` (the papers'
configurations: FLOPs and parameter counts, trainable on accelerators) and `cpu` (what trains on a 2-core CPU in
minutes; the sweep's default).

Every model maps its input to class logits (`__call__`) and has its pre-training objective (`pretrain_loss`;
FS-Net's is its reconstruction loss, the 1D-CNN has none). `init_all` creates the parameters of both.

| model | input (`inputs.py`) | published configuration |
| --- | --- | --- |
| ET-BERT | [CLS] + 127 byte bigrams | BERT-base: 12 × 768, 12 heads, FFN 3072; masked-token pre-training |
| YaTC | 5 × 320 bytes as a 40 × 40 image | ViT: patch 2 (400 patches), width 192, depth 4, 16 heads; MAE (mask 0.9) |
| NetMamba | the same 1,600 bytes as 400 stride-4 tokens | Mamba: width 256, depth 4, state 16, expand 2; MAE-style |
| 1D-CNN | first 784 bytes | conv 32 (k 25) → pool 3 → conv 64 (k 25) → pool 3 → dense 1024 → classes |
| FS-Net | signed lengths of 16 packets | embedding 128, 2-layer bi-GRU 128 encoder and decoder, reconstruction |
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from pclip_jax.models.bert import BertConfig, BertEmbeddings, BertLayer
from pclip_bench.peers import inputs

Array = Any


def _masked_mean(x, mask):
    m = mask.astype(x.dtype)[..., None]
    return (x * m).sum(1) / jnp.maximum(m.sum(1), 1.0)


def _random_mask(rng, shape, ratio: float):
    """bool [N, T]: True for the round(ratio·T) positions hidden in each row (a per-row random permutation)."""
    n, t = shape
    order = jnp.argsort(jax.random.uniform(rng, (n, t)), axis=1)
    return order < int(round(ratio * t))


# ----------------------------------------------------------------------------------------------- ET-BERT

class ETBert(nn.Module):
    """BERT encoder over byte-bigram tokens; the [CLS] state classifies. Pre-training: masked-token prediction
    (15 % of the real tokens; ET-BERT's masked BURST model without the same-origin pair task, as the inputs here
    are single flows)."""
    num_classes: int
    width: int = 768
    depth: int = 12
    heads: int = 12
    ffn: int = 3072
    length: int = 128
    dropout: float = 0.1
    dtype: Any = jnp.float32  # compute dtype of the encoder (parameters stay float32; softmax and norms in float32)

    def setup(self):
        self.config = BertConfig(vocab_size=inputs.BIGRAM_VOCAB, hidden_size=self.width,
                                 num_hidden_layers=self.depth, num_attention_heads=self.heads,
                                 intermediate_size=self.ffn, max_position_embeddings=self.length,
                                 hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout)
        self.embeddings = BertEmbeddings(self.config, self.dtype)
        self.layers = [BertLayer(self.config, self.dtype) for _ in range(self.depth)]
        self.head = nn.Dense(self.num_classes)
        self.mlm_transform = nn.Dense(self.width)
        self.mlm_norm = nn.LayerNorm(epsilon=1e-12)

    def encode(self, tokens, mask, deterministic: bool = True):
        x = self.embeddings(tokens, jnp.zeros_like(tokens), deterministic)
        bias = ((1.0 - mask.astype(jnp.float32)) * -1e9)[:, None, None, :]
        for layer in self.layers:
            x = layer(x, bias, deterministic)
        return x

    def __call__(self, x, deterministic: bool = True):
        tokens, mask = x
        return self.head(self.encode(tokens, mask, deterministic)[:, 0])

    def pretrain_loss(self, x, rng, deterministic: bool = False):
        tokens, mask = jnp.asarray(x[0]), jnp.asarray(x[1])
        n, t = tokens.shape
        k = max(1, int(round(0.15 * t)))
        # 15 % of the positions, drawn among the real non-[CLS] tokens (a row with fewer real tokens masks what it
        # has); the output layer is evaluated at those positions only (a 65k-way softmax at every position would
        # cost more than the encoder).
        eligible = mask & (tokens != inputs.SPECIAL["cls"])
        noise = jnp.where(eligible, jax.random.uniform(rng, (n, t)), -1.0)
        _, where = jax.lax.top_k(noise, k)                                                    # [N, k]
        real = jnp.take_along_axis(eligible, where, axis=1)
        targets = jnp.take_along_axis(tokens, where, axis=1)
        rows = jnp.arange(n)[:, None]
        corrupted = tokens.at[rows, where].set(jnp.where(real, inputs.SPECIAL["mask"], targets))
        h = self.encode(corrupted, mask, deterministic)[rows, where]                           # [N, k, D]
        h = self.mlm_norm(nn.gelu(self.mlm_transform(h)))
        table = self.embeddings.variables["params"]["word_embeddings"]["embedding"]  # tied output embeddings
        ce = optax.softmax_cross_entropy_with_integer_labels(h @ table.T, targets)
        return (ce * real).sum() / jnp.maximum(real.sum(), 1)

    def init_all(self, x, rng):
        return self(x), self.pretrain_loss(x, rng, deterministic=True)


# ----------------------------------------------------------------------------------------------- ViT blocks

class Block(nn.Module):
    """Pre-LN transformer block."""
    width: int
    heads: int
    mlp_ratio: int = 4

    @nn.compact
    def __call__(self, x):
        y = nn.LayerNorm()(x)
        x = x + nn.MultiHeadDotProductAttention(self.heads, qkv_features=self.width)(y, y)
        y = nn.Dense(self.width * self.mlp_ratio)(nn.LayerNorm()(x))
        return x + nn.Dense(self.width)(nn.gelu(y))


# ----------------------------------------------------------------------------------------------- YaTC

class YaTC(nn.Module):
    """ViT over the 40 × 40 byte image (patches of `patch` × `patch`), mean-pooled. Pre-training: a masked
    autoencoder — the encoder sees 10 % of the patches, a light decoder reconstructs the hidden ones' bytes."""
    num_classes: int
    width: int = 192
    depth: int = 4
    heads: int = 16
    patch: int = 2
    side: int = 40
    decoder_width: int = 128
    decoder_depth: int = 2
    mask_ratio: float = 0.9

    def setup(self):
        n = (self.side // self.patch) ** 2
        self.embed = nn.Dense(self.width)
        self.pos = self.param("pos", nn.initializers.normal(0.02), (1, n, self.width))
        self.blocks = [Block(self.width, self.heads) for _ in range(self.depth)]
        self.norm = nn.LayerNorm()
        self.head = nn.Dense(self.num_classes)
        self.dec_embed = nn.Dense(self.decoder_width)
        self.dec_pos = self.param("dec_pos", nn.initializers.normal(0.02), (1, n, self.decoder_width))
        self.mask_token = self.param("mask_token", nn.initializers.normal(0.02), (1, 1, self.decoder_width))
        self.dec_blocks = [Block(self.decoder_width, 4) for _ in range(self.decoder_depth)]
        self.dec_out = nn.Dense(self.patch * self.patch)

    def patches(self, image):
        n, p = image.shape[0], self.patch
        g = self.side // p
        return image.reshape(n, g, p, g, p).transpose(0, 1, 3, 2, 4).reshape(n, g * g, p * p)

    def __call__(self, image, deterministic: bool = True):
        x = self.embed(self.patches(image)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(1))

    def pretrain_loss(self, image, rng, deterministic: bool = False):
        target = self.patches(image)
        n, t, _ = target.shape
        keep = int(round((1 - self.mask_ratio) * t))
        order = jnp.argsort(jax.random.uniform(rng, (n, t)), axis=1)
        visible = order[:, :keep]
        x = self.embed(target) + self.pos
        x = jnp.take_along_axis(x, visible[:, :, None], axis=1)
        for block in self.blocks:
            x = block(x)
        x = self.dec_embed(self.norm(x))
        full = jnp.broadcast_to(self.mask_token, (n, t, self.decoder_width))
        full = full.at[jnp.arange(n)[:, None], visible].set(x) + self.dec_pos
        for block in self.dec_blocks:
            full = block(full)
        hidden = jnp.ones((n, t), bool).at[jnp.arange(n)[:, None], visible].set(False)
        err = ((self.dec_out(full) - target) ** 2).mean(-1)
        return (err * hidden).sum() / jnp.maximum(hidden.sum(), 1)

    def init_all(self, image, rng):
        return self(image), self.pretrain_loss(image, rng)


# ----------------------------------------------------------------------------------------------- NetMamba

def selective_scan(decay, drive, parallel: bool):
    """h_t = decay_t · h_{t-1} + drive_t along axis 1 (h_0 = drive_0). `parallel`: `jax.lax.associative_scan`
    (log-depth; for accelerators), else a sequential `jax.lax.scan` (3× faster on a CPU, measured)."""
    if parallel:
        return jax.lax.associative_scan(lambda l, r: (l[0] * r[0], r[0] * l[1] + r[1]), (decay, drive), axis=1)[1]

    def step(h, ab):
        h = ab[0] * h + ab[1]
        return h, h

    _, hs = jax.lax.scan(step, jnp.zeros_like(drive[:, 0]), (jnp.moveaxis(decay, 1, 0), jnp.moveaxis(drive, 1, 0)))
    return jnp.moveaxis(hs, 0, 1)


class MambaMixer(nn.Module):
    """Mamba's selective state-space layer (Gu & Dao, 2023): input projection to x and gate z, causal depthwise
    convolution, input-dependent step Δ, B, C, the scan h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t x_t,
    y_t = C_t h_t + D x_t, gated by SiLU(z)."""
    width: int
    state: int = 16
    expand: int = 2
    conv: int = 4
    parallel_scan: bool = False

    @nn.compact
    def __call__(self, u):
        inner = self.expand * self.width
        rank = max(1, -(-self.width // 16))
        xz = nn.Dense(2 * inner, use_bias=False, name="in_proj")(u)
        x, z = jnp.split(xz, 2, axis=-1)
        t = u.shape[1]
        x = nn.Conv(inner, (self.conv,), padding=[(self.conv - 1, 0)], feature_group_count=inner,
                    name="conv")(x)[:, :t]
        x = nn.silu(x)
        dbc = nn.Dense(rank + 2 * self.state, use_bias=False, name="x_proj")(x)
        dt, b, c = jnp.split(dbc, [rank, rank + self.state], axis=-1)
        dt = nn.softplus(nn.Dense(inner, name="dt_proj")(dt))                            # [N, T, E]
        a_log = self.param("A_log", lambda k, s: jnp.log(jnp.broadcast_to(
            jnp.arange(1, self.state + 1, dtype=jnp.float32), s)), (inner, self.state))
        d = self.param("D", nn.initializers.ones, (inner,))
        decay = jnp.exp(dt[..., None] * -jnp.exp(a_log))                                 # [N, T, E, S]
        drive = (dt * x)[..., None] * b[:, :, None, :]                                   # [N, T, E, S]

        h = selective_scan(decay, drive, self.parallel_scan)
        y = jnp.einsum("ntes,nts->nte", h, c) + d * x
        return nn.Dense(self.width, use_bias=False, name="out_proj")(y * nn.silu(z))


class NetMamba(nn.Module):
    """Unidirectional Mamba over stride tokens of the 5 × 320 bytes; the last position classifies (it has read
    the whole flow). Pre-training: masked stride tokens (mask 0.5, zeroed at the input) reconstructed."""
    num_classes: int
    width: int = 256
    depth: int = 4
    state: int = 16
    tokens: int = 400
    mask_ratio: float = 0.5
    merge: int = 1              # consecutive stride tokens merged into one (the CPU size: 100 tokens of 16 bytes)
    parallel_scan: bool = True  # associative scan (accelerators); the CPU size scans sequentially

    def setup(self):
        self.embed = nn.Dense(self.width)
        self.pos = self.param("pos", nn.initializers.normal(0.02), (1, self.tokens // self.merge, self.width))
        self.norms = [nn.RMSNorm() for _ in range(self.depth)]
        self.mixers = [MambaMixer(self.width, self.state, parallel_scan=self.parallel_scan)
                       for _ in range(self.depth)]
        self.norm = nn.RMSNorm()
        self.head = nn.Dense(self.num_classes)
        self.reconstruct = nn.Dense(4 * self.merge)

    def merged(self, x):
        return x.reshape(x.shape[0], x.shape[1] // self.merge, x.shape[2] * self.merge)

    def encode(self, x):
        h = self.embed(x) + self.pos[:, :x.shape[1]]
        for norm, mixer in zip(self.norms, self.mixers):
            h = h + mixer(norm(h))
        return self.norm(h)

    def __call__(self, x, deterministic: bool = True):
        return self.head(self.encode(self.merged(x))[:, -1])

    def pretrain_loss(self, x, rng, deterministic: bool = False):
        x = self.merged(x)
        hidden = _random_mask(rng, x.shape[:2], self.mask_ratio)
        h = self.encode(jnp.where(hidden[..., None], 0.0, x))
        err = ((self.reconstruct(h) - x) ** 2).mean(-1)
        return (err * hidden).sum() / jnp.maximum(hidden.sum(), 1)

    def init_all(self, x, rng):
        return self(x), self.pretrain_loss(x, rng)


# ----------------------------------------------------------------------------------------------- 1D-CNN

class CNN1D(nn.Module):
    """Wang et al. (2017): two 1-D convolutions (kernel 25, same padding, ReLU) each followed by max-pooling
    (3, stride 3), a 1,024-unit dense layer (dropout) and the classes. No pre-training."""
    num_classes: int
    channels: tuple = (32, 64)
    kernel: int = 25
    hidden: int = 1024
    dropout: float = 0.5

    @nn.compact
    def __call__(self, x, deterministic: bool = True):
        h = x[..., None]
        for ch in self.channels:
            h = nn.relu(nn.Conv(ch, (self.kernel,), padding="SAME")(h))
            h = nn.max_pool(h, (3,), strides=(3,), padding="SAME")
        h = nn.relu(nn.Dense(self.hidden)(h.reshape(h.shape[0], -1)))
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
        return nn.Dense(self.num_classes)(h)

    def init_all(self, x, rng):
        return self(x)


# ----------------------------------------------------------------------------------------------- FS-Net

class BiGRU(nn.Module):
    """`layers` bidirectional GRU layers (padding packets sit at the end, so the backward pass reads them first;
    they are zero-length ids with their own embedding)."""
    hidden: int
    layers: int = 2

    @nn.compact
    def __call__(self, x):
        finals = []
        for i in range(self.layers):
            fwd = nn.RNN(nn.GRUCell(self.hidden), return_carry=True, name=f"fwd_{i}")
            bwd = nn.RNN(nn.GRUCell(self.hidden), return_carry=True, reverse=True, keep_order=True,
                         name=f"bwd_{i}")
            cf, yf = fwd(x)
            cb, yb = bwd(x)
            x = jnp.concatenate([yf, yb], -1)
            finals += [cf, cb]
        return x, jnp.concatenate(finals, -1)


class FSNet(nn.Module):
    """FS-Net (Liu et al., 2019): packet-length embeddings → bi-GRU encoder → bi-GRU decoder that reconstructs
    the length sequence; the classifier reads the encoder and decoder states (e, d, e·d, |e − d|). Its
    reconstruction loss is added to the classification loss (weight `alpha`) and is also its pre-training."""
    num_classes: int
    embed: int = 128
    hidden: int = 128
    layers: int = 2
    alpha: float = 1.0
    dropout: float = 0.3

    def setup(self):
        self.embedding = nn.Embed(inputs.LENGTH_VOCAB, self.embed)
        self.encoder = BiGRU(self.hidden, self.layers)
        self.decoder = BiGRU(self.hidden, self.layers)
        self.reconstruct = nn.Dense(inputs.LENGTH_VOCAB)
        self.compress = nn.Dense(self.hidden)
        self.head = nn.Dense(self.num_classes)
        self.drop = nn.Dropout(self.dropout)

    def states(self, ids):
        _, e = self.encoder(self.embedding(ids))
        steps = jnp.broadcast_to(e[:, None, :], (ids.shape[0], ids.shape[1], e.shape[-1]))
        dec_seq, d = self.decoder(steps)
        return e, d, dec_seq

    def __call__(self, x, deterministic: bool = True):
        ids, _ = x
        e, d, _ = self.states(ids)
        z = jnp.concatenate([e, d, e * d, jnp.abs(e - d)], -1)
        return self.head(self.drop(nn.selu(self.compress(z)), deterministic=deterministic))

    def reconstruction_loss(self, x):
        ids, real = x
        _, _, dec_seq = self.states(ids)
        ce = optax.softmax_cross_entropy_with_integer_labels(self.reconstruct(dec_seq), ids)
        return (ce * real).sum() / jnp.maximum(real.sum(), 1)

    def pretrain_loss(self, x, rng, deterministic: bool = False):
        return self.reconstruction_loss(x)

    def init_all(self, x, rng):
        return self(x), self.reconstruction_loss(x)


# ----------------------------------------------------------------------------------------------- registry

@dataclasses.dataclass(frozen=True)
class PeerSpec:
    """How the suite builds, feeds and trains one peer."""
    name: str
    build: Callable[..., nn.Module]        # build(num_classes, size) → module
    features: Callable[[dict, Any], Any]   # features(tensors, idx) → model input (array or tuple of arrays)
    pretrain: bool                         # has a self-supervised pre-training stage
    aux_weight: float = 0.0                # weight of pretrain_loss added to the fine-tuning loss (FS-Net)
    published_params: int = 0              # the paper's parameter count (0: not published), for the tests


SIZES = {
    "etbert": {"published": dict(width=768, depth=12, heads=12, ffn=3072),
               "cpu": dict(width=128, depth=2, heads=4, ffn=512)},
    "yatc": {"published": dict(width=192, depth=4, heads=16, patch=2),
             "cpu": dict(width=64, depth=2, heads=4, patch=4, decoder_width=64, decoder_depth=1)},
    "netmamba": {"published": dict(width=256, depth=4, state=16),
                 "cpu": dict(width=64, depth=2, state=8, merge=4, parallel_scan=False)},
    "cnn1d": {"published": {}, "cpu": {}},
    "fsnet": {"published": dict(embed=128, hidden=128, layers=2), "cpu": dict(embed=32, hidden=64, layers=2)},
}


def _image(tensors, idx):
    return inputs.byte_image(tensors, idx)


PEERS = {
    "etbert": PeerSpec("etbert", lambda c, s: ETBert(c, **SIZES["etbert"][s]), inputs.bigram_tokens, True,
                       # BERT-base's encoder with ET-BERT's 60,005-token vocabulary: 85.1 M + 46.5 M embeddings
                       published_params=131_600_000),
    "yatc": PeerSpec("yatc", lambda c, s: YaTC(c, **SIZES["yatc"][s]), _image, True,
                     published_params=2_000_000),
    "netmamba": PeerSpec("netmamba", lambda c, s: NetMamba(c, **SIZES["netmamba"][s]), inputs.stride_tokens, True),
    "cnn1d": PeerSpec("cnn1d", lambda c, s: CNN1D(c, **SIZES["cnn1d"][s]), inputs.first_bytes, False,
                      published_params=5_800_000),
    "fsnet": PeerSpec("fsnet", lambda c, s: FSNet(c, **SIZES["fsnet"][s]), inputs.length_sequence, False,
                      aux_weight=1.0),
}
