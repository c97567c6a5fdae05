"""Inference with the two towers, shared by training, evaluation and classify: the model a config builds, the
packet tower's inputs, embedding flows in fixed-shape batches, text features of class prompts, zero-shot scores.
"""
from __future__ import annotations

import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from pclip_jax.plumbing import runtime
from pclip_jax.text import prompts as text_lib
from pclip_jax.plumbing.runtime import count_params
from pclip_jax.graph import schema
from pclip_jax.models.bert import BertConfig, BertEncoder
from pclip_jax.models.packet_tower import PacketTowerConfig
from pclip_jax.models.text_tower import load_text_encoder
from pclip_jax.models.two_towers import TwoTowerConfig, TwoTowers
from pclip_jax.data.flow_source import TENSOR_KEYS, tower_inputs  # noqa: F401  (re-exported)
from pclip_jax.data.flow_table import NAME_KEY
from pclip_jax.plumbing.settings import PacketTowerFields, Settings, TextSettings, TwoTowerFields, field_values
from pclip_jax.text.feature_cache import TextFeaturizer, cached_text_features, params_tag

AXIS = "batch"


def compute_dtype(settings: Settings):
    return jnp.bfloat16 if settings.train.dtype == "bfloat16" else jnp.float32


def model_config(settings: Settings) -> TwoTowerConfig:
    """The towers' config: the `model` section's fields (the configs' own field lists) and, from the other
    sections, the input shape, the name token and the compute dtype."""
    m, d = settings.model, settings.data
    packet = PacketTowerConfig(**field_values(m, PacketTowerFields), packets=d.packets, bytes=d.bytes,
                               names=d.use_names, dtype=compute_dtype(settings))
    return TwoTowerConfig(**field_values(m, TwoTowerFields), packet=packet)


def text_module(settings: Settings):
    """The text encoder module: all-MiniLM-L6-v2's architecture, or `BertConfig.small()` from scratch."""
    t = settings.text
    if t.from_scratch:
        tokenizer = load_text_encoder(t.encoder)[2]
        return BertEncoder(BertConfig.small(vocab_size=max(tokenizer.vocab_size, 30522),
                                            max_position_embeddings=max(t.max_len, 64)),
                           dtype=compute_dtype(settings))
    return load_text_encoder(t.encoder, dtype=compute_dtype(settings))[0]


def build_model(settings: Settings) -> TwoTowers:
    """The two towers; a tuned or from-scratch text encoder is part of the model, a locked one is not."""
    if not settings.text.trained:
        return TwoTowers(model_config(settings))
    return TwoTowers(model_config(settings), text_encoder=text_module(settings))


def text_featurizer(settings: Settings, params=None) -> TextFeaturizer:
    """Text features for prompts and graph descriptions: the pretrained encoder, or the trained one in `params`."""
    t = settings.text
    if params is not None and "text_encoder" in params:
        return TextFeaturizer(t.encoder, t.max_len, t.batch_size, params=params["text_encoder"],
                              tag=params_tag(params["text_encoder"]), module=text_module(settings))
    return TextFeaturizer(t.encoder, t.max_len, t.batch_size)


def dummy_batch(settings: Settings, n: int = 1, text_dim: int = 384) -> dict:
    k, b = settings.data.packets, settings.data.bytes
    return {"bytes": np.zeros((n, k, b), np.uint8), "sizes": np.ones((n, k), np.int32),
            "iat": np.zeros((n, k), np.float32), "tcp_flags": np.zeros((n, k), np.uint8),
            "text": np.zeros((n, text_dim), np.float32), "valid": np.ones((n,), bool),
            "class_id": np.zeros((n,), np.int32),
            **({NAME_KEY: np.zeros((n, settings.model.name_dim), np.float16)} if settings.data.use_names else {})}


def init_params(model: TwoTowers, settings: Settings, rng, text_dim: int = 384, text_params=None):
    """Initial parameters; a trainable text encoder starts from `text_params` (the pretrained weights)."""
    batch = dummy_batch(settings, 1, text_dim)
    if model.text_encoder is None:
        return model.init(rng, batch, text_features=jnp.asarray(batch["text"]))["params"]
    length = settings.text.max_len
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


def make_embed_fn(model: TwoTowers):
    """pmapped: batch → (packet features before projection, projected normalised packet embeddings)."""
    def embed(params, batch):
        feats = model.apply({"params": params}, batch, method=TwoTowers.packet_features)
        z = model.apply({"params": params}, batch, method=TwoTowers.embed_packets)
        return feats, z
    return runtime.pmap(embed, axis_name=AXIS)


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
        f, z = embed_fn(replicated_params, runtime.shard(batch))
        feats.append(np.asarray(f).reshape(batch_size, -1)[:len(idx)])
        embs.append(np.asarray(z).reshape(batch_size, -1)[:len(idx)])
    if not feats:
        return np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32)
    return np.concatenate(feats), np.concatenate(embs)


def class_text_features(class_names: Sequence[str], featurizer, descriptions, cache_dir
                        ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per class: the frozen features of each of its prompts ([P, Dt]) and the prompt's class index."""
    texts, class_index = text_lib.zero_shot_prompts(class_names, descriptions)
    feats = cached_text_features(featurizer, texts, cache_dir, progress=False)
    return feats, np.asarray(class_index, np.int32), texts


def zero_shot_scores(params, model: TwoTowers, flow_embeddings: np.ndarray, prompt_features: np.ndarray,
                     prompt_class: np.ndarray, num_classes: int) -> np.ndarray:
    """Softmax over classes of scale · cos(flow, class), a class's embedding being the mean of its prompts'."""
    z_prompts = np.asarray(model.apply({"params": params}, jnp.asarray(prompt_features), method=TwoTowers.embed_text))
    class_emb = text_lib.average_by_class(z_prompts, prompt_class, num_classes)
    scale = float(np.exp(min(float(params["logit_scale"]), model.config.max_log_scale)))
    logits = scale * flow_embeddings @ class_emb.T
    logits -= logits.max(1, keepdims=True)
    probs = np.exp(logits)
    return probs / probs.sum(1, keepdims=True)


def load_descriptions(text: TextSettings, kg_name: str) -> dict:
    """The class descriptions the towers are aligned on: `text.descriptions` ('' = the shipped file); with
    `text.graph_descriptions`, every class and leaf of the knowledge graph `kg_name` (`gnn.kg`) without phrasings
    there takes the graph's own descriptions (a user's devices, attacks or tools, whose names the shipped file
    cannot know)."""
    descriptions = text_lib.load_class_descriptions(text.descriptions or None)
    if text.graph_descriptions and kg_name:
        kg = schema.load_kg(schema.graph_path(kg_name))
        for node in kg.nodes:
            if node.level >= 1 and node.descriptions and not text_lib.has_phrasings(node.id, descriptions):
                descriptions[node.id] = list(node.descriptions)
    return descriptions


def shared_space_encoder(model: TwoTowers, params, featurizer, cache_dir: Optional[str]):
    """texts → projected, normalised text embeddings in the shared space (frozen features cached on disk)."""
    def encode(texts):
        feats = cached_text_features(featurizer, list(texts), cache_dir, progress=False)
        return np.asarray(model.apply({"params": params}, jnp.asarray(feats), method=TwoTowers.embed_text))

    return encode
