"""Text tower: the pretrained sentence encoder all-MiniLM-L6-v2 (or a small BERT) in Flax.

`load_text_encoder(dir_or_repo)` reads a directory in Hugging Face layout
(`config.json`, `model.safetensors`, `tokenizer.json`, `sentence_bert_config.json`)
and returns `(module, params, tokenizer)`:

    module, params, tok = load_text_encoder("../shared/models/all-MiniLM-L6-v2")
    batch = tok.encode(["small UDP packets at a steady rate"], max_len=64)
    emb = module.apply({"params": params}, batch["input_ids"], batch["attention_mask"])

Weights are read with `safetensors.numpy` (no PyTorch); the tokenizer with the
`tokenizers` package. Output matches sentence-transformers (mean pooling over the
attention mask, L2 normalisation).
"""
from __future__ import annotations

import json
import os
import pathlib
import re
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pclip_jax.plumbing.model_files import MODEL_FILES as _MODEL_FILES, resolve_model_dir
from pclip_jax.models.bert import BertConfig, BertEncoder

__all__ = ["BertConfig", "BertEncoder", "TextTokenizer", "load_text_encoder",
           "resolve_model_dir", "load_bert_params", "init_text_encoder"]



class TextTokenizer:
    """WordPiece tokenizer from `tokenizer.json`, padding to a length the caller fixes.

    Truncation: at min(max_len, max_seq_length) tokens including [CLS]/[SEP]
    (max_seq_length comes from `sentence_bert_config.json`, 256 for MiniLM), keeping
    the final [SEP], exactly as sentence-transformers does. Padding: always to
    `max_len`, so a jitted encoder compiles once per max_len.
    """

    def __init__(self, tokenizer_json, max_seq_length: int = 256):
        from tokenizers import Tokenizer  # imported here: only the text tower needs it

        path = pathlib.Path(tokenizer_json)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer.json not found")
        try:
            self._json = path.read_text()
            base = Tokenizer.from_str(self._json)
        except Exception as e:  # tokenizers raises plain Exception subclasses
            raise ValueError(f"{path}: cannot read tokenizer: {e}") from e
        self.path = path
        self.max_seq_length = int(max_seq_length)
        pad = (json.loads(self._json).get("padding") or {})
        self.pad_id = int(pad.get("pad_id", base.token_to_id("[PAD]") or 0))
        self.vocab_size = base.get_vocab_size()
        # One configured tokenizer per truncation length, built on first use:
        # enable_truncation mutates a Tokenizer, so each length gets its own copy.
        self._by_length: dict[int, Any] = {}

    def _tokenizer(self, length: int):
        tok = self._by_length.get(length)
        if tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_str(self._json)
            tok.no_padding()  # tokenizer.json of MiniLM pads to 128: we pad ourselves
            tok.enable_truncation(max_length=length)
            self._by_length[length] = tok
        return tok

    def encode(self, texts: Sequence[str], max_len: int = 64) -> dict[str, np.ndarray]:
        """Tokenises `texts` into int32 arrays [len(texts), max_len].

        Returns a dict with `input_ids`, `attention_mask` (1 = real token) and
        `token_type_ids` (all 0: single sentences).
        """
        if isinstance(texts, str):
            raise TypeError("TextTokenizer.encode: expected a list of strings, got one str")
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"TextTokenizer.encode: texts[{i}] is {type(t).__name__}, not str")
        max_len = int(max_len)
        if max_len < 2:
            raise ValueError(f"TextTokenizer.encode: max_len must be >= 2 ([CLS] and [SEP]), "
                             f"got {max_len}")
        length = min(max_len, self.max_seq_length)
        n = len(texts)
        ids = np.full((n, max_len), self.pad_id, np.int32)
        mask = np.zeros((n, max_len), np.int32)
        types = np.zeros((n, max_len), np.int32)
        if n:
            for i, enc in enumerate(self._tokenizer(length).encode_batch(texts)):
                k = len(enc.ids)
                ids[i, :k] = enc.ids
                mask[i, :k] = 1
                types[i, :k] = enc.type_ids
        return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}

    def num_tokens(self, texts: Sequence[str]) -> np.ndarray:
        """Untruncated token counts (with [CLS]/[SEP]): to size `max_len` or spot truncation."""
        return np.array([len(e.ids) for e in self._tokenizer(10**9).encode_batch(list(texts))],
                        np.int32)


def _hf_to_flax_names(config: BertConfig) -> dict[str, tuple[tuple[str, ...], bool]]:
    """Maps HF safetensors keys to (flax param path, transpose?)."""
    m: dict[str, tuple[tuple[str, ...], bool]] = {}
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        m[f"embeddings.{name}.weight"] = (("embeddings", name, "embedding"), False)
    m["embeddings.LayerNorm.weight"] = (("embeddings", "LayerNorm", "scale"), False)
    m["embeddings.LayerNorm.bias"] = (("embeddings", "LayerNorm", "bias"), False)
    dense = {"attention.self.query": "query", "attention.self.key": "key",
             "attention.self.value": "value", "attention.output.dense": "attention_output",
             "intermediate.dense": "intermediate", "output.dense": "output"}
    norms = {"attention.output.LayerNorm": "attention_LayerNorm",
             "output.LayerNorm": "output_LayerNorm"}
    for i in range(config.num_hidden_layers):
        pre = f"encoder.layer.{i}."
        for hf, fx in dense.items():
            # torch Linear stores [out, in]; flax Dense kernels are [in, out].
            m[pre + hf + ".weight"] = ((f"layer_{i}", fx, "kernel"), True)
            m[pre + hf + ".bias"] = ((f"layer_{i}", fx, "bias"), False)
        for hf, fx in norms.items():
            m[pre + hf + ".weight"] = ((f"layer_{i}", fx, "scale"), False)
            m[pre + hf + ".bias"] = ((f"layer_{i}", fx, "bias"), False)
    return m


