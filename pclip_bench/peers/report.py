"""The protocol's report from finished cells: every figure from the cells' per-flow answers (`<cell>.npz`), as a
mean over the evaluation splits with a capture-bootstrap interval, and margins as paired intervals
(`pclip_bench.protocol`). Nothing here trains or reads a test answer to choose anything: the PacketCLIP row that
comparisons use is each cell's declared evaluation (chosen on validation when the cell ran), and "the best tree" /
"the best neural peer" are chosen by their mean *validation* mAUC over the splits.
"""
from __future__ import annotations

import pathlib
from typing import Optional, Sequence

import numpy as np

from pclip_bench import protocol
from pclip_jax.plumbing import files

DECLARED = "pclip_declared"  # PacketCLIP's declared evaluation, cell by cell
TREES = ("extra_trees", "lightgbm")
NEURAL = ("cnn1d", "fsnet", "yatc", "netmamba", "etbert")
SHOWN_METRICS = (("mauc", "mAUC"), ("macro_f1", "macro-F1"), ("accuracy", "accuracy"))
LABELS = {DECLARED: "**PacketCLIP, declared evaluation**", "pclip_probe": "PacketCLIP linear probe",
          "pclip_zero_shot": "PacketCLIP zero-shot", "pclip_finetuned": "PacketCLIP fine-tuned",
          "pclip_gnn": "PacketCLIP hierarchical GNN",
          "pclip_gnn_level1": "PacketCLIP GNN, level 1", "pclip_trees": "ExtraTrees + PacketCLIP embedding"}


def load_protocol_cells(workdir: pathlib.Path) -> list[dict]:
    """Every finished cell of protocol 2 under `workdir/cells` with its answers: [{cell, rows, answers, ...}]."""
    out = []
    for path in sorted((pathlib.Path(workdir) / "cells").glob("*/*.json")):
        done = files.read_json(path)
        if done.get("protocol") != 2:
            continue
        answers_path = path.with_suffix(".npz")
        answers: dict = {}
        if answers_path.is_file():
            for key, value in files.load_npz(answers_path).items():
                row, split, field = key.split(".")
                answers.setdefault(row, {}).setdefault(split, {})[field] = value
        out.append({**done, "answers": answers})
    return out


def _predictions(arrays: dict) -> protocol.SplitPredictions:
    return protocol.SplitPredictions(arrays["y_true"], arrays["scores"], arrays["captures"], arrays.get("novel"))


# A test side with seen and novel flows (the novel-application task, `data.seen_test_fraction`) is read as three:
# "test" its novel flows (the task's figures), "test_seen" the seen ones, "test_novelty" seen-vs-novel detection.
SEEN_PART, NOVELTY_PART = "test_seen", "test_novelty"


def _splits(answers: dict) -> dict:
    out = {s: _predictions(a) for s, a in answers.items()}
    test = out.get("test")
    if test is not None and test.has_both_halves():
        out[SEEN_PART], out["test"] = test.halves()
        out[NOVELTY_PART] = test.novelty()
    return out


def collect(cells: Sequence[dict]) -> dict:
    """{(dataset, fraction): {row: {seed: {split: SplitPredictions}}}}, with PacketCLIP's declared row added as
    `DECLARED` (the declared evaluation's answers of each pclip cell). A test side holding seen and novel
    applications is split (`_splits`): 'test' keeps the novel flows."""
    table: dict = {}
    for done in cells:
        c = done["cell"]
        block = table.setdefault((c["dataset"], float(c["fraction"])), {})
        for row, splits in done["answers"].items():
            block.setdefault(row, {})[int(c["seed"])] = _splits(splits)
        declared = done.get("declared_evaluation")
        if c["model"] == "pclip" and declared in done["answers"]:
            block.setdefault(DECLARED, {})[int(c["seed"])] = _splits(done["answers"][declared])
    return table


