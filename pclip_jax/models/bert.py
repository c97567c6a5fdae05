"""A BERT encoder in Flax linen with sentence-transformers mean pooling.

The parameter tree mirrors Hugging Face's `BertModel` names closely enough that
`pclip_jax.models.text_tower` can load a `model.safetensors` file key by key:

    embeddings/{word_embeddings,position_embeddings,token_type_embeddings}/embedding
    embeddings/LayerNorm/{scale,bias}
    layer_{i}/{query,key,value,attention_output,intermediate,output}/{kernel,bias}
    layer_{i}/{attention_LayerNorm,output_LayerNorm}/{scale,bias}

HF's pooler (tanh over [CLS]) is not part of the model: sentence-transformers does
not use it; the sentence embedding is the masked mean of the last hidden states.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

_ACTIVATIONS = {
    # HF "gelu" is the exact erf form; "gelu_new"/"gelu_pytorch_tanh" the tanh approximation.
    "gelu": lambda x: nn.gelu(x, approximate=False),
    "gelu_new": lambda x: nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: nn.gelu(x, approximate=True),
    "relu": nn.relu,
}


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and regularisation of a BERT encoder (the fields of HF `config.json`)."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    initializer_range: float = 0.02
    pad_token_id: int = 0

    def __post_init__(self):
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig: hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}")
        if self.hidden_act not in _ACTIVATIONS:
            raise ValueError(
                f"BertConfig: hidden_act {self.hidden_act!r} not supported "
                f"(supported: {sorted(_ACTIVATIONS)})")
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"BertConfig: {name} must be >= 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, d: dict, source: str = "config") -> "BertConfig":
        """Builds a config from a HF `config.json` dict; unknown keys are ignored.

        Raises ValueError (naming `source`) for a non-BERT model or an unsupported
        position embedding type.
        """
        model_type = d.get("model_type", "bert")
        if model_type != "bert":
            raise ValueError(f"{source}: model_type {model_type!r} is not 'bert'")
        pos = d.get("position_embedding_type", "absolute")
        if pos != "absolute":
            raise ValueError(f"{source}: position_embedding_type {pos!r} not supported "
                             "(only 'absolute')")
        names = {f.name for f in dataclasses.fields(cls)}
        try:
            return cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as e:
            raise ValueError(f"{source}: {e}") from e

    @classmethod
    def from_json(cls, path) -> "BertConfig":
        """Reads a HF `config.json` file."""
        path = pathlib.Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise FileNotFoundError(f"{path}: BERT config.json not found") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if not isinstance(d, dict):
            raise ValueError(f"{path}: expected a JSON object, got {type(d).__name__}")
        return cls.from_dict(d, source=str(path))

    @classmethod
    def small(cls, vocab_size: int = 30522, hidden_size: int = 128, num_hidden_layers: int = 2,
              num_attention_heads: int = 4, intermediate_size: Optional[int] = None,
              max_position_embeddings: int = 256, dropout: float = 0.1) -> "BertConfig":
        """A small text transformer to train from scratch (same tokenizer, random init)."""
        return cls(vocab_size=vocab_size, hidden_size=hidden_size,
                   num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                   intermediate_size=intermediate_size or 4 * hidden_size,
                   max_position_embeddings=max_position_embeddings,
                   hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def _dense(config: BertConfig, features: int, dtype, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=name,
                    kernel_init=nn.initializers.normal(config.initializer_range))


def _layer_norm(config: BertConfig, dtype, name: str) -> nn.LayerNorm:
    return nn.LayerNorm(epsilon=config.layer_norm_eps, dtype=dtype, param_dtype=jnp.float32,
                        name=name)


class BertLayer(nn.Module):
    """One post-LayerNorm transformer block (self-attention + feed-forward), as in BERT."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x, mask_bias, deterministic: bool):
        cfg = self.config
        n, t, _ = x.shape
        heads = cfg.num_attention_heads
        head_dim = cfg.hidden_size // heads

        def split(y):  # [N, T, D] -> [N, H, T, Dh]
            return y.reshape(n, t, heads, head_dim).transpose(0, 2, 1, 3)

        q = split(_dense(cfg, cfg.hidden_size, self.dtype, "query")(x))
        k = split(_dense(cfg, cfg.hidden_size, self.dtype, "key")(x))
        v = split(_dense(cfg, cfg.hidden_size, self.dtype, "value")(x))
        logits = jnp.einsum("nhqd,nhkd->nhqk", q, k) / jnp.sqrt(head_dim).astype(q.dtype)
        # Softmax in float32 even under bf16 compute: the additive mask and the
        # normalisation are where low precision hurts.
        probs = jax.nn.softmax(logits.astype(jnp.float32) + mask_bias, axis=-1)
        probs = nn.Dropout(cfg.attention_probs_dropout_prob)(probs, deterministic=deterministic)
        ctx = jnp.einsum("nhqk,nhkd->nhqd", probs.astype(self.dtype), v)
        ctx = ctx.transpose(0, 2, 1, 3).reshape(n, t, cfg.hidden_size)
        attn = _dense(cfg, cfg.hidden_size, self.dtype, "attention_output")(ctx)
        attn = nn.Dropout(cfg.hidden_dropout_prob)(attn, deterministic=deterministic)
        x = _layer_norm(cfg, self.dtype, "attention_LayerNorm")(x + attn)

        h = _dense(cfg, cfg.intermediate_size, self.dtype, "intermediate")(x)
        h = _ACTIVATIONS[cfg.hidden_act](h)
        h = _dense(cfg, cfg.hidden_size, self.dtype, "output")(h)
        h = nn.Dropout(cfg.hidden_dropout_prob)(h, deterministic=deterministic)
        return _layer_norm(cfg, self.dtype, "output_LayerNorm")(x + h)


