"""The peer benchmark suite: every (dataset, model, fraction, seed) cell on the same flows, capture-disjoint splits,
classes and training fractions, one result file per cell (so a rerun resumes and `--shard I/N` spreads cells over
processes or hosts), and the summary built from whatever cells exist.

Datasets are configs (`DATASETS`): their `data` settings define flows, masking, split and classes for every model.
A cell's split is `data.split_seed = seed` and its training subset `data.fraction = fraction` (nested per class;
`splits.fraction_subset`); validation captures (never test) select PacketCLIP's probe strength and GNN step, the
peers' fine-tuning step and LightGBM's rounds. Peers read a table of the same flows ingested 320 bytes wide (YaTC
and NetMamba read 320 bytes of each packet); the trees and PacketCLIP read the dataset's own width.

Rows (one per model and evaluation): dataset, model, fraction, seed, mauc, accuracy, macro_f1, capture_accuracy,
capture_macro_f1, ece, num_flows, trainable_params, flops_per_flow (trees: node tests per flow, `cost_unit`),
train_seconds, infer_flows_per_s.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from typing import Iterable, Optional, Sequence

import numpy as np

from pclip_bench import protocol
from pclip_bench.peers import tuning
from pclip_jax.configs import shipped_config_path
from pclip_jax.plumbing import files
from pclip_jax.plumbing.workdir import Workdir
from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.plumbing.config_files import load_config
from pclip_jax.plumbing.settings import from_config, with_absolute_paths

# Dataset name → (shipped config, its overrides). nDPI is two tasks under the protocol (docs/labels.md, "nDPI
# tasks"): `ndpi_closed`, capture splits where every test application has training captures, and `ndpi_novel`,
# whole applications held out of training; `ndpi` is the capture split that mixes both (the sweep before it).
DATASETS = {"ndpi": "quickstart", "iot_sentinel": "iot_sentinel", "ndpi_closed": "quickstart",
            "ndpi_novel": "quickstart"}
DATASET_OVERRIDES = {"ndpi_closed": ("data.split=seen_applications",),
                     "ndpi_novel": ("data.split=novel_applications",)}
PROTOCOL_DATASETS = ("ndpi_closed", "ndpi_novel", "iot_sentinel")
TREES = ("extra_trees", "lightgbm")
NEURAL = ("cnn1d", "fsnet", "yatc", "netmamba", "etbert")
# ExtraTrees on the trees' features plus PacketCLIP's flow embedding (the pclip cell's towers, resumed): whether the
# contrastive tower adds what the hand-made features lack. A hybrid, reported beside PacketCLIP's own evaluations.
HYBRID = ("pclip_trees",)
MODELS = ("pclip",) + HYBRID + TREES + NEURAL
PCLIP_ROWS = ("pclip_probe", "pclip_zero_shot", "pclip_finetuned", "pclip_gnn", "pclip_gnn_level1")
PEER_BYTES = 320
PROTOCOL = 2  # cells tuned on the tuning split, with declared evaluations and per-flow answers (docs/peers.md)


@dataclasses.dataclass(frozen=True)
class Cell:
    dataset: str
    model: str
    fraction: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.model}-f{self.fraction:g}-s{self.seed}"


def make_cells(datasets: Sequence[str], models: Sequence[str], fractions: Sequence[float],
               seeds: Sequence[int]) -> list[Cell]:
    """All cells, seed-major (a sweep stopped early has whole seeds), then fraction (largest first), dataset,
    model."""
    for d in datasets:
        if d not in DATASETS:
            raise ValueError(f"--datasets: unknown dataset {d!r}; known: {', '.join(DATASETS)}")
    for m in models:
        if m not in MODELS:
            raise ValueError(f"--models: unknown model {m!r}; known: {', '.join(MODELS)}")
    return [Cell(d, m, float(f), int(s)) for s in seeds for f in sorted(fractions, reverse=True)
            for d in datasets for m in models]


def shard(cells: Sequence[Cell], spec: str) -> list[Cell]:
    """`I/N`: every N-th unit of work starting at I (0 ≤ I < N), in the cells' order. A unit is one cell, except
    that a `pclip` cell and the hybrid cells of the same dataset, fraction and seed are one unit: they train and
    read the same PacketCLIP workdir, so one shard runs them one after the other (`pclip_workdir_lock` also guards
    processes that were not sharded together)."""
    try:
        i, n = (int(x) for x in spec.split("/"))
        if not 0 <= i < n:
            raise ValueError
    except ValueError:
        raise ValueError(f"--shard {spec!r}: must be I/N with 0 <= I < N, e.g. 0/4") from None
    units: dict = {}
    for cell in cells:
        key = pclip_cell(cell) if cell.model in HYBRID else cell
        units.setdefault(key, []).append(cell)
    return [cell for k, unit in enumerate(units.values()) if k % n == i for cell in unit]


def pclip_cell(cell: Cell) -> Cell:
    """The pclip cell whose PacketCLIP run a pclip or hybrid cell trains or reads (same dataset, fraction, seed)."""
    return dataclasses.replace(cell, model="pclip")


def pclip_workdir(workdir: pathlib.Path, cell: Cell) -> pathlib.Path:
    """The PacketCLIP run of a pclip cell and of the hybrid cells of its dataset, fraction and seed."""
    return pathlib.Path(workdir) / "pclip" / cell.dataset / pclip_cell(cell).name


def pclip_workdir_lock(workdir: pathlib.Path, cell: Cell):
    """Held while a cell trains or reads its PacketCLIP run, so two processes never train one workdir at once: the
    second waits, then finds the run finished."""
    run = pclip_workdir(workdir, cell)
    return files.exclusive_lock(run.parent / f"{run.name}.lock",
                                waiting=f"{cell.dataset} {cell.name}: waiting for {run} to be free")


def cell_file(workdir: pathlib.Path, cell: Cell) -> pathlib.Path:
    return pathlib.Path(workdir) / "cells" / cell.dataset / f"{cell.name}.json"


def dataset_settings(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str] = ()):
    config = load_config(shipped_config_path(DATASETS[cell.dataset]),
                         [*DATASET_OVERRIDES.get(cell.dataset, ()), *overrides, f"data.split_seed={cell.seed}",
                          f"data.fraction={cell.fraction}"])
    if not config.data.cache_dir:
        config.data.cache_dir = str(pathlib.Path(workdir) / "cache")
    return config, with_absolute_paths(from_config(config))


# ----------------------------------------------------------------------------------------------- rows

def per_class_recall(report: dict) -> dict:
    """{class: recall} of the classes with test flows, from a report's confusion matrix."""
    cm = np.asarray(report.get("confusion_matrix") or [], np.float64)
    if not cm.size:
        return {}
    support = cm.sum(1)
    return {c: round(float(cm[i, i] / support[i]), 4) for i, c in enumerate(report["classes"]) if support[i] > 0}


