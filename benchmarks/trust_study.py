"""Choosing the prediction-set method and checking the low-confidence flag on a workdir's validation captures only.

    python benchmarks/trust_study.py W [--coverage 0.9] [--repeats 200] [--json OUT]

W: a workdir of the main job with `gnn/calibration_flows.npz` and `gnn/calibration.json` (`python -m
pclip_jax.recalibrate --workdir W` brings an older one up to date). The choice between the conformal methods of
`pclip_jax.training.calibration.conformal_threshold` is made on the *validation* captures alone: they are split at random,
by capture, into two halves `--repeats` times; each method is calibrated on one half and its level-1 sets' coverage
measured on the other; the method whose coverage is closest to the target on average wins. The test captures are
then reported for every method (never used to choose), with the low-confidence flag's accuracies and the
risk–coverage area. docs/trust.md has the figures.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from pclip_jax.training import calibration as cal
from pclip_jax.plumbing import files
from pclip_jax.training.detection import CALIBRATION_FLOWS


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdir", metavar="W")
    ap.add_argument("--coverage", type=float, default=cal.DEFAULT_COVERAGE)
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--json", metavar="OUT")
    args = ap.parse_args(argv)
    flows = files.load_npz(f"{args.workdir}/gnn/{CALIBRATION_FLOWS}")
    calibration = files.read_json(f"{args.workdir}/gnn/calibration.json")
    if "conformal" not in calibration:
        print(f"error: {args.workdir}/gnn/calibration.json has no prediction-set scores; run python -m "
              f"pclip_jax.recalibrate --workdir {args.workdir}", file=sys.stderr)
        return 2
    pv = cal.calibrated_probabilities(flows["validation_prob1"], calibration, "level1")
    selection = cal.choose_conformal_method(pv, flows["validation_y1"], flows["validation_capture"], args.coverage,
                                            args.repeats)
    out = {"validation_halves": selection["methods"], "chosen_on_validation": selection["chosen"]}
    chosen = selection["chosen"]
    pt = cal.calibrated_probabilities(flows["test_prob1"], calibration, "level1")
    yv, yt = np.asarray(flows["validation_y1"]), np.asarray(flows["test_y1"])
    scores = cal.conformal_scores(pv, yv)
    out["test"] = {m: cal.set_report(cal.prediction_sets(pt, cal.conformal_threshold(
        scores, args.coverage, flows["validation_capture"], m)), yt, args.coverage) for m in cal.CONFORMAL_METHODS}
    out["test_trust"] = cal.trust_report(flows["test_prob1"], yt, calibration=calibration,
                                         coverage=args.coverage)["all"]
    for m, r in out["validation_halves"].items():
        print(f"validation halves, {m:<16}: coverage {r['mean_coverage']:.3f} (p10 {r['p10']:.3f}, p90 "
              f"{r['p90']:.3f}), mean |error| {r['mean_abs_error']:.3f} over {args.repeats} capture splits")
    print(f"chosen on validation: {chosen}")
    for m, r in out["test"].items():
        print(f"test captures, {m:<16}: coverage {r['coverage']:.3f} (target {args.coverage}), mean size "
              f"{r['mean_size']:.2f}")
    low, rc = out["test_trust"]["low_confidence"], out["test_trust"]["risk_coverage"]
    print(f"test captures: low confidence (calibrated p < {low['threshold']:.3f}) on {low['marked_share']:.1%}; "
          f"accuracy unmarked {low['accuracy_unmarked']:.3f}, marked {low['accuracy_marked']:.3f}; "
          f"accuracy-coverage area {rc['area']:.3f} (accuracy of all {rc['accuracy_all']:.3f}); ECE level 1 "
          f"{out['test_trust']['ece_level1']:.3f} -> {out['test_trust']['ece_level1_calibrated']:.3f}")
    if args.json:
        files.write_json(args.json, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
