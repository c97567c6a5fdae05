"""Export a trained workdir for deployment: ONNX models of the packet tower and the detection stage, a manifest,
and everything `classify --backend onnx` needs to run without JAX.

    python -m pclip_jax.export --workdir W --out DIR [--mission NAME_OR_STATEMENT] [--opset 21] [--quantize int8]

DIR holds:
* `packet_tower.onnx`: `bytes` uint8 [B, K, bytes], `sizes` int32 [B, K], `iat` float32 [B, K], `tcp_flags`
  uint8 [B, K] (and `name_vec` float16 [B, D] when the towers read server names) → `embedding` float32 [B, Dp], the
  projected, normalised flow embedding the GNN reads. B is dynamic. `packet_tower_k2.onnx`, `_k4`, `_k8`: the same
  tower for flows of at most 2, 4, 8 packets (fewer padding slots, the same embeddings: what the runtime uses for
  short flows, which are most flows of a capture).
* `detection.onnx`: `embedding` [B, Dp] → `prob1` [B, C1] = P(class), `prob2` [B, C2] = P(application), `cond2`
  [B, C2] = P(application | class), `attention` [B, L, M] (the flow's attention to each graph node per layer, mean
  over heads), `slot_scores` [B, S, M] (each node's score under each of its descriptions; explanations name the
  winning one). The graph, its text embeddings and the mission are constants of this model: the graph's own
  message passing is folded in once (factored GNN), so a flow costs a few dot products per node.
* `detection_brief.onnx`: the same without `slot_scores` (the graph read once, not once per description slot:
  a third of the work), for `classify --brief`; exports without it run the full one.
* `config.json` (the workdir's settings: what ingest must reproduce, packets, bytes, masking, min_packets),
  `explain.json` (node ids, names, descriptions, class slots), `calibration.json` (temperatures and the OOD
  threshold, when fitted), `node_text.npy` (the class and application text embeddings, the OOD score of older
  workdirs), `ood_bank.npy` (the training embeddings of the nearest-neighbour OOD score, when fitted),
  `name_tokenizer.json` + `name_table.npy` (server-name vectors without the Hugging Face model).
* `manifest.json`: format version, files with sizes and SHA-256, inputs and outputs, parameter counts, the versions
  that wrote it, and the largest difference between onnxruntime and JAX on a probe batch (checked ≤ 1e-4).

`--quantize int8`: the packet towers' weights stored as int8 (onnxruntime dynamic quantization: matrix
multiplications in int8 with activations quantized per batch), for devices where size and speed matter more than
the last digit. The float towers are written and checked against JAX first; the quantized ones are then compared
with them on the workdir's own test flows (level-1 and level-2 agreement of the top prediction, the largest
probability difference, the embeddings' lowest cosine similarity, level-1 mAUC / accuracy / macro-F1 of both),
recorded in the manifest's `quantization` (where the workdir's captures are not at hand, it says why it is missing). The
detection stage stays float32 (it is small and its probabilities are the output).

The detection stage must be the factored GNN (`gnn.model.factored=True`, the default); a workdir trained with
the per-flow formulation gets a one-line error saying how to retrain its GNN stage (minutes).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import pathlib
import sys
import time
from typing import Optional, Sequence

import numpy as np

from pclip_jax import __version__
from pclip_jax.plumbing import errors, files

from pclip_jax.serving.onnx_runtime import EXPORT_FORMAT, SLOT_BUCKETS, TOWER_INPUTS, OnnxModel, tower_file

TOWER_FILE, DETECTION_FILE, MANIFEST_FILE = "packet_tower.onnx", "detection.onnx", "manifest.json"
BRIEF_DETECTION_FILE = "detection_brief.onnx"
PARITY_TOLERANCE = 1e-4
QUANTIZE_CHOICES = ("int8",)
QUANTIZE_CHECK_FLOWS = 4096  # test flows the quantized towers are compared on (the first ones, in table order)


def probe_batch(settings, n: int = 16, seed: int = 0, max_packets: int | None = None) -> dict:
    """A deterministic batch of packet-tower inputs with the shapes and ranges of real flows (padding packets
    included; flows of at most `max_packets` packets when given), to check an export against JAX."""
    rng = np.random.default_rng(seed)
    k, b = settings.data.packets, settings.data.bytes
    packets = rng.integers(1, (max_packets or k) + 1, size=n)
    present = np.arange(k)[None, :] < packets[:, None]
    sizes = rng.integers(40, 1500, size=(n, k)) * rng.choice([-1, 1], size=(n, k))
    batch = {"bytes": (rng.integers(0, 256, size=(n, k, b)) * present[..., None]).astype(np.uint8),
             "sizes": (sizes * present).astype(np.int32),
             "iat": (rng.exponential(0.05, size=(n, k)) * present).astype(np.float32),
             "tcp_flags": (rng.integers(0, 256, size=(n, k)) * present).astype(np.uint8),
             "num_packets": packets.astype(np.int32)}
    if settings.data.use_names:
        v = rng.normal(size=(n, settings.model.name_dim))
        v[::2] = 0.0  # flows without a name
        batch["name_vec"] = (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-6)).astype(np.float16)
    return batch


def _to_onnx(fn, specs, names_in, names_out, name, opset, path):
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # one warning per intermediate value otherwise
    # jax2onnx loads every plugin on first use and logs a traceback for each one that does not import against this
    # JAX (dm_pix's depth_to_space with jax 0.10); none of them is used here.
    logging.getLogger("jax2onnx.plugins.plugin_system").setLevel(logging.ERROR)
    from jax2onnx import to_onnx

    model = to_onnx(fn, specs, model_name=name, opset=opset, input_names=list(names_in),
                    output_names=list(names_out))
    path.write_bytes(model.SerializeToString())


def quantize_towers(out: pathlib.Path, tower_files: Sequence[str]) -> None:
    """Rewrites each tower file in `out` with int8 weights (onnxruntime dynamic quantization), atomically."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # quantize_dynamic logs "consider pre-processing" advice on every call
    try:
        for name in tower_files:
            with files.atomic_path(out / name) as tmp:
                quantize_dynamic(str(out / name), str(tmp), weight_type=QuantType.QInt8)
    finally:
        root.setLevel(level)


