"""Loading a trained workdir for inference: the towers (`load_towers`) and the detection stage on top
(`load_classifier`), used by evaluate and classify alike.

A workdir is self-contained: its config.json holds absolute paths, the text features of the class prompts and the
graph's descriptions are in its cache (keyed by the encoder's content, not its path), so it works from any
directory and the sentence encoder is loaded only for a text it has never embedded (a new mission statement).
"""
from __future__ import annotations

import dataclasses
import pathlib
import sys
import time
from typing import Any, Optional, Sequence

import flax
import jax
import numpy as np

from pclip_jax.plumbing import files, runtime
from pclip_jax.plumbing.checkpointing import Checkpoints
from pclip_jax.training.towers import build_model, init_params, make_embed_fn
from pclip_jax.training import calibration as calibration_lib, detection
from pclip_jax.models.gnn import GnnConfig
from pclip_jax.training.train_gnn import GnnTrainConfig, PreparedKG
from pclip_jax.training.loop import BestKeeper
from pclip_jax.models.two_towers import TwoTowers
from pclip_jax.plumbing.settings import Settings
from pclip_jax.text.feature_cache import TextFeaturizer, encoder_identity, params_tag
from pclip_jax.training.state import create_state
from pclip_jax.plumbing.workdir import Workdir, WorkdirError


@dataclasses.dataclass
class Towers:
    """The trained two towers of a workdir."""
    workdir: Workdir
    settings: Settings
    model: TwoTowers
    params: Any
    info: dict                  # model_info.json: class names, label level, training applications


def load_towers(workdir: Workdir | str) -> Towers:
    """The workdir's settings, model and parameters: the validation-best ones when kept, else the newest intact
    checkpoint. Raises WorkdirError for a missing or unfinished workdir."""
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    settings = wd.read_settings()
    info = wd.read_model_info()
    if not wd.checkpoints.is_dir():
        raise WorkdirError(f"{wd.checkpoints}: missing; pre-training of {wd.path} did not run")
    model = build_model(settings)
    # Shapes only: the restore target needs no real initialisation (saves ~160 small compilations).
    state = jax.eval_shape(lambda: create_state(settings, model, jax.random.PRNGKey(0)))
    ckpts = Checkpoints(wd.checkpoints, writable=False)
    try:
        state, step = ckpts.restore(state)
    except ValueError as e:  # orbax: a stored shape differs from the model the config builds with this code
        raise ValueError(f"{wd.checkpoints}: the checkpoint does not fit the towers that config.json builds with "
                         f"this version of pclip_jax (retrain the workdir): {str(e).splitlines()[0]}") from None
    finally:
        ckpts.close()
    if step is None:
        raise WorkdirError(f"{wd.checkpoints}: no checkpoint to load")
    params = state.params
    best = BestKeeper(wd.best_checkpoints)
    kept = best.load(params) if (wd.best_checkpoints / "best.json").is_file() else None
    if kept is not None:
        params = kept
    return Towers(workdir=wd, settings=settings, model=model, params=params, info=info)


# A distilled deployment packet tower (`training.distill`): WORKDIR/deployment/tower.json (its architecture and
# report) and params.msgpack (its packet tower and packet head, flax serialization).
DEPLOYMENT_DIR = "deployment"
TOWER_JSON = "tower.json"
PARAMS_FILE = "params.msgpack"
STUDENT_KEYS = ("packet_tower", "packet_head")   # the parameters the deployment tower replaces


def student_settings(settings: Settings, architecture: dict) -> Settings:
    """The workdir's settings with a deployment tower's architecture (dropout off: it is trained to match the
    trained tower, not to generalise from labels)."""
    return dataclasses.replace(settings, model=dataclasses.replace(settings.model, dropout=0.0, **architecture))


def load_deployment_towers(workdir: Workdir | str) -> Towers:
    """The workdir's towers with its distilled deployment packet tower in place of the trained one; everything
    else (text side, graph, GNN, calibration) is the workdir's. Raises WorkdirError when the workdir has none."""
    towers = load_towers(workdir)
    out = towers.workdir.path / DEPLOYMENT_DIR
    if not (out / PARAMS_FILE).is_file():
        raise WorkdirError(f"{out}: no deployment tower; distil one with python -m pclip_jax.distill --workdir "
                           f"{towers.workdir.path}")
    settings = student_settings(towers.settings, files.read_json(out / TOWER_JSON)["model"])
    model = build_model(settings)
    shapes = jax.eval_shape(lambda: init_params(model, settings, jax.random.PRNGKey(0)))
    target = runtime.tree_map(lambda s: np.zeros(s.shape, s.dtype), {k: shapes[k] for k in STUDENT_KEYS})
    student = flax.serialization.from_bytes(target, (out / PARAMS_FILE).read_bytes())
    return Towers(workdir=towers.workdir, settings=settings, model=model, params={**towers.params, **student},
                  info=towers.info)


