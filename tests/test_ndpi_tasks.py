"""The nDPI application tasks (docs/labels.md, "nDPI tasks"): `data.split='seen_applications'` (closed set: every
tested application has training flows) and `data.split='novel_applications'` (whole applications held out of
training), on hand-built flow tables and on the real nDPI captures for split seeds 0-4."""
import collections

import numpy as np
import pytest

from pclip_jax.data import splits
from pclip_jax.data.flow_table import FlowTable
from pclip_jax.data.prepare import prepare_flows
from pclip_jax.plumbing import settings as S
from pclip_jax.plumbing.metrics import NOVEL, SEEN, by_application_novelty
from tests.test_splits import filtered, labelled  # noqa: F401  (the real nDPI table, ingested once per module)

SEEDS = range(5)
SIDES = ("train", "validation", "test")


def _table(spec):
    """A flow table from (capture, [(level1, level2, flows), ...]) entries: only the columns splits read."""
    rows = [(cap, l1, l2) for cap, parts in spec for l1, l2, n in parts for _ in range(n)]
    cap, l1, l2 = (np.array(col, dtype=str) for col in zip(*rows))
    return FlowTable({"capture": cap, "flow_id": np.arange(len(rows)), "level1": l1, "level2": l2}, {}, [], {})


def _hand_built():
    """Three classes; applications with 1-6 captures; minority flows (DNS, an app seen nowhere else, no app)."""
    spec = []
    for i in range(6):
        spec.append((f"web{i}", [("Web", "Google", 10 + i), ("Infra", "DNS", 2), ("Web", f"Rare{i}", 1)]))
    for i in range(4):
        spec.append((f"yt{i}", [("Streaming", "YouTube", 8 + 2 * i), ("Streaming", "", 1)]))
    for i in range(3):
        spec.append((f"nf{i}", [("Streaming", "NetFlix", 6 + i), ("Web", "Rare", 1 if i == 0 else 0)]))
    for i in range(2):
        spec.append((f"fb{i}", [("Web", "Facebook", 9 + i)]))
    for i in range(5):
        spec.append((f"dns{i}", [("Infra", "DNS", 5 + i), ("Infra", "NTP", 1)]))
    spec += [("reddit0", [("Web", "Reddit", 7)]), ("ssh0", [("Remote", "SSH", 4)]),
             ("spotify0", [("Streaming", "Spotify", 5), ("Infra", "", 2)]), ("noapp", [("Web", "", 3)])]
    return _table([(c, [p for p in parts if p[2]]) for c, parts in spec])


def _captures(table, split):
    caps = table.meta["capture"]
    return {s: set(caps[split[s]].tolist()) for s in SIDES if s in split}


def _apps(table, idx):
    return set(table.meta["level2"][idx].tolist()) - {""}


def _check_partition(table, split):
    """Every row in exactly one key; sides capture-disjoint."""
    keys = [k for k in ("train", "validation", "test", "excluded") if k in split]
    joined = np.concatenate([split[k] for k in keys])
    assert np.array_equal(np.sort(joined), np.arange(len(table))), "rows lost or on two sides"
    caps = _captures(table, split)
    for a in caps:
        for b in caps:
            assert a == b or not caps[a] & caps[b], (a, b, caps[a] & caps[b])


def _novelty_halves(table, split):
    """`metrics.by_application_novelty` on the test flows with the training flows' applications as seen."""
    test = split["test"]
    classes = sorted(set(table.meta["level1"].tolist()))
    y = np.array([classes.index(c) for c in table.meta["level1"][test]])
    scores = np.full((len(test), len(classes)), 1.0 / len(classes))
    halves = by_application_novelty(y, scores, classes, table.meta["level2"][test], _apps(table, split["train"]))
    return halves[SEEN]["num_flows"], halves[NOVEL]["num_flows"]


def _assignment(table, split):
    return {s: frozenset(c) for s, c in _captures(table, split).items()}


# ------------------------------------------------------------------------------------------------ hand-built

def _hand_built_by_application():
    """The hand-built table and {application: the captures it dominates}."""
    table = _hand_built()
    captures_of = collections.defaultdict(set)
    for c, a in splits.capture_classes(table, "level2").items():
        captures_of[a].add(c)
    return table, captures_of



