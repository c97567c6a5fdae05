"""Flow filters, capture-disjoint train/test(/validation) splits and class-balanced `fraction` subsets.

Splits are by capture file, never by flow or packet: near-identical flows of one capture must not sit on both
sides (docs/labels.md). Everything is deterministic for a given table and seed.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import Counter, defaultdict

import numpy as np

UNKNOWN = "Unknown"
DROP_REASONS = ("too_few_packets", "one_way", "unknown_protocol", "unlabelled")


def take(table, idx):
    """The rows `idx` of a FlowTable (meta and tensors), summary kept."""
    idx = np.asarray(idx, dtype=np.int64)
    if hasattr(table, "select"):
        return table.select(idx)
    return dataclasses.replace(table, meta={k: np.asarray(v)[idx] for k, v in table.meta.items()},
                               tensors={k: np.asarray(v)[idx] for k, v in table.tensors.items()})


def _column(table, name) -> np.ndarray:
    try:
        return np.asarray(table.meta[name])
    except KeyError:
        raise KeyError(f"flow table has no column {name!r} (columns: {list(table.meta)}); "
                       f"attach labels first for label columns") from None


def filter_flows(table, min_packets: int = 3, drop_one_way: bool = True, drop_unlabelled: bool = True,
                 label_column: str = "level1"):
    """Drops flows by the documented filters; returns (filtered table, {reason: count}).

    Each dropped flow is counted once, under the first reason that applies, in this order:
    `too_few_packets` (c2s + s2c packets < min_packets), `one_way` (no packet in one direction, if drop_one_way),
    `unknown_protocol` (nDPI could not identify it, if drop_unlabelled), `unlabelled` (empty `label_column`, if
    drop_unlabelled). Reasons that dropped nothing are reported with 0 and `kept` gives the rows left.
    """
    c2s = _column(table, "c2s_packets").astype(np.int64)
    s2c = _column(table, "s2c_packets").astype(np.int64)
    n = len(c2s)
    reason = np.full(n, -1, np.int8)

    def mark(mask, r):
        reason[(reason == -1) & mask] = r

    mark(c2s + s2c < min_packets, 0)
    if drop_one_way:
        mark((c2s == 0) | (s2c == 0), 1)
    if drop_unlabelled:
        if "label" in table.meta:
            mark(_column(table, "label").astype(str) == UNKNOWN, 2)
        labels = _column(table, label_column).astype(str) if label_column in table.meta else np.full(n, "")
        mark(labels == "", 3)
    dropped = {r: int((reason == i).sum()) for i, r in enumerate(DROP_REASONS)}
    keep = np.flatnonzero(reason == -1)
    dropped["kept"] = int(keep.size)
    return take(table, keep), dropped


def _seeded_order(names, seed: int, salt: str = "") -> list:
    """A permutation of `names` that depends only on the names, the seed and the salt (not on input order)."""
    keyed = sorted(names, key=lambda s: (zlib.crc32(f"{seed}\x00{salt}\x00{s}".encode()), s))
    return keyed


def capture_classes(table, label_column: str = "level1") -> dict[str, str]:
    """Each capture's dominant class: its most frequent `label_column` value among labelled flows (ties: the
    alphabetically first); '' when none of its flows is labelled."""
    captures = _column(table, "capture").astype(str)
    labels = _column(table, label_column).astype(str)
    counts: dict[str, Counter] = defaultdict(Counter)
    for c, l in zip(captures, labels):
        counts[c][l] += 0 if not l else 1
    out = {}
    for c, cnt in counts.items():
        labelled = [(-k, l) for l, k in cnt.items() if l and k]
        out[c] = min(labelled)[1] if labelled else ""
    return out


def _assign_units(units, size: dict, stratum: dict, seed: int, target: dict, singles_to_train: bool = False,
                  reserve_train: bool = False) -> dict:
    """{unit: split} for whole units (captures, applications) of `size` flows each, stratified by `stratum[unit]`.

    `target` is {split: flow fraction}, 'train' first. Per stratum, units are visited in a seeded order and each
    goes to the split furthest below its flow target; then a stratum with >= 2 units is guaranteed units in
    'train' and the second split (and, with three splits and >= 3 units, in the third). With `reserve_train`, a
    stratum with >= 3 units also keeps >= 2 in 'train' (room for a validation unit carved out of train later). A
    stratum with one unit goes to 'train' when `singles_to_train`, else to whichever split is furthest below its
    share of all flows."""
    splits = list(target)
    by_stratum: dict[str, list] = defaultdict(list)
    for u in units:
        by_stratum[stratum[u]].append(u)
    assign: dict[str, str] = {}
    singles = []
    for cls in sorted(by_stratum):
        caps = _seeded_order(by_stratum[cls], seed, cls)
        if len(caps) == 1:
            singles.append(caps[0])
            continue
        total = sum(size[c] for c in caps)
        got = {s: 0 for s in splits}
        members = {s: [] for s in splits}
        for c in caps:
            s = max(splits, key=lambda s: (target[s] * total - got[s], -splits.index(s)))
            got[s] += size[c]
            members[s].append(c)
        # Guarantee presence: take the smallest unit from the split that has most units to spare.
        need = [splits[1], "train"] + ([splits[2]] if len(splits) > 2 and len(caps) >= 3 else [])
        for s in need:
            if not members[s]:
                donor = max((d for d in splits if len(members[d]) > 1), key=lambda d: len(members[d]))
                c = min(members[donor], key=lambda c: (size[c], c))
                members[donor].remove(c)
                members[s].append(c)
        while reserve_train and len(caps) >= 3 and len(members["train"]) < 2:
            donor = max((d for d in splits[1:] if len(members[d]) > 1), key=lambda d: len(members[d]))
            c = min(members[donor], key=lambda c: (size[c], c))
            members[donor].remove(c)
            members["train"].append(c)
        for s, cs in members.items():
            for c in cs:
                assign[c] = s
    if singles_to_train:
        assign.update({c: "train" for c in singles})
        return assign
    # One-unit strata: greedily fill whichever split is furthest below its share of all flows.
    n = sum(size[u] for u in units)
    got = {s: sum(size[c] for c, a in assign.items() if a == s) for s in splits}
    for c in _seeded_order(singles, seed, "\x00singles"):
        s = max(splits, key=lambda s: (target[s] * n - got[s], -splits.index(s)))
        assign[c] = s
        got[s] += size[c]
    return assign


def _check_fractions(test_fraction: float, validation_fraction: float) -> None:
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    if not 0.0 <= validation_fraction < 1.0 - test_fraction:
        raise ValueError(f"validation_fraction must be in [0, 1 - test_fraction), got {validation_fraction}")


def split_by_capture(table, test_fraction: float = 0.3, seed: int = 0, label_column: str = "level1",
                     validation_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Capture-disjoint split, stratified by each capture's dominant class. Returns {split: sorted row indices}.

    Per class, captures are visited in a seeded order and each goes to the split furthest below its flow target
    (test_fraction, validation_fraction, rest train); then a class with >= 2 captures is guaranteed captures in
    both train and test (and, with a validation split and >= 3 captures, in validation). A class with one capture
    lands where it helps the overall flow fractions most. Keys: 'train', 'test' (+ 'validation' if asked).
    """
    _check_fractions(test_fraction, validation_fraction)
    captures = _column(table, "capture").astype(str)
    uniq, inverse, sizes = np.unique(captures, return_inverse=True, return_counts=True)
    size = dict(zip(uniq.tolist(), sizes.tolist()))
    dominant = capture_classes(table, label_column)
    target = {"train": 1.0 - test_fraction - validation_fraction, "test": test_fraction}
    if validation_fraction > 0:
        target["validation"] = validation_fraction
    assign = _assign_units(uniq.tolist(), size, dominant, seed, target)
    capture_split = np.array([assign[c] for c in uniq.tolist()], dtype=object)
    row_split = capture_split[inverse] if len(captures) else np.array([], dtype=object)
    return {s: np.flatnonzero(row_split == s) for s in target}


