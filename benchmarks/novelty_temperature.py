"""A temperature that expects the share of novel-application flows of new captures (tried for issue 29, item 2).

    python benchmarks/novelty_temperature.py W

The validation captures of a workdir hold fewer flows of applications absent from training than new captures do
(quickstart: 38 % against 68 % on the test captures), so the temperature fitted on them is too low. Without looking
at the test captures, the share to expect is estimated from the training and validation captures alone: split
them by capture into K folds, and count the flows of each fold whose application no other fold has. The validation
flows are then re-weighted to that share and the temperature fitted (`calibration.fit_temperature`). Printed: the
estimate per K (mean of 20 fold draws) and, for the shares 0.38 (none), the estimates and the test share (a bound),
the temperature and the test ECE. docs/trust.md has the figures.
"""
import sys

import numpy as np

from pclip_jax.training import calibration as cal
from pclip_jax.plumbing import files
from pclip_jax.training import experiment
from pclip_jax.plumbing import metrics as metrics_lib
from pclip_jax.training.detection import CALIBRATION_FLOWS
from pclip_jax.plumbing.workdir import Workdir


def main(argv=None) -> int:
    w = (argv or sys.argv[1:])[0]
    finished = experiment.load_finished(Workdir(w).read_settings(), w)
    if finished is None:
        print(f"error: {w}: not a finished run whose embeddings.npz matches its flows", file=sys.stderr)
        return 2
    prep = finished[1]
    meta = prep.table.meta
    apps, caps = np.asarray(meta["level2"]).astype(str), np.asarray(meta["capture"]).astype(str)
    rows = np.concatenate([prep.train_idx, prep.val_idx])
    rows = rows[prep.class_ids[rows] >= 0]
    names = np.unique(caps[rows])
    shares = {}
    for k in (2, 3, 5):
        est = []
        for seed in range(20):
            fold = dict(zip(names, np.random.default_rng(seed).permutation(len(names)) % k))
            f = np.array([fold[c] for c in caps[rows]])
            unseen = np.zeros(len(rows), bool)
            for j in range(k):
                seen = set(apps[rows][f != j]) - {""}
                unseen[f == j] = [a not in seen for a in apps[rows][f == j]]
            est.append(unseen.mean())
        shares[f"estimate, {k} capture folds"] = float(np.mean(est))
    fl = files.load_npz(f"{w}/gnn/{CALIBRATION_FLOWS}")
    pv = fl["validation_prob1"] / fl["validation_prob1"].sum(1, keepdims=True)
    pt = fl["test_prob1"] / fl["test_prob1"].sum(1, keepdims=True)
    yv, yt = fl["validation_y1"], fl["test_y1"]
    uv = fl["validation_unseen_application"].astype(bool)
    shares = {"validation (the job's fit)": float(uv.mean()), **shares,
              "test share (a bound: needs the test labels)": float(fl["test_unseen_application"].mean())}
    for name, share in shares.items():
        weights = np.where(uv, share / uv.mean(), (1 - share) / (1 - uv.mean()))
        t = cal.fit_temperature(pv, yv, weights)
        print(f"{name:<45} novel share {share:.3f}: temperature {t:.2f}, test ECE level 1 "
              f"{metrics_lib.calibration(yt, cal.scale(pt, t))['ece']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