def _validation_mean(per_seed: dict, seeds: Sequence[int]) -> float:
    scores = [protocol.weighted_metric("mauc", p.y_true, p.scores, np.ones((1, len(p.y_true))))[0]
              for s in seeds if (p := per_seed[s].get("validation")) is not None and len(p.y_true)]
    return float(np.nanmean(scores)) if scores else float("nan")


def best_on_validation(block: dict, candidates: Sequence[str]) -> Optional[str]:
    """The candidate row with the best mean validation mAUC over the seeds all candidates share (None if none)."""
    present = [m for m in candidates if m in block]
    if not present:
        return None
    seeds = sorted(set.intersection(*(set(block[m]) for m in present)))
    scores = {m: _validation_mean(block[m], seeds) for m in present}
    try:
        return protocol.select_on_validation(scores)
    except ValueError:
        return None


def dataset_fraction_report(block: dict, replicates: int = 1000) -> dict:
    """Per row: splits, mean [interval] per metric; margins of the declared PacketCLIP row over the best tree and the
    best neural peer (chosen on validation), paired over the splits both have."""
    def part_rows(part: str, metrics: Sequence[str]) -> dict:
        rows = {}
        for name, per_seed in block.items():
            seeds = sorted(s for s, sp in per_seed.items() if part in sp)
            preds = [per_seed[s][part] for s in seeds]
            if preds:
                rows[name] = {"seeds": seeds, **{m: protocol.bootstrap_interval(preds, m, replicates)
                                                 for m in metrics}}
        return rows

    def part_margins(part: str, metrics: Sequence[str]) -> dict:
        margins = {}
        for label, group in (("best_tree", TREES), ("best_neural_peer", NEURAL)):
            rival = best_on_validation(block, group)
            if rival is None or DECLARED not in block:
                continue
            seeds = sorted(set(s for s, sp in block[DECLARED].items() if part in sp)
                           & set(s for s, sp in block[rival].items() if part in sp))
            if not seeds:
                continue
            a = [block[DECLARED][s][part] for s in seeds]
            b = [block[rival][s][part] for s in seeds]
            margins[label] = {"rival": rival, "seeds": seeds,
                              **{m: protocol.paired_bootstrap(a, b, m, replicates) for m in metrics}}
        return margins

    shown = [m for m, _ in SHOWN_METRICS]
    out = {"rows": part_rows("test", shown), "margins": part_margins("test", ("mauc", "macro_f1")),
           "best_tree": best_on_validation(block, TREES)}
    if any(SEEN_PART in sp for per_seed in block.values() for sp in per_seed.values()):
        out["seen_rows"] = part_rows(SEEN_PART, shown)
        # Novelty detection: the two-class mAUC of `SplitPredictions.novelty` is its AUROC.
        out["novelty"] = part_rows(NOVELTY_PART, ("mauc",))
        out["novelty_margins"] = part_margins(NOVELTY_PART, ("mauc",))
    return out


def costs(cells: Sequence[dict]) -> dict:
    """{(dataset, row): {trainable_params, flops_per_flow}} (medians over cells), the declared rows' under
    `DECLARED` (the detection stage's parameters for the GNN, the tower's plus the probe's for the probe)."""
    seen: dict = {}
    for done in cells:
        d = done["cell"]["dataset"]
        for row in done["rows"]:
            names = [row["model"]] + ([DECLARED] if row["model"] == done.get("declared_evaluation")
                                      and done["cell"]["model"] == "pclip" else [])
            for name in names:
                entry = seen.setdefault((d, name), {"trainable_params": [], "flops_per_flow": []})
                for key in entry:
                    if row.get(key) is not None:
                        entry[key].append(float(row[key]))
    return {k: {key: float(np.median(v)) if v else None for key, v in entry.items()} for k, entry in seen.items()}


PAPER = {"mauc": 0.95, "auc_gain_over_etbert": 0.116, "params_saved": 0.92, "flops_saved": 0.98,
         "mauc_kept_low_data": 0.95}


