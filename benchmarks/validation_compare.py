"""Variants of the main job compared on their validation captures only (never their test answers).

    python benchmarks/validation_compare.py W_BASELINE W_VARIANT [...]

Each W: a finished workdir of `pclip_jax.main` run on the same split (same data section and split seed). Printed
per workdir and evaluation (probe, zero-shot, GNN level 1 / 2): the validation mAUC over the flows the job
evaluates, the same over the flows of applications no training capture has (`novel`, where the split has them),
with a 95 % capture-bootstrap interval, and the paired margin of each variant against the first workdir. Only the
`*.validation.npz` answer files are opened: this is the comparison the protocol allows a design choice to read
(docs/peers.md, "Protocol"); the test side waits for the declared cells of `benchmarks/peers.py`.
"""
from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

from pclip_bench import protocol
from pclip_jax.plumbing import files


def validation_answers(workdir: pathlib.Path) -> dict[str, dict]:
    """{evaluation: arrays} of the workdir's validation answer files only."""
    folder = pathlib.Path(workdir) / "answers"
    paths = sorted(folder.glob("*.validation.npz"))
    if not paths:
        raise SystemExit(f"error: {folder}: no validation answers (a finished run with validation captures)")
    return {p.name[:-len(".validation.npz")]: files.load_npz(p) for p in paths}


def predictions(arrays: dict, keep: np.ndarray) -> protocol.SplitPredictions:
    return protocol.SplitPredictions(arrays["y_true"][keep], arrays["scores"][keep], arrays["captures"][keep])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdirs", nargs="+", metavar="W")
    ap.add_argument("--replicates", type=int, default=1000)
    args = ap.parse_args(argv)
    answers = {w: validation_answers(pathlib.Path(w)) for w in args.workdirs}
    base = args.workdirs[0]
    for evaluation in sorted(answers[base]):
        ref = answers[base][evaluation]
        for part in ("all", "novel"):
            if part == "novel" and ("novel" not in ref or np.asarray(ref["novel"], bool).all()):
                continue  # no novelty flags, or every validation flow is novel (the novel-application task)
            keep = np.ones(len(ref["y_true"]), bool) if part == "all" else np.asarray(ref["novel"], bool)
            keep &= ref["y_true"] >= 0
            if keep.sum() < 2:
                continue
            print(f"{evaluation}, validation {part} ({int(keep.sum())} flows):")
            for w in args.workdirs:
                arrays = answers[w].get(evaluation)
                if arrays is None:
                    print(f"  {w}: no {evaluation} answers")
                    continue
                if not (np.array_equal(arrays["captures"], ref["captures"]) and
                        np.array_equal(arrays["y_true"], ref["y_true"])):
                    print(f"  {w}: other validation flows than {base} (not the same split): not compared")
                    continue
                own = predictions(arrays, keep)
                line = (f"  {w}: mAUC "
                        f"{protocol.interval_text(protocol.bootstrap_interval([own], 'mauc', args.replicates), 4)}")
                if w != base:
                    diff = protocol.paired_bootstrap([own], [predictions(ref, keep)], "mauc", args.replicates)
                    line += f"; against the first {protocol.interval_text(diff, 4)}"
                print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