# The application tasks (docs/labels.md, "nDPI tasks"): `split_seen_applications` (closed set: every tested
# application has training flows) and `split_novel_applications` (open set: no tested application has any).
APPLICATION_SPLITS = ("seen_applications", "novel_applications")


def _majority(keys: np.ndarray, values: np.ndarray) -> dict[str, str]:
    """{key: its most frequent non-empty value (ties: the alphabetically first)}; keys with none are left out."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for k, v in zip(keys.tolist(), values.tolist()):
        if v:
            counts[k][v] += 1
    return {k: min((-n, v) for v, n in cnt.items())[1] for k, cnt in counts.items()}


def _rows_by_split(captures: np.ndarray, assign: dict) -> dict[str, np.ndarray]:
    row_split = np.array([assign[c] for c in captures.tolist()], dtype=object)
    return {s: np.flatnonzero(row_split == s) for s in ("train", "test", "validation")}


def _task_result(n: int, parts: dict, validation: bool) -> dict[str, np.ndarray]:
    keys = ["train", "test"] + (["validation"] if validation else [])
    out = {k: np.sort(np.asarray(parts[k], np.int64)) for k in keys}
    used = np.concatenate([out[k] for k in keys]) if n else np.zeros(0, np.int64)
    out["excluded"] = np.setdiff1d(np.arange(n), used)
    return out


def split_seen_applications(table, test_fraction: float = 0.3, seed: int = 0, validation_fraction: float = 0.0,
                            application_column: str = "level2") -> dict[str, np.ndarray]:
    """Closed-set application task: a capture-disjoint split stratified by each capture's dominant application,
    in which every tested (and validation) flow's application has training flows. Returns {split: sorted rows}.

    Each capture belongs to its dominant application (`capture_classes` on `application_column`). An application
    with >= 2 captures gets captures in train and test (`_assign_units`: about `test_fraction` of its flows to
    test), one with >= 3 keeps >= 2 in train; one with a single capture goes to train only (its flows cannot be
    tested closed-set), as do captures without any application. Validation is then carved out of the training
    captures the same way (`validation_fraction` of their flows), so an application with >= 3 captures has captures
    in train, validation and test, and the test captures are the same with or without validation. Test and validation flows whose application no training flow
    has (minority applications inside a capture, or no application) are left out: key 'excluded' (rows of no
    split). Keys: 'train', 'test', ('validation'), 'excluded'. Deterministic per table and seed.
    """
    _check_fractions(test_fraction, 0.0)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    captures = _column(table, "capture").astype(str)
    apps = _column(table, application_column).astype(str)
    uniq, sizes = np.unique(captures, return_counts=True)
    size = dict(zip(uniq.tolist(), sizes.tolist()))
    dominant = capture_classes(table, application_column)
    with_app = [c for c in uniq.tolist() if dominant[c]]
    assign = {c: "train" for c in uniq.tolist()}
    assign.update(_assign_units(with_app, size, dominant, seed, {"train": 1.0 - test_fraction, "test": test_fraction},
                                singles_to_train=True, reserve_train=True))
    if validation_fraction > 0:
        inner = [c for c in with_app if assign[c] == "train"]
        assign.update(_assign_units(inner, size, dominant, seed,
                                    {"train": 1.0 - validation_fraction, "validation": validation_fraction},
                                    singles_to_train=True))
    parts = _rows_by_split(captures, assign)
    seen = sorted(set(apps[parts["train"]].tolist()) - {""})
    for s in ("test", "validation"):
        parts[s] = parts[s][np.isin(apps[parts[s]], seen)]
    return _task_result(len(captures), parts, validation_fraction > 0)


def split_novel_applications(table, test_fraction: float = 0.3, seed: int = 0, validation_fraction: float = 0.0,
                             application_column: str = "level2", class_column: str = "level1",
                             seen_test_fraction: float = 0.0) -> dict[str, np.ndarray]:
    """Open-set application task: whole applications held out of training. Returns {split: sorted rows}.

    Each capture belongs to its dominant application; an application's size is the flows of its captures and its
    class the most frequent `class_column` value of its flows. Per class, applications are visited in a seeded
    order and held out for test until about `test_fraction` of the class's flows are (`_assign_units` on
    applications): a class with >= 2 applications keeps >= 1 in training (>= 2 with >= 3 applications) and holds
    >= 1 out; a class with one application keeps it in training (that class gets no novel test flows). Validation applications are then
    held out of the remaining training applications the same way (`validation_fraction` of their flows; a class
    keeps >= 1 training application), so validation is novel to training too and the test split is the same with
    or without it. Every capture of a held-out application goes to its side (capture-disjoint by construction);
    captures without an application stay in train.

    Flows are then kept so that the sides hold exactly what the task means: training drops the flows of held-out
    applications that sit inside training captures (minority flows), test keeps only flows whose application has
    no training flow and is no validation application, validation only flows whose application has no training
    flow and no test flow. The rest is key 'excluded'.

    With `seen_test_fraction` > 0 the test side also holds *seen* flows, the in-distribution side of novelty
    detection: after validation, whole training captures of the remaining applications go to test (about that
    fraction of their flows, stratified by application; an application keeps >= 1 training capture, one with a
    single capture stays in train), keeping only the flows of applications with training flows. A test flow is then
    novel exactly when its application has no training flow (`metrics.by_application_novelty`); key 'test_seen'
    holds the seen rows. Keys: 'train', 'test', ('validation'), ('test_seen'), 'excluded'.
    """
    _check_fractions(test_fraction, 0.0)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction}")
    if not 0.0 <= seen_test_fraction < 1.0:
        raise ValueError(f"seen_test_fraction must be in [0, 1), got {seen_test_fraction}")
    captures = _column(table, "capture").astype(str)
    apps = _column(table, application_column).astype(str)
    classes = _column(table, class_column).astype(str)
    uniq, sizes = np.unique(captures, return_counts=True)
    dominant = capture_classes(table, application_column)
    app_size: Counter = Counter()
    for c, n in zip(uniq.tolist(), sizes.tolist()):
        if dominant[c]:
            app_size[dominant[c]] += n
    app_class = _majority(apps, classes)
    units = sorted(app_size)
    stratum = {a: app_class.get(a, "") for a in units}
    held = _assign_units(units, app_size, stratum, seed, {"train": 1.0 - test_fraction, "test": test_fraction},
                         singles_to_train=True, reserve_train=True)
    if validation_fraction > 0:
        inner = [a for a in units if held[a] == "train"]
        held.update(_assign_units(inner, app_size, stratum, seed,
                                  {"train": 1.0 - validation_fraction, "validation": validation_fraction},
                                  singles_to_train=True))
    assign = {c: held[dominant[c]] if dominant[c] else "train" for c in uniq.tolist()}
    seen_captures: list[str] = []
    if seen_test_fraction > 0:
        size = dict(zip(uniq.tolist(), sizes.tolist()))
        inner = [c for c in uniq.tolist() if dominant[c] and assign[c] == "train"]
        carved = _assign_units(inner, size, dominant, seed,
                               {"train": 1.0 - seen_test_fraction, "test": seen_test_fraction}, singles_to_train=True)
        seen_captures = sorted(c for c, s in carved.items() if s == "test")
        assign.update({c: "test" for c in seen_captures})
    parts = _rows_by_split(captures, assign)
    out_of_training = sorted(a for a, s in held.items() if s != "train")
    parts["train"] = parts["train"][~np.isin(apps[parts["train"]], out_of_training)]
    trained = sorted(set(apps[parts["train"]].tolist()) - {""})
    validation_apps = sorted(a for a, s in held.items() if s == "validation")
    test = parts["test"]
    in_seen_capture = np.isin(captures[test], seen_captures)
    novel = test[~in_seen_capture & (apps[test] != "") & ~np.isin(apps[test], trained + validation_apps)]
    seen = test[in_seen_capture & np.isin(apps[test], trained)]
    parts["test"] = np.concatenate([novel, seen])
    tested = sorted(set(apps[novel].tolist()))
    val = parts["validation"]
    parts["validation"] = val[(apps[val] != "") & ~np.isin(apps[val], trained + tested)]
    out = _task_result(len(captures), parts, validation_fraction > 0)
    if seen_test_fraction > 0:
        out["test_seen"] = np.sort(seen).astype(np.int64)
    return out


def restrict_to_task(applications, split: str, train_idx, val_idx, test_idx, seen_test: bool = False
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(validation, test) rows that still fit application task `split` after training rows changed (whole
    captures moved by `ensure_validation_classes`): 'seen_applications' keeps the flows whose application has
    training flows, 'novel_applications' those whose application has none (and, in validation, no test flow);
    with `seen_test` (the novel task's test side also holds seen flows) test keeps every flow with an application,
    seen or novel. Any other split: unchanged."""
    if split not in APPLICATION_SPLITS:
        return np.asarray(val_idx), np.asarray(test_idx)
    apps = np.asarray(applications).astype(str)
    val_idx, test_idx = np.asarray(val_idx, np.int64), np.asarray(test_idx, np.int64)
    trained = sorted(set(apps[np.asarray(train_idx, np.int64)].tolist()) - {""})
    if split == "seen_applications":
        return val_idx[np.isin(apps[val_idx], trained)], test_idx[np.isin(apps[test_idx], trained)]
    test_idx = test_idx[(apps[test_idx] != "") & (seen_test | ~np.isin(apps[test_idx], trained))]
    tested = sorted(set(apps[test_idx].tolist()) - set(trained))
    return val_idx[(apps[val_idx] != "") & ~np.isin(apps[val_idx], trained + tested)], test_idx


