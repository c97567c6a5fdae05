"""The main job: data → pre-training → evaluation → detection stage → `WORKDIR/results.json`.

`train_and_evaluate(config, workdir)` is the library entry point (`pclip_jax.main` only parses flags; tests and
benchmarks call this). Everything a run needs is checked before the first training step: the settings (types,
ranges, names), the knowledge graph, the text encoder and the captures. A rerun with the same workdir resumes from
its checkpoints; results.json is written last (atomically), so its presence means the job finished. The flows of a
run and a finished workdir's embeddings: `training.experiment`.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Optional

import jax
import numpy as np

from pclip_jax import evaluate
from pclip_jax.data.prepare import PreparedFlows
from pclip_jax.graph.from_labels import graph_from_labels
from pclip_jax.graph.schema import load_kg, save_kg
from pclip_jax.plumbing import files
from pclip_jax.plumbing.runtime import data_parallel_implementation, maybe_initialize_distributed
from pclip_jax.plumbing.settings import Settings, from_config, with_absolute_paths
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.training import detection, finetune, loop
from pclip_jax.training import pretrain
from pclip_jax.training.experiment import check_inputs, prepare_experiment, save_embeddings
from pclip_jax.training.towers import build_model, text_featurizer


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
    cache_dir = wd.cache_dir(settings.data)
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
    pretraining, hidden = pretrain.pretraining_flows(prepared, settings)
    texts = pretrain.build_train_texts(pretraining, settings, featurizer, cache_dir, hidden)
    model = build_model(settings)
    t_train = time.time()
    validate = pretrain.make_validator(settings, model, prepared, featurizer, cache_dir)
    params, steps = pretrain.pretrain(settings, wd, pretraining, texts, model, validate=validate)
    t_train = time.time() - t_train
    if model.text_encoder is not None:  # prompts and graph descriptions through the tuned text tower
        featurizer = text_featurizer(settings, params)
    results, embeddings = evaluate.evaluate_pretrained(settings, wd, prepared, model, params, featurizer)
    if jax.process_index() == 0:
        save_embeddings(wd, prepared, embeddings)
    finetuned = finetune.finetune(settings, wd, prepared, model, params)
    if finetuned is not None:
        results["finetuned"] = finetuned
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
