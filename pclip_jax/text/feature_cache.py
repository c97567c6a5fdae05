"""Frozen text-tower features for a set of texts, computed once per distinct text and cached on disk.

With a locked text tower (the default) the text side of every training step is a lookup into this table, so the
sentence encoder runs once per distinct text rather than once per step.
"""
from __future__ import annotations

import hashlib
import pathlib
import sys
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from pclip_jax.plumbing import files
from pclip_jax.models.text_tower import load_text_encoder, resolve_model_dir


def encoder_identity(model_path: str) -> str:
    """What names a text encoder in cache keys: a digest of its config and the sizes of its weight and tokenizer
    files, not the path it was reached by (a workdir used from another directory still finds its cache)."""
    model_dir = resolve_model_dir(model_path)
    h = hashlib.sha256()
    for name in ("config.json", "tokenizer.json", "model.safetensors"):
        f = model_dir / name
        h.update(name.encode() + (f.read_bytes() if name == "config.json" else str(f.stat().st_size).encode())
                 if f.is_file() else b"-")
    return "encoder-" + h.hexdigest()[:16]


class TextFeaturizer:
    """Loads the text encoder once and embeds lists of strings in fixed-shape batches (one compilation)."""

    def __init__(self, model_path: str, max_len: int = 64, batch_size: int = 64, params=None, tag: str = "",
                 module=None):
        """`params` (and `module`, for another architecture) replace the pretrained encoder: a tuned or
        from-scratch text tower; `tag` names them in cache keys. The tokenizer always comes from `model_path`."""
        self.module, self.params, self.tokenizer = load_text_encoder(str(model_path))
        if params is not None:
            self.params = params
        if module is not None:
            self.module = module
        self.identity = encoder_identity(str(model_path)) + tag
        self.max_len, self.batch_size = int(max_len), int(batch_size)
        self._apply = jax.jit(lambda p, ids, mask, types: self.module.apply(
            {"params": p}, ids, mask, types, deterministic=True))

    def __call__(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        texts = list(texts)
        out = []
        bs = self.batch_size
        bar = tqdm(total=len(texts), desc="text embeddings", unit="text", disable=not progress or len(texts) < bs,
                   file=sys.stderr)
        for start in range(0, len(texts), bs):
            chunk = texts[start:start + bs]
            enc = self.tokenizer.encode(chunk + [""] * (bs - len(chunk)), self.max_len)
            emb = self._apply(self.params, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]),
                              jnp.asarray(enc["token_type_ids"]))
            out.append(np.asarray(emb)[:len(chunk)])
            bar.update(len(chunk))
        bar.close()
        return np.concatenate(out, 0) if out else np.zeros((0, 0), np.float32)


def params_tag(params) -> str:
    """A short content hash of a parameter tree (cache keys for a tuned text tower)."""
    digest = hashlib.sha256()
    for leaf in jax.tree.leaves(params):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return "#tuned-" + digest.hexdigest()[:12]


def cached_text_features(featurizer: TextFeaturizer, texts: Sequence[str], cache_dir: Optional[pathlib.Path],
                         progress: bool = True) -> np.ndarray:
    """Embeddings of `texts` (in order), reusing `cache_dir/text-<hash>.npz` when the same texts were seen."""
    texts = list(texts)
    key = hashlib.sha256(("\x00".join([featurizer.identity, str(featurizer.max_len)] + texts)).encode())
    path = None
    if cache_dir is not None:
        path = pathlib.Path(cache_dir) / f"text-{key.hexdigest()[:16]}.npz"
        if path.is_file():
            try:
                emb = files.load_npz(path)["embeddings"]
                if len(emb) == len(texts):
                    return emb
                print(f"[text] warning: cached text features {path} hold {len(emb)} rows for {len(texts)} texts; "
                      f"recomputing them", file=sys.stderr)
            except (ValueError, KeyError) as e:
                print(f"[text] warning: {str(e).splitlines()[0]}; recomputing the cached text features",
                      file=sys.stderr)
    emb = featurizer(texts, progress=progress)
    if path is not None:
        files.savez(path, embeddings=emb)
    return emb