class LazyTextFeaturizer:
    """Drop-in for `TextFeaturizer` in `cached_text_features`: the sentence encoder is loaded only when a text is
    not in the workdir's cache (the graph's descriptions normally are, from training)."""

    def __init__(self, settings: Settings, params=None, module=None):
        self.settings, self.params, self.module = settings, params, module
        self.identity = encoder_identity(settings.text.encoder) + (params_tag(params) if params is not None else "")
        self.max_len = settings.text.max_len
        self._featurizer: Optional[TextFeaturizer] = None

    def __call__(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        if self._featurizer is None:
            t = self.settings.text
            self._featurizer = TextFeaturizer(t.encoder, t.max_len, t.batch_size, params=self.params,
                                              module=self.module)
        return self._featurizer(texts, progress=progress)


@dataclasses.dataclass
class Classifier:
    """Everything needed to classify flows with a trained workdir (see `load_classifier`)."""
    towers: Towers
    replicated_params: Any      # params on every local device, for the pmapped packet tower
    embed_fn: Any               # towers.make_embed_fn(model)
    gnn_train_config: GnnTrainConfig
    gnn_params: Any
    kg: PreparedKG              # mission applied
    load_seconds: float
    calibration: Optional[dict] = None  # WORKDIR/gnn/calibration.json (temperatures, OOD threshold), if fitted
    ood_bank: Optional[np.ndarray] = None  # WORKDIR/gnn/ood_bank.npz: the OOD score's training embeddings, if fitted

    @property
    def settings(self) -> Settings:
        return self.towers.settings

    @property
    def gnn_config(self) -> GnnConfig:
        return self.gnn_train_config.model

    @property
    def min_packets(self) -> int:
        return self.settings.data.min_packets


def load_classifier(workdir: Workdir | str, mission: Optional[str] = None, towers: Optional[Towers] = None
                    ) -> Classifier:
    """Loads a workdir trained by `pclip_jax.main` (towers + GNN head) for classification.

    Args:
      workdir: the training workdir.
      mission: a mission name declared in the graph, a free-text statement, or None for the settings' mission.
      towers: already loaded towers of this workdir (evaluate loads them first).
    Raises WorkdirError for a missing workdir or GNN stage, ValueError for a mission that fits no node.
    """
    t0 = time.perf_counter()
    wd = workdir if isinstance(workdir, Workdir) else Workdir(workdir)
    settings = wd.read_settings()  # cheap checks before the towers are loaded
    if not wd.has_gnn():
        raise WorkdirError(f"{wd.gnn_checkpoints}: missing; the GNN stage of {wd.path} did not run "
                           f"(gnn.enabled=False, or the job was interrupted before it)")
    towers = towers or load_towers(wd)
    params, model = towers.params, towers.model
    featurizer = LazyTextFeaturizer(settings, params=params.get("text_encoder"), module=model.text_encoder)
    kg = detection.prepare_detection_kg(settings, model, params, featurizer, wd.cache_dir(settings.data), mission,
                                       verbose=True)
    gnn_params = detection.load_gnn(wd, settings, kg)
    calibration_file = wd.gnn_dir / "calibration.json"
    calibration = files.read_json(calibration_file) if calibration_file.is_file() else None
    bank_file = wd.gnn_dir / calibration_lib.OOD_BANK_FILE
    ood_bank = files.load_npz(bank_file)["embeddings"] if bank_file.is_file() else None
    return Classifier(towers=towers, replicated_params=runtime.replicate(params), embed_fn=make_embed_fn(model),
                      gnn_train_config=detection.gnn_train_config(settings, params), gnn_params=gnn_params, kg=kg,
                      load_seconds=time.perf_counter() - t0, calibration=calibration, ood_bank=ood_bank)


def use_compilation_cache(workdir, directory=None, tool: str = "pclip_jax") -> Optional[pathlib.Path]:
    """Turns on JAX's persistent compilation cache for this process in `directory`, default the workdir's
    `cache/xla`, so a later run on the workdir loads the compiled towers and GNN instead of compiling them again.

    Process-wide, so it is an entry point's choice (`classify`, `evaluate`), made before anything compiles.
    Returns the directory, or None (with a note on stderr) when it cannot be written.
    """
    if directory:
        path = pathlib.Path(directory)
    else:
        w = Workdir(workdir)
        path = w.compilation_cache_dir(w.read_settings().data)
    if runtime.use_compilation_cache(path):
        return path
    print(f"[{tool}] note: {path} cannot be written; compiling without a persistent cache", file=sys.stderr)
    return None