def _row(cell: Cell, model: str, report: dict, **extra) -> dict:
    pc = report.get("per_capture") or {}
    return {"dataset": cell.dataset, "model": model, "fraction": cell.fraction, "seed": cell.seed,
            "mauc": report["mauc"], "accuracy": report["accuracy"], "macro_f1": report["macro_f1"],
            "capture_accuracy": pc.get("accuracy"), "capture_macro_f1": pc.get("macro_f1"),
            "ece": (report.get("calibration") or {}).get("ece"),
            "reliability": {k: v for k, v in (report.get("calibration") or {}).items() if k != "ece"},
            "num_flows": report["num_flows"], "per_class_recall": per_class_recall(report), **extra}


def pclip_overrides(cell: Cell, tuned: Optional[dict]) -> list[str]:
    """PacketCLIP's tuned budget and learning rate (`tuning.pclip_overrides`) and the cell's initialisation seed
    (varied with the split, as every peer's is); nothing when the cell runs untuned."""
    if tuned is None:
        return []
    return [*tuning.pclip_overrides(tuned["pclip"]), f"train.seed={cell.seed}"]


def pclip_rows(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str], tuned: Optional[dict] = None
               ) -> list[dict]:
    """The main job (resumed when its workdir exists) and its rows: probe, zero-shot, GNN at the evaluated level
    (`pclip_gnn`) and, when that is level 2, at level 1 (`pclip_gnn_level1`: a coarser task, not comparable)."""
    # what a cell trains loads on use: the summary (tables, plots) runs without it
    from pclip_bench import costs
    from pclip_jax import job

    overrides = [*overrides, *pclip_overrides(cell, tuned)]
    config, settings = dataset_settings(cell, workdir, overrides)
    with pclip_workdir_lock(workdir, cell):
        results = job.train_and_evaluate(config, str(pclip_workdir(workdir, cell)))
    tower = costs.packet_tower_cost(settings)
    tower_params = results["num_params"]["trainable_total"]
    embed_rate = results["test"].get("embed_flows_per_s")
    common = {"train_seconds": results["train_seconds"], "infer_flows_per_s": embed_rate}
    probe_params = tower_params + len(results["test"]["classes"]) * (settings.model.width + 1)
    rows = [_row(cell, "pclip_probe", results["test"], trainable_params=probe_params,
                 flops_per_flow=tower["flops_per_flow"], **common),
            _row(cell, "pclip_zero_shot", results["zero_shot"], trainable_params=tower_params,
                 flops_per_flow=tower["flops_per_flow"], **common)]
    if "finetuned" in results:  # train.finetune_steps > 0: the tower fine-tuned with a class head
        rows.append(_row(cell, "pclip_finetuned", results["finetuned"], trainable_params=probe_params,
                         flops_per_flow=tower["flops_per_flow"], **common))
    gnn = results.get("gnn")
    level = "level2" if settings.data.label_level == "level2" else "level1"
    if gnn:
        extra = {"trainable_params": gnn["trainable_params"], "tower_params": tower_params,
                 "flops_per_flow": tower["flops_per_flow"] + gnn["flops_per_flow"],
                 "detection_flops_per_flow": gnn["flops_per_flow"], **common}
        rows.append(_row(cell, "pclip_gnn", gnn[level], **extra))
        if level == "level2":
            rows.append(_row(cell, "pclip_gnn_level1", gnn["level1"], **extra))
    return declare_evaluation(rows, Workdir(pclip_workdir(workdir, cell)).load_answers(), level)


# The workdir's answer files behind each PacketCLIP row (`Workdir.save_answers`).
_PCLIP_ANSWERS = {"pclip_probe": "probe", "pclip_zero_shot": "zero_shot", "pclip_finetuned": "finetuned"}
# pclip_gnn_level1 is a coarser task
DECLARABLE = ("pclip_probe", "pclip_zero_shot", "pclip_finetuned", "pclip_gnn")


def declare_evaluation(rows: list[dict], answers: dict, gnn_level: str = "level1") -> list[dict]:
    """Attaches each PacketCLIP row's per-flow answers and marks the one evaluation the comparisons use: the
    declarable row with the best mAUC on the validation captures, chosen before the test answers are opened
    (`protocol.SealedTest`), recorded on every row (`declared_evaluation`, `validation_mauc`)."""
    source = {**_PCLIP_ANSWERS, "pclip_gnn": f"gnn_{gnn_level}", "pclip_gnn_level1": "gnn_level1"}
    sealed = protocol.SealedTest({row["model"]: answers.get(source[row["model"]], {}).get("test") for row in rows})
    validation_mauc = {}
    for row in rows:
        val = answers.get(source[row["model"]], {}).get("validation")
        if val is not None and len(val["y_true"]):
            validation_mauc[row["model"]] = float(protocol.weighted_metric(
                "mauc", val["y_true"], val["scores"], np.ones((1, len(val["y_true"]))))[0])
    declarable = {m: validation_mauc.get(m, float("nan")) for m in DECLARABLE if any(r["model"] == m for r in rows)}
    declared = sealed.select("declared_evaluation", declarable) if any(
        np.isfinite(v) for v in declarable.values()) else None
    test = sealed.open()
    for row in rows:
        row["declared_evaluation"] = declared
        row["validation_mauc"] = validation_mauc.get(row["model"])
        split_answers = {split: dict(arrays) for split, arrays in answers.get(source[row["model"]], {}).items()}
        if test.get(row["model"]) is not None:
            row[ANSWERS] = split_answers
    return rows


def _split_arrays(prepared):
    keep = {name: idx[prepared.class_ids[idx] >= 0]
            for name, idx in (("train", prepared.train_idx), ("validation", prepared.val_idx),
                              ("test", prepared.test_idx))}
    return keep, {name: prepared.class_ids[idx] for name, idx in keep.items()}


def _evaluate(cell, model, prepared, test_idx, y_test, proba, seconds_per_flow, validation=None, **extra) -> dict:
    """A peer's row from its test probabilities; `validation` = (rows, y, probabilities) on the validation
    captures. Both splits' per-flow answers ride along under ANSWERS (written to the cell's .npz, not its JSON)."""
    all_captures = np.asarray(prepared.table.meta["capture"]).astype(str)
    captures = all_captures[test_idx]
    report = metrics_lib.classification_report(y_test, proba, prepared.class_names)
    report["per_capture"] = metrics_lib.per_capture_accuracy(y_test, proba, captures, prepared.class_names)
    answers = {"test": answer(y_test, proba, captures, prepared.class_names, prepared.novel(test_idx))}
    if validation is not None and len(validation[0]):
        rows, y_val, p_val = validation
        answers["validation"] = answer(y_val, p_val, all_captures[rows], prepared.class_names, prepared.novel(rows))
    return _row(cell, model, report, infer_flows_per_s=round(1.0 / max(seconds_per_flow, 1e-12), 1),
                **{ANSWERS: answers}, **extra)


