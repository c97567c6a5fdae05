"""How well a workdir's confidence scores tell flows of another dataset from its own test flows.

    python benchmarks/out_of_mission.py W INPUT... [--json OUT]

W: a workdir of the main job with the GNN stage and `gnn/calibration_flows.npz`; INPUT: captures of another
dataset (e.g. ../shared/data/iot_sentinel into an nDPI workdir). The in-mission flows are W's test flows of a known
class (their OOD scores and level-1 probabilities are in calibration_flows.npz); the other dataset's flows are
ingested with W's settings, filtered as training filters (`data.min_packets`, one-way flows dropped) and scored by
W's towers and GNN. Reported: the AUROC of "out of mission" for the workdir's OOD score (`ood_score`: the
nearest-neighbour similarity to its training flows; lower = more out of mission), for the class-text similarity
(the score of workdirs calibrated before it), for the calibrated top level-1 probability (lower = more out of
mission), and the share of each side that `out_of_distribution` flags. docs/trust.md has the figures.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np
from sklearn.metrics import roc_auc_score

from pclip_jax.training import calibration as cal
from pclip_jax.serving import classify
from pclip_jax.plumbing import files
from pclip_jax.training.detection import CALIBRATION_FLOWS
from pclip_jax.training import experiment


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", metavar="W")
    ap.add_argument("inputs", nargs="+", metavar="INPUT")
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    flows = files.load_npz(f"{args.workdir}/gnn/{CALIBRATION_FLOWS}")
    engine = classify.jax_engine(args.workdir)
    settings = engine.settings
    table, dropped = experiment.flows_as_trained(args.inputs, settings, engine.names)
    z = engine.embed(table.tensors, np.arange(len(table)))
    other_ood = cal.flow_ood_scores(z, engine.calibration, engine.node_text, engine.ood_bank)
    other_text = cal.ood_scores(z, engine.node_text)
    other_top = cal.calibrated_probabilities(engine.detect(z)["prob1"], engine.calibration, "level1").max(1)
    own_ood = np.asarray(flows["test_ood_score"], np.float64)
    own_text = np.asarray(flows["test_text_score"] if "test_text_score" in flows else flows["test_ood_score"],
                          np.float64)
    own_top = cal.calibrated_probabilities(flows["test_prob1"], engine.calibration, "level1").max(1)
    is_other = np.r_[np.zeros(len(own_ood)), np.ones(len(other_ood))]
    threshold = engine.calibration.get("ood_threshold")
    out = {"own_test_flows": int(len(own_ood)), "other_flows": int(len(other_ood)), "other_dropped": dropped,
           "ood_score": (engine.calibration or {}).get("ood_score", "text"),
           "auroc_ood_score": float(roc_auc_score(is_other, -np.r_[own_ood, other_ood])),
           "auroc_text_similarity": float(roc_auc_score(is_other, -np.r_[own_text, other_text])),
           "auroc_top_probability": float(roc_auc_score(is_other, -np.r_[own_top, other_top])),
           "flagged_out_of_distribution": None if threshold is None else
           {"own": float((own_ood < threshold).mean()), "other": float((other_ood < threshold).mean())}}
    print(f"{args.workdir}: {out['own_test_flows']} own test flows against {out['other_flows']} flows of "
          f"{args.inputs}: AUROC OOD score ({out['ood_score']}) {out['auroc_ood_score']:.3f}, class-text "
          f"similarity {out['auroc_text_similarity']:.3f}, top probability "
          f"{out['auroc_top_probability']:.3f}; out_of_distribution flags {out['flagged_out_of_distribution']}")
    if args.json:
        files.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