def claims(table: dict, cost: dict, replicates: int = 1000, low_fraction: float = 0.1) -> dict:
    """The paper's four claims per dataset, from the declared rows: mAUC with all the data [interval]; the paired
    mAUC margin over ET-BERT; the parameters and FLOPs per flow saved against ET-BERT (the declared row's model,
    CPU sizes); the share of mAUC kept at `low_fraction` of the labels (means over the seeds both fractions have)."""
    out: dict = {}
    for (dataset, fraction), block in table.items():
        if fraction != 1.0 or DECLARED not in block:
            continue
        full = {s: sp["test"] for s, sp in block[DECLARED].items() if "test" in sp}
        c: dict = {"mauc": protocol.bootstrap_interval(list(full.values()), "mauc", replicates)}
        if "etbert" in block:
            seeds = sorted(set(full) & {s for s, sp in block["etbert"].items() if "test" in sp})
            if seeds:
                c["auc_gain_over_etbert"] = protocol.paired_bootstrap(
                    [full[s] for s in seeds], [block["etbert"][s]["test"] for s in seeds], "mauc", replicates)
        own, et = cost.get((dataset, DECLARED), {}), cost.get((dataset, "etbert"), {})
        for key, name in (("trainable_params", "params_saved"), ("flops_per_flow", "flops_saved")):
            if own.get(key) and et.get(key):
                c[name] = 1.0 - own[key] / et[key]
        low = table.get((dataset, low_fraction), {}).get(DECLARED, {})
        seeds = sorted(set(full) & {s for s, sp in low.items() if "test" in sp})
        if seeds:  # the same test captures at both fractions: a paired interval
            kept = protocol.paired_ratio_bootstrap([low[s]["test"] for s in seeds], [full[s] for s in seeds],
                                                   "mauc", replicates)
            c["mauc_kept_low_data"] = kept["ratio"]
            c["mauc_kept_low_data_interval"] = kept
            c["low_data_seeds"] = seeds
        out[dataset] = c
    return out


def protocol_report(workdir: pathlib.Path, replicates: int = 1000) -> dict:
    """{'dataset fraction': report} from every protocol-2 cell under `workdir`, the paper's claims and the tuned
    configurations."""
    cells = load_protocol_cells(workdir)
    table = collect(cells)
    tuned = {}
    for path in sorted((pathlib.Path(workdir) / "tuned").glob("*/*.json")):
        record = files.read_json(path)
        tuned[f"{record['dataset']}/{record['model']}"] = record
    return {"tables": {f"{d} {f:g}": dataset_fraction_report(block, replicates)
                       for (d, f), block in sorted(table.items(), key=lambda kv: (kv[0][0], -kv[0][1]))},
            "claims": claims(table, costs(cells), replicates), "tuned": tuned}


def markdown(report: dict, command: str) -> str:
    """The report as Markdown: one table per (dataset, fraction), the margins, the tuned configurations."""
    lines = ["# Peer benchmark under the protocol (generated; do not edit)", "",
             f"Regenerate: `{command}`. Each figure: mean over the evaluation splits present, with the 95 % "
             "interval of a bootstrap over each split's test captures; a margin is 'ahead' only when its paired "
             "interval excludes zero. PacketCLIP's declared evaluation is, cell by cell, the row its validation "
             "captures chose before test was read.", ""]
    for key, block in report["tables"].items():
        dataset, fraction = key.rsplit(" ", 1)
        title = f"## {dataset}, {float(fraction):.0%} of the training data"
        if "seen_rows" not in block:
            lines += [title, "", *_rows_table(block["rows"], SHOWN_METRICS),
                      *_margin_lines(block["margins"], (("mauc", "mAUC"), ("macro_f1", "macro-F1"))), ""]
            continue
        lines += [title, "", "**Applications never trained on** (their flows' level-1 class; the task's figures):",
                  "", *_rows_table(block["rows"], SHOWN_METRICS),
                  *_margin_lines(block["margins"], (("mauc", "mAUC"), ("macro_f1", "macro-F1"))), "",
                  "**Seen applications** (held-out captures of trained applications, the same test side):", "",
                  *_rows_table(block["seen_rows"], SHOWN_METRICS), "",
                  "**Novelty detection**: seen against novel test flows, scored by 1 − the largest class probability "
                  "(the same rule for every model):", "",
                  *_rows_table(block["novelty"], (("mauc", "AUROC"),)),
                  *_margin_lines(block["novelty_margins"], (("mauc", "AUROC"),)), ""]
    if report.get("claims"):
        lines += ["## The paper's four claims (declared PacketCLIP, all the training data)", "",
                  *claims_table(report["claims"]), ""]
    if report["tuned"]:
        lines += ["## Tuned configurations (tuning split, validation mAUC)", "",
                  "| dataset/model | chosen | validation mAUC of each candidate |", "| --- | --- | --- |"]
        for key, record in report["tuned"].items():
            cands = "; ".join(f"{_config_text(c['config'])}: {c['validation']:.3f}" for c in record["candidates"])
            lines.append(f"| {key} | {_config_text(record['chosen'])} | {cands} |")
        lines.append("")
    return "\n".join(lines)