ANSWERS = "_answers"  # a row's per-flow answers {split: arrays} until the cell writes them to <cell>.npz


def answer(y_true, scores, captures, class_names, novel) -> dict:
    """One split's per-flow answers as a cell keeps them (the fields of `Workdir.save_answers`)."""
    return {"y_true": np.asarray(y_true, np.int32), "scores": np.asarray(scores, np.float32),
            "captures": np.asarray(captures).astype(str), "class_names": np.asarray(list(class_names)).astype(str),
            "novel": np.asarray(novel, bool)}


def answers_file(workdir: pathlib.Path, cell: Cell) -> pathlib.Path:
    """The cell's per-flow answers (`<row>.<split>.<field>` arrays) beside its JSON."""
    return cell_file(workdir, cell).with_suffix(".npz")


def write_answers(workdir: pathlib.Path, cell: Cell, rows: Sequence[dict]) -> list[dict]:
    """Writes the rows' answers to the cell's .npz and returns the rows without them."""
    arrays = {f"{row['model']}.{split}.{field}": value for row in rows
              for split, fields in (row.get(ANSWERS) or {}).items() for field, value in fields.items()}
    if arrays:
        files.savez(answers_file(workdir, cell), compressed=True, **arrays)  # committed with the results
    return [{k: v for k, v in row.items() if k != ANSWERS} for row in rows]


def read_answers(workdir: pathlib.Path, cell: Cell) -> dict:
    """{row: {split: {field: array}}} of a finished cell ({} for cells from before answers were kept)."""
    path = answers_file(workdir, cell)
    out: dict = {}
    if path.is_file():
        for key, value in files.load_npz(path).items():
            row, split, field = key.split(".")
            out.setdefault(row, {}).setdefault(split, {})[field] = value
    return out


def tree_rows(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str], prepared=None,
              tuned: Optional[dict] = None) -> list[dict]:
    # what a cell trains loads on use: the summary (tables, plots) runs without it
    from pclip_bench.peers import trees

    _, settings = dataset_settings(cell, workdir, overrides)
    prepared = prepared or _prepared(settings)
    idx, y = _split_arrays(prepared)
    t = prepared.table.tensors

    def feats(rows):
        return trees.tree_features(t, rows, settings.data.bytes, settings.data.use_names)

    knobs = dict((tuned or {}).get(cell.model) or {})
    if cell.model == "extra_trees":
        predict, info, comparisons = trees.fit_extra_trees(feats(idx["train"]), y["train"],
                                                           len(prepared.class_names), seed=cell.seed, **knobs)
    else:
        predict, info, comparisons = trees.fit_lightgbm(feats(idx["train"]), y["train"], len(prepared.class_names),
                                                        feats(idx["validation"]), y["validation"], seed=cell.seed,
                                                        **knobs)
    x_test = feats(idx["test"])
    started = time.perf_counter()
    proba = predict(x_test)
    per_flow = (time.perf_counter() - started) / max(len(x_test), 1)
    validation = (idx["validation"], y["validation"],
                  predict(feats(idx["validation"])) if len(idx["validation"]) else None)
    return [_evaluate(cell, cell.model, prepared, idx["test"], y["test"], proba, per_flow, validation=validation,
                      flops_per_flow=comparisons(x_test), cost_unit="node tests", **info)]


def hybrid_rows(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str], tuned: Optional[dict] = None
                ) -> list[dict]:
    """`pclip_trees`: ExtraTrees (as `extra_trees`) on the tree features and the packet tower's shared-space
    embedding of each flow, from the pclip cell's workdir (trained there if that cell has not run)."""
    # what a cell trains loads on use: the summary (tables, plots) runs without it
    from pclip_bench import costs
    from pclip_jax import job
    from pclip_jax.training import experiment, loop
    from pclip_bench.peers import trees

    config, settings = dataset_settings(pclip_cell(cell), workdir,
                                        [*overrides, *pclip_overrides(pclip_cell(cell), tuned)])
    run = str(pclip_workdir(workdir, cell))
    with pclip_workdir_lock(workdir, cell):
        finished = experiment.load_finished(config, run)  # the pclip cell's towers and embeddings, when it ran
        if finished is None:
            out: dict = {}
            results = job.train_and_evaluate(config, run, outputs=out)
            prepared, embeddings = out["prepared"], out["embeddings"]
        else:
            results, prepared, embeddings = finished
    t = prepared.table.tensors

    def feats(split, rows):
        keep = prepared.class_ids[rows] >= 0
        x = np.concatenate([trees.tree_features(t, rows[keep], settings.data.bytes, settings.data.use_names),
                            np.asarray(embeddings[split], np.float32)[keep]], 1)
        return x, rows[keep], prepared.class_ids[rows[keep]]

    x_train, _, y_train = feats("train", prepared.train_idx)
    x_test, test_idx, y_test = feats("test", prepared.test_idx)
    predict, info, comparisons = trees.fit_extra_trees(x_train, y_train, len(prepared.class_names), seed=cell.seed,
                                                       **dict((tuned or {}).get("extra_trees") or {}))
    validation = None
    if embeddings.get("validation") is not None and len(prepared.val_idx):
        x_val, val_idx, y_val = feats("validation", prepared.val_idx)
        validation = (val_idx, y_val, predict(x_val))
    started = time.perf_counter()
    proba = predict(x_test)
    embed_rate = results["test"].get("embed_flows_per_s")
    per_flow = (time.perf_counter() - started) / max(len(x_test), 1) + (1.0 / embed_rate if embed_rate else 0.0)
    tower = costs.packet_tower_cost(settings)
    # The towers' pre-training time from the run's own log (results.json of runs from before 2026-12-05 holds the
    # time of the invocation that wrote it, ~0 for a resumed run).
    tower_seconds = loop.logged_seconds(pathlib.Path(run) / "metrics_train.jsonl") or results["train_seconds"]
    return [_evaluate(cell, "pclip_trees", prepared, test_idx, y_test, proba, per_flow, validation=validation,
                      trainable_params=results["num_params"]["trainable_total"], tree_nodes=info["trainable_params"],
                      flops_per_flow=tower["flops_per_flow"], tree_node_tests=comparisons(x_test),
                      train_seconds=tower_seconds + info["train_seconds"], tree_train_seconds=info["train_seconds"])]


