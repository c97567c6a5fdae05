"""The flows of an experiment: its inputs checked, its data prepared, and a finished workdir's flows and
embeddings read back (used by the main job, `export`'s quantization check and the peer suite).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from pclip_jax.data.flow_source import prepare_from_dataset
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.data.splits import filter_flows
from pclip_jax.data.prepare import PreparedFlows, prepare_flows
from pclip_jax.graph.schema import load_kg
from pclip_jax.models.text_tower import resolve_model_dir
from pclip_jax.plumbing import files
from pclip_jax.plumbing.settings import Settings, from_config, with_absolute_paths
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.text.name_features import NameEncoder, with_name_features
from pclip_jax.training import detection
from pclip_jax.training.towers import load_descriptions


def check_inputs(settings: Settings):
    """Fails fast, before any data is read or step is taken, on what the settings name but cannot be found.
    Returns the validated knowledge graph of `gnn.kg` (None when it is built from the labels)."""
    kg = detection.load_graph(settings.gnn.kg) if settings.gnn.kg else None
    try:
        resolve_model_dir(settings.text.encoder)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"text.encoder={settings.text.encoder}: {e}") from None
    load_descriptions(settings.text, settings.gnn.kg)
    return kg


def prepare_experiment(settings: Settings, cache_dir, kg=None) -> PreparedFlows:
    """The experiment's flows (`data.prepare.prepare_flows`, classes named with the graph `kg` when the taxonomy
    asks for it) with the server-name vectors the towers read. With `data.dataset`, a built dataset read on demand
    (`data.flow_source.prepare_from_dataset`)."""
    if settings.data.dataset:
        encoder = NameEncoder(settings.text.encoder) if settings.data.use_names else None
        return prepare_from_dataset(settings.data, encoder)
    prepared = prepare_flows(settings.data, cache_dir, kg=kg)
    return dataclasses.replace(prepared, table=with_name_features(prepared.table, settings))


def flows_as_trained(inputs, settings: Settings, names=None) -> tuple[Any, dict]:
    """(flow table, dropped counts) of other captures (`inputs`: files or folders, no labels needed) as the
    settings' training keeps flows (`data.min_packets`, one-way flows dropped), with server-name vectors
    (`names`: a `NameEncoder`, default the settings' encoder). For pushing other traffic through a trained model."""
    table = ingest(list(inputs), IngestConfig.from_data_config(settings.data), progress=False)
    table, dropped = filter_flows(table, min_packets=settings.data.min_packets,
                                  drop_one_way=settings.data.drop_one_way, drop_unlabelled=False)
    return with_name_features(table, settings, names), dropped


_SPLIT_ROWS = (("train", "train_idx"), ("validation", "val_idx"), ("test", "test_idx"))


def save_embeddings(wd: Workdir, prepared: PreparedFlows, embeddings: dict) -> None:
    """WORKDIR/embeddings.npz: per split the packet tower's shared-space embeddings (`evaluate.evaluate_pretrained`)
    and the flow-table rows they belong to, so that later stages (the peer suite's `pclip_trees`, calibration
    studies) read them instead of running the towers again."""
    arrays = {}
    for split, attr in _SPLIT_ROWS:
        if embeddings.get(split) is not None:
            arrays[split] = np.asarray(embeddings[split], np.float32)
            arrays[f"{split}_rows"] = np.asarray(getattr(prepared, attr), np.int64)
    files.savez(wd.file(Workdir.EMBEDDINGS), **arrays)


def workdir_flows(settings: Settings, wd: Workdir) -> PreparedFlows:
    """The flows and splits a run in `wd` with `settings` trained and evaluated on (its graph: the settings' or
    the one built from the labels in the workdir)."""
    kg = check_inputs(settings)
    generated = wd.file(Workdir.GENERATED_KG)
    if kg is None and generated.is_file():
        kg = load_kg(generated)
    return prepare_experiment(settings, wd.cache_dir(settings.data), kg)


def load_finished(config: Any, workdir: str) -> Optional[tuple[dict, PreparedFlows, dict]]:
    """(results, prepared flows, embeddings) of a finished run in `workdir` without running the towers again, or
    None when the run has not finished, predates embeddings.npz, a later run in it did not finish, or the rows are
    not those of today's split of the flows (then `train_and_evaluate` is the way to get them)."""
    settings = with_absolute_paths(from_config(config))
    wd = Workdir(workdir)
    results_file, embeddings_file = wd.file(Workdir.RESULTS), wd.file(Workdir.EMBEDDINGS)
    if not (results_file.is_file() and embeddings_file.is_file()):
        return None
    if embeddings_file.stat().st_mtime_ns > results_file.stat().st_mtime_ns:
        return None  # a later run wrote embeddings and did not finish: they may not be the finished run's
    prepared = workdir_flows(settings, wd)
    stored = files.load_npz(wd.file(Workdir.EMBEDDINGS))
    embeddings = {}
    for split, attr in _SPLIT_ROWS:
        rows = np.asarray(getattr(prepared, attr))
        if split not in stored:
            embeddings[split] = None
            if len(rows) and split != "validation":
                return None
            continue
        if not np.array_equal(stored[f"{split}_rows"], rows):
            return None
        embeddings[split] = stored[split]
    return files.read_json(wd.file(Workdir.RESULTS)), prepared, embeddings
