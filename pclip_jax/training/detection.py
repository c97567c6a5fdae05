"""The detection stage: the mission knowledge graph + hierarchical GNN on frozen towers.

Flow nodes get the projected packet embedding, KG nodes the projected text embedding of their descriptions (the
text head maps the frozen sentence features into the shared space), so flow–node similarity is meaningful from the
first GNN step and a node that exists only as text is scored zero-shot. Only the GNN is trained here.
"""
from __future__ import annotations

import dataclasses
import sys
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from pclip_jax.training import calibration as calibration_lib
from pclip_jax.plumbing import files
from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.text import prompts as text_lib
from pclip_jax.plumbing.checkpointing import Checkpoints
from pclip_jax.training.towers import load_descriptions, shared_space_encoder
from pclip_jax.models import graph_tuples as kg_graphs
from pclip_jax.graph import schema
from pclip_jax.training import train_gnn
from pclip_jax.models.gnn import HierarchicalGNN
from pclip_jax.graph.missions import mission_from_statement, missions_of
from pclip_jax.models.two_towers import TwoTowerConfig
from pclip_jax.plumbing.settings import Settings
from pclip_jax.plumbing.workdir import Workdir


def load_graph(kg: str) -> schema.KnowledgeGraph:
    """The knowledge graph `gnn.kg` names (a YAML path, or a graph shipped in `pclip_jax/graph/shipped/`),
    validated (the main job calls this before any training)."""
    return schema.load_kg(schema.graph_path(kg))


def resolve_mission(kg, mission: Optional[str], encode=None, verbose: bool = False):
    """A mission name declared in the graph, or a free-text statement; a statement that names no node falls back
    to the service classes nearest to it in the shared embedding space (with `encode`)."""
    if not mission:
        return None
    declared = missions_of(kg)
    if mission in declared:
        resolved = declared[mission]
    else:
        try:
            resolved = mission_from_statement(kg, mission)
        except schema.KGValidationError:
            if encode is None:
                raise
            nodes = kg_graphs.kg_text_embeddings(kg, encode, progress=False)["nodes"]
            resolved = mission_from_statement(kg, mission, encode=encode, node_embeddings=nodes)
    if verbose:
        weights = ", ".join(f"{k}×{v:g}" for k, v in resolved.weights.items())
        print(f"[classify] mission {resolved.name!r}: focus {list(resolved.focus)}"
              f"{'; weights ' + weights if weights else ''}"
              f"{'' if resolved.keep_others else '; other classes removed'}", file=sys.stderr)
    return resolved


def prepare_detection_kg(settings: Settings, model, params, featurizer, cache_dir, mission: Optional[str] = None,
                         verbose: bool = False) -> train_gnn.PreparedKG:
    """The settings' graph in the shared space, with `mission` applied (default: `gnn.mission`)."""
    kg = load_graph(settings.gnn.kg)
    encode = shared_space_encoder(model, params, featurizer, cache_dir)
    resolved = resolve_mission(kg, mission if mission is not None else settings.gnn.mission, encode, verbose)
    return blend_pretraining_prompts(train_gnn.prepare_kg(kg, encode, cache_dir=None, mission=resolved), settings,
                                     encode)


def blend_pretraining_prompts(pkg: train_gnn.PreparedKG, settings: Settings, encode) -> train_gnn.PreparedKG:
    """With `gnn.node_prompts`: a node that names a class or application with pre-training phrasings
    (pclip_jax/data/class_descriptions.yaml) gets, as its text embedding, the normalised mean over its own
    descriptions *and* the zero-shot prompts the towers were aligned on, so the untrained GNN's similarity term
    starts from the zero-shot decision instead of from the graph's differently worded descriptions. Returns a new
    PreparedKG; the per-description embeddings that explanations choose from stay the graph's own."""
    if not settings.gnn.node_prompts:
        return pkg
    descriptions = load_descriptions(settings.text, settings.gnn.kg)
    chosen = [m for m, node in enumerate(pkg.kg.nodes)
              if node.level >= 1 and text_lib.has_phrasings(node.id, descriptions)]
    if not chosen:
        return pkg
    nodes = np.array(pkg.text["nodes"], np.float32)
    desc, mask = pkg.text["descriptions"], pkg.text["description_mask"]
    prompts = [text_lib.class_prompts(pkg.kg.nodes[m].id, descriptions) for m in chosen]
    emb = np.array(encode([t for p in prompts for t in p]), np.float32)  # one call: one batch pass, one cache file
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-9)
    start = 0
    for m, p in zip(chosen, prompts):
        mean = np.concatenate([desc[m][mask[m]], emb[start:start + len(p)]]).mean(0)
        nodes[m] = mean / max(float(np.linalg.norm(mean)), 1e-9)
        start += len(p)
    return dataclasses.replace(pkg, text={**pkg.text, "nodes": nodes})


