"""Filters, capture-disjoint stratified splits and fraction subsets on the labelled nDPI corpus."""
import collections

import numpy as np
import pytest

from pclip_jax.data import labels, splits
from pclip_jax.data.ingest import IngestConfig, ingest
from tests.conftest import on_corpus


@pytest.fixture(scope="module")
def labelled(ndpi_dir):
    table = ingest([ndpi_dir / "pcap"], IngestConfig(packets=2, bytes=16), progress=False)
    return labels.attach_labels(table, f"ndpi:{ndpi_dir}", progress=False)


@pytest.fixture(scope="module")
def filtered(labelled):
    return splits.filter_flows(labelled)


def test_filter_reasons_add_up_and_hold(labelled, filtered):
    table, dropped = filtered
    m = table.meta
    assert sum(dropped[r] for r in splits.DROP_REASONS) + dropped["kept"] == len(labelled)
    assert dropped["kept"] == len(table) > on_corpus(1000, 100)
    assert all(dropped[r] > 0 for r in splits.DROP_REASONS), dropped
    # What is left satisfies every default filter.
    assert (m["c2s_packets"] + m["s2c_packets"] >= 3).all()
    assert ((m["c2s_packets"] > 0) & (m["s2c_packets"] > 0)).all()
    assert (m["level1"] != "").all() and (m["label"] != labels.UNKNOWN).all()
    # Tensors follow the rows.
    assert all(len(v) == len(table) for v in table.tensors.values())


def test_filter_switches(labelled):
    _, loose = splits.filter_flows(labelled, min_packets=1, drop_one_way=False, drop_unlabelled=False)
    assert loose["kept"] == len(labelled) and sum(loose[r] for r in splits.DROP_REASONS) == 0
    _, no_one_way = splits.filter_flows(labelled, min_packets=1, drop_one_way=True, drop_unlabelled=False)
    m = labelled.meta
    assert no_one_way["one_way"] == int(((m["c2s_packets"] == 0) | (m["s2c_packets"] == 0)).sum())
    _, strict = splits.filter_flows(labelled, min_packets=10)
    assert strict["kept"] < splits.filter_flows(labelled)[1]["kept"]


def test_split_is_disjoint_by_capture_and_covers_everything(filtered):
    table, _ = filtered
    split = splits.split_by_capture(table, test_fraction=0.3, seed=0)
    train, test = split["train"], split["test"]
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(len(table)))
    captures = table.meta["capture"]
    assert not set(captures[train]) & set(captures[test])
    # Close to the asked flow fraction.
    assert 0.2 < len(test) / len(table) < 0.4


def test_split_is_stratified(filtered):
    table, _ = filtered
    split = splits.split_by_capture(table, test_fraction=0.3, seed=0)
    dominant = splits.capture_classes(table)
    by_class = collections.defaultdict(set)
    for capture, cls in dominant.items():
        by_class[cls].add(capture)
    caps = splits.split_captures(table, split)
    multi = [c for c, cs in by_class.items() if len(cs) >= 2]
    assert len(multi) >= on_corpus(15, 8)
    for cls in multi:
        assert by_class[cls] & set(caps["train"]) and by_class[cls] & set(caps["test"]), cls


def test_split_is_deterministic_and_seeded(filtered):
    table, _ = filtered
    a = splits.split_by_capture(table, seed=3)
    b = splits.split_by_capture(table, seed=3)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # Row order does not matter: the same captures land on the same side.
    perm = np.random.default_rng(0).permutation(len(table))
    c = splits.split_by_capture(table.select(perm), seed=3)
    assert splits.split_captures(table.select(perm), c) == splits.split_captures(table, a)
    other = splits.split_by_capture(table, seed=4)
    assert splits.split_captures(table, other) != splits.split_captures(table, a)


def test_validation_split(filtered):
    table, _ = filtered
    split = splits.split_by_capture(table, test_fraction=0.3, seed=0, validation_fraction=0.1)
    caps = splits.split_captures(table, split)
    assert set(split) == {"train", "test", "validation"}
    assert sum(len(v) for v in split.values()) == len(table)
    for a, b in [("train", "test"), ("train", "validation"), ("test", "validation")]:
        assert not set(caps[a]) & set(caps[b])
    assert len(split["validation"]) > 0
    with pytest.raises(ValueError, match="test_fraction"):
        splits.split_by_capture(table, test_fraction=1.0)
    with pytest.raises(ValueError, match="validation_fraction"):
        splits.split_by_capture(table, test_fraction=0.5, validation_fraction=0.5)


def test_fraction_keeps_every_class(filtered):
    table, _ = filtered
    split = splits.split_by_capture(table, seed=0)
    test_before = split["test"].copy()
    level1 = table.meta["level1"]
    train_classes = collections.Counter(level1[split["train"]])
    for fraction in (0.01, 0.1, 0.3):
        sub = splits.fraction_subset(table, split["train"], fraction, seed=0)
        assert set(sub) <= set(split["train"])
        assert set(level1[sub]) == set(train_classes)  # every class keeps >= 1 flow
        got = collections.Counter(level1[sub])
        for cls, n in train_classes.items():
            assert got[cls] == max(1, round(fraction * n))
        assert np.array_equal(sub, splits.fraction_subset(table, split["train"], fraction, seed=0))
    small = splits.fraction_subset(table, split["train"], 0.1, seed=0)
    large = splits.fraction_subset(table, split["train"], 0.3, seed=0)
    assert set(small) <= set(large)  # nested subsets for data-scarcity sweeps
    assert not np.array_equal(small, splits.fraction_subset(table, split["train"], 0.1, seed=1))
    assert np.array_equal(splits.fraction_subset(table, split["train"], 1.0), np.sort(split["train"]))
    assert np.array_equal(split["test"], test_before)  # the test split never changes
    with pytest.raises(ValueError, match="fraction"):
        splits.fraction_subset(table, split["train"], 0.0)


def test_missing_label_column_is_a_clear_error(ndpi_dir):
    table = ingest([ndpi_dir / "pcap" / "pop3.pcap"], IngestConfig(packets=2, bytes=16), progress=False)
    with pytest.raises(KeyError, match="attach labels first"):
        splits.split_by_capture(table)
