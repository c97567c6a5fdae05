"""Running an export of `pclip_jax.export` with onnxruntime: no JAX, Flax or jraph imported.

`OnnxModel(DIR)` loads the two ONNX models and the files beside them; `embed` and `detect` run them in batches and
return numpy arrays (the packet tower's flow embeddings, and the detection arrays of `kg.explain.ARRAY_KEYS`), so
`classify --backend onnx` explains flows with the same code as the JAX backend.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from pclip_jax import files
from pclip_jax import settings as settings_lib
from pclip_jax.kg.explain import ARRAY_KEYS, ExplainInfo
from pclip_jax.name_features import NAME_KEY, NameEncoder

EXPORT_FORMAT = 1
TOWER_INPUTS = ("bytes", "sizes", "iat", "tcp_flags")
DTYPES = {"bytes": np.uint8, "sizes": np.int32, "iat": np.float32, "tcp_flags": np.uint8, NAME_KEY: np.float16}


class ExportError(ValueError):
    """A deployment directory that is missing, incomplete or damaged."""


def read_export_settings(directory: str | pathlib.Path) -> settings_lib.Settings:
    """The settings of the workdir an export came from (what ingest must reproduce), without loading a model."""
    path = pathlib.Path(directory) / "config.json"
    if not pathlib.Path(directory).is_dir():
        raise ExportError(f"{directory}: no such export directory")
    if not path.is_file():
        raise ExportError(f"{path}: missing; is {directory} an export written by python -m pclip_jax.export?")
    try:
        return settings_lib.from_dict(settings_lib.upgrade_dict(files.read_json(path)))
    except settings_lib.SettingsError as e:
        raise settings_lib.SettingsError(f"{path}: {e}") from None


class OnnxModel:
    """A deployment directory written by `pclip_jax.export`, ready to run.

    `threads`: onnxruntime intra-op threads (0 = its default, all cores). `check_manifest`: verify every file's
    SHA-256 against manifest.json (a damaged or edited export fails with the file's name).
    """

    def __init__(self, directory: str | pathlib.Path, threads: int = 0, check_manifest: bool = True):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("classify --backend onnx needs onnxruntime: pip install 'pclip_jax[onnx]' "
                              "(or pip install onnxruntime)") from None
        self.directory = d = pathlib.Path(directory)
        if not d.is_dir():
            raise ExportError(f"{d}: no such export directory")
        if not (d / "packet_tower.onnx").is_file():
            raise ExportError(f"{d}: not an export of pclip_jax.export (no packet_tower.onnx); write one with "
                              f"python -m pclip_jax.export --workdir W --out {d}")
        self.manifest = files.read_json(d / "manifest.json") if (d / "manifest.json").is_file() else None
        if check_manifest:
            self._verify()
        self.settings = read_export_settings(d)
        self.info = ExplainInfo.from_json(files.read_json(d / "explain.json"))
        self.calibration = files.read_json(d / "calibration.json") if (d / "calibration.json").is_file() else None
        self.node_text = np.load(d / "node_text.npy", allow_pickle=False)
        self.names = NameEncoder.load(d) if self.settings.data.use_names else None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        self.tower = ort.InferenceSession(str(d / "packet_tower.onnx"), options, providers=providers)
        self.detector = ort.InferenceSession(str(d / "detection.onnx"), options, providers=providers)
        self.tower_inputs = [i.name for i in self.tower.get_inputs()]

    def _verify(self) -> None:
        m = self.manifest
        if m is None:
            raise ExportError(f"{self.directory / 'manifest.json'}: missing; re-export the workdir")
        if m.get("format") != EXPORT_FORMAT:
            raise ExportError(f"{self.directory / 'manifest.json'}: export format {m.get('format')!r}, this "
                              f"pclip_jax reads format {EXPORT_FORMAT}; re-export with this version")
        for name, entry in m["files"].items():
            path = self.directory / name
            if not path.is_file():
                raise ExportError(f"{path}: missing (listed in manifest.json)")
            if files.file_digest(path) != entry["sha256"]:
                raise ExportError(f"{path}: its contents differ from the SHA-256 in manifest.json (damaged or "
                                  "edited); re-export the workdir")

    @property
    def mission(self) -> Optional[str]:
        return self.info.mission

    @property
    def min_packets(self) -> int:
        return self.settings.data.min_packets

    def embed_batch(self, batch: dict) -> np.ndarray:
        feeds = {name: np.ascontiguousarray(batch[name], DTYPES[name]) for name in self.tower_inputs}
        return self.tower.run(None, feeds)[0]

    def detect_batch(self, z: np.ndarray) -> dict:
        out = self.detector.run(None, {"embedding": np.ascontiguousarray(z, np.float32)})
        return dict(zip(ARRAY_KEYS, out))

    def embed(self, tensors: dict, indices: np.ndarray, batch_size: int = 512) -> np.ndarray:
        """Flow embeddings [N, Dp] of the flows `indices` of a flow table's tensors (name vectors included when
        the towers read names)."""
        parts = [self.embed_batch({name: tensors[name][indices[s:s + batch_size]] for name in self.tower_inputs})
                 for s in range(0, len(indices), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, self.manifest_dim()), np.float32)

    def detect(self, z: np.ndarray, batch_size: int = 512) -> dict:
        parts = [self.detect_batch(z[s:s + batch_size]) for s in range(0, len(z), batch_size)]
        if not parts:
            return {k: np.zeros((0,)) for k in ARRAY_KEYS}
        return {k: np.concatenate([p[k] for p in parts]) for k in ARRAY_KEYS}

    def manifest_dim(self) -> int:
        return int(self.settings.model.embed_dim)