@pytest.mark.parametrize("validation", [0.0, 0.3])
def test_seen_applications_on_a_hand_built_table(validation):
    table, captures_of = _hand_built_by_application()
    apps, caps = table.meta["level2"], table.meta["capture"]
    assignments = set()
    for seed in SEEDS:
        split = splits.split_seen_applications(table, 0.3, seed, validation)
        _check_partition(table, split)
        got = _captures(table, split)
        trained = _apps(table, split["train"])
        # Closed set: every tested (and validation) application has training flows; nothing seen is left out.
        assert _apps(table, split["test"]) <= trained and _apps(table, np.asarray(split.get("validation", []),
                                                                                     np.int64)) <= trained
        assert _novelty_halves(table, split) == (len(split["test"]), 0)
        for s in ("test", "validation"):
            if s in split:
                side = np.isin(caps, sorted(got[s]))
                left_out = np.flatnonzero(side & ~np.isin(apps, sorted(trained)))
                assert set(left_out) <= set(split["excluded"])
                assert np.array_equal(np.sort(np.concatenate([split[s], left_out])), np.flatnonzero(side))
        assert len(split["excluded"]) > 0  # "RareN" and the flows without application in test captures
        for app, cs in captures_of.items():
            if len(cs) == 1:  # a one-capture application is train only
                assert cs <= got["train"], app
            else:
                assert cs & got["train"] and cs & got["test"], app
            if validation and len(cs) >= 3:
                assert cs & got["validation"], app
        assert {"noapp", "ssh0", "reddit0", "spotify0"} <= got["train"]
        # Deterministic per seed, whatever the row order; the test side does not depend on validation.
        again = splits.split_seen_applications(table, 0.3, seed, validation)
        assert all(np.array_equal(split[k], again[k]) for k in split)
        perm = np.random.default_rng(seed).permutation(len(table))
        shuffled = table.select(perm)
        assert _assignment(shuffled, splits.split_seen_applications(shuffled, 0.3, seed, validation)) == \
            _assignment(table, split)
        # The test captures do not depend on validation (a test flow whose application's only training flows
        # went to validation does leave the test side).
        assert _captures(table, splits.split_seen_applications(table, 0.3, seed))["test"] == got["test"]
        assignments.add(tuple(sorted(_assignment(table, split).items())))
    assert len(assignments) > 1, "every seed gave the same split"


@pytest.mark.parametrize("validation", [0.0, 0.3])
def test_novel_applications_on_a_hand_built_table(validation):
    table, captures_of = _hand_built_by_application()
    apps, caps = table.meta["level2"], table.meta["capture"]
    assignments = set()
    for seed in SEEDS:
        split = splits.split_novel_applications(table, 0.3, seed, validation)
        _check_partition(table, split)
        got = _captures(table, split)
        trained, tested = _apps(table, split["train"]), _apps(table, split["test"])
        validated = _apps(table, np.asarray(split.get("validation", []), np.int64))
        # Open set: no tested or validation application has a training flow; test and validation apps differ.
        assert not tested & trained and not validated & trained and not validated & tested
        assert tested and _novelty_halves(table, split) == (0, len(split["test"]))
        # Whole applications: every capture of an application is on one side.
        side_of = {c: s for s, cs in got.items() for c in cs}
        for app, cs in captures_of.items():
            assert len({side_of[c] for c in cs}) == 1, app
        held = {a for a, cs in captures_of.items() if side_of[next(iter(cs))] != "train"}
        assert held and not held & trained  # their minority flows in training captures are left out too
        dropped = np.flatnonzero(np.isin(caps, sorted(got["train"])) & np.isin(apps, sorted(held)))
        assert set(dropped) <= set(split["excluded"])
        # Every class keeps a training application; a class with one application (Remote: SSH) keeps it.
        for cls in ("Web", "Streaming", "Infra", "Remote"):
            assert any(table.meta["level1"][i] == cls for i in split["train"]), cls
        assert "ssh0" in got["train"] and "noapp" in got["train"]
        if validation:  # a class with >= 3 applications holds one out for validation too
            app_side = {a: side_of[next(iter(cs))] for a, cs in captures_of.items() if a}
            for cls, members in (("Web", {"Google", "Facebook", "Reddit"}),
                                 ("Streaming", {"YouTube", "NetFlix", "Spotify"})):
                assert {app_side[a] for a in members} == {"train", "validation", "test"}, (cls, app_side)
        again = splits.split_novel_applications(table, 0.3, seed, validation)
        assert all(np.array_equal(split[k], again[k]) for k in split)
        perm = np.random.default_rng(seed).permutation(len(table))
        shuffled = table.select(perm)
        assert _assignment(shuffled, splits.split_novel_applications(shuffled, 0.3, seed, validation)) == \
            _assignment(table, split)
        assert _captures(table, splits.split_novel_applications(table, 0.3, seed))["test"] == got["test"]
        assignments.add(tuple(sorted(_assignment(table, split).items())))
    assert len(assignments) > 1, "every seed gave the same split"