def gnn_train_config(settings: Settings, params=None) -> train_gnn.GnnTrainConfig:
    """The GNN's training config from the settings; with the pre-trained `params`, the GNN's similarity term
    starts at the towers' learned temperature (the zero-shot logits)."""
    g = settings.gnn
    model = g.model  # the GNN's own config (settings.GnnConfig)
    if params is not None and g.similarity_from_temperature:
        max_log_scale = TwoTowerConfig().max_log_scale
        model = dataclasses.replace(
            model, similarity_init=float(np.exp(min(float(params["logit_scale"]), max_log_scale))))
    return g.train_config(model=model, seed=settings.train.seed if g.seed < 0 else g.seed)


def _level1_slots(pkg, labels) -> np.ndarray:
    names1 = pkg.layout.class_names(1)
    return np.array([names1.index(x) if x in names1 else -1 for x in labels], np.int64)


def gnn_validator(gcfg, pkg, prepared, level1, z_val, level2=None):
    """GNN params → mAUC on the validation captures (early stopping), or None without them: at level 2 when
    `level2` labels are given (an experiment evaluated at level 2, e.g. devices), else at level 1."""
    val = prepared.val_idx
    if z_val is None or not len(val):
        return None
    known = prepared.class_ids[val] >= 0
    if level2 is not None:
        _, y_val, _ = kg_graphs.labels_to_slots(pkg.layout, list(level1[val]), list(level2[val]))
        names, key = pkg.layout.class_names(2), "prob2"
    else:
        y_val, names, key = _level1_slots(pkg, level1[val]), pkg.layout.class_names(1), "prob1"
    known &= y_val >= 0
    if len(np.unique(y_val[known])) < 2:
        return None
    present = np.unique(y_val[known])

    def validate(gnn_params) -> float:
        prob = train_gnn.predict_arrays(gcfg, gnn_params, z_val[known], pkg)[key]
        # Over the classes present in validation (a level-2 graph has leaves that validation never shows).
        remap = {c: i for i, c in enumerate(present)}
        y = np.array([remap[c] for c in y_val[known]])
        return metrics_lib.classification_report(y, prob[:, present], [names[c] for c in present])["mauc"]

    return validate


def save_gnn_answers(workdir: Workdir, gcfg, gnn_params, pkg, prepared, level1, level2, embeddings) -> None:
    """The GNN's per-flow answers at level 1 and level 2 on the validation and test flows of the evaluated classes
    (`Workdir.save_answers`: `gnn_level1`, `gnn_level2`), for the benchmark protocol."""
    captures = np.asarray(prepared.table.meta["capture"]).astype(str)
    for split, idx, z in (("test", prepared.test_idx, embeddings.get("test")),
                          ("validation", prepared.val_idx, embeddings.get("validation"))):
        if z is None or not len(idx):
            continue
        keep = prepared.class_ids[idx] >= 0
        pred = train_gnn.predict_arrays(gcfg, gnn_params, np.asarray(z)[keep], pkg)
        y1, y2, _ = kg_graphs.labels_to_slots(pkg.layout, list(level1[idx][keep]), list(level2[idx][keep]))
        for level, y in ((1, y1), (2, y2)):
            known = y >= 0
            if known.any():
                workdir.save_answers(f"gnn_level{level}", split, y[known], pred[f"prob{level}"][known],
                                     captures[idx][keep][known], pkg.layout.class_names(level),
                                     prepared.novel(np.asarray(idx)[keep][known]))


