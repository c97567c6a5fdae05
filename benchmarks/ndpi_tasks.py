"""The nDPI application tasks (docs/labels.md, "nDPI tasks") per split seed, next to the plain capture split.

    python benchmarks/ndpi_tasks.py [--manual-dir ../shared/data/ndpi] [--seeds 0,1,2,3,4]
        [--splits capture,seen_applications,novel_applications] [--cache /tmp/ndpi_tasks_cache] [--json OUT]

For every `data.split` and `data.split_seed` this runs `prepare_flows` (the flows a job would train and test on,
default data settings otherwise) and prints a markdown table: captures and flows per side, flows the task leaves
out, the share of test flows whose application has training flows (closed set: 100 %, novel applications: 0 %;
`metrics.by_application_novelty` gives the same split of the evaluated test flows, kept in --json), the
applications the validation and test captures belong to (each capture's dominant one), the distinct applications of
each side's flows, and the evaluated level-1 classes present in test.
Nothing is trained; ingest is cached under --cache.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402


def task_figures(prepared) -> dict:
    """What one split holds (see the module's docstring)."""
    from pclip_jax.data.splits import capture_classes
    from pclip_jax.plumbing.metrics import NOVEL, SEEN, by_application_novelty

    table = prepared.table
    captures = np.asarray(table.meta["capture"]).astype(str)
    apps = np.asarray(table.meta["level2"]).astype(str)
    test = np.asarray(prepared.test_idx)
    evaluated = test[prepared.class_ids[test] >= 0]
    # The seen/novel halves as the evaluation reports them (uniform scores: only the flow counts matter here).
    halves = by_application_novelty(prepared.class_ids[evaluated], np.full((len(evaluated), len(prepared.class_names)),
                                    1.0 / len(prepared.class_names)), prepared.class_names, apps[evaluated],
                                    prepared.applications(prepared.train_idx))
    seen_all = np.isin(apps[test], prepared.applications(prepared.train_idx))
    sides = {"train": prepared.train_idx, "validation": prepared.val_idx, "test": test}
    dominant = capture_classes(table, "level2")  # each capture's application (the unit the tasks split)
    side_captures = {k: set(captures[np.asarray(v, np.int64)].tolist()) for k, v in sides.items()}
    return {
        "captures": {k: len(v) for k, v in side_captures.items()},
        "capture_applications": {**{k: len({dominant[c] for c in v} - {""}) for k, v in side_captures.items()},
                                 "all": len(set(dominant.values()) - {""})},
        "flows": {k: int(len(v)) for k, v in sides.items()},
        "outside_task": int(prepared.dropped.get("outside_application_task", 0)),
        "test_seen_share": float(seen_all.mean()) if len(test) else float("nan"),
        "evaluated_test_flows": {"seen": halves[SEEN]["num_flows"], "novel": halves[NOVEL]["num_flows"]},
        "applications": {"train": len(prepared.applications(prepared.train_idx)),
                         "validation": len(prepared.applications(prepared.val_idx)),
                         "test": len(prepared.applications(test))},
        "test_level1": sorted({prepared.class_names[k] for k in prepared.class_ids[test].tolist() if k >= 0}),
        "evaluated_level1": len(prepared.class_names),
        "notes": list(prepared.split_notes),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--manual-dir", default=str(REPO.parent / "shared" / "data" / "ndpi"))
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--splits", default="capture,seen_applications,novel_applications")
    parser.add_argument("--cache", default="/tmp/ndpi_tasks_cache")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    from pclip_jax.data.prepare import prepare_flows
    from pclip_jax.plumbing.settings import DataSettings

    rows = []
    print("| split | seed | captures train/val/test | flows train/val/test | left out | test flows with a seen "
          "application | applications of the val/test captures (of all) | flow applications train/val/test | "
          "level-1 classes in test |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for split in args.splits.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            settings = DataSettings(manual_dir=args.manual_dir, split=split, split_seed=seed)
            settings.validate()
            f = task_figures(prepare_flows(settings, args.cache, progress=False))
            rows.append({"split": split, "seed": seed, "settings": dataclasses.asdict(settings), **f})
            c, n, a, d = f["captures"], f["flows"], f["applications"], f["capture_applications"]
            print(f"| {split} | {seed} | {c['train']}/{c['validation']}/{c['test']} | "
                  f"{n['train']}/{n['validation']}/{n['test']} | {f['outside_task']} | {f['test_seen_share']:.1%} | "
                  f"{d['validation']}/{d['test']} ({d['all']}) | {a['train']}/{a['validation']}/{a['test']} | {len(f['test_level1'])} of {f['evaluated_level1']} |")
            for note in f["notes"]:
                print(f"|   | note: {note} |", file=sys.stderr)
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