def test_restrict_to_task_after_captures_moved():
    apps = np.array(["A", "A", "B", "B", "C", "D"])
    # Closed set: B lost its training flows (its capture moved to validation): its test flow goes.
    val, test = splits.restrict_to_task(apps, "seen_applications", [0, 1], [2], [3, 4])
    assert list(val) == [] and list(test) == []
    val, test = splits.restrict_to_task(apps, "novel_applications", [0, 2], [1, 4, 5], [3, 5])
    assert list(test) == [5] and list(val) == [4]  # A and B trained, D tested
    assert splits.restrict_to_task(apps, "capture", [0], [1], [2])[1].tolist() == [2]


def test_settings_accept_the_tasks_and_reject_bad_values():
    for split in ("seen_applications", "novel_applications"):
        S.DataSettings(split=split).validate()
    with pytest.raises(S.SettingsError, match=r"^config.data.split='novel': must be one of 'capture', 'time', "
                                              r"'seen_applications', 'novel_applications'$"):
        S.DataSettings(split="novel").validate()
    with pytest.raises(S.SettingsError, match=r"config.data.label_level='level2': must be 'level1' or 'category' "
                                              r"with data.split='novel_applications'"):
        S.DataSettings(split="novel_applications", label_level="level2").validate()
    with pytest.raises(S.SettingsError, match=r"config.data.split='seen_applications': must be 'capture' with "
                                              r"data.dataset"):
        S.DataSettings(split="seen_applications", dataset="/tmp/x").validate()
    S.DataSettings(split="seen_applications", label_level="level2").validate()


def test_a_task_split_needs_applications():
    table = _table([(f"c{i}", [("Web", "", 5)]) for i in range(4)] + [(f"d{i}", [("P2P", "", 5)]) for i in range(4)])
    from pclip_jax.data.prepare import _split

    with pytest.raises(ValueError, match="needs applications"):
        _split(table, S.DataSettings(split="novel_applications"), "level1")


# ------------------------------------------------------------------------------------------------ real nDPI


def test_seen_applications_on_real_ndpi(real_ndpi_dir, filtered):  # noqa: F811
    # The counts below are the real corpus's (the stand-ins have a handful of applications).
    table, _ = filtered
    dominant = splits.capture_classes(table, "level2")
    multi = {a for a, n in collections.Counter(dominant.values()).items() if n >= 2}
    assert len(multi) >= 30
    assignments = set()
    for seed in SEEDS:
        split = splits.split_seen_applications(table, 0.3, seed, 0.15)
        _check_partition(table, split)
        trained = _apps(table, split["train"])
        assert _apps(table, split["test"]) <= trained and _apps(table, split["validation"]) <= trained
        seen, novel = _novelty_halves(table, split)
        assert novel == 0 and seen == len(split["test"]) >= 150
        got = _captures(table, split)
        assert all(any(dominant[c] == a for c in got["test"]) for a in multi)  # every testable application
        for a in {a for a, n in collections.Counter(dominant.values()).items() if n >= 3}:
            assert any(dominant[c] == a for c in got["validation"]), a  # >= 3 captures: one validates
        assert len(set(table.meta["level1"][split["test"]])) >= 14
        assert len(split["excluded"]) < 20  # minority flows of unseen applications in test/validation captures
        assignments.add(tuple(sorted(_assignment(table, split).items())))
    assert len(assignments) == len(SEEDS)


def test_novel_applications_on_real_ndpi(real_ndpi_dir, filtered):  # noqa: F811
    table, _ = filtered
    dominant = splits.capture_classes(table, "level2")
    all_apps = set(dominant.values()) - {""}
    assignments = set()
    for seed in SEEDS:
        split = splits.split_novel_applications(table, 0.3, seed, 0.15)
        _check_partition(table, split)
        trained, tested = _apps(table, split["train"]), _apps(table, split["test"])
        assert not tested & trained and not _apps(table, split["validation"]) & (trained | tested)
        seen, novel = _novelty_halves(table, split)
        assert seen == 0 and novel == len(split["test"]) >= 400
        got = _captures(table, split)
        held = {dominant[c] for c in got["test"]} - {""}
        assert 0.15 < len(held) / len(all_apps) < 0.45, len(held)
        assert len(set(table.meta["level1"][split["test"]])) >= 14
        # Every level-1 class that is some application's class keeps training flows.
        assert set(table.meta["level1"][split["train"]]) >= {dominant_class for dominant_class in
                                                             splits._majority(table.meta["level2"],
                                                                              table.meta["level1"]).values()}
        assignments.add(tuple(sorted(_assignment(table, split).items())))
    assert len(assignments) == len(SEEDS)