def neural_rows(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str], size: str = "cpu",
                train_config=None, prepared=None, progress: bool = True, tuned: Optional[dict] = None
                ) -> list[dict]:
    # what a cell trains loads on use: the summary (tables, plots) runs without it
    from pclip_bench.peers import train as peer_train
    from pclip_bench.peers.models import PEERS

    _, settings = dataset_settings(cell, workdir, overrides)
    prepared = prepared or _prepared(settings.replace(data={"bytes": max(settings.data.bytes, PEER_BYTES)}))
    spec = PEERS[cell.model]
    idx, y = _split_arrays(prepared)
    t = prepared.table.tensors
    x = {name: spec.features(t, rows) for name, rows in idx.items()}
    if train_config is None and tuned is not None:
        train_config = tuning.peer_train_config(tuned[cell.model], cell.seed, spec.pretrain)
    config = train_config or peer_train.PeerTrainConfig(seed=cell.seed)
    # data.unlabelled_pretraining: a peer's self-supervised pre-training reads every training flow of the split, as
    # PacketCLIP's does (train.pretraining_flows); fine-tuning keeps the labelled fraction.
    pool = prepared.train_pool_idx if settings.data.unlabelled_pretraining else None
    x_pretrain = spec.features(t, pool) if pool is not None else None
    fitted = peer_train.fit_peer(spec, size, len(prepared.class_names), x["train"], y["train"], x["validation"],
                                 y["validation"], config, progress=progress, x_pretrain=x_pretrain)
    peer_train.predict_proba(fitted.module, fitted.params, peer_train._take(x["test"], np.arange(1)))  # compile
    started = time.perf_counter()
    proba = peer_train.predict_proba(fitted.module, fitted.params, x["test"])
    per_flow = (time.perf_counter() - started) / max(len(idx["test"]), 1)
    flops = peer_train.flops_per_flow(fitted.module, fitted.params, x["test"])
    validation = (idx["validation"], y["validation"],
                  peer_train.predict_proba(fitted.module, fitted.params, x["validation"])
                  if len(idx["validation"]) else None)
    return [_evaluate(cell, cell.model, prepared, idx["test"], y["test"], proba, per_flow, validation=validation,
                      flops_per_flow=flops, size=size, **fitted.info)]


def _prepared(settings):
    # what a cell trains loads on use: the summary (tables, plots) runs without it
    from pclip_jax.training import experiment
    from pclip_jax.training.detection import load_graph

    return experiment.prepare_experiment(settings, settings.data.cache_dir,
                                  load_graph(settings.gnn.kg) if settings.gnn.kg else None)


def run_cell(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str] = (), size: str = "cpu",
             train_config=None, progress: bool = True, tuned: Optional[dict] = None) -> list[dict]:
    """The rows of one cell, computed now (no resume; see `run_cells`). `tuned`: {model: chosen configuration} of
    the models the cell trains (`tuning`; None: the models' fixed defaults, the protocol before tuning)."""
    if cell.model == "pclip":
        return pclip_rows(cell, workdir, overrides, tuned)
    if cell.model in HYBRID:
        return hybrid_rows(cell, workdir, overrides, tuned)
    if cell.model in TREES:
        return tree_rows(cell, workdir, overrides, tuned=tuned)
    return neural_rows(cell, workdir, overrides, size, train_config, progress=progress, tuned=tuned)


# ----------------------------------------------------------------------------------------------- tuning

def tuned_file(workdir: pathlib.Path, dataset: str, model: str) -> pathlib.Path:
    return pathlib.Path(workdir) / "tuned" / dataset / f"{model}.json"


def candidate_file(workdir: pathlib.Path, dataset: str, model: str, candidate: dict) -> pathlib.Path:
    return pathlib.Path(workdir) / "tuning" / dataset / model / f"{tuning.candidate_name(candidate)}.json"


def validation_score(rows: Sequence[dict]) -> float:
    """A tuning candidate's score: the validation-capture mAUC of its declared evaluation (PacketCLIP: the best of
    its declarable rows, as declared) or of its one row; computed from validation answers only."""
    declared = [r for r in rows if r.get("declared_evaluation") and r["model"] == r["declared_evaluation"]]
    row = declared[0] if declared else rows[0]
    if row.get("validation_mauc") is not None:
        return float(row["validation_mauc"])
    val = (row.get(ANSWERS) or {}).get("validation")
    if val is None or not len(val["y_true"]):
        return float("nan")
    return float(protocol.weighted_metric("mauc", val["y_true"], val["scores"], np.ones((1, len(val["y_true"]))))[0])


def tune_model(dataset: str, model: str, workdir: pathlib.Path, overrides: Sequence[str] = (), size: str = "cpu",
               progress: bool = True) -> dict:
    """The frozen configuration of (dataset, model), tuned now if it was not (`tuning`): every candidate of the
    model's search space trained on the tuning split at full data and scored on its validation captures; each
    candidate's score is its own file (a rerun resumes), test answers are dropped unread. Returns the record."""
    path = tuned_file(workdir, dataset, model)
    if path.is_file():
        return files.read_json(path)
    space = tuning.SEARCH_SPACES[model]
    cell = Cell(dataset, model, 1.0, tuning.TUNING_SEED)
    # Candidates train in their own folders (PacketCLIP workdirs per candidate) and share the sweep's flow cache.
    cache = [f"data.cache_dir={pathlib.Path(workdir).resolve() / 'cache'}"]

    def fit_and_validate(candidate: dict) -> float:
        done = candidate_file(workdir, dataset, model, candidate)
        if done.is_file():
            return files.read_json(done)["validation_mauc"]
        print(f"=== tuning {dataset} {model}: {tuning.candidate_name(candidate)} ===", file=sys.stderr, flush=True)
        started = time.time()
        rows = run_cell(cell, done.with_suffix(""), [*cache, *tuning.protocol_overrides(dataset), *overrides], size,
                        progress=progress, tuned={model: candidate})
        score = validation_score(rows)
        files.write_json(done, {"candidate": candidate, "validation_mauc": score,
                                "seconds": round(time.time() - started, 1)})
        return score

    chosen = protocol.tune(space, fit_and_validate)
    record = tuning.Tuned(model, dataset, chosen["chosen"], chosen["candidates"]).record()
    files.write_json(path, record)
    return record


def tuned_configs(cell: Cell, workdir: pathlib.Path, overrides: Sequence[str] = (), size: str = "cpu",
                  progress: bool = True) -> dict:
    """{model: chosen configuration} of every model `cell` trains, tuned first where needed."""
    models = tuning.TUNED_AS.get(cell.model, (cell.model,))
    return {m: tune_model(cell.dataset, m, workdir, overrides, size, progress)["chosen"] for m in models}


