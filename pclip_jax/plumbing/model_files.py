"""Where the text encoder's files are: a local directory in Hugging Face layout, or a Hub snapshot (no JAX here,
so the JAX-free classify path can find the tokenizer and word embeddings of server names)."""
from __future__ import annotations

import os
import pathlib
import re
from typing import Optional

# Files a snapshot download needs; everything else in the hub repo (onnx, openvino,
# pytorch_model.bin, ...) is skipped.
MODEL_FILES = ["config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json",
               "modules.json", "1_Pooling/config.json", "special_tokens_map.json",
               "tokenizer_config.json", "vocab.txt"]


def resolve_model_dir(path_or_repo, offline: Optional[bool] = None,
                      cache_dir: Optional[str] = None) -> pathlib.Path:
    """Returns a local model directory: `path_or_repo` itself if it is a directory,
    else a Hugging Face Hub snapshot of repo id `path_or_repo` (e.g.
    "sentence-transformers/all-MiniLM-L6-v2").

    offline: True never touches the network (only the local hub cache); None follows
    `HF_HUB_OFFLINE`. Raises FileNotFoundError with the reason when neither works.
    """
    p = pathlib.Path(os.path.expanduser(str(path_or_repo)))
    if p.is_dir():
        return p
    name = str(path_or_repo)
    # A repo id is "owner/name" (or a bare name); anything that looks like a
    # filesystem path is a missing local directory.
    looks_like_repo = bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", name))
    if not looks_like_repo:
        raise FileNotFoundError(f"{name}: text model directory not found (and it is not a "
                                "Hugging Face repo id like 'sentence-transformers/all-MiniLM-L6-v2')")
    if offline is None:
        offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(repo_id=name, allow_patterns=MODEL_FILES,
                                  local_files_only=offline, cache_dir=cache_dir)
    except Exception as e:  # hub errors, connection errors, offline cache misses
        how = ("offline: it is not in the local Hugging Face cache" if offline
               else "download from the Hugging Face Hub failed")
        raise FileNotFoundError(
            f"{name}: no local directory of that name, and {how} ({type(e).__name__}: {e}). "
            "Pass the path of a directory in Hugging Face layout instead.") from e
    return pathlib.Path(local)
