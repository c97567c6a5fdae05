"""The main job: data → pre-training → evaluation → detection stage → `WORKDIR/results.json`.

`train_and_evaluate(config, workdir)` is the library entry point (`pclip_jax.main` only parses flags; tests and
benchmarks call this). Everything a run needs is checked before the first training step: the settings (types,
ranges, names), the knowledge graph, the text encoder and the captures. A rerun with the same workdir resumes from
its checkpoints; results.json is written last (atomically), so its presence means the job finished.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from pclip_jax import evaluate, files, loop, train
from pclip_jax.compat import data_parallel_implementation, maybe_initialize_distributed
from pclip_jax.data.flow_source import prepare_from_dataset
from pclip_jax.data.prepare import PreparedFlows, prepare_flows
from pclip_jax.embedding import build_model, load_descriptions, text_featurizer
from pclip_jax.kg import pipeline as detection
from pclip_jax.kg.from_labels import graph_from_labels
from pclip_jax.kg.schema import load_kg, save_kg
from pclip_jax.models.text_tower import resolve_model_dir
from pclip_jax.name_features import NameEncoder, with_name_features
from pclip_jax.settings import Settings, from_config, with_absolute_paths
from pclip_jax.workdir import Workdir


def check_inputs(settings: Settings):
    """Fails fast, before any data is read or step is taken, on what the settings name but cannot be found.
    Returns the validated knowledge graph of `gnn.kg` (None when it is built from the labels)."""
    kg = detection.load_graph(settings) if settings.gnn.kg else None
    try:
        resolve_model_dir(settings.text.encoder)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"text.encoder={settings.text.encoder}: {e}") from None
    load_descriptions(settings)
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


def graph_for_labels(settings: Settings, wd: Workdir, prepared: PreparedFlows) -> Settings:
    """With `gnn.kg = ''`: the workdir's `kg.yaml` (built from the training labels the first time, kept after so the
    user can edit it and rerun); returns the settings pointing at it."""
    path = wd.file(Workdir.GENERATED_KG)
    if path.is_file():
        load_kg(path)  # validated: an edited graph with a mistake fails here, naming the node
        print(f"[kg] using {path} (delete it to build the graph from the labels again)", file=sys.stderr)
    else:
        kg = graph_from_labels(prepared.table.meta, np.concatenate([prepared.train_idx, prepared.val_idx]),
                               name=wd.path.name or "labels")
        save_kg(kg, path)
        print(f"[kg] built a graph of {len(kg.level_ids(1))} classes and {len(kg.level_ids(2))} leaves from the "
              f"labels: {path} (edit it and rerun to change descriptions)", file=sys.stderr)
    return settings.replace(gnn={"kg": str(path)})


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
    return prepare_experiment(settings, wd.cache_dir(settings), kg)


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


def train_and_evaluate(config: Any, workdir: str, outputs: Optional[dict] = None) -> dict:
    """The whole job; `config` is an ml_collections ConfigDict, a dict or `Settings`. Returns results.json's
    content. `outputs`, when given, also receives `prepared` (the flows and splits) and `embeddings` (the packet
    tower's shared-space embeddings of the train / validation / test flows, `evaluate.evaluate_pretrained`), for
    callers that build on the towers (the peer suite's `pclip_trees`)."""
    settings = with_absolute_paths(from_config(config))
    kg = check_inputs(settings)
    maybe_initialize_distributed()
    started = time.time()
    wd = Workdir(workdir)
    wd.save_settings(settings)
    cache_dir = wd.cache_dir(settings)
    generated = wd.file(Workdir.GENERATED_KG)
    if kg is None and generated.is_file():  # a graph built from the labels by an earlier run (maybe edited)
        kg = load_kg(generated)
    prepared = prepare_experiment(settings, cache_dir, kg)
    if jax.process_index() == 0:
        files.write_json(wd.file(Workdir.SPLIT), prepared.split_captures)
    if not settings.gnn.kg:
        settings = graph_for_labels(settings, wd, prepared)
        wd.save_settings(settings)
    featurizer = text_featurizer(settings)
    pretraining, hidden = train.pretraining_flows(prepared, settings)
    texts = train.build_train_texts(pretraining, settings, featurizer, cache_dir, hidden)
    model = build_model(settings)
    t_train = time.time()
    validate = train.make_validator(settings, model, prepared, featurizer, cache_dir)
    params, steps = train.pretrain(settings, wd, pretraining, texts, model, validate=validate)
    t_train = time.time() - t_train
    if model.text_encoder is not None:  # prompts and graph descriptions through the tuned text tower
        featurizer = text_featurizer(settings, params)
    results, embeddings = evaluate.evaluate_pretrained(settings, wd, prepared, model, params, featurizer)
    if jax.process_index() == 0:
        save_embeddings(wd, prepared, embeddings)
    if settings.gnn.enabled:
        results["gnn"] = detection.train_and_evaluate_gnn(settings, wd, prepared, model, params, featurizer,
                                                          embeddings, cache_dir)
    results["data"]["taxonomy"] = prepared.taxonomy
    results.update({
        "devices": {"count": jax.device_count(), "local": jax.local_device_count(),
                    "platform": jax.devices()[0].platform, "processes": jax.process_count(),
                    "data_parallel": data_parallel_implementation()},
        "train_steps": steps,
        # The pre-training loop's time summed over the runs that trained this model (a resumed or re-invoked run
        # is not reported as a fast one); this invocation's own time where no steps were logged.
        "train_seconds": round(loop.logged_seconds(wd.path / "metrics_train.jsonl") or t_train, 1),
        "wall_seconds": round(time.time() - started, 1),
    })
    if jax.process_index() == 0:
        wd.write_results(results)
    if outputs is not None:
        outputs.update(prepared=prepared, embeddings=embeddings)
    return results