def run_cells(cells: Iterable[Cell], workdir: pathlib.Path, overrides: Sequence[str] = (), size: str = "cpu",
              train_config=None, progress: bool = True, tune: bool = True) -> list[dict]:
    """Runs the cells that have no result file yet (a finished cell is read, not recomputed) and returns every
    given cell's rows. A cell's file is written atomically when it finishes. With `tune` (the protocol), each
    (dataset, model) is tuned on the tuning split before its first cell and the cell records the configuration."""
    cells = list(cells)
    rows = []
    typical = typical_seconds(workdir)
    pending = [c for c in cells if not cell_file(workdir, c).is_file()]
    for i, cell in enumerate(cells):
        path = cell_file(workdir, cell)
        if path.is_file():
            rows += files.read_json(path)["rows"]
            continue
        print(f"=== cell {i + 1}/{len(cells)}: {cell.dataset} {cell.name} ==={_eta(cell, pending, typical)}",
              file=sys.stderr, flush=True)
        pending = pending[pending.index(cell) + 1:] if cell in pending else pending
        tuned = tuned_configs(cell, workdir, overrides, size, progress) if tune and train_config is None else None
        started = time.time()
        rules = tuning.protocol_overrides(cell.dataset) if tuned is not None else []
        cell_rows = write_answers(workdir, cell, run_cell(cell, workdir, [*rules, *overrides], size, train_config,
                                                          progress, tuned=tuned))
        declared = next((r["declared_evaluation"] for r in cell_rows if r.get("declared_evaluation")), None)
        files.write_json(path, {"cell": dataclasses.asdict(cell), "size": size, "overrides": list(overrides),
                                "protocol": PROTOCOL if tuned is not None else 1, "tuned": tuned,
                                "declared_evaluation": declared or (cell.model if cell.model != "pclip" else None),
                                "seconds": round(time.time() - started, 1), "rows": cell_rows})
        rows += cell_rows
    return rows


def typical_seconds(workdir: pathlib.Path) -> dict:
    """Median seconds of the finished cells of each (dataset, model) under `workdir`: what the next one will take
    on this machine, roughly."""
    seen: dict = {}
    for path in (pathlib.Path(workdir) / "cells").glob("*/*.json"):
        done = files.read_json(path)
        seen.setdefault((done["cell"]["dataset"], done["cell"]["model"]), []).append(done.get("seconds", 0.0))
    return {k: float(np.median(v)) for k, v in seen.items()}


def _eta(cell: Cell, pending: Sequence[Cell], typical: dict) -> str:
    """' (typically 12 min; the sweep's cells left ~3.4 h)' from earlier cells' times, '' without any."""
    if (cell.dataset, cell.model) not in typical:
        return ""
    known = [typical[c.dataset, c.model] for c in pending if (c.dataset, c.model) in typical]
    unknown = sum((c.dataset, c.model) not in typical for c in pending)
    return (f" (typically {typical[cell.dataset, cell.model] / 60:.0f} min; the cells left ~{sum(known) / 3600:.1f} h"
            + (f" + {unknown} never timed here" if unknown else "") + ", by earlier cells' times)")


def load_rows(workdir: pathlib.Path) -> list[dict]:
    """Every row of every finished cell under `workdir`."""
    rows = []
    for path in sorted((pathlib.Path(workdir) / "cells").glob("*/*.json")):
        rows += files.read_json(path)["rows"]
    return rows


# ----------------------------------------------------------------------------------------------- summary

METRICS = ("mauc", "accuracy", "macro_f1", "capture_accuracy", "ece")