class BertEncoder(nn.Module):
    """BERT encoder → masked mean pooling → (optionally) L2 normalisation.

    Attributes:
      config: the BertConfig.
      dtype: compute dtype (e.g. jnp.bfloat16 on accelerators); parameters stay
        float32 and attention softmax, pooling and normalisation run in float32.
    """

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, attention_mask, token_type_ids=None,
                 deterministic: bool = True, normalize: bool = True):
        """Embeds tokenised sentences.

        Args:
          input_ids: int [N, T] token ids (T ≤ max_position_embeddings).
          attention_mask: int/bool [N, T], 1 for real tokens, 0 for padding.
          token_type_ids: int [N, T] or None (all zeros).
          deterministic: True disables dropout; False needs a 'dropout' rng.
          normalize: True returns unit-norm sentence embeddings (sentence-transformers'
            output); False returns the raw masked mean (e.g. to feed a projection head).

        Returns:
          float32 [N, hidden_size] sentence embeddings. A row with no real token
          (all-zero mask) gives a zero vector.
        """
        cfg = self.config
        input_ids = jnp.asarray(input_ids)
        if input_ids.ndim != 2:
            raise ValueError(f"BertEncoder: input_ids must be [N, T], got shape {input_ids.shape}")
        n, t = input_ids.shape
        if t > cfg.max_position_embeddings:
            raise ValueError(f"BertEncoder: sequence length {t} exceeds "
                             f"max_position_embeddings {cfg.max_position_embeddings}")
        attention_mask = jnp.asarray(attention_mask)
        if attention_mask.shape != (n, t):
            raise ValueError(f"BertEncoder: attention_mask shape {attention_mask.shape} "
                             f"!= input_ids shape {(n, t)}")
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        mask = attention_mask.astype(jnp.float32)

        x = BertEmbeddings(cfg, self.dtype, name="embeddings")(input_ids, token_type_ids,
                                                            deterministic)

        # Additive mask: 0 for real keys, a large negative for padding, broadcast to
        # [N, 1, 1, T]. A finite value keeps an all-padding row finite (uniform
        # attention) instead of NaN.
        mask_bias = ((1.0 - mask) * -1e9)[:, None, None, :]
        for i in range(cfg.num_hidden_layers):
            x = BertLayer(cfg, self.dtype, name=f"layer_{i}")(x, mask_bias, deterministic)

        x = x.astype(jnp.float32)
        summed = jnp.einsum("ntd,nt->nd", x, mask)
        pooled = summed / jnp.maximum(mask.sum(axis=1, keepdims=True), 1e-9)
        if not normalize:
            return pooled
        norm = jnp.linalg.norm(pooled, axis=-1, keepdims=True)
        return pooled / jnp.maximum(norm, 1e-12)


class BertEmbeddings(nn.Module):
    """Word + position + token-type embeddings, LayerNorm, dropout."""

    config: BertConfig
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, input_ids, token_type_ids, deterministic: bool):
        cfg = self.config
        init = nn.initializers.normal(cfg.initializer_range)

        def embed(num, name):
            return nn.Embed(num, cfg.hidden_size, embedding_init=init, dtype=self.dtype,
                            param_dtype=jnp.float32, name=name)

        t = input_ids.shape[1]
        x = (embed(cfg.vocab_size, "word_embeddings")(input_ids)
             + embed(cfg.max_position_embeddings, "position_embeddings")(jnp.arange(t)[None, :])
             + embed(cfg.type_vocab_size, "token_type_embeddings")(token_type_ids))
        x = _layer_norm(cfg, self.dtype, "LayerNorm")(x)
        return nn.Dropout(cfg.hidden_dropout_prob)(x, deterministic=deterministic)
