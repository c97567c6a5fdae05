"""Which pre-training step should the towers keep? Every kept checkpoint of finished workdirs, scored.

    python benchmarks/checkpoint_steps.py WORKDIR [WORKDIR ...] [--json OUT]

The main job keeps the step with the best validation zero-shot mAUC (`checkpoints_best/`) besides the last
`train.keep_checkpoints` periodic ones (`checkpoints/`). For each of those steps this embeds the workdir's
train / validation / test flows with that step's towers, fits the linear probe as the job does (per-application
targets, L2 chosen on the validation captures) and prints accuracy / macro-F1 / mAUC of the probe and of
zero-shot on the validation and test captures, so a selection rule can be judged by what it would have picked on
validation and what that step gives on test. With the kept step it reproduces the job's own probe and zero-shot
figures (tested). Nothing in the workdir is changed. docs/model.md ("IoT Sentinel") has a use of it.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def _restore_step(ckpts, step: int, like):
    """Parameters of periodic checkpoint `step` (`ckpts`: the workdir's checkpoints, opened for reading)."""
    import jax

    from pclip_jax.training.state import create_state

    shape = jax.eval_shape(lambda: create_state(like.settings, like.model, jax.random.PRNGKey(0)))
    return ckpts.restore(shape, step=step)[0].params


def score_workdir(workdir: str) -> list[dict]:
    """One row per kept pre-training step of `workdir`: probe and zero-shot metrics on validation and test."""
    from pclip_jax import evaluate as ev
    from pclip_jax.training import restore as inference
    from pclip_jax.training import experiment
    from pclip_jax.plumbing import metrics, runtime
    from pclip_jax.plumbing.checkpointing import Checkpoints
    from pclip_jax.training.towers import embed_flows, make_embed_fn, zero_shot_scores
    from pclip_jax.training.loop import BestKeeper

    towers = inference.load_towers(workdir)
    settings, model, wd = towers.settings, towers.model, towers.workdir
    finished = experiment.load_finished(settings, workdir)
    if finished is None:
        raise ValueError(f"{workdir}: not a finished main-job workdir (results.json and embeddings.npz)")
    _, prepared, _ = finished
    names = prepared.class_names
    apps = np.asarray(prepared.table.meta["level2"]).astype(str)
    prompt_feats, prompt_class = wd.load_class_text()
    best_file = wd.best_checkpoints / "best.json"
    ckpts = Checkpoints(wd.checkpoints, writable=False)
    steps = ckpts.all_steps()
    # The step the job used (as `inference.load_towers`): the validation-best one, else the newest.
    best = json.loads(best_file.read_text())["step"] if best_file.is_file() else None
    kept = best if best is not None else max(steps)
    rows = []
    for step in sorted(set(steps) | {kept}):
        params = (BestKeeper(wd.best_checkpoints).load(towers.params) if step == best
                  else _restore_step(ckpts, step, towers))
        embed_fn, replicated = make_embed_fn(model), runtime.replicate(params)
        feats, z, y, idx = {}, {}, {}, {}
        for split, attr in (("train", "train_idx"), ("validation", "val_idx"), ("test", "test_idx")):
            r = np.asarray(getattr(prepared, attr))
            f, e = embed_flows(embed_fn, replicated, prepared.table.tensors, r, settings.eval.batch_size)
            keep = prepared.class_ids[r] >= 0
            feats[split], z[split], y[split], idx[split] = f[keep], e[keep], prepared.class_ids[r][keep], r[keep]
        probe, l2, _, _ = ev.fit_validated_probe(feats["train"], y["train"], apps[idx["train"]], feats["validation"],
                                                 y["validation"], len(names), settings.eval.probe_targets,
                                                 settings.train.seed)
        row = {"workdir": str(workdir), "step": step, "kept": step == kept, "probe_l2": l2}
        for split in ("validation", "test"):
            if not len(y[split]):  # a run without validation captures (data.validation_fraction = 0)
                row[f"{split}_probe"] = row[f"{split}_zero_shot"] = None
                continue
            for name, scores in (("probe", ev.linear_probe_scores(probe, feats[split])),
                                 ("zero_shot", zero_shot_scores(params, model, z[split], prompt_feats,
                                                                prompt_class, len(names)))):
                report = metrics.classification_report(y[split], scores, names)
                row[f"{split}_{name}"] = {k: report[k] for k in ("accuracy", "macro_f1", "mauc")}
        rows.append(row)
        print(format_row(row), flush=True)
    ckpts.close()
    return rows


def format_row(row: dict) -> str:
    def cell(m):
        return "-" if m is None else f"{m['accuracy']:.3f} / {m['macro_f1']:.3f} / {m['mauc']:.3f}"
    return (f"| {row['workdir']} | {row['step']}{' (kept)' if row['kept'] else ''} | {cell(row['validation_probe'])}"
            f" | {cell(row['validation_zero_shot'])} | {cell(row['test_probe'])} | {cell(row['test_zero_shot'])} |")


HEADER = ("accuracy / macro-F1 / mAUC per evaluation and split\n"
          "| workdir | step | probe, validation | zero-shot, validation | probe, test | zero-shot, test |\n"
          "| --- | --- | --- | --- | --- | --- |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("workdirs", nargs="+", metavar="WORKDIR", help="finished main-job workdirs")
    ap.add_argument("--json", default=None, metavar="OUT", help="also write the rows as JSON")
    args = ap.parse_args(argv)
    print(HEADER, flush=True)
    rows = [r for w in args.workdirs for r in score_workdir(w)]
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