ORDER = (DECLARED, "pclip_probe", "pclip_zero_shot", "pclip_finetuned", "pclip_gnn", "pclip_gnn_level1", "pclip_trees", *TREES, *NEURAL)


def _rows_table(rows: dict, metrics: Sequence[tuple[str, str]]) -> list[str]:
    lines = ["| model | splits | " + " | ".join(label for _, label in metrics) + " |",
             "| --- | --- | " + " | ".join("---" for _ in metrics) + " |"]
    for name in sorted(rows, key=lambda n: ORDER.index(n) if n in ORDER else len(ORDER)):
        r = rows[name]
        lines.append(f"| {LABELS.get(name, name)} | {len(r['seeds'])} | "
                     + " | ".join(protocol.interval_text(r[m]) for m, _ in metrics) + " |")
    return lines


def _margin_lines(margins: dict, metrics: Sequence[tuple[str, str]]) -> list[str]:
    lines = []
    for label, m in margins.items():
        parts = []
        for metric, name in metrics:
            st = m[metric]
            parts.append(f"{name} {protocol.interval_text(st)} "
                         f"({'ahead' if st['ahead'] else 'behind' if st['behind'] else 'not ahead'})")
        lines += ["", f"Declared PacketCLIP − {label.replace('_', ' ')} ({m['rival']}, chosen on validation; "
                      f"splits {', '.join(map(str, m['seeds']))}): " + "; ".join(parts) + "."]
    return lines


