"""The one place that knows a workdir's layout; everything else asks it for paths and artefacts.

    WORKDIR/
      config.json                 settings the workdir was trained with (absolute paths, `_format` version)
      results.json                the main job's results (written last: its presence means the job finished)
      model_info.json             class names, label level, training applications, parameter counts, and the
                                  taxonomy source the classes came from (`trained_taxonomy`)
      linear_probe.npz            the probe on frozen packet features
      class_text_features.npz     frozen text features of the class prompts (zero-shot)
      kg.yaml                     the graph built from the labels (gnn.kg = ''), edited by the user if they like
      split.json                  the captures of each split, so anyone can check or reuse the split
      embeddings.npz              the packet tower's embeddings of the train/validation/test flows and their rows
      checkpoints/                pre-training (orbax, with digests) ; checkpoints_best/ the validation-best
      gnn/checkpoints/ ...        the GNN stage (gnn/gnn_checkpoints, gnn/checkpoints_best, metrics_gnn.jsonl)
      cache/                      ingested flow tables and text features (unless data.cache_dir is set);
        xla/                      compiled XLA programs of `classify`/`evaluate`, reused by later runs (JAX's cache)
      metrics_train.jsonl, tensorboard/, roc_*.png

Every file is written atomically (`pclip_jax.plumbing.files`).
"""
from __future__ import annotations

import json
import pathlib
from typing import Any, Optional

import numpy as np

from pclip_jax.plumbing import files
from pclip_jax.plumbing import settings as settings_lib
from pclip_jax.plumbing.settings import DataSettings, Settings


class WorkdirError(FileNotFoundError):
    """A workdir that is missing, not a pclip_jax workdir, or not (fully) trained; the message says which."""


