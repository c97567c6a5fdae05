"""Prediction-set coverage across nDPI capture folds for a simple classifier (tests/test_trust.py): fitted on two
folds of captures, calibrated on a third, measured on the fourth, for four fold seeds. docs/trust.md has the figures.

    python benchmarks/conformal_capture_folds.py
"""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))
from test_trust import _fitted_on_some_captures  # noqa: E402
from pclip_jax.training import calibration as cal  # noqa: E402
for seed in range(4):
    proba, y, captures, f, keep = _fitted_on_some_captures(pathlib.Path("../shared/data/ndpi"), seed)
    c, t = (f == 2) & keep, (f == 3) & keep
    chosen = cal.choose_conformal_method(proba[c], y[c], captures[c])["chosen"]
    s = cal.conformal_scores(proba[c], y[c])
    got = {m: cal.set_report(cal.prediction_sets(proba[t], cal.conformal_threshold(s, 0.9, captures[c], m)), y[t], 0.9)
           for m in cal.CONFORMAL_METHODS}
    print(seed, "accuracy", round(float((proba[t].argmax(1) == y[t]).mean()), 3), "chosen", chosen,
          {m: (round(r["coverage"], 3), round(r["mean_size"], 2)) for m, r in got.items()})