def train_and_evaluate_gnn(settings: Settings, workdir: Workdir, prepared, model, params, featurizer, embeddings,
                           cache_dir) -> dict:
    """Trains the GNN on the train flows' embeddings, evaluates it on the test flows of the evaluated classes."""
    pkg = prepare_detection_kg(settings, model, params, featurizer, cache_dir)
    meta = prepared.table.meta
    level1 = np.asarray(meta["level1"]).astype(str)
    level2 = np.asarray(meta["level2"]).astype(str)
    te = prepared.test_idx
    fit_on = settings.gnn.fit_on
    parts = {"train": (prepared.train_idx, embeddings.get("train")),
             "validation": (prepared.val_idx, embeddings.get("validation"))}
    chosen = [parts[name] for name in fit_on.split("+")]
    if any(z is None or len(i) == 0 for i, z in chosen):
        raise ValueError(f"gnn.fit_on={fit_on!r}: that split is empty (data.validation_fraction=0?)")
    tr = np.concatenate([i for i, _ in chosen])
    z_fit = np.concatenate([z for _, z in chosen])
    gcfg = gnn_train_config(settings, params)
    validate = None
    if "validation" not in fit_on:
        validate = gnn_validator(gcfg, pkg, prepared, level1, embeddings.get("validation"),
                                 level2 if settings.data.label_level == "level2" else None)
    gnn_params, _ = train_gnn.train_gnn(gcfg, z_fit, level1[tr], level2[tr], pkg, workdir.gnn_dir,
                                        validate=validate, eval_every=settings.gnn.eval_every,
                                        validation_level=2 if settings.data.label_level == "level2" else 1)
    # Evaluate on the same flows and classes as the linear probe (classes with enough training flows).
    keep = prepared.class_ids[te] >= 0
    captures = np.asarray(meta["capture"]).astype(str)[te][keep]
    block = train_gnn.evaluate_gnn(gcfg, gnn_params, embeddings["test"][keep], level1[te][keep],
                                   level2[te][keep], pkg, min_flows_level2=settings.gnn.min_flows_level2,
                                   train_applications=prepared.applications(prepared.train_idx), captures=captures)
    test_pred = train_gnn.predict_arrays(gcfg, gnn_params, embeddings["test"][keep], pkg)
    probs = test_pred["prob1"]
    y1 = _level1_slots(pkg, level1[te][keep])
    ok = y1 >= 0
    metrics_lib.plot_roc(y1[ok], probs[ok], pkg.layout.class_names(1), workdir.plot("gnn_level1"),
                         "hierarchical GNN, level 1 (capture-disjoint test)")
    print(metrics_lib.format_table([("GNN level 1 (test)", block["level1"]),
                                    ("GNN level 2 (test)", block["level2"])]
                                   + metrics_lib.novelty_rows("GNN level 1", block["level1"])), file=sys.stderr)
    print(metrics_lib.format_capture_rows([("GNN level 1", block["level1"]), ("GNN level 2", block["level2"])]),
          file=sys.stderr)
    if embeddings.get("validation") is not None and "validation" not in fit_on:
        block["calibration_fit"] = calibrate(gcfg, gnn_params, pkg, prepared, level1, level2,
                                             embeddings["validation"], workdir, te[keep], test_pred,
                                             embeddings["test"][keep], embeddings.get("train"))
        for level in ("level1", "level2"):
            if block["calibration_fit"].get(f"test_ece_{level}_calibrated") is not None:
                block[level]["calibrated"] = block["calibration_fit"].pop(f"test_{level}_calibrated")
        block["trust"] = block["calibration_fit"].pop("trust")
        print_trust(block["trust"], "test captures")
    save_gnn_answers(workdir, gcfg, gnn_params, pkg, prepared, level1, level2, embeddings)
    if prepared.sources:  # a mixed corpus: level 1 per source, among the source's own classes
        classes_of = {}
        for name in prepared.sources:
            slots = _level1_slots(pkg, level1[prepared.source_rows(prepared.train_idx, name)])
            classes_of[name] = sorted(set(slots[slots >= 0].tolist()))
        rows = te[keep][ok]
        block["by_source"] = {
            name: reports["level1"] for name, reports in metrics_lib.by_group(
                np.asarray(meta["source"]).astype(str)[rows], y1[ok], {"level1": probs[ok]},
                pkg.layout.class_names(1), classes_of, np.asarray(meta["capture"]).astype(str)[rows]).items()}
        print(metrics_lib.format_table([(f"{name}: GNN level 1", r) for name, r in block["by_source"].items()]),
              file=sys.stderr)
    return block