def quantization_check(workdir, settings, layout, float_model: OnnxModel, quantized_model: OnnxModel,
                       max_flows: int = QUANTIZE_CHECK_FLOWS) -> dict:
    """The quantized towers against the float ones on the workdir's test flows (module docstring); with labels,
    also both level-1 mAUC / accuracy / macro-F1 on them (`layout`: the detection graph's)."""
    from pclip_jax.training import experiment  # only `--quantize int8` needs the test flows (data, towers)
    from pclip_jax.plumbing import metrics
    from pclip_jax.models.graph_tuples import labels_to_slots
    from pclip_jax.plumbing.workdir import Workdir

    prepared = experiment.workdir_flows(settings, Workdir(workdir))
    rows = np.asarray(prepared.test_idx)[:max_flows]
    tensors = prepared.table.tensors
    z_f, z_q = float_model.embed(tensors, rows), quantized_model.embed(tensors, rows)
    d_f, d_q = float_model.detect(z_f), quantized_model.detect(z_q)
    cos = (z_f * z_q).sum(1) / np.maximum(np.linalg.norm(z_f, axis=1) * np.linalg.norm(z_q, axis=1), 1e-12)
    out = {"weights": "int8", "method": "onnxruntime dynamic quantization (QInt8 weights)",
           "check_flows": int(len(rows)), "check_split": "test",
           "level1_top_agreement": float((d_f["prob1"].argmax(1) == d_q["prob1"].argmax(1)).mean()),
           "level2_top_agreement": float((d_f["prob2"].argmax(1) == d_q["prob2"].argmax(1)).mean()),
           "prob1_max_abs_diff": float(np.abs(d_f["prob1"] - d_q["prob1"]).max()),
           "embedding_min_cosine": float(cos.min())}
    meta = prepared.table.meta
    if "level1" in meta:
        y1, _, _ = labels_to_slots(layout, list(np.asarray(meta["level1"]).astype(str)[rows]),
                                   list(np.asarray(meta["level2"]).astype(str)[rows]) if "level2" in meta else None)
        known = y1 >= 0
        if known.any():
            names = layout.class_names(1)
            for tag, d in (("float32", d_f), ("int8", d_q)):
                p1 = d["prob1"][known] / np.maximum(d["prob1"][known].sum(1, keepdims=True), 1e-12)
                r = metrics.classification_report(y1[known], p1, names)
                out[f"level1_{tag}"] = {k: r[k] for k in ("mauc", "accuracy", "macro_f1", "num_flows")}
    return out