class Workdir:
    CONFIG = "config.json"
    RESULTS = "results.json"
    MODEL_INFO = "model_info.json"
    PROBE = "linear_probe.npz"
    CLASS_TEXT = "class_text_features.npz"
    GENERATED_KG = "kg.yaml"      # the graph built from the labels when gnn.kg = '' (editable)
    SPLIT = "split.json"          # the captures of each split (train / validation / test)
    EMBEDDINGS = "embeddings.npz"  # the packet tower's embeddings of each split's flows, with their table rows
    ANSWERS = "answers"           # each evaluation's per-flow answers on validation and test (`save_answers`)

    def __init__(self, path: str | pathlib.Path):
        self.path = pathlib.Path(path).absolute()

    def __repr__(self) -> str:
        return f"Workdir({str(self.path)!r})"

    # ------------------------------------------------------------------------------------------- paths
    def file(self, name: str) -> pathlib.Path:
        return self.path / name

    @property
    def checkpoints(self) -> pathlib.Path:
        return self.path / "checkpoints"

    @property
    def best_checkpoints(self) -> pathlib.Path:
        return self.path / "checkpoints_best"

    @property
    def gnn_dir(self) -> pathlib.Path:
        return self.path / "gnn"

    @property
    def gnn_checkpoints(self) -> pathlib.Path:
        return self.gnn_dir / "gnn_checkpoints"

    @property
    def gnn_best_checkpoints(self) -> pathlib.Path:
        return self.gnn_dir / "checkpoints_best"

    def cache_dir(self, data: DataSettings) -> pathlib.Path:
        """Where ingested flow tables and text features are cached: `data.cache_dir`, else `WORKDIR/cache`."""
        return pathlib.Path(data.cache_dir) if data.cache_dir else self.path / "cache"

    def compilation_cache_dir(self, data: DataSettings) -> pathlib.Path:
        """Where `classify` and `evaluate` keep compiled XLA programs for the next run
        (`runtime.use_compilation_cache`)."""
        return self.cache_dir(data) / "xla"

    def plot(self, name: str) -> pathlib.Path:
        return self.path / f"roc_{name}.png"

    # ------------------------------------------------------------------------------------------- settings
    def save_settings(self, settings: Settings) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        files.write_json(self.file(self.CONFIG),
                         {"_format": settings_lib.SETTINGS_FORMAT, **settings_lib.to_dict(settings)})

    def read_settings(self) -> Settings:
        """The settings the workdir was trained with, upgraded from older layouts; relative paths of older
        workdirs resolve against the current directory, as they did when they were written."""
        path = self.file(self.CONFIG)
        if not self.path.is_dir():
            raise WorkdirError(f"{self.path}: no such workdir")
        if not path.is_file():
            raise WorkdirError(f"{path}: missing; is {self.path} a workdir written by pclip_jax.main?")
        try:
            stored = files.read_json(path)
            return settings_lib.with_absolute_paths(settings_lib.from_dict(settings_lib.upgrade_dict(stored)))
        except settings_lib.SettingsError as e:
            raise settings_lib.SettingsError(f"{path}: {e}") from None

    # ------------------------------------------------------------------------------------------- artefacts
    def require(self, *names: str, stage: str = "training") -> None:
        """Raises WorkdirError naming the first missing artefact (an interrupted or untrained workdir)."""
        self.read_settings()
        for name in names:
            if not self.file(name).exists():
                raise WorkdirError(f"{self.file(name)}: missing; {stage} of {self.path} did not finish "
                                   f"(interrupted?); rerun pclip_jax.main with this workdir to complete it")

    def save_model_info(self, info: dict) -> None:
        files.write_json(self.file(self.MODEL_INFO), info)

    def read_model_info(self) -> dict:
        self.require(self.MODEL_INFO)
        return files.read_json(self.file(self.MODEL_INFO))

    def trained_taxonomy(self, settings: Optional[Settings] = None) -> dict:
        """Where the workdir's classes came from, as training decided it (data/taxonomy.py), so that new captures
        are named the same way whatever they look like: {"source": hierarchy | graph | raw | mixed | dataset,
        "sources": {source name: its source} (mixed corpora), "recorded_in": where it was read}.

        model_info.json records it since 2027-01 (`taxonomy`); older workdirs are upgraded from results.json's
        `data.taxonomy` report (written since the taxonomy existed), else from config.json's `data.taxonomy` when
        it names a source (format-1 configs upgrade to `hierarchy`, what their code used); an older `auto` workdir
        without either gives {"source": "auto", "recorded_in": "none"} and the caller matches the labels to the
        model's classes instead (`evaluate.trained_levels`)."""
        info = files.read_json(self.file(self.MODEL_INFO)) if self.file(self.MODEL_INFO).is_file() else {}
        if isinstance(info.get("taxonomy"), dict) and info["taxonomy"].get("source"):
            return {**info["taxonomy"], "recorded_in": self.MODEL_INFO}
        if self.file(self.RESULTS).is_file():
            report = files.read_json(self.file(self.RESULTS)).get("data", {}).get("taxonomy") or {}
            if report.get("source"):
                return {**taxonomy_record(report), "recorded_in": self.RESULTS}
        requested = (settings or self.read_settings()).data.taxonomy
        return {"source": requested, "recorded_in": self.CONFIG if requested != "auto" else "none"}

    def save_probe(self, probe: dict) -> None:
        files.savez(self.file(self.PROBE), **probe)

    def load_probe(self) -> dict:
        self.require(self.PROBE)
        return files.load_npz(self.file(self.PROBE))

    def save_class_text(self, features: np.ndarray, prompt_class: np.ndarray) -> None:
        files.savez(self.file(self.CLASS_TEXT), features=features, prompt_class=prompt_class)

    def load_class_text(self) -> tuple[np.ndarray, np.ndarray]:
        self.require(self.CLASS_TEXT)
        arrays = files.load_npz(self.file(self.CLASS_TEXT))
        return arrays["features"], arrays["prompt_class"]

    def save_answers(self, evaluation: str, split: str, y_true: np.ndarray, scores: np.ndarray,
                     captures: np.ndarray, class_names, novel: Optional[np.ndarray] = None) -> None:
        """One evaluation's (`probe`, `zero_shot`, `gnn_level1`, ...) per-flow answers on one split: true class ids,
        class scores, each flow's capture and whether its application is novel (no training flow;
        `PreparedFlows.novel`), the input of the benchmark protocol's declared evaluation (chosen on validation),
        its capture-bootstrap intervals and its seen/novel rows (`pclip_bench.protocol`)."""
        extra = {} if novel is None else {"novel": np.asarray(novel, bool)}
        files.savez(self.file(self.ANSWERS) / f"{evaluation}.{split}.npz", y_true=np.asarray(y_true, np.int32),
                    scores=np.asarray(scores, np.float32), captures=np.asarray(captures).astype(str),
                    class_names=np.asarray(list(class_names)).astype(str), **extra)

    def load_answers(self) -> dict[str, dict[str, dict]]:
        """{evaluation: {split: arrays}} of every `save_answers` file in the workdir ({} when none)."""
        out: dict = {}
        folder = self.file(self.ANSWERS)
        for path in sorted(folder.glob("*.npz")) if folder.is_dir() else ():
            evaluation, split = path.name[:-len(".npz")].rsplit(".", 1)
            out.setdefault(evaluation, {})[split] = files.load_npz(path)
        return out

    def write_results(self, results: dict[str, Any]) -> None:
        files.write_text(self.file(self.RESULTS), json.dumps(results, indent=2))

    def has_gnn(self) -> bool:
        return self.gnn_checkpoints.is_dir()


def taxonomy_record(report: dict) -> dict:
    """What a workdir keeps of a taxonomy report (`data.taxonomy.resolve_levels`, or a mixed corpus's): the chosen
    source, and each source's choice for a mixed corpus."""
    out = {"source": report.get("source", "none")}
    if report.get("sources"):
        out["sources"] = {name: r.get("source", "none") for name, r in report["sources"].items()}
    return out