def calibrate(gcfg, gnn_params, pkg, prepared, level1, level2, z_val, workdir: Workdir, test_rows,
              test_pred, z_test=None, z_train=None) -> dict:
    """Temperatures and the OOD threshold fitted on the validation captures (`training.calibration`), written to
    WORKDIR/gnn/calibration.json, with the OOD score's reference bank of training embeddings `z_train` in
    WORKDIR/gnn/ood_bank.npz (`calibration.OOD_BANK_FILE`; without it the class-text score); also the test flows' ECE before and after (`test_ece_*`, `test_level*_calibrated`
    reliability blocks, moved into results.json's level reports by the caller). `test_pred`: the GNN's
    predictions (`train_gnn.predict_arrays`) for the flows `test_rows` (embeddings `z_test`), already computed by
    the caller. The level-1 probabilities of both splits are kept in WORKDIR/gnn/calibration_flows.npz
    (`CALIBRATION_FLOWS`) for calibration studies (`benchmarks/calibration_study.py`)."""
    node_text = calibration_lib.ood_node_text(pkg)

    def slots(rows):
        y1, y2, _ = kg_graphs.labels_to_slots(pkg.layout, list(level1[rows]), list(level2[rows]))
        return y1, y2

    val_pred = train_gnn.predict_arrays(gcfg, gnn_params, z_val, pkg)
    v1, v2 = slots(prepared.val_idx)
    k1, k2 = v1 >= 0, v2 >= 0
    bank = None
    if z_train is not None and len(z_train):
        bank = calibration_lib.ood_bank(z_train)
        files.savez(workdir.gnn_dir / calibration_lib.OOD_BANK_FILE, embeddings=bank)
    fitted = calibration_lib.fit(val_pred["prob1"][k1], v1[k1], val_pred["prob2"][k2], v2[k2], z_val, node_text,
                                 bank)
    val_captures = np.asarray(prepared.table.meta["capture"]).astype(str)[prepared.val_idx]
    # The low-confidence threshold and the prediction sets' calibration scores, on the same validation flows.
    fitted.update(calibration_lib.fit_trust(
        val_pred["prob1"][k1], v1[k1], val_captures[k1], val_pred["prob2"][k2], v2[k2], val_captures[k2],
        {"level1": fitted["level1_temperature"], "level2": fitted.get("level2_temperature")}))
    files.write_json(workdir.gnn_dir / "calibration.json", fitted)
    t1, t2 = slots(test_rows)
    out = {k: v for k, v in fitted.items() if k != "conformal"}
    ok1 = t1 >= 0
    out["trust"] = calibration_lib.trust_report(test_pred["prob1"][ok1], t1[ok1], test_pred["prob2"][ok1],
                                                t2[ok1], fitted)["all"]
    seen = set(prepared.applications(prepared.train_idx))
    apps = np.asarray(level2).astype(str)
    k_test = t1 >= 0
    parts = {"validation": (prepared.val_idx[k1], val_pred["prob1"][k1], v1[k1], np.asarray(z_val)[k1]),
             "test": (np.asarray(test_rows)[k_test], test_pred["prob1"][k_test], t1[k_test],
                      None if z_test is None else np.asarray(z_test)[k_test])}
    unseen = {name: np.array([a not in seen for a in apps[rows]], bool) for name, (rows, *_) in parts.items()}
    out.update(calibration_shift(unseen["validation"], unseen["test"], *parts["test"][1:3]))
    scores = _save_calibration_flows(workdir, np.asarray(prepared.table.meta["capture"]).astype(str), node_text,
                                     parts, unseen, fitted, bank)
    # "None of these" measured where the split has both: test flows of applications absent from training.
    if not np.isnan(scores["test"]).any() and 0 < unseen["test"].mean() < 1:
        out["test_novel_application_ood_auroc"] = metrics_lib.binary_auroc(unseen["test"], -scores["test"])
    for level, prob, y, key in (("level1", test_pred["prob1"], t1, "level1_temperature"),
                                ("level2", test_pred["prob2"], t2, "level2_temperature")):
        ok = y >= 0
        if key in fitted and ok.any() and prob.shape[1]:
            calibrated = metrics_lib.calibration(y[ok], calibration_lib.scale(prob[ok], fitted[key]))
            out[f"test_ece_{level}_calibrated"] = calibrated["ece"]
            out[f"test_{level}_calibrated"] = calibrated
    print(f"[gnn] calibrated on {fitted['validation_flows']} validation flows: temperature level 1 "
          f"{fitted['level1_temperature']:.2f}; test ECE level 1 after scaling "
          f"{out.get('test_ece_level1_calibrated', float('nan')):.3f} (the best temperature on the test flows "
          f"themselves: {out.get('test_ece_level1_best_temperature', float('nan')):.3f}); flows of applications "
          f"the GNN never saw: validation {_share(out['validation_novel_share'])}, test "
          f"{_share(out['test_novel_share'])}; out-of-mission score ({fitted.get('ood_score', 'class text')}) AUROC "
          f"for those in the test split {_num(out.get('test_novel_application_ood_auroc'))}", file=sys.stderr)
    return out