def export_workdir(workdir: str | pathlib.Path, out: str | pathlib.Path, mission: Optional[str] = None,
                   opset: int = 21, progress=print, quantize: Optional[str] = None,
                   deployment: bool = False) -> dict:
    """Writes the deployment directory `out` for `workdir` (module docstring) and returns its manifest.

    Raises WorkdirError for a workdir without a GNN stage and ValueError for a per-flow GNN or a parity failure.
    `quantize`: None (float32) or "int8" (module docstring). `deployment`: the workdir's distilled deployment
    packet tower (`python -m pclip_jax.distill`) instead of the trained one.
    """
    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"--quantize {quantize!r}: not one of {', '.join(QUANTIZE_CHOICES)}")
    import jax
    import jax.numpy as jnp

    from pclip_jax.plumbing import runtime  # JAX and the models load when an export runs, not for --help
    from pclip_jax.training.calibration import ood_node_text
    from pclip_jax.training.restore import load_classifier, load_deployment_towers
    from pclip_jax.serving.explain import ARRAY_KEYS, BRIEF_KEYS, ExplainInfo, dense_detection
    from pclip_jax.models.two_towers import TwoTowers
    from pclip_jax.data.flow_table import NAME_KEY
    from pclip_jax.text.name_features import NameEncoder

    t0 = time.perf_counter()
    clf = load_classifier(workdir, mission, towers=load_deployment_towers(workdir) if deployment else None)
    if not clf.gnn_config.factored:
        raise ValueError(f"{workdir}: its GNN is the per-flow formulation (gnn.model.factored=False), which carries "
                         "a copy of the graph per flow and does not export; retrain its GNN stage (minutes): "
                         f"python -m pclip_jax.main --config {pathlib.Path(workdir) / 'config.json'} "
                         f"--workdir {workdir} --config.gnn.model.factored=true")
    settings, towers = clf.settings, clf.towers
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    k, b = settings.data.packets, settings.data.bytes
    names_in = TOWER_INPUTS + ((NAME_KEY,) if settings.data.use_names else ())

    def tower(*arrays):
        batch = dict(zip(names_in, arrays))
        return towers.model.apply({"params": towers.params}, batch, method=TwoTowers.embed_packets)

    S = jax.ShapeDtypeStruct
    # One tower per packet-slot count: short flows (most flows of a capture have 1-4 packets) run through a tower
    # with fewer slots, the padding slots they would only mask (the same embeddings, tested).
    slot_files = {}
    for slots in [n for n in SLOT_BUCKETS if n < k] + [k]:
        name = TOWER_FILE if slots == k else tower_file(slots)
        specs = [S(("B", slots, b), jnp.uint8), S(("B", slots), jnp.int32), S(("B", slots), jnp.float32),
                 S(("B", slots), jnp.uint8)]
        if settings.data.use_names:
            specs.append(S(("B", settings.model.name_dim), jnp.float16))
        progress(f"[export] packet tower, {slots} packet slots → {out / name}")
        _to_onnx(tower, specs, names_in, ("embedding",), f"pclip_packet_tower_{slots}", opset, out / name)
        slot_files[slots] = name

    detect = dense_detection(clf.gnn_config, clf.gnn_params, clf.kg)
    dim = settings.model.embed_dim
    progress(f"[export] detection stage → {out / DETECTION_FILE}")
    _to_onnx(lambda z: tuple(detect(z)[key] for key in ARRAY_KEYS), [S(("B", dim), jnp.float32)],
             ("embedding",), ARRAY_KEYS, "pclip_detection", opset, out / DETECTION_FILE)
    brief = dense_detection(clf.gnn_config, clf.gnn_params, clf.kg, descriptions=False)
    progress(f"[export] brief detection stage (no description scores) → {out / BRIEF_DETECTION_FILE}")
    _to_onnx(lambda z: tuple(brief(z)[key] for key in BRIEF_KEYS), [S(("B", dim), jnp.float32)],
             ("embedding",), BRIEF_KEYS, "pclip_detection_brief", opset, out / BRIEF_DETECTION_FILE)

    info = ExplainInfo.from_prepared(clf.kg)
    files.write_json(out / "explain.json", info.to_json())
    config = files.read_json(towers.workdir.file(towers.workdir.CONFIG))
    if deployment:  # the packet tower it holds
        config["model"] = {**config["model"], **dataclasses.asdict(settings.model)}
    files.write_json(out / "config.json", config)
    written = [*slot_files.values(), DETECTION_FILE, BRIEF_DETECTION_FILE, "explain.json", "config.json"]
    if clf.calibration is not None:
        files.write_json(out / "calibration.json", clf.calibration)
        written.append("calibration.json")
    np.save(out / "node_text.npy", ood_node_text(clf.kg).astype(np.float32))
    written.append("node_text.npy")
    if clf.ood_bank is not None:
        np.save(out / "ood_bank.npy", np.asarray(clf.ood_bank, np.float32))
        written.append("ood_bank.npy")
    if settings.data.use_names:
        written += [p.name for p in NameEncoder(settings.text.encoder).save(out)]

    # Parity on a probe batch: onnxruntime against the JAX path the classify backend uses.
    probe = probe_batch(settings)
    onnx_model = OnnxModel(out, check_manifest=False, slot_files=slot_files)
    z_onnx = onnx_model.embed_batch(probe)
    short_probe = probe_batch(settings, seed=1, max_packets=3)
    short = onnx_model.embed(short_probe, np.arange(len(short_probe["sizes"])))  # through the 4-slot tower
    z_jax = np.asarray(jax.jit(tower)(*[probe[n] for n in names_in]))
    arrays_onnx = onnx_model.detect_batch(z_jax)
    arrays_jax = jax.device_get(jax.jit(detect)(jnp.asarray(z_jax)))
    short_jax = np.asarray(jax.jit(tower)(*[short_probe[n] for n in names_in]))
    diffs = {"embedding": float(np.abs(z_onnx - z_jax).max()),
             "embedding_trimmed_slots": float(np.abs(short - short_jax).max())}
    diffs.update({key: float(np.abs(np.asarray(arrays_onnx[key]) - np.asarray(arrays_jax[key])).max())
                  for key in ARRAY_KEYS if key != "slot_scores"})
    diffs["slot_scores_relative"] = float(np.abs(arrays_onnx["slot_scores"] - arrays_jax["slot_scores"]).max()
                                          / max(1.0, float(np.abs(arrays_jax["slot_scores"]).max())))
    brief_onnx = onnx_model.detect_batch(z_jax, descriptions=False)   # against the full JAX arrays: the same
    diffs["brief"] = max(float(np.abs(np.asarray(brief_onnx[key]) - np.asarray(arrays_jax[key])).max())
                         for key in BRIEF_KEYS)
    worst = max(diffs.values())
    if worst > PARITY_TOLERANCE:
        raise ValueError(f"{out}: onnxruntime differs from JAX by {worst:.2e} (> {PARITY_TOLERANCE:g}) on the "
                         f"probe batch: {diffs}")

    quantization = None
    if quantize is not None:
        progress(f"[export] packet towers: weights to {quantize}; compared with the float ones on the test flows")
        quantize_towers(out, list(slot_files.values()))  # `onnx_model` keeps the float towers it loaded
        try:
            quantization = quantization_check(workdir, settings, clf.kg.layout, onnx_model,
                                              OnnxModel(out, check_manifest=False, slot_files=slot_files))
        except (OSError, ValueError) as e:  # the workdir's captures are not here (exported on another machine)
            progress(f"[export] warning: the int8 towers were not checked on the test flows: {e}")
            quantization = {"weights": "int8", "method": "onnxruntime dynamic quantization (QInt8 weights)",
                            "check_skipped": str(e)}

    import jax2onnx
    import onnx
    import onnxruntime

    layout = clf.kg.layout
    manifest = {
        "format": EXPORT_FORMAT, "pclip_jax": __version__, "workdir": str(pathlib.Path(workdir).resolve()),
        "graph": info.graph, "mission": info.mission, "opset": opset,
        "versions": {"jax": jax.__version__, "jax2onnx": getattr(jax2onnx, "__version__", "?"),
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "packet_tower": {"file": TOWER_FILE, "slot_files": {str(n): f for n, f in slot_files.items()},
                         "inputs": list(names_in), "outputs": ["embedding"],
                         "packets": k, "bytes": b, "embedding_dim": dim,
                         "params": runtime.count_params(towers.params.get("packet_tower", {}))
                         + runtime.count_params(towers.params.get("packet_head", {})),
                         "deployment": deployment},
        "detection": {"file": DETECTION_FILE, "inputs": ["embedding"], "outputs": list(ARRAY_KEYS),
                      "classes_level1": len(layout.level_nodes[1]), "classes_level2": len(layout.level_nodes[2]),
                      "graph_nodes": layout.num_kg_nodes, "params": runtime.count_params(clf.gnn_params),
                      "brief_file": BRIEF_DETECTION_FILE, "brief_outputs": list(BRIEF_KEYS)},
        "parity_max_abs_diff": diffs,
        "quantization": quantization,
        "files": {name: {"bytes": (out / name).stat().st_size, "sha256": files.file_digest(out / name)}
                  for name in written},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    files.write_json(out / MANIFEST_FILE, manifest)
    return manifest


def format_manifest(m: dict) -> str:
    size = {n: f"{f['bytes'] / 1e6:.2f} MB" for n, f in m["files"].items()}
    return (f"exported graph {m['graph']!r}" + (f", mission {m['mission']!r}" if m["mission"] else "")
            + f" in {m['seconds']} s\n"
            f"  {TOWER_FILE}: {size[TOWER_FILE]}, {m['packet_tower']['params']:,} parameters; for short flows: "
            + ", ".join(f"{f} {size[f]}" for n, f in m["packet_tower"]["slot_files"].items() if f != TOWER_FILE)
            + "\n"
            f"  {DETECTION_FILE}: {size[DETECTION_FILE]}, {m['detection']['params']:,} parameters, "
            f"{m['detection']['classes_level1']} classes / {m['detection']['classes_level2']} applications\n"
            f"  other files: " + ", ".join(f"{n} {s}" for n, s in size.items() if not n.endswith(".onnx")) + "\n"
            f"  onnxruntime vs JAX on a probe batch, largest difference: "
            f"{max(m['parity_max_abs_diff'].values()):.1e} (float towers)" + _format_quantization(m.get("quantization")))


def _format_quantization(q: Optional[dict]) -> str:
    if not q:
        return ""
    if "check_skipped" in q:
        return f"\n  towers quantized to {q['weights']}; not checked on test flows: {q['check_skipped']}"
    return (f"\n  towers quantized to {q['weights']}: on {q['check_flows']:,} {q['check_split']} flows the top class "
            f"agrees with the float towers on {q['level1_top_agreement']:.1%} (applications "
            f"{q['level2_top_agreement']:.1%}), probabilities differ by at most {q['prob1_max_abs_diff']:.3f}, "
            f"embeddings' cosine similarity >= {q['embedding_min_cosine']:.3f}"
            + "".join(f"\n    level 1, {tag}: mAUC {q[f'level1_{tag}']['mauc']:.3f}, accuracy "
                      f"{q[f'level1_{tag}']['accuracy']:.3f}, macro-F1 {q[f'level1_{tag}']['macro_f1']:.3f}"
                      for tag in ("float32", "int8") if f"level1_{tag}" in q))


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pclip_jax.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a workdir trained by pclip_jax.main (with the GNN stage)")
    ap.add_argument("--out", required=True, help="the deployment directory to write")
    ap.add_argument("--mission", default=None, metavar="NAME_OR_STATEMENT",
                    help="bake a mission of the graph (or a free-text statement) into the detection model")
    ap.add_argument("--opset", type=int, default=21, help="ONNX opset (default 21)")
    ap.add_argument("--quantize", choices=QUANTIZE_CHOICES, default=None,
                    help="store the packet towers' weights as int8 (smaller, faster on CPUs; checked on the test "
                         "flows, see the manifest's `quantization`)")
    ap.add_argument("--deployment", action="store_true",
                    help="export the workdir's distilled deployment packet tower (python -m pclip_jax.distill) "
                         "instead of the trained one")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = ap.parse_args(argv)
    with errors.cli_errors(args.verbose) as status:
        manifest = export_workdir(args.workdir, args.out, args.mission, args.opset,
                                  progress=lambda s: print(s, file=sys.stderr), quantize=args.quantize,
                                  deployment=args.deployment)
        print(format_manifest(manifest))
        print(json.dumps({"out": str(args.out), "files": manifest["files"]}))
    return status.code


if __name__ == "__main__":
    sys.exit(main())