def split_by_time(table, test_fraction: float = 0.3, gap_fraction: float = 0.05) -> dict[str, np.ndarray]:
    """Time split within each capture, for datasets where a class is one long capture (USTC-TFC2016 style).

    Per capture, over the span [t0, t1] of its flows' start times: flows that *end* before
    t0 + (1 - test_fraction - gap_fraction/2)·span go to train, flows that *start* after
    t0 + (1 - test_fraction + gap_fraction/2)·span go to test, the rest (inside the gap or spanning it) to neither,
    so no flow and no moment of traffic is on both sides. Returns {'train', 'test', 'gap'}: sorted row indices.
    """
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    captures = _column(table, "capture").astype(str)
    first = _column(table, "first_ts").astype(np.float64)
    last = _column(table, "last_ts").astype(np.float64)
    part = np.full(len(captures), "gap", dtype=object)
    for c in np.unique(captures):
        rows = np.flatnonzero(captures == c)
        t0, t1 = first[rows].min(), first[rows].max()
        span = max(t1 - t0, 1e-9)
        train_end = t0 + (1.0 - test_fraction - gap_fraction / 2) * span
        test_start = t0 + (1.0 - test_fraction + gap_fraction / 2) * span
        part[rows[last[rows] < train_end]] = "train"
        part[rows[first[rows] >= test_start]] = "test"
    return {s: np.flatnonzero(part == s) for s in ("train", "test", "gap")}


