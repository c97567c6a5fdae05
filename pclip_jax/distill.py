"""Distil a small deployment packet tower from a finished workdir, for classify on one core.

    python -m pclip_jax.distill --workdir W [--width 64 --depth 1 --heads 2 --patch-size 16 --byte-dim 8]
                                [--extra OTHER_CAPTURES ...]
    python -m pclip_jax.export --workdir W --out E --deployment      # the ONNX export with it
    python -m pclip_jax.classify --backend onnx --model E CAPTURES

The student learns to place the training flows where the trained tower places them and to make the GNN answer
as it does with the trained tower (no labels; `--match-predictions` weighs the second part; the step with the
lowest validation loss is kept); the text side, the graph, the GNN and the calibration stay the workdir's. Writes
WORKDIR/deployment/ and prints the report: FLOPs and parameters of both packet towers, and on the test captures
the GNN's level-1 mAUC / accuracy / macro-F1 with each and how often their answers agree (`training.distill`).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Optional, Sequence

from pclip_jax.plumbing import errors
from pclip_jax.training.distill import DeploymentTower, distill


def format_report(r: dict) -> str:
    t = r["packet_tower"]
    lines = [f"deployment packet tower {r['architecture']}: {t['deployment']['params']:,} parameters, "
             f"{t['deployment']['flops_per_flow'] / 1e6:.2f} MFLOPs per flow against {t['trained']['params']:,} and "
             f"{t['trained']['flops_per_flow'] / 1e6:.2f} ({t['flops_ratio']:.1f}x fewer); validation cosine "
             f"{r['validation_cosine']:.4f} and GNN-output KL {r['validation_kl']:.4f} at step {r['best_step']}, "
             f"test cosine {r['test_cosine']:.4f}"]
    if "level1_trained" in r:
        a, b = r["level1_trained"], r["level1_deployment"]
        lines.append(f"GNN level 1 on the test captures (mAUC / accuracy / macro-F1): trained tower {a['mauc']:.4f} / "
                     f"{a['accuracy']:.4f} / {a['macro_f1']:.4f}, deployment tower {b['mauc']:.4f} / "
                     f"{b['accuracy']:.4f} / {b['macro_f1']:.4f} (mAUC {-r['level1_mauc_drop']:+.4f}, macro-F1 "
                     f"{-r['level1_macro_f1_drop']:+.4f}); the same level-1 answer for "
                     f"{r['level1_agreement']:.1%} of {r['test_flows']} test flows")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    d = DeploymentTower()
    ap = argparse.ArgumentParser(prog="python -m pclip_jax.distill", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", required=True, help="a finished workdir of pclip_jax.main with the GNN stage")
    ap.add_argument("--width", type=int, default=d.width, help=f"the student's width (default {d.width})")
    ap.add_argument("--depth", type=int, default=d.depth, help=f"transformer layers (default {d.depth})")
    ap.add_argument("--heads", type=int, default=d.heads, help=f"attention heads (default {d.heads})")
    ap.add_argument("--patch-size", type=int, default=d.patch_size,
                    help=f"bytes per patch token (default {d.patch_size}; a divisor of data.bytes)")
    ap.add_argument("--byte-dim", type=int, default=d.byte_dim,
                    help=f"byte embedding width (default {d.byte_dim})")
    ap.add_argument("--steps", type=int, default=d.steps, help=f"training steps (default {d.steps})")
    ap.add_argument("--batch-size", type=int, default=d.batch_size, help=f"flows per step (default {d.batch_size})")
    ap.add_argument("--learning-rate", type=float, default=d.learning_rate,
                    help=f"peak learning rate (default {d.learning_rate})")
    ap.add_argument("--extra", nargs="*", default=[], metavar="CAPTURES",
                    help="captures or folders of other unlabelled traffic (never the workdir's validation or test "
                         "captures) whose flows the student also learns to embed as the trained tower does")
    ap.add_argument("--match-predictions", type=float, default=d.match_predictions,
                    help=f"weight of the KL divergence of the GNN's level-1 and level-2 answers (student from "
                         f"trained) beside 1 - cosine of the embeddings; 0 = the embeddings only (default "
                         f"{d.match_predictions})")
    ap.add_argument("--no-augment", action="store_true",
                    help="train on the flows as captured (default: the teacher and the student read the same "
                         "augmented flows each step: IAT scaled, 10 %% of bytes and packets dropped)")
    ap.add_argument("--seed", type=int, default=d.seed, help="initialisation and batch seed (default 0)")
    ap.add_argument("--verbose", action="store_true", help="full tracebacks on errors")
    args = ap.parse_args(argv)
    with errors.cli_errors(args.verbose) as status:
        tower = DeploymentTower(width=args.width, depth=args.depth, heads=args.heads, patch_size=args.patch_size,
                                byte_dim=args.byte_dim, steps=args.steps, batch_size=args.batch_size, learning_rate=args.learning_rate,
                                match_predictions=args.match_predictions, augment=not args.no_augment,
                                seed=args.seed, eval_every=max(1, min(d.eval_every, args.steps // 4)))
        report = distill(args.workdir, tower, extra_inputs=args.extra)
        print(format_report(report), file=sys.stderr)
        print(json.dumps({k: v for k, v in report.items() if k != "history"}))
    return status.code


if __name__ == "__main__":
    sys.exit(main())
