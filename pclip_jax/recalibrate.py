"""Refit a finished workdir's calibration without training anything.

    python -m pclip_jax.recalibrate --workdir W

For workdirs calibrated by an older pclip_jax: the temperatures, the OOD score's training bank and threshold, the
low-confidence threshold
and the prediction sets' calibration scores are fitted again on the workdir's validation captures
(`kg.pipeline.calibrate`), WORKDIR/gnn/calibration.json is rewritten and results.json's `gnn` block gets the test
captures' figures (`gnn.trust`). Needs the run's embeddings.npz (runs since 2026-12-05).
"""
from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Optional, Sequence

import numpy as np

from pclip_jax.plumbing import errors
from pclip_jax.training import restore as inference
from pclip_jax.training import experiment
from pclip_jax.training import detection as pipeline, train_gnn
from pclip_jax.plumbing.workdir import Workdir


def recalibrate(workdir: str | pathlib.Path) -> dict:
    """Fits the calibration of a finished workdir's detection stage again (`calibrate`: temperatures, OOD
    threshold, low-confidence threshold, prediction-set scores) from its validation captures, without training
    anything, and updates WORKDIR/gnn/calibration.json and results.json's `gnn` block. For workdirs calibrated by
    an older pclip_jax. Returns the new `gnn` block."""
    wd = Workdir(workdir)
    settings = wd.read_settings()
    finished = experiment.load_finished(settings, str(wd.path))
    if finished is None:
        raise ValueError(f"{wd.path}: not a finished run whose embeddings.npz matches its flows (rerun the job)")
    results, prepared, embeddings = finished
    if embeddings.get("validation") is None or "gnn" not in results:
        raise ValueError(f"{wd.path}: no validation captures or no GNN stage: nothing to calibrate on")
    clf = inference.load_classifier(wd)
    meta = prepared.table.meta
    level1, level2 = np.asarray(meta["level1"]).astype(str), np.asarray(meta["level2"]).astype(str)
    te = prepared.test_idx
    keep = prepared.class_ids[te] >= 0
    test_pred = train_gnn.predict_arrays(clf.gnn_train_config, clf.gnn_params, embeddings["test"][keep], clf.kg)
    block = results["gnn"]
    block["calibration_fit"] = pipeline.calibrate(clf.gnn_train_config, clf.gnn_params, clf.kg, prepared, level1, level2,
                                         embeddings["validation"], wd, te[keep], test_pred, embeddings["test"][keep],
                                         embeddings.get("train"))
    for level in ("level1", "level2"):
        if block["calibration_fit"].get(f"test_ece_{level}_calibrated") is not None:
            block[level]["calibrated"] = block["calibration_fit"].pop(f"test_{level}_calibrated")
    block["trust"] = block["calibration_fit"].pop("trust")
    pipeline.print_trust(block["trust"], "test captures")
    wd.write_results(results)
    return block


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pclip_jax.recalibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="a finished workdir of pclip_jax.main with the GNN stage")
    parser.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = parser.parse_args(argv)
    with errors.cli_errors(args.verbose) as status:
        recalibrate(args.workdir)
    return status.code


if __name__ == "__main__":
    sys.exit(main())
