"""How well the detection stage's calibration carries from the validation captures to the test captures.

    python benchmarks/calibration_study.py W [W ...] [--json OUT]

W: workdirs of the main job (e.g. the peer sweep's `W/pclip/ndpi/pclip-f1-s0`), each with the
`gnn/calibration_flows.npz` the job writes. Per workdir: the test ECE (level 1, 10 bins) before scaling, with the
temperature the job fits on the validation flows, with temperatures fitted on them in other ways, with a label-free
temperature fitted on the unlabelled test flows to an accuracy estimate (ATC, Garg et al. 2022), and two bounds
fitted on the test flows themselves; the share of flows of applications unseen in training in both splits, the
accuracy on seen and unseen ones, and the AUROC of the OOD score and of the top probability as detectors of unseen
applications (`pclip_jax.training.calibration.compare_methods`). Where the workdir also has `embeddings.npz` (runs since
2026-12-05), two more things that were tried: the nearest-neighbour score (similarity to the 5 closest training flows
in the tower's space) as a detector of unseen applications and as the input of a per-flow temperature, and whether
the tower has fitted its training flows (a probe's accuracy on held-out training captures against the test
captures), which decides whether out-of-fold predictions on training flows could calibrate.
docs/model.md, "Calibration", has the nDPI figures.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pclip_jax.training import calibration
from pclip_jax.plumbing import files
from pclip_jax.training.detection import CALIBRATION_FLOWS
from pclip_jax.plumbing.workdir import Workdir


def fitted_check(workdir: str) -> dict:
    """`calibration.fitted_embedding_check` on the run's training and test flows (its flow table and
    embeddings.npz, checked against each other by `experiment.load_finished`)."""
    from pclip_jax.training import experiment

    finished = experiment.load_finished(Workdir(workdir).read_settings(), workdir)
    if finished is None:
        raise ValueError("embeddings.npz does not match the run's flows (rerun the job)")
    _, prepared, embeddings = finished
    ids = prepared.class_ids
    tr, te = prepared.train_idx, prepared.test_idx
    ktr, kte = ids[tr] >= 0, ids[te] >= 0
    captures = prepared.table.meta["capture"]
    return calibration.fitted_embedding_check(
        embeddings["train"][ktr], ids[tr][ktr], captures[tr][ktr], embeddings["test"][kte], ids[te][kte])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdirs", nargs="+", metavar="W")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    results = {}
    for w in args.workdirs:
        path = Path(w) / "gnn" / CALIBRATION_FLOWS
        if not path.is_file():
            print(f"error: {path}: missing (train or resume the workdir with the GNN stage and a validation split)",
                  file=sys.stderr)
            return 2
        emb_path = Path(w) / Workdir.EMBEDDINGS
        embeddings = files.load_npz(emb_path) if emb_path.is_file() else None
        try:
            r = results[w] = calibration.compare_methods(files.load_npz(path), embeddings)
            if embeddings is not None:
                r["fitted_embeddings"] = fitted_check(w)
        except ValueError as e:
            print(f"error: {path}: {e}", file=sys.stderr)
            return 2
        print(f"{w}: {r['validation_flows']} validation flows ({r['validation_captures']} captures), "
              f"{r['test_flows']} test flows; unseen applications {r['unseen_share']['validation']:.0%} / "
              f"{r['unseen_share']['test']:.0%}; accuracy validation {r['accuracy']['validation']:.3f}, test "
              f"{r['accuracy']['test']:.3f} (seen {r['accuracy']['test_seen'] or float('nan'):.3f}, unseen "
              f"{r['accuracy']['test_unseen'] or float('nan'):.3f})")
        print(f"  test ECE uncalibrated {r['uncalibrated_test_ece']:.3f}")
        for name, m in r["methods"].items():
            extra = f", mix {m['mix']:.2f}" if "mix" in m else ""
            extra += f" (median; a {m['a']:.2f}, b {m['b']:.2f})" if "a" in m else ""
            extra += f", estimated accuracy {m['estimated_accuracy']:.3f}" if "estimated_accuracy" in m else ""
            print(f"  {name:<48} T {m['temperature']:5.2f}{extra}: test ECE {m['test_ece']:.3f}")
        if "unseen_detection_auroc" in r:
            a = r["unseen_detection_auroc"]
            ood = "-" if a["ood_score"] is None else f"{a['ood_score']:.3f}"
            k = calibration.KNN_K
            knn = f", {k}-NN similarity {a[f'knn{k}_similarity']:.3f}" if f"knn{k}_similarity" in a else ""
            text = f", class-text similarity {a['text_similarity']:.3f}" if "text_similarity" in a else ""
            print(f"  unseen-application flows found by: OOD score AUROC {ood}, top probability "
                  f"{a['top_probability']:.3f}{knn}{text}")
        if "fitted_embeddings" in r:
            f = r["fitted_embeddings"]
            print(f"  probe on the tower's embeddings: accuracy on held-out training captures "
                  f"{f['out_of_fold_training_accuracy']:.3f} ({f['folds']} capture folds), on the test captures "
                  f"{f['test_accuracy']:.3f}")
    if args.json:
        files.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