def load_bert_params(safetensors_path, config: BertConfig) -> dict:
    """Reads HF BERT weights from a safetensors file into BertEncoder's param tree.

    Every expected tensor must be present with the shape `config` implies; keys
    the model does not use (pooler, position_ids) are ignored. An optional
    "bert." prefix (BertForX checkpoints) is stripped. Errors name the file and key.
    """
    from safetensors.numpy import load_file

    path = pathlib.Path(safetensors_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model.safetensors not found (PyTorch .bin weights "
                                "are not supported: convert them to safetensors)")
    try:
        raw = load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: cannot read safetensors file: {e}") from e
    raw = {(k[5:] if k.startswith("bert.") else k): v for k, v in raw.items()}

    expected = jax.eval_shape(
        lambda: BertEncoder(config).init(jax.random.PRNGKey(0), jnp.zeros((1, 2), jnp.int32),
                                         jnp.ones((1, 2), jnp.int32)))["params"]
    params: dict = {}
    for key, (fpath, transpose) in _hf_to_flax_names(config).items():
        if key not in raw:
            raise KeyError(f"{path}: tensor {key!r} missing (is this a BERT model matching "
                           f"its config.json?)")
        arr = np.asarray(raw[key])
        if transpose:
            arr = arr.T
        want = expected
        for part in fpath:
            want = want[part]
        if arr.shape != tuple(want.shape):
            raise ValueError(f"{path}: tensor {key!r} has shape {np.asarray(raw[key]).shape}, "
                             f"config.json implies {tuple(want.shape)} (after transpose: "
                             f"{transpose})")
        node = params
        for part in fpath[:-1]:
            node = node.setdefault(part, {})
        node[fpath[-1]] = jnp.asarray(arr, jnp.float32)
    return params


def _max_seq_length(model_dir: pathlib.Path, config: BertConfig) -> int:
    sbert = model_dir / "sentence_bert_config.json"
    if sbert.is_file():
        try:
            value = json.loads(sbert.read_text()).get("max_seq_length")
        except json.JSONDecodeError as e:
            raise ValueError(f"{sbert}: invalid JSON at line {e.lineno}: {e.msg}") from None
        if value is not None:
            return min(int(value), config.max_position_embeddings)
    return config.max_position_embeddings


def load_text_encoder(path_or_repo, dtype=jnp.float32, offline: Optional[bool] = None,
                      cache_dir: Optional[str] = None):
    """Loads a pretrained sentence encoder (all-MiniLM-L6-v2 or any HF BERT).

    Args:
      path_or_repo: a directory in Hugging Face layout, or a hub repo id (downloaded
        with `huggingface_hub.snapshot_download` unless offline).
      dtype: compute dtype of the module (jnp.bfloat16 on accelerators); params are float32.
      offline: True = local directory or hub cache only; None follows HF_HUB_OFFLINE.
      cache_dir: hub cache directory (default: huggingface_hub's).

    Returns:
      (module: BertEncoder, params: dict, tokenizer: TextTokenizer). Call
      `module.apply({"params": params}, input_ids, attention_mask)`.
    """
    model_dir = resolve_model_dir(path_or_repo, offline=offline, cache_dir=cache_dir)
    config = BertConfig.from_json(model_dir / "config.json")
    params = load_bert_params(model_dir / "model.safetensors", config)
    tokenizer = TextTokenizer(model_dir / "tokenizer.json", _max_seq_length(model_dir, config))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"{model_dir}: tokenizer vocabulary ({tokenizer.vocab_size}) larger than "
                         f"the model's vocab_size ({config.vocab_size})")
    return BertEncoder(config, dtype=dtype), params, tokenizer


def init_text_encoder(rng, config: BertConfig, tokenizer_dir, dtype=jnp.float32,
                      max_len: int = 64):
    """A randomly initialised text encoder (e.g. `BertConfig.small()`) with the
    tokenizer of `tokenizer_dir` (a directory with tokenizer.json).

    Returns (module, params, tokenizer) like `load_text_encoder`.
    """
    tokenizer_dir = resolve_model_dir(tokenizer_dir)
    tokenizer = TextTokenizer(tokenizer_dir / "tokenizer.json",
                              min(_max_seq_length(tokenizer_dir, config),
                                  config.max_position_embeddings))
    if tokenizer.vocab_size > config.vocab_size:
        raise ValueError(f"BertConfig.vocab_size {config.vocab_size} is smaller than the "
                         f"tokenizer's vocabulary {tokenizer.vocab_size} ({tokenizer.path})")
    module = BertEncoder(config, dtype=dtype)
    ids = jnp.zeros((1, max_len), jnp.int32)
    params = module.init(rng, ids, jnp.ones_like(ids))["params"]
    return module, params, tokenizer