CALIBRATION_FLOWS = "calibration_flows.npz"


def print_trust(trust: dict, where: str) -> None:
    """One stderr line of `calibration.trust_report`'s figures."""
    low, rc = trust["low_confidence"], trust["risk_coverage"]
    sets = trust.get("prediction_sets_level1") or {}

    def f(x):
        return "-" if x is None else f"{x:.3f}"

    print(f"[gnn] {where}: ECE level 1 {f(trust['ece_level1'])} -> {f(trust['ece_level1_calibrated'])} calibrated"
          f"{'; level 2 ' + f(trust.get('ece_level2')) + ' -> ' + f(trust.get('ece_level2_calibrated')) if 'ece_level2' in trust else ''}; "
          f"low confidence (calibrated p < {low['threshold']:.3f}) on {low['marked_share']:.1%}: accuracy unmarked "
          f"{f(low['accuracy_unmarked'])}, marked {f(low['accuracy_marked'])}; accuracy-coverage area {f(rc['area'])} "
          f"(all {f(rc['accuracy_all'])}); prediction sets level 1 coverage {f(sets.get('coverage'))} "
          f"(target {sets.get('target', '-')}) mean size {f(sets.get('mean_size'))}", file=sys.stderr)


def _save_calibration_flows(workdir: Workdir, captures, node_text, parts: dict, unseen: dict, fitted: dict,
                            bank) -> dict:
    """Per split (`validation`, `test`): the flows' rows in the flow table, the level-1 probabilities, true slots,
    whether the flow's application was unseen in training, its capture, its OOD score (the one `fitted` uses) and
    its class-text similarity (the score of older workdirs, for comparison); NaN when not computed. Returns the
    OOD scores per split."""
    arrays, out = {}, {}

    def or_nan(scores, n):
        return np.full(n, np.nan) if scores is None else scores

    for name, (rows, prob1, y1, z) in parts.items():
        scores = None if z is None else calibration_lib.flow_ood_scores(z, fitted, node_text, bank)
        text = None if z is None else calibration_lib.ood_scores(z, node_text)
        arrays.update({f"{name}_rows": np.asarray(rows, np.int64),
                       f"{name}_prob1": np.asarray(prob1, np.float64), f"{name}_y1": np.asarray(y1, np.int32),
                       f"{name}_unseen_application": unseen[name], f"{name}_capture": captures[rows],
                       f"{name}_ood_score": or_nan(scores, len(rows)), f"{name}_text_score": or_nan(text, len(rows))})
        out[name] = arrays[f"{name}_ood_score"]
    files.savez(workdir.gnn_dir / CALIBRATION_FLOWS, **arrays)
    return out