def fraction_subset(table, train_idx, fraction: float, seed: int = 0, label_column: str = "level1") -> np.ndarray:
    """A class-balanced, seeded subset of the training rows: round(fraction * n_c) flows of each class c, at least
    one. Subsets are nested: for one seed, a smaller fraction picks a subset of a larger one. Sorted indices."""
    train_idx = np.asarray(train_idx, dtype=np.int64)
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.sort(train_idx)
    labels = _column(table, label_column).astype(str)[train_idx]
    picked = []
    for cls in sorted(set(labels.tolist())):
        rows = np.sort(train_idx[labels == cls])
        rng = np.random.default_rng([seed, zlib.crc32(cls.encode())])
        k = max(1, int(round(fraction * rows.size)))
        picked.append(rows[rng.permutation(rows.size)[:k]])
    return np.sort(np.concatenate(picked)) if picked else train_idx[:0]


def split_captures(table, split: dict[str, np.ndarray]) -> dict[str, list[str]]:
    """{split: sorted capture names} of a split returned by `split_by_capture`."""
    captures = _column(table, "capture").astype(str)
    return {s: sorted(set(captures[np.asarray(idx, dtype=np.int64)].tolist())) for s, idx in split.items()}


def ensure_validation_classes(captures, class_ids, train_idx, val_idx, min_classes: int = 2):
    """Validation captures that hold fewer than `min_classes` evaluated classes cannot select anything (AUC is
    undefined): move whole training captures to validation until they hold `min_classes`, never a class's last
    training capture (the smallest eligible capture of a class validation lacks, classes with the most training
    captures first). When that cannot be done, validation is folded back into training.

    `captures` and `class_ids` (-1: not evaluated) are per-row arrays. Returns (train_idx, val_idx, what was done:
    None when nothing had to be, else a sentence for the log and results)."""
    captures = np.asarray(captures).astype(str)
    class_ids = np.asarray(class_ids)
    train_idx, val_idx = np.asarray(train_idx, np.int64), np.asarray(val_idx, np.int64)
    if not len(val_idx):
        return train_idx, val_idx, None
    present = set(class_ids[val_idx].tolist()) - {-1}
    if len(present) >= min_classes:
        return train_idx, val_idx, None
    before = sorted(present)
    train_caps = captures[train_idx]
    # Per capture in train: the evaluated classes it holds; per class: its training captures.
    holds: dict[str, set] = defaultdict(set)
    for c, k in zip(train_caps.tolist(), class_ids[train_idx].tolist()):
        if k >= 0:
            holds[c].add(k)
    train_captures_of: dict[int, set] = defaultdict(set)
    for c, ks in holds.items():
        for k in ks:
            train_captures_of[k].add(c)
    size = Counter(train_caps.tolist())
    moved = []
    for k in sorted(train_captures_of, key=lambda k: (-len(train_captures_of[k]), k)):
        if len(present) >= min_classes:
            break
        if k in present:
            continue
        eligible = [c for c in sorted(train_captures_of[k], key=lambda c: (size[c], c))
                    if all(len(train_captures_of[j]) > 1 for j in holds[c])]
        if not eligible:
            continue
        c = eligible[0]
        moved.append(c)
        present |= holds[c]
        for j in holds[c]:
            train_captures_of[j].discard(c)
    if len(present) < min_classes:
        return (np.sort(np.concatenate([train_idx, val_idx])), val_idx[:0],
                f"the validation captures hold {len(before)} evaluated class(es) and no training capture can be moved "
                f"there without leaving a class untrained: validation folded into training")
    to_val = np.isin(train_caps, moved)
    return (train_idx[~to_val], np.sort(np.concatenate([val_idx, train_idx[to_val]])),
            f"the validation captures held {len(before)} evaluated class(es); moved training capture(s) "
            f"{', '.join(moved)} there so that model selection sees {len(present)} classes")
