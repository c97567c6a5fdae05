"""Open taxonomy on captures (real, or their stand-ins): classes from the graph or the raw labels, a graph built
from the labels, the whole job on a folder dataset, time splits."""
import json
import shutil

import numpy as np
import pytest

from pclip_jax import job
from pclip_jax.data import splits, taxonomy
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.data.labels import attach_labels
from pclip_jax.graph.from_labels import graph_from_labels
from pclip_jax.graph.schema import load_kg, shipped_kg_path
from tests.job_configs import folder_job_config

IOT = ["HueBridge", "D-LinkSiren", "EdimaxPlug1101W"]


@pytest.fixture(scope="module")
def device_folder(iot_dir, tmp_path_factory):
    """A small folder dataset built from IoT Sentinel captures: three devices, four setups each."""
    root = tmp_path_factory.mktemp("devices")
    for device in IOT:
        (root / device).mkdir()
        for capture in sorted((iot_dir / device).glob("*.pcap"))[:4]:
            shutil.copy(capture, root / device / capture.name)
    return root


def _labelled(paths):
    table = ingest([str(p) for p in paths], IngestConfig(), progress=False)
    return attach_labels(table, "folder", progress=False)


def test_graph_names_the_device_and_its_type(device_folder):
    table = _labelled([device_folder])
    kg = load_kg(shipped_kg_path("iot_sentinel"))
    resolved, report = taxonomy.resolve_levels(table, "auto", kg)
    assert report["source"] == "graph" and report["coverage"]["hierarchy"] < 0.5 <= report["coverage"]["graph"]
    level1, level2 = resolved.meta["level1"], resolved.meta["level2"]
    assert set(level2) == set(IOT)
    assert {kg.node(d).parent for d in IOT} == set(level1) == {"Lighting", "Sensor", "SmartPlug"}
    assert report["flows_without_class"] == 0
    # Without a graph the raw labels are the classes; nothing is dropped.
    raw, report = taxonomy.resolve_levels(table, "auto", None)
    assert report["source"] == "raw" and set(raw.meta["level1"]) == set(IOT) and set(raw.meta["level2"]) == {""}
    # The nDPI labels keep their hierarchy (the figures of the nDPI corpus are unchanged).
    with pytest.raises(ValueError, match="data.taxonomy='graph' needs a knowledge graph"):
        taxonomy.resolve_levels(table, "graph", None)


def test_ndpi_labels_keep_the_label_hierarchy(ndpi_dir):
    table = attach_labels(ingest([str(ndpi_dir / "pcap" / "signal.pcap")], IngestConfig(), progress=False),
                          f"ndpi:{ndpi_dir / 'result'}", progress=False)
    resolved, report = taxonomy.resolve_levels(table, "auto", load_kg(shipped_kg_path("ndpi")))
    assert report["source"] == "hierarchy"
    np.testing.assert_array_equal(resolved.meta["level1"], table.meta["level1"])


def test_graph_from_labels_uses_training_flows_only(device_folder):
    table, _ = taxonomy.resolve_levels(_labelled([device_folder]), "raw")
    captures = np.asarray(table.meta["capture"]).astype(str)
    train = np.flatnonzero(~np.char.endswith(captures, "-1-STA.pcap"))
    kg = graph_from_labels(table.meta, train, name="devices")
    assert kg.level_ids(1) == sorted(IOT) and kg.level_ids(2) == []
    hue = kg.node("HueBridge").descriptions[1]
    assert "flows of about" in hue and "packets" in hue
    # Facts come from the given rows: a different set of rows gives different facts.
    other = graph_from_labels(table.meta, np.flatnonzero(captures == captures[0]), name="devices")
    assert other.level_ids(1) != kg.level_ids(1) or other.node(kg.level_ids(1)[0]).descriptions != \
        kg.node(kg.level_ids(1)[0]).descriptions