@pytest.mark.parametrize("split", ["seen_applications", "novel_applications"])
def test_prepare_flows_runs_the_task(real_ndpi_dir, tmp_path_factory, split):
    cache = tmp_path_factory.getbasetemp() / "ndpi_tasks_cache"
    config = S.DataSettings(manual_dir=str(real_ndpi_dir), packets=2, bytes=20, split=split, split_seed=1)
    config.validate()
    prepared = prepare_flows(config, cache, progress=False)
    table = prepared.table
    extra = {"seen_test_fraction": config.seen_test_fraction} if split == "novel_applications" else {}
    direct = getattr(splits, f"split_{split}")(table, config.test_fraction, 1, config.validation_fraction, **extra)
    assert np.array_equal(prepared.test_idx, direct["test"])
    assert np.array_equal(prepared.val_idx, direct["validation"]) and np.array_equal(prepared.train_idx,
                                                                                     direct["train"])
    assert prepared.dropped["outside_application_task"] == len(direct["excluded"])
    caps = prepared.split_captures
    assert not set(caps["train"]) & set(caps["test"]) and not set(caps["validation"]) & set(caps["test"])
    trained = set(prepared.applications(prepared.train_idx))
    novel = prepared.novel(prepared.test_idx)
    test_apps = np.asarray(table.meta["level2"])[prepared.test_idx]
    assert np.array_equal(novel, ~np.isin(test_apps, sorted(trained)))
    if split == "seen_applications":
        assert set(prepared.applications(prepared.test_idx)) <= trained and not novel.any()
    else:  # novel flows, and seen flows of held-out training captures (data.seen_test_fraction)
        assert np.array_equal(np.flatnonzero(~novel), np.searchsorted(prepared.test_idx, direct["test_seen"]))
        assert 50 < (~novel).sum() < novel.sum()
        seen_caps = set(np.asarray(table.meta["capture"])[direct["test_seen"]].tolist())
        assert not seen_caps & set(np.asarray(table.meta["capture"])[prepared.test_idx[novel]].tolist())


@pytest.mark.parametrize("validation", [0.0, 0.3])
def test_novel_applications_with_seen_test_captures_on_a_hand_built_table(validation):
    """`seen_test_fraction`: the novel task's test side also holds whole training captures of trained applications
    (the in-distribution side of novelty detection); novel flows stay novel, seen flows are of trained apps."""
    table, captures_of = _hand_built_by_application()
    caps = table.meta["capture"]
    for seed in SEEDS:
        split = splits.split_novel_applications(table, 0.3, seed, validation, seen_test_fraction=0.3)
        _check_partition(table, split)
        trained = _apps(table, split["train"])
        seen = split["test_seen"]
        novel = np.setdiff1d(split["test"], seen)
        assert len(seen) and len(novel) and set(seen) <= set(split["test"])
        assert _apps(table, seen) <= trained and not _apps(table, novel) & trained
        assert _novelty_halves(table, split) == (len(seen), len(novel))
        # Seen and novel flows come from different captures; every application keeps a training capture.
        assert not set(caps[seen].tolist()) & set(caps[novel].tolist())
        dominant = splits.capture_classes(table, "level2")
        for capture in set(caps[seen].tolist()):
            assert captures_of[dominant[capture]] & set(caps[split["train"]].tolist()), capture
        # The held-out applications are those of the split without seen captures.
        plain = splits.split_novel_applications(table, 0.3, seed, validation)
        assert _apps(table, novel) == _apps(table, plain["test"])
        again = splits.split_novel_applications(table, 0.3, seed, validation, seen_test_fraction=0.3)
        assert all(np.array_equal(split[k], again[k]) for k in split)
    with pytest.raises(ValueError, match="seen_test_fraction"):
        splits.split_novel_applications(table, 0.3, 0, seen_test_fraction=1.0)


def test_restrict_to_task_keeps_seen_test_flows_when_the_novel_task_has_them():
    apps = np.array(["A", "A", "B", "B", "C", "D"])
    val, test = splits.restrict_to_task(apps, "novel_applications", [0, 2], [1, 4, 5], [3, 5], seen_test=True)
    assert list(test) == [3, 5] and list(val) == [4]