def aggregate(rows: Sequence[dict]) -> list[dict]:
    """Mean and sd over seeds of each (dataset, model, fraction)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["model"], r["fraction"]), []).append(r)
    out = []
    for (dataset, model, fraction), rs in sorted(groups.items()):
        agg = {"dataset": dataset, "model": model, "fraction": fraction, "seeds": sorted(r["seed"] for r in rs)}
        for key in METRICS + ("trainable_params", "flops_per_flow", "train_seconds", "infer_flows_per_s"):
            vals = np.array([r[key] for r in rs if r.get(key) is not None], np.float64)
            agg[key] = float(vals.mean()) if len(vals) else None
            agg[key + "_sd"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0 if len(vals) else None
        agg["cost_unit"] = rs[0].get("cost_unit", "FLOPs")
        out.append(agg)
    return out


def _fmt(mean, sd, digits=3) -> str:
    return "-" if mean is None else f"{mean:.{digits}f}±{sd:.{digits}f}"


def format_tables(aggregated: Sequence[dict]) -> str:
    lines = []
    for dataset in sorted({a["dataset"] for a in aggregated}):
        lines.append(f"\n## {dataset} (mean ± sd over seeds; per flow unless noted)")
        lines.append(f"{'model':<18}{'frac':>5}{'n':>3}{'mAUC':>13}{'accuracy':>13}{'macro-F1':>13}"
                     f"{'capture acc':>13}{'ECE':>13}{'params':>12}{'MFLOPs/flow':>12}{'flows/s':>10}")
        for a in (a for a in aggregated if a["dataset"] == dataset):
            flops = "-" if a["flops_per_flow"] is None else (
                f"{a['flops_per_flow'] / 1e6:.2f}" if a["cost_unit"] == "FLOPs" else f"{a['flops_per_flow']:.0f} t")
            lines.append(f"{a['model']:<18}{a['fraction']:>5g}{len(a['seeds']):>3}"
                         + "".join(f"{_fmt(a[k], a[k + '_sd']):>13}" for k in METRICS)
                         + f"{(a['trainable_params'] or 0):>12,.0f}{flops:>12}"
                         + f"{(a['infer_flows_per_s'] or 0):>10,.0f}")
    lines.append("(trees: params = tree nodes, cost = node tests per flow ('t'); pclip_gnn params = the detection "
                 "stage, FLOPs = tower + detection; pclip_trees: params and FLOPs of the tower, plus `tree_nodes` "
                 "and `tree_node_tests` in its rows)")
    return "\n".join(lines)


def paired(rows: Sequence[dict], dataset: str, groups: Sequence[tuple]) -> Optional[tuple[dict, list]]:
    """Each (model, fraction) group of `dataset` aggregated over the seeds that every group has run (a comparison
    of means over different splits would mix the splits' difficulty into it): ({group: aggregated}, seeds), or
    None when a group is missing or the groups share no seed."""
    by: dict = {}
    for r in rows:
        if r["dataset"] == dataset:
            by.setdefault((r["model"], r["fraction"]), {})[r["seed"]] = r
    if not groups or any(g not in by for g in groups):
        return None
    seeds = sorted(set.intersection(*(set(by[g]) for g in groups)))
    if not seeds:
        return None
    return {g: aggregate([by[g][s] for s in seeds])[0] for g in groups}, seeds


def claims(rows: Sequence[dict]) -> dict:
    """The paper's four claims, evaluated on the cells that exist, each on the seeds its models share: PacketCLIP
    (its best evaluation: probe, zero-shot or GNN) vs ET-BERT's ΔmAUC, the detection stage's parameters and the
    inference FLOPs per flow as ratios to ET-BERT's, and the mAUC kept at 30 % of the training data (relative to
    100 %) of the GNN, the probe and ET-BERT."""
    out = {}
    for dataset in sorted({r["dataset"] for r in rows}):
        c: dict = {}
        deltas = []
        for model in PCLIP_ROWS[:3]:
            pair = paired(rows, dataset, [(model, 1.0), ("etbert", 1.0)])
            if pair:
                (mine, etbert), seeds = pair[0].values(), pair[1]
                deltas.append((mine["mauc"] - etbert["mauc"], model, seeds))
        if deltas:
            c["delta_mauc_vs_etbert"], c["pclip_best"], c["delta_seeds"] = max(deltas)
        pair = paired(rows, dataset, [("pclip_gnn", 1.0), ("etbert", 1.0)])
        if pair:
            gnn, etbert = pair[0].values()
            c["detection_params_ratio"] = gnn["trainable_params"] / etbert["trainable_params"]
            c["flops_ratio"] = gnn["flops_per_flow"] / etbert["flops_per_flow"]
        for model in ("pclip_gnn", "pclip_probe", "etbert"):
            pair = paired(rows, dataset, [(model, 1.0), (model, 0.3)])
            if pair and pair[0][model, 1.0]["mauc"]:
                c[f"mauc_kept_at_30pct_{model}"] = pair[0][model, 0.3]["mauc"] / pair[0][model, 1.0]["mauc"]
                c[f"mauc_kept_at_30pct_{model}_seeds"] = pair[1]
        out[dataset] = c
    return out


def plot(aggregated: Sequence[dict], rows: Sequence[dict], out_dir: pathlib.Path) -> list[str]:
    """Per dataset: data-scarcity curves (mAUC and macro-F1 against the fraction, sd as error bars), mAUC against FLOPs
    per flow (neural models; log scale), and reliability diagrams at fraction 1. Returns the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []

    def save(fig, path) -> str:
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return str(path)

    # More models than one colour cycle holds: each model its own colour, PacketCLIP's rows solid, the others dashed.
    all_models = sorted({a["model"] for a in aggregated})
    palette = plt.get_cmap("tab20")
    style = {m: {"color": palette(i % 20), "linestyle": "-" if m.startswith("pclip") else "--"}
             for i, m in enumerate(all_models)}

    for dataset in sorted({a["dataset"] for a in aggregated}):
        mine = [a for a in aggregated if a["dataset"] == dataset]
        models = sorted({a["model"] for a in mine})
        fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
        fractions = sorted({a["fraction"] for a in mine})
        for ax, key in zip(axes, ("mauc", "macro_f1")):
            for i, m in enumerate(models):
                pts = sorted((a["fraction"], a[key], a[key + "_sd"]) for a in mine if a["model"] == m
                             and a[key] is not None)
                if not pts:
                    continue
                f, v, sd = (np.array(x, np.float64) for x in zip(*pts))
                # sd as error bars, each model a little apart on the (log) x axis: bands of a dozen models hide
                # one another.
                shift = 1.0 + 0.018 * (i - (len(models) - 1) / 2)
                ax.errorbar(f * shift, v, yerr=sd, marker="o", markersize=4, capsize=2, elinewidth=0.8,
                            label=_LABELS.get(m, m), lw=2.2 if m.startswith("pclip") else 1.2, **style[m])
            ax.set_xscale("log")
            ax.set_xticks(fractions, [f"{f:.0%}" for f in fractions])
            ax.minorticks_off()
            ax.set_xlabel("share of the training flows")
            ax.set_ylabel({"mauc": "mAUC", "macro_f1": "macro-F1"}[key])
            ax.grid(alpha=0.3)
        axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        fig.suptitle(f"{dataset}: data scarcity (capture-disjoint test, mean ± sd over seeds)")
        written.append(save(fig, out_dir / f"scarcity_{dataset}.png"))

        fig, ax = plt.subplots(figsize=(8.5, 4.3))
        for a in mine:
            if a["fraction"] == 1.0 and a["cost_unit"] == "FLOPs" and a["flops_per_flow"] \
                    and a["model"] != "pclip_gnn_level1":
                ax.errorbar(a["flops_per_flow"], a["mauc"], yerr=a["mauc_sd"], fmt="o", capsize=2,
                            color=style[a["model"]]["color"], label=_LABELS.get(a["model"], a["model"]))
        ax.set_xscale("log")
        ax.set_xlabel("inference FLOPs per flow (log)")
        ax.set_ylabel("mAUC")
        ax.set_title(f"{dataset}: accuracy against cost, all the training data (trees: node tests, not shown)",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
        written.append(save(fig, out_dir / f"mauc_vs_flops_{dataset}.png"))

        full = [r for r in rows if r["dataset"] == dataset and r["fraction"] == 1.0 and r.get("reliability")]
        if full:
            fig, ax = plt.subplots(figsize=(5, 5))
            ax.plot([0, 1], [0, 1], "k--", lw=1)
            for m in sorted({r["model"] for r in full}):
                conf = np.zeros(metrics_lib.ECE_BINS)
                acc = np.zeros(metrics_lib.ECE_BINS)
                count = np.zeros(metrics_lib.ECE_BINS)
                for r in (r for r in full if r["model"] == m):
                    c = np.array(r["reliability"]["count"], np.float64)
                    conf += np.array(r["reliability"]["confidence"]) * c
                    acc += np.array(r["reliability"]["accuracy"]) * c
                    count += c
                ok = count > 0
                ax.plot(conf[ok] / count[ok], acc[ok] / count[ok], marker=".", label=_LABELS.get(m, m), **style[m])
            ax.set_xlabel("confidence (top-class probability)")
            ax.set_ylabel("accuracy")
            ax.set_title(f"{dataset}: reliability on the test captures (uncalibrated)", fontsize=9)
            ax.legend(fontsize=7)
            written.append(save(fig, out_dir / f"reliability_{dataset}.png"))
    return written


# ----------------------------------------------------------------------------------------------- report

PEERS = TREES + NEURAL
_LABELS = {"pclip_probe": "PacketCLIP linear probe", "pclip_zero_shot": "PacketCLIP zero-shot",
           "pclip_finetuned": "PacketCLIP fine-tuned",
           "pclip_gnn": "PacketCLIP GNN", "pclip_gnn_level1": "PacketCLIP GNN, level 1 (coarser task)",
           "pclip_trees": "hybrid: ExtraTrees + PacketCLIP embedding", "extra_trees": "ExtraTrees",
           "lightgbm": "LightGBM", "cnn1d": "1D-CNN", "fsnet": "FS-Net", "yatc": "YaTC", "netmamba": "NetMamba",
           "etbert": "ET-BERT"}
_REPORT_COLUMNS = (("mauc", "mAUC"), ("accuracy", "accuracy"), ("macro_f1", "macro-F1"),
                   ("capture_accuracy", "per capture"), ("ece", "ECE"))


def quality_bar(rows: Sequence[dict]) -> list[dict]:
    """Per dataset and fraction: PacketCLIP's best own evaluation (probe, zero-shot, GNN) against the best peer
    (trees and neural peers), on mAUC and macro-F1, over the seeds every one of those models has run; the hybrid is
    reported beside it (on the same seeds when it has them), not counted as PacketCLIP."""
    out = []
    for dataset, fraction in sorted({(r["dataset"], r["fraction"]) for r in rows}, key=lambda k: (k[0], -k[1])):
        present = {r["model"] for r in rows if r["dataset"] == dataset and r["fraction"] == fraction}
        own = [m for m in PCLIP_ROWS[:3] if m in present]
        peers = [m for m in PEERS if m in present]
        pair = paired(rows, dataset, [(m, fraction) for m in own + peers]) if own and peers else None
        if pair is None:
            continue
        agg, seeds = pair
        hybrid = paired(rows, dataset, [(m, fraction) for m in own + peers + list(HYBRID)]) \
            if set(HYBRID) <= present else None
        entry = {"dataset": dataset, "fraction": fraction, "seeds": seeds}
        for key in ("mauc", "macro_f1"):
            best_own = max(own, key=lambda m: agg[m, fraction][key])
            best_peer = max(peers, key=lambda m: agg[m, fraction][key])
            entry[key] = {"pclip": best_own, "pclip_value": agg[best_own, fraction][key], "peer": best_peer,
                          "peer_value": agg[best_peer, fraction][key],
                          "margin": agg[best_own, fraction][key] - agg[best_peer, fraction][key]}
            if hybrid is not None and hybrid[1] == seeds:
                entry[key]["hybrid_value"] = hybrid[0][HYBRID[0], fraction][key]
        out.append(entry)
    return out


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds))