def _share(x) -> str:
    return "-" if x is None else f"{x:.0%}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def calibration_shift(val_unseen, test_unseen, test_prob1, test_y1) -> dict:
    """Why a temperature fitted on the validation captures may not hold on the test captures: the share of flows
    whose application the GNN never saw (it has to generalise from the class, and is right far less often) in
    each split, and, as a bound, the test ECE of the best temperature *on the test flows themselves*
    (`test_ece_level1_best_temperature`: a diagnostic, never used for a prediction). Flows with a known class
    only."""
    out = {"validation_novel_share": float(np.mean(val_unseen)) if len(val_unseen) else None,
           "test_novel_share": float(np.mean(test_unseen)) if len(test_unseen) else None}
    if len(test_y1) and test_prob1.shape[1]:
        p = test_prob1 / np.maximum(test_prob1.sum(1, keepdims=True), 1e-12)
        eces = [metrics_lib.calibration(test_y1, calibration_lib.scale(p, t))["ece"]
                for t in calibration_lib.TEMPERATURES]
        best = int(np.argmin(eces))
        out["test_best_temperature_level1"] = float(calibration_lib.TEMPERATURES[best])
        out["test_ece_level1_best_temperature"] = float(eces[best])
    return out


def load_gnn(workdir: Workdir, settings: Settings, pkg) -> dict:
    """Parameters of the GNN head trained in `workdir`: the validation-best ones when kept, else the newest intact
    checkpoint's. Only the parameters are read; they are checked against the shapes the settings give for graph
    `pkg`, so a checkpoint from another config is a clear error, not a silent mismatch."""
    ckpt_dir = workdir.gnn_checkpoints
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{ckpt_dir}: no GNN checkpoints; train the workdir with gnn.enabled=True")
    model_cfg = gnn_train_config(settings).model
    sample = kg_graphs.build_batch(pkg.layout, np.zeros((1, settings.model.embed_dim), np.float32),
                                   node_prior=pkg.prior)
    # Shapes only: no compilation of the init function.
    expected = jax.eval_shape(HierarchicalGNN(model_cfg).init, jax.random.PRNGKey(0), sample,
                              jnp.asarray(pkg.embeddings))["params"]
    params, where = None, None
    best_dir = workdir.gnn_best_checkpoints
    if (best_dir / "best.json").is_file():
        ckpts = Checkpoints(best_dir, writable=False)
        try:
            params, step = ckpts.restore()
            where = f"{best_dir}/{step}"
        except Exception as e:  # a damaged best copy: the newest training checkpoint is still usable
            print(f"[gnn] {best_dir}: {str(e).splitlines()[0]}; using the newest training checkpoint",
                  file=sys.stderr)
            params = None
        finally:
            ckpts.close()
    if params is None:
        ckpts = Checkpoints(ckpt_dir, writable=False)
        try:
            restored, step = ckpts.restore()
        finally:
            ckpts.close()
        if step is None:
            raise FileNotFoundError(f"{ckpt_dir}: no finished GNN checkpoint")
        params = restored.get("params") if isinstance(restored, dict) else None
        where = f"{ckpt_dir}/{step}"
        if params is None:
            raise ValueError(f"{where}: checkpoint has no 'params' entry")
    want = {jax.tree_util.keystr(k): v.shape for k, v in jax.tree_util.tree_flatten_with_path(expected)[0]}
    got = {jax.tree_util.keystr(k): np.shape(v) for k, v in jax.tree_util.tree_flatten_with_path(params)[0]}
    if want != got:
        diff = sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k))[:5]
        raise ValueError(f"{where}: GNN parameters do not match the workdir's config "
                         f"(first differences: {[(k, got.get(k), want.get(k)) for k in diff]} as (checkpoint, "
                         f"expected))")
    return jax.tree.map(jnp.asarray, params)