def claims_table(claims_by_dataset: dict) -> list[str]:
    """The paper's four claims per dataset as markdown rows (`claims`), "–" where a figure's cells are missing."""
    pct = (lambda v: "–" if v is None else f"{v:.0%}")
    lines = ["| dataset | mAUC (paper 0.95) | mAUC − ET-BERT (paper +0.116) | parameters saved vs ET-BERT "
             "(paper 92 %) | FLOPs saved (paper 98 %) | mAUC kept at 10 % of the labels (paper ~95 % at 30 %) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for dataset, c in claims_by_dataset.items():
        gain, splits = c.get("auc_gain_over_etbert"), (c.get("mauc") or {}).get("splits")
        fewer = gain is not None and splits is not None and gain["splits"] < splits  # ET-BERT's cells still running
        lines.append(f"| {TASK_NAMES.get(dataset, dataset)} | {protocol.interval_text(c.get('mauc'))} | "
                     f"{protocol.interval_text(gain)}"
                     + (f" ({gain['splits']} split{'s' if gain['splits'] > 1 else ''})" if fewer else "")
                     + f" | {pct(c.get('params_saved'))} | "
                     f"{pct(c.get('flops_saved'))} | {_kept_text(c.get('mauc_kept_low_data_interval'))} |")
    return lines


def _kept_text(kept: Optional[dict]) -> str:
    """A share kept with its paired interval, e.g. `96 % [95 %, 97 %]`."""
    return "–" if kept is None else f"{kept['ratio']:.0%} [{kept['low']:.0%}, {kept['high']:.0%}]"


def _config_text(config: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in config.items())


README_BEGIN = "<!-- protocol summary: generated by benchmarks/peers.py --readme; do not edit by hand -->"
README_END = "<!-- end of protocol summary -->"
TASK_NAMES = {"ndpi_closed": "nDPI, known applications (level 1)",
              "ndpi_novel": "nDPI, applications never trained on (level 1)",
              "iot_sentinel": "IoT Sentinel devices"}


def _verdict(stats: dict) -> str:
    return "ahead" if stats["ahead"] else "behind" if stats["behind"] else "not ahead"


def readme_block(report: dict, command: str) -> str:
    """What the README shows of the protocol's report (between README_BEGIN and README_END): per task and
    fraction, the declared PacketCLIP row against the best tree ensemble (chosen on validation), mean [95 %
    interval] over the splits, and the paired margin with its verdict; novelty AUROC where the task has it."""
    lines = [README_BEGIN, "",
             "| task | labels | splits | PacketCLIP mAUC | best tree mAUC | margin | PacketCLIP macro-F1 | "
             "best tree macro-F1 | margin |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    novelty = []
    for key, block in report["tables"].items():
        dataset, fraction = key.rsplit(" ", 1)
        margin = block["margins"].get("best_tree")
        own = block["rows"].get(DECLARED)
        tree = margin["rival"] if margin else block.get("best_tree")
        if tree is None:
            continue
        rival = block["rows"][tree]
        cells = []
        for metric in ("mauc", "macro_f1"):
            if margin and own:
                cells += [protocol.interval_text(own[metric]), f"{protocol.interval_text(rival[metric])} ({tree})",
                          f"{protocol.interval_text(margin[metric])} {_verdict(margin[metric])}"]
            else:  # the trees' cells exist, PacketCLIP's not yet
                cells += ["not run yet", f"{protocol.interval_text(rival[metric])} ({tree})", "–"]
        splits = str(len(rival["seeds"]))
        if own and len(own["seeds"]) != len(rival["seeds"]):  # PacketCLIP's cells are still running
            splits = f"{len(own['seeds'])} PacketCLIP, {len(rival['seeds'])} tree"
        lines.append(f"| {TASK_NAMES.get(dataset, dataset)} | {float(fraction):.0%} | {splits} | "
                     + " | ".join(cells) + " |")
        if margin and "novelty" in block and DECLARED in block["novelty"] and tree in block["novelty"]:
            ours, theirs = block["novelty"][DECLARED]["mauc"], block["novelty"][margin["rival"]]["mauc"]
            counts = (f" ({ours['splits']} and {theirs['splits']} splits)"
                      if ours.get("splits") != theirs.get("splits") else "")
            novelty.append(f"{float(fraction):.0%} of the labels: PacketCLIP {protocol.interval_text(ours)}, "
                           f"{margin['rival']} {protocol.interval_text(theirs)}{counts}")
    if novelty:
        lines += ["", "Telling novel applications from known ones (AUROC, 1 − top probability): "
                  + "; ".join(novelty) + "."]
    if report.get("claims"):
        missing = not any("auc_gain_over_etbert" in c for c in report["claims"].values())
        lines += ["", "The paper's four claims, from the same cells (PacketCLIP's declared evaluation; the share of "
                  "mAUC kept at 10 % of the labels with its paired interval over the same test captures"
                  + ("; ET-BERT's columns fill in as its cells under this protocol are run" if missing else "")
                  + "):", "", *claims_table(report["claims"])]
    lines += ["", f"Mean [95 % capture-bootstrap interval] over the capture splits each model has run; PacketCLIP's row "
              f"is the evaluation its validation captures declared, the best tree the one with the better validation "
              f"mAUC; a margin is paired, on the splits both have run, and 'ahead' only when its interval excludes "
              f"zero. Regenerate with `{command}`.", "", README_END]
    return "\n".join(lines)