def _cost(a: dict) -> str:
    if a["flops_per_flow"] is None:
        return "-"
    if a["cost_unit"] == "FLOPs":
        return f"{a['flops_per_flow'] / 1e6:.1f} MFLOPs"
    return f"{a['flops_per_flow']:,.0f} node tests"


def _params(n: Optional[float]) -> str:
    if not n:
        return "-"
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.0f} k"


def fraction_table(aggregated: Sequence[dict], dataset: str, fraction: float, costs: bool = True) -> list[str]:
    """Markdown lines: one dataset and fraction, models sorted by mAUC, the best value of each metric in bold
    (`pclip_gnn_level1`, a coarser task, is never bold); `costs` adds params, cost per flow, train s and flows/s."""
    mine = sorted((a for a in aggregated if a["dataset"] == dataset and a["fraction"] == fraction),
                  key=lambda a: -(a["mauc"] or 0))
    comparable = [a for a in mine if a["model"] != "pclip_gnn_level1"]
    best = {k: (min if k == "ece" else max)(a[k] for a in comparable if a[k] is not None)
            for k, _ in _REPORT_COLUMNS if any(a[k] is not None for a in comparable)}
    extra = ["params", "cost per flow", "train s", "flows/s"] if costs else []
    header = ["model", "n", *(t for _, t in _REPORT_COLUMNS), *extra]
    lines = ["| " + " | ".join(header) + " |", "| --- " * len(header) + "|"]
    for a in mine:
        cells = [_LABELS.get(a["model"], a["model"]), str(len(a["seeds"]))]
        for k, _ in _REPORT_COLUMNS:
            v = _fmt(a[k], a[k + "_sd"])
            bold = a["model"] != "pclip_gnn_level1" and a[k] is not None and a[k] == best.get(k)
            cells.append(f"**{v}**" if bold else v)
        if costs:
            cells += [_params(a["trainable_params"]), _cost(a),
                      "-" if a["train_seconds"] is None else f"{a['train_seconds']:,.0f}",
                      f"{(a['infer_flows_per_s'] or 0):,.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def quality_table(rows: Sequence[dict]) -> list[str]:
    """Markdown lines of `quality_bar`: per dataset and fraction, PacketCLIP's best own evaluation, the best peer
    and the margin on mAUC and macro-F1, and the hybrid's values."""
    lines = ["| dataset | fraction | seeds | mAUC: PacketCLIP | best peer | margin | macro-F1: PacketCLIP | best peer "
             "| margin | hybrid mAUC / macro-F1 |", "| --- " * 10 + "|"]
    for q in quality_bar(rows):
        m, f = q["mauc"], q["macro_f1"]
        hybrid = (f"{m['hybrid_value']:.3f} / {f['hybrid_value']:.3f}"
                  if "hybrid_value" in m and "hybrid_value" in f else "-")
        lines.append(f"| {q['dataset']} | {q['fraction']:.0%} | {_seeds(q['seeds'])} | "
                     f"{m['pclip_value']:.3f} ({_LABELS[m['pclip']]}) | {m['peer_value']:.3f} "
                     f"({_LABELS[m['peer']]}) | {m['margin']:+.3f} | "
                     f"{f['pclip_value']:.3f} ({_LABELS[f['pclip']]}) | {f['peer_value']:.3f} "
                     f"({_LABELS[f['peer']]}) | {f['margin']:+.3f} | {hybrid} |")
    return lines


def claims_table(claim: dict) -> list[str]:
    """Markdown lines of `claims`, beside the paper's figures."""
    lines = ["| dataset | ΔmAUC, PacketCLIP's best − ET-BERT (paper +0.116) | detection params / ET-BERT's "
             "(paper 8 %) | FLOPs per flow / ET-BERT's (paper 2 %) | mAUC kept at 30 %: GNN / probe / ET-BERT "
             "(paper ~95 % / - / ~70 %) |", "| --- " * 5 + "|"]

    def kept(c, k):
        return "-" if k not in c else f"{100 * c[k]:.1f} % (seeds {_seeds(c[k + '_seeds'])})"

    for dataset, c in sorted(claim.items()):
        delta = "-" if "delta_mauc_vs_etbert" not in c else \
            f"{c['delta_mauc_vs_etbert']:+.3f} ({_LABELS[c['pclip_best']]}; seeds {_seeds(c['delta_seeds'])})"
        ratio = lambda k: "-" if k not in c else f"{100 * c[k]:.1f} %"  # noqa: E731
        lines.append(f"| {dataset} | {delta} | {ratio('detection_params_ratio')} | {ratio('flops_ratio')} | "
                     f"{kept(c, 'mauc_kept_at_30pct_pclip_gnn')} / {kept(c, 'mauc_kept_at_30pct_pclip_probe')} / "
                     f"{kept(c, 'mauc_kept_at_30pct_etbert')} |")
    return lines


def _status_line(status: dict) -> str:
    return (f"Cells: {status['finished']}"
            + ("" if status["expected"] is None else f" of {status['expected']} of the sweep")
            + f" finished; their compute time {status['seconds'] / 3600:.1f} h (the sum of the cells' times, each "
            "at least its towers' logged training time; two cells at a time shared the 2-core machine, so a "
            "cell's train seconds and flows/s are from a loaded machine).")


def markdown_report(rows: Sequence[dict], aggregated: Sequence[dict], claim: dict, status: dict,
                    command: str) -> str:
    """The sweep's results as one Markdown document: per dataset and fraction a table sorted by mAUC (the best
    value of each metric column in bold), the issue's quality bar, the paper's four claims, and what remains."""
    lines = ["# Peer sweep: PacketCLIP against its peers", "",
             f"Generated from the finished cells by `{command}` (`pclip_bench/peers/suite.py`, `markdown_report`); "
             "do not edit by hand. Level-1 service classes on nDPI, devices on IoT Sentinel; per flow on the test "
             "captures of capture-disjoint splits (split = seed), mean ± sd over the seeds that have run (`n`).",
             "", _status_line(status)]
    for dataset in sorted({d for d, _ in status["missing"]}):
        names = [c for d, c in status["missing"] if d == dataset]
        lines += ["", f"Still to run on {dataset} ({len(names)}): " + ", ".join(names) + "."]
    lines += ["", "Cost per flow: inference FLOPs from the compiled program (a multiply-add = 2); trees: node tests. "
              "Params: trainable parameters (PacketCLIP GNN: the detection stage; trees: nodes; the hybrid: the "
              "tower's). ECE: 10 bins, uncalibrated top-class probability."]
    for dataset in sorted({a["dataset"] for a in aggregated}):
        lines += ["", f"## {dataset}"]
        for fraction in sorted({a["fraction"] for a in aggregated if a["dataset"] == dataset}, reverse=True):
            lines += ["", f"### {fraction:.0%} of the training data", "",
                      *fraction_table(aggregated, dataset, fraction)]
    lines += ["", "## The issue's quality bar: PacketCLIP's best own evaluation against the best peer", "",
              *quality_table(rows),
              "", "## The paper's four claims on these cells", "", *claims_table(claim),
              "", "Plots: `plots/scarcity_<dataset>.png` (mAUC and macro-F1 against the fraction, sd as error bars), "
              "`plots/mauc_vs_flops_<dataset>.png`, `plots/reliability_<dataset>.png`.", ""]
    return "\n".join(lines)


README_BEGIN = "<!-- peers summary: generated by benchmarks/peers.py --readme; do not edit by hand -->"
README_END = "<!-- end of peers summary -->"


def readme_block(rows: Sequence[dict], aggregated: Sequence[dict], claim: dict, status: dict, command: str) -> str:
    """What the README shows of the sweep (between README_BEGIN and README_END): the quality bar, the four claims
    and the full-data table of each dataset, with the command that regenerates it."""
    lines = [README_BEGIN, "", f"{_status_line(status)} Regenerate with `{command}`.", "",
             "**PacketCLIP's best own evaluation (probe, zero-shot or GNN) against the best peer**, per flow on the "
             "test captures, mean over the capture splits (seeds) that all of them have run:", "",
             *quality_table(rows),
             "", "**The paper's four claims**, PacketCLIP against the CPU-size ET-BERT trained on the same flows:", "",
             *claims_table(claim)]
    for dataset in sorted({a["dataset"] for a in aggregated}):
        if any(a["dataset"] == dataset and a["fraction"] == 1.0 for a in aggregated):
            lines += ["", f"**{dataset}, all the training data** (mean ± sd over `n` capture splits; costs and the "
                      "other fractions in the report):", "", *fraction_table(aggregated, dataset, 1.0, costs=False)]
    lines += ["", README_END]
    return "\n".join(lines)


def replace_readme_block(path: pathlib.Path, block: str, begin: str = README_BEGIN, end: str = README_END) -> None:
    """Replace the text from `begin` to `end` in `path` (both must be there, once) by `block`."""
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{path}: needs one line {begin!r} and, after it, one line {end!r} "
                         "around the generated summary")
    head, rest = text.split(begin, 1)
    files.write_text(path, head + block + rest.split(end, 1)[1])