def test_folder_dataset_end_to_end_with_a_generated_graph(device_folder, minilm_dir, tmp_path):
    config = folder_job_config([device_folder], minilm_dir)
    wd = tmp_path / "wd"
    results = job.train_and_evaluate(config, str(wd))
    kg = load_kg(wd / "kg.yaml")
    assert kg.level_ids(1) == sorted(IOT)
    assert results["data"]["taxonomy"]["source"] == "raw"
    assert set(results["test"]["classes"]) == set(IOT) and results["gnn"]["level1"]["num_flows"] > 0
    assert 0 <= results["test"]["per_capture"]["accuracy"] <= 1
    assert results["test"]["per_capture"]["num_captures"] == results["data"]["test_captures"]
    stored = json.loads((wd / "config.json").read_text())
    assert stored["gnn"]["kg"] == str(wd / "kg.yaml")
    split = json.loads((wd / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["test"]) and len(split["test"]) == results["data"]["test_captures"]


def test_time_split_never_shares_a_flow_or_a_moment(ndpi_dir):
    table = ingest([str(ndpi_dir / "pcap" / c) for c in ("1kxun.pcap", "zoom.pcap", "443-chrome.pcap")], IngestConfig(),
                   progress=False)
    part = splits.split_by_time(table, test_fraction=0.3)
    train, test = part["train"], part["test"]
    assert len(train) and len(test) and not set(train) & set(test)
    assert len(train) + len(test) + len(part["gap"]) == len(table)
    captures = np.asarray(table.meta["capture"]).astype(str)
    for c in np.unique(captures[test]):
        tr, te = train[captures[train] == c], test[captures[test] == c]
        if len(tr):
            assert table.meta["last_ts"][tr].max() < table.meta["first_ts"][te].min()


NDPI_MIX = ["1kxun.pcap", "zoom.pcap", "443-chrome.pcap", "signal.pcap", "whatsapp_login_chat.pcap", "telegram.pcap",
            "wireguard.pcap", "netflix.pcap", "dns-exf.pcap"]


def test_mixed_corpus_pretrains_on_all_sources_and_evaluates_each(device_folder, ndpi_dir, minilm_dir, tmp_path):
    """nDPI captures labelled by their result files and a device folder labelled by folder names in one run: one
    pre-training corpus, a capture split within each source, an evaluation per source among its own classes."""
    pcaps = tmp_path / "ndpi" / "pcap"
    pcaps.mkdir(parents=True)
    for name in NDPI_MIX:
        (pcaps / name).symlink_to(ndpi_dir / "pcap" / name)
    config = folder_job_config([f"{pcaps}=ndpi:{ndpi_dir / 'result'}", f"{device_folder}=folder"], minilm_dir)
    wd = tmp_path / "wd"
    results = job.train_and_evaluate(config, str(wd))
    taxonomy_report = results["data"]["taxonomy"]
    assert taxonomy_report["source"] == "mixed"
    devices = device_folder.name  # a source is named after its folder
    assert {k: v["source"] for k, v in taxonomy_report["sources"].items()} == {"ndpi": "hierarchy", devices: "raw"}
    # One model over the union of classes; each source evaluated among its own.
    classes = set(results["test"]["classes"])
    assert set(IOT) < classes and classes - set(IOT)
    by_source = results["by_source"]
    assert set(by_source) == {"ndpi", devices}
    assert set(by_source[devices]["probe"]["classes"]) == set(IOT)
    assert not set(by_source["ndpi"]["zero_shot"]["classes"]) & set(IOT)
    assert sum(b["probe"]["num_flows"] + b["probe"]["flows_of_other_classes"] for b in by_source.values()) \
        == results["test"]["num_flows"]
    assert set(results["gnn"]["by_source"]) == {"ndpi", devices}
    # The split is by capture within each source: every source on both sides, no capture on two.
    split = json.loads((wd / "split.json").read_text())
    assert set(split["train"]).isdisjoint(split["test"])
    for source in ("ndpi", devices):
        assert any(c.startswith(source + "/") for c in split["train"])
        assert any(c.startswith(source + "/") for c in split["test"])
    # Source paths and their label targets are stored absolute, so the workdir works from anywhere; absolute ones
    # as given (not resolved: ../shared may be a symbolic link, tests/test_settings_paths.py).
    stored = json.loads((wd / "config.json").read_text())["data"]["inputs"]
    assert stored[0] == f"{pcaps}=ndpi:{ndpi_dir / 'result'}"
