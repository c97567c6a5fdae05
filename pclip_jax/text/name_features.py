"""Server names (TLS SNI, HTTP Host, DNS question; pclip_jax/data/names.py) → one static vector per flow.

A name's vector is the mean of the text tower's *input* WordPiece embeddings of its words ("r3 sn 4g5e
googlevideo com"), L2-normalised; a flow without a name gets zeros. The table is the frozen
`word_embeddings` of the pretrained sentence encoder, so words the encoder has seen ("youtube", "whatsapp",
"steam") arrive with its pre-trained geometry and a name costs one table lookup and a mean per flow — no
transformer pass (a MiniLM pass per name would cost more FLOPs than the whole packet tower). Vectors are stored
as float16 (flow tables can hold millions of flows).
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer

from pclip_jax.data.flow_table import NAME_KEY, FlowTable
from pclip_jax.data.names import name_words
from pclip_jax.plumbing.model_files import resolve_model_dir
from pclip_jax.plumbing.settings import Settings

__all__ = ["NAME_KEY", "NameEncoder", "with_name_features"]
_TABLE_SUFFIX = "word_embeddings.weight"


class NameEncoder:
    """`encoder(names) -> float16 [N, D]` with D the text tower's embedding width: from the text encoder's
    directory (`NameEncoder(path)`), or from the two files `save` writes (`NameEncoder.load`, what an ONNX export
    ships so a device needs no Hugging Face model)."""

    TOKENIZER_FILE, TABLE_FILE = "name_tokenizer.json", "name_table.npy"

    def __init__(self, model_path: str | pathlib.Path | None = None, *, tokenizer: Tokenizer | None = None,
                 table: np.ndarray | None = None):
        if model_path is not None:
            tokenizer, table = self._read_model_dir(model_path)
        if tokenizer is None or table is None:
            raise ValueError("NameEncoder needs a model directory, or a tokenizer and an embedding table")
        self.tokenizer, self.table = tokenizer, np.asarray(table, np.float32)
        self.dim = self.table.shape[1]

    @staticmethod
    def _read_model_dir(model_path):
        from safetensors import safe_open  # only here: an export's table is a .npy file

        model_dir = resolve_model_dir(model_path)
        for f in ("tokenizer.json", "model.safetensors"):
            if not (model_dir / f).is_file():
                raise FileNotFoundError(f"{model_dir / f}: missing; server-name features need the pretrained "
                                        "text encoder's tokenizer and embedding table (or data.use_names=False)")
        with safe_open(str(model_dir / "model.safetensors"), "numpy") as fh:
            keys = [k for k in fh.keys() if k.endswith(_TABLE_SUFFIX)]
            if len(keys) != 1:
                raise ValueError(f"{model_dir / 'model.safetensors'}: expected one '*{_TABLE_SUFFIX}' tensor, "
                                 f"found {keys}")
            table = fh.get_tensor(keys[0]).astype(np.float32)
        return Tokenizer.from_file(str(model_dir / "tokenizer.json")), table

    def save(self, directory: str | pathlib.Path) -> list[pathlib.Path]:
        """The tokenizer and the table (float16: the vectors are stored as float16 anyway) into `directory`."""
        directory = pathlib.Path(directory)
        self.tokenizer.save(str(directory / self.TOKENIZER_FILE))
        np.save(directory / self.TABLE_FILE, self.table.astype(np.float16))
        return [directory / self.TOKENIZER_FILE, directory / self.TABLE_FILE]

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> "NameEncoder":
        directory = pathlib.Path(directory)
        for f in (cls.TOKENIZER_FILE, cls.TABLE_FILE):
            if not (directory / f).is_file():
                raise FileNotFoundError(f"{directory / f}: missing; the export was written without server names")
        return cls(tokenizer=Tokenizer.from_file(str(directory / cls.TOKENIZER_FILE)),
                   table=np.load(directory / cls.TABLE_FILE, allow_pickle=False))

    def vector(self, name: str) -> np.ndarray:
        ids = self.tokenizer.encode(name_words(name), add_special_tokens=False).ids if name else []
        if not ids:
            return np.zeros(self.dim, np.float32)
        v = self.table[ids].mean(0)
        return v / max(float(np.linalg.norm(v)), 1e-6)

    def __call__(self, names: Sequence[str]) -> np.ndarray:
        names = np.asarray(names).astype(str)
        uniq, inverse = np.unique(names, return_inverse=True)
        vecs = np.stack([self.vector(n) for n in uniq.tolist()]) if len(uniq) else np.zeros((0, self.dim))
        return vecs.astype(np.float16)[inverse.reshape(-1)] if len(names) else np.zeros((0, self.dim), np.float16)


def with_name_features(table: FlowTable, settings: Settings, encoder: NameEncoder | None = None) -> FlowTable:
    """`table` with `tensors['name_vec']` added when the settings use names (a new table; the input is not
    changed). The same table when names are off or already there. `encoder`: default, the text encoder's."""
    if not settings.data.use_names or NAME_KEY in table.tensors:
        return table
    if "server_name" not in table.meta:
        raise ValueError("the flow table has no 'server_name' column (written by pclip_jax >= 0.2 ingest); "
                         "re-ingest the captures or set data.use_names=False")
    encoder = encoder or NameEncoder(settings.text.encoder)
    if encoder.dim != settings.model.name_dim:
        raise ValueError(f"{settings.text.encoder}: word embeddings are {encoder.dim} wide but model.name_dim is "
                         f"{settings.model.name_dim}; set --config.model.name_dim={encoder.dim}")
    return dataclasses.replace(table, tensors={**table.tensors, NAME_KEY: encoder(table.meta["server_name"])})