def sweep_status(workdir: pathlib.Path, cells: Sequence[Cell]) -> dict:
    """How far the sweep of `cells` is: finished and expected counts, the (dataset, cell name) pairs still to run
    and the summed compute seconds of every finished cell file under `workdir` (a pclip cell that resumed towers
    trained by an earlier invocation counts their logged training time)."""
    present = sorted((pathlib.Path(workdir) / "cells").glob("*/*.json"))
    missing = [(c.dataset, c.name) for c in cells if not cell_file(workdir, c).is_file()]
    seconds = 0.0
    for path in present:
        done = files.read_json(path)
        own = done.get("seconds", 0.0)
        if done["cell"]["model"] == "pclip":
            own = max([own] + [r["train_seconds"] for r in done["rows"] if r.get("train_seconds")])
        seconds += own
    return {"expected": len(cells) if cells else None,
            "finished": len(cells) - len(missing) if cells else len(present), "missing": missing,
            "seconds": seconds}


def summarize(workdir: pathlib.Path, json_out: Optional[str] = None, cells: Sequence[Cell] = (),
              command: str = "python benchmarks/peers.py --workdir W --summary-only",
              readme: Optional[pathlib.Path] = None) -> dict:
    """Tables, claims and plots from every finished cell under `workdir`; printed, and written to
    WORKDIR/peers.json, WORKDIR/summary.md (the Markdown report, with what is left of `cells`), `json_out` and,
    when given, the generated block of the `readme` file (`readme_block`)."""
    rows = load_rows(workdir)
    aggregated = aggregate(rows)
    report = {"rows": rows, "aggregated": aggregated, "claims": claims(rows),
              "quality_bar": quality_bar(rows), "status": sweep_status(workdir, cells)}
    if rows:
        report["plots"] = plot(aggregated, rows, pathlib.Path(workdir) / "plots")
    print(format_tables(aggregated))
    print("\nThe paper's claims on these cells:\n" + json.dumps(report["claims"], indent=2))
    files.write_json(pathlib.Path(workdir) / "peers.json", report)
    files.write_text(pathlib.Path(workdir) / "summary.md",
                     markdown_report(rows, aggregated, report["claims"], report["status"], command))
    if readme is not None:
        # The regeneration command names the file as given (e.g. docs/results.md from the repository root).
        shown = pathlib.Path(readme).name if pathlib.Path(readme).is_absolute() else pathlib.Path(readme).as_posix()
        replace_readme_block(readme, readme_block(rows, aggregated, report["claims"], report["status"],
                                                  f"{command} --readme {shown}"))
    if json_out:
        files.write_json(pathlib.Path(json_out), [{k: v for k, v in r.items() if k != "reliability"}
                                                  for r in rows])
    return report
