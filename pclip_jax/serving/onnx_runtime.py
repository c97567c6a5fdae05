"""Running an export of `pclip_jax.serving.export` with onnxruntime: no JAX, Flax or jraph imported.

`OnnxModel(DIR)` loads the two ONNX models and the files beside them; `embed` and `detect` run them in batches and
return numpy arrays (the packet tower's flow embeddings, and the detection arrays of `serving.explain.ARRAY_KEYS`), so
`classify --backend onnx` explains flows with the same code as the JAX backend.
"""
from __future__ import annotations

import pathlib
from typing import Optional

import numpy as np

from pclip_jax.plumbing import files
from pclip_jax.plumbing import settings as settings_lib
from pclip_jax.serving.explain import ARRAY_KEYS, BRIEF_KEYS, ExplainInfo
from pclip_jax.data.flow_table import NAME_KEY
from pclip_jax.text.name_features import NameEncoder

EXPORT_FORMAT = 1
SLOT_BUCKETS = (2, 4, 8)   # packet-slot counts of the extra towers for short flows (below data.packets)
TOWER_INPUTS = ("bytes", "sizes", "iat", "tcp_flags")
DTYPES = {"bytes": np.uint8, "sizes": np.int32, "iat": np.float32, "tcp_flags": np.uint8, NAME_KEY: np.float16}


def tower_file(slots: int) -> str:
    return f"packet_tower_k{slots}.onnx"


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
    """A deployment directory written by `pclip_jax.serving.export`, ready to run.

    `threads`: onnxruntime intra-op threads (0 = its default, all cores). `check_manifest`: verify every file's
    SHA-256 against manifest.json (a damaged or edited export fails with the file's name).
    """

    def __init__(self, directory: str | pathlib.Path, threads: int = 0, check_manifest: bool = True,
                 slot_files: Optional[dict] = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ImportError("classify --backend onnx needs onnxruntime: pip install 'pclip_jax[onnx]' "
                              "(or pip install onnxruntime)") from None
        self.directory = d = pathlib.Path(directory)
        if not d.is_dir():
            raise ExportError(f"{d}: no such export directory")
        if not (d / "packet_tower.onnx").is_file():
            raise ExportError(f"{d}: not an export of pclip_jax.serving.export (no packet_tower.onnx); write one with "
                              f"python -m pclip_jax.export --workdir W --out {d}")
        self.manifest = files.read_json(d / "manifest.json") if (d / "manifest.json").is_file() else None
        if check_manifest:
            self._verify()
        self.settings = read_export_settings(d)
        self.info = ExplainInfo.from_json(files.read_json(d / "explain.json"))
        self.calibration = files.read_json(d / "calibration.json") if (d / "calibration.json").is_file() else None
        self.node_text = np.load(d / "node_text.npy", allow_pickle=False)
        self.ood_bank = np.load(d / "ood_bank.npy", allow_pickle=False) if (d / "ood_bank.npy").is_file() else None
        self.names = NameEncoder.load(d) if self.settings.data.use_names else None
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if slot_files is None:  # {packet slots: file}, from the manifest (an export is checked before it has one)
            slot_files = {int(n): f for n, f in (self.manifest or {}).get("packet_tower", {}).get(
                "slot_files", {}).items()} or {self.settings.data.packets: "packet_tower.onnx"}
        self.towers = {n: ort.InferenceSession(str(d / f), options, providers=providers)
                       for n, f in sorted(slot_files.items())}
        self.tower = self.towers[max(self.towers)]
        self.detector = ort.InferenceSession(str(d / "detection.onnx"), options, providers=providers)
        # The brief detection model (no description slots); exports written before it existed use the full one.
        brief = d / "detection_brief.onnx"
        self.brief_detector = ort.InferenceSession(str(brief), options, providers=providers) \
            if brief.is_file() else None
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
        """One batch through the tower with its number of packet slots."""
        feeds = {name: np.ascontiguousarray(batch[name], DTYPES[name]) for name in self.tower_inputs}
        return self.towers[feeds["sizes"].shape[1]].run(None, feeds)[0]

    def detect_batch(self, z: np.ndarray, descriptions: bool = True) -> dict:
        """The detection arrays of a batch: `ARRAY_KEYS`, or `BRIEF_KEYS` without `descriptions`."""
        feeds = {"embedding": np.ascontiguousarray(z, np.float32)}
        if descriptions or self.brief_detector is None:
            out = dict(zip(ARRAY_KEYS, self.detector.run(None, feeds)))
            return out if descriptions else {k: out[k] for k in BRIEF_KEYS}
        return dict(zip(BRIEF_KEYS, self.brief_detector.run(None, feeds)))

    def embed(self, tensors: dict, indices: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Flow embeddings [N, Dp] of the flows `indices` of a flow table's tensors (name vectors included when
        the towers read names). Each flow goes through the tower with the fewest packet slots that hold its
        packets: slots past a flow's packets are masked in the tower, so this gives the same embeddings for a
        fraction of the work on short flows. Batches of 64: on one core the towers' activations then stay in
        cache (10-20 % less time per flow than batches of 512, docs/results.md, "Live path")."""
        indices = np.asarray(indices, np.int64)
        k = tensors["sizes"].shape[1]
        packets = np.minimum(np.asarray(tensors["num_packets"])[indices], k) if "num_packets" in tensors else \
            np.full(len(indices), k)
        buckets = sorted(self.towers)
        bucket = np.asarray(buckets)[np.searchsorted(buckets, np.maximum(packets, 1))]  # fewest slots that fit
        out = np.zeros((len(indices), self.manifest_dim()), np.float32)
        for slots in buckets:
            rows = np.flatnonzero(bucket == slots)
            for s in range(0, len(rows), batch_size):
                part = rows[s:s + batch_size]
                idx = indices[part]
                out[part] = self.embed_batch({name: tensors[name][idx, :slots] if name in TOWER_INPUTS
                                              else tensors[name][idx] for name in self.tower_inputs})
        return out

    def detect(self, z: np.ndarray, batch_size: int = 512, descriptions: bool = True) -> dict:
        parts = [self.detect_batch(z[s:s + batch_size], descriptions) for s in range(0, len(z), batch_size)]
        keys = ARRAY_KEYS if descriptions else BRIEF_KEYS
        if not parts:
            return {k: np.zeros((0,)) for k in keys}
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def manifest_dim(self) -> int:
        return int(self.settings.model.embed_dim)
