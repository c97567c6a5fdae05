"""TFDS builders on nDPI captures (the real ones or their stand-ins): array_record written and read back without
TensorFlow."""
import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from pclip_jax.data import input_pipeline, labels, tfds_builders

# Eleven small captures (pcap and pcapng) with their nDPI outputs: two or more per class for Game, Database,
# Email, IoT/Industrial and Chat, so the stratified split puts every one of those classes on both sides.
CAPTURES = ["wow.pcap", "steam.pcapng", "crynet.pcap", "pgsql.pcap", "mongodb.pcap", "pop3.pcap", "imaps.pcap",
            "iec60780-5-104.pcap", "hislip.pcap", "threema.pcap", "jabber.pcap"]
K, B = 6, 48


def _manual_dir(root: pathlib.Path, ndpi_dir: pathlib.Path, layout: str) -> pathlib.Path:
    base = root / ("tests/cfgs/default" if layout == "source" else "")
    (base / "pcap").mkdir(parents=True)
    (base / "result").mkdir()
    for name in CAPTURES:
        (base / "pcap" / name).symlink_to(ndpi_dir / "pcap" / name)
        (base / "result" / f"{name}.out").symlink_to(ndpi_dir / "result" / f"{name}.out")
    return root


@pytest.fixture(scope="module")
def built(tmp_path_factory, ndpi_dir):
    missing = [c for c in CAPTURES if not (ndpi_dir / "pcap" / c).is_file()]
    assert not missing, f"test captures missing from {ndpi_dir}: {missing}"
    tmp = tmp_path_factory.mktemp("tfds")
    manual = _manual_dir(tmp / "manual", ndpi_dir, "flat")
    config = tfds_builders.TrafficConfig(name="k6_b48", packets=K, bytes=B)
    builder = tfds_builders.build("ndpi_traffic", tmp / "data", manual_dir=manual, config=config)
    return builder, tmp


def test_tensorflow_absent_and_not_imported(built):
    # The builders ran (fixture) on a machine without TensorFlow, and nothing imported it.
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401
    assert importlib.util.find_spec("tensorflow") is None
    assert "tensorflow" not in sys.modules


def test_as_numpy_batches(built):
    builder, _ = built
    source = builder.as_data_source()["train"]
    n = len(source)
    keys = ["capture", "flow_id", "num_packets"]
    seen = [(c, f) for b in input_pipeline.as_numpy(source, batch_size=3, shuffle=True, seed=1, keys=keys)
            for c, f in zip(b["capture"], b["flow_id"])]
    assert len(seen) == n == len(set(seen))  # one epoch: every example once
    again = [(c, f) for b in input_pipeline.as_numpy(source, batch_size=3, shuffle=True, seed=1, keys=keys)
             for c, f in zip(b["capture"], b["flow_id"])]
    assert again == seen
    sizes = [len(b["flow_id"]) for b in input_pipeline.as_numpy(source, 4, drop_remainder=True, num_epochs=2)]
    assert sizes == [4] * (2 * (n // 4))
    assert set(next(input_pipeline.as_numpy(source, 2, keys=keys))) == set(keys)


def test_read_back_shapes_and_labels(built):
    builder, _ = built
    sources = builder.as_data_source()
    assert set(sources) == {"train", "test"}
    assert len(sources["train"]) > 0 and len(sources["test"]) > 0
    batch = next(input_pipeline.as_numpy(sources["train"], batch_size=8))
    n = len(batch["capture"])
    assert batch["bytes"].shape == (n, K, B) and batch["bytes"].dtype == np.uint8
    assert batch["sizes"].shape == (n, K) and batch["iat"].shape == (n, K) and batch["tcp_flags"].shape == (n, K)
    assert batch["stats"].shape[0] == n and batch["stats"].shape[1] == len(builder.info.metadata["stats_names"])
    assert (batch["num_packets"] >= 1).all() and (batch["num_packets"] <= K).all()
    # Filters: every example is two-way, has >= 3 packets and a level-1 class.
    assert ((batch["c2s_packets"] > 0) & (batch["s2c_packets"] > 0)).all()
    assert (batch["c2s_packets"] + batch["s2c_packets"] >= 3).all()
    names = builder.info.features["level1"].names
    assert names == list(labels.LEVEL1_CLASSES)
    assert all(names[i] == s for i, s in zip(batch["level1"], batch["level1_name"]))
    level2_names = builder.info.metadata["level2_names"]
    assert all(level2_names[i] == s for i, s in zip(batch["level2_id"], batch["level2"]))
    server_names = [s.decode() if isinstance(s, bytes) else str(s) for s in batch["server_name"]]
    assert any(server_names) and all(n == n.lower() for n in server_names)


def test_splits_disjoint_by_capture_and_metadata(built):
    builder, tmp = built
    train = input_pipeline.load_split("ndpi_traffic", "train", tmp / "data", config="k6_b48",
                                      keys=["capture", "level1_name"])
    test = input_pipeline.load_split("ndpi_traffic", "test", tmp / "data", config="k6_b48", keys=["capture"])
    assert not set(train["capture"]) & set(test["capture"])
    meta = builder.info.metadata
    assert set(meta["split_captures"]["train"]) == set(train["capture"])
    assert set(meta["split_captures"]["test"]) == set(test["capture"])
    # The dataset info says how many flows were dropped and why; the counts add up.
    dropped = meta["dropped"]
    assert set(dropped) >= {"too_few_packets", "one_way", "unknown_protocol", "unlabelled", "kept"}
    assert dropped["too_few_packets"] > 0
    assert sum(v for k, v in dropped.items() if k != "kept") + dropped["kept"] == meta["flows_ingested"]
    assert dropped["kept"] == len(train["capture"]) + len(test["capture"])
    assert meta["labels"]["match_rate_with_splits"] >= 0.98
    # Reopening from data_dir restores the metadata (written next to the array_record files).
    import tensorflow_datasets as tfds
    again = tfds.builder_from_directory(str(input_pipeline._dataset_dir("ndpi_traffic", tmp / "data", "k6_b48")))
    assert again.info.metadata["dropped"] == dropped
    assert again.info.splits["train"].num_examples == len(train["capture"])


def test_source_layout_and_bad_manual_dir(tmp_path, ndpi_dir):
    # The nDPI source-tree layout is found; a manual dir without captures is a clear error.
    manual = _manual_dir(tmp_path / "src", ndpi_dir, "source")
    assert tfds_builders._find_capture_root(manual)[0] == manual / "tests/cfgs/default/pcap"
    (tmp_path / "empty").mkdir()
    builder = tfds_builders.NdpiTraffic(data_dir=str(tmp_path / "data"), config="k16_b128",
                                        file_format="array_record")
    import tensorflow_datasets as tfds
    with pytest.raises(FileNotFoundError, match="does not exist or is empty"):
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "empty")))
    (tmp_path / "empty" / "notes.txt").write_text("no captures here")
    with pytest.raises(FileNotFoundError, match="neither pcap/"):
        builder.download_and_prepare(file_format="array_record",
                                     download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "empty")))


def test_pcap_folder_builder(tmp_path, ndpi_dir):
    # Class folders of captures; the folder name is the class, the split keeps captures whole.
    layout = {"Game": ["wow.pcap", "steam.pcapng", "crynet.pcap"], "Database": ["pgsql.pcap", "mongodb.pcap"],
              "Email": ["pop3.pcap", "imaps.pcap"]}
    for folder, names in layout.items():
        (tmp_path / "manual" / folder).mkdir(parents=True)
        for n in names:
            (tmp_path / "manual" / folder / n).symlink_to(ndpi_dir / "pcap" / n)
    config = tfds_builders.TrafficConfig(name="folder_k4_b32", labels="folder", packets=4, bytes=32, min_packets=2)
    builder = tfds_builders.build("pcap_folder", tmp_path / "data", manual_dir=tmp_path / "manual", config=config)
    sources = builder.as_data_source()
    seen = {}
    for split in ("train", "test"):
        arrays = input_pipeline._stack([sources[split][i] for i in range(len(sources[split]))],
                                       ["capture", "level1_name", "bytes"])
        assert arrays["bytes"].shape[1:] == (4, 32)
        folders = [c.split("/")[0] for c in arrays["capture"]]
        assert list(arrays["level1_name"]) == folders
        seen[split] = set(arrays["capture"])
    assert not seen["train"] & seen["test"]
    assert {c.split("/")[0] for c in seen["test"]} == set(layout)  # each class on the test side too


def test_iot_sentinel_builder_names_type_and_device(tmp_path, iot_dir):
    """Offline: a manual dir with one folder per device (symlinks to IoT Sentinel setups); level 1 is the device
    type from the shipped graph, level 2 the device, and the split keeps captures whole."""
    iot = iot_dir
    for device in ("HueBridge", "D-LinkSiren"):
        (tmp_path / "manual" / device).mkdir(parents=True)
        for capture in sorted((iot / device).glob("*.pcap"))[:4]:
            (tmp_path / "manual" / device / capture.name).symlink_to(capture)
    config = tfds_builders.TrafficConfig(name="iot_k4_b32", packets=4, bytes=32, label_column="level2")
    builder = tfds_builders.build("iot_sentinel", tmp_path / "data", manual_dir=tmp_path / "manual", config=config)
    sources = builder.as_data_source()
    for split in ("train", "test"):
        arrays = input_pipeline._stack([sources[split][i] for i in range(len(sources[split]))],
                                       ["capture", "level1_name", "level2"])
        assert set(arrays["level2"]) == {"HueBridge", "D-LinkSiren"}
        assert {(d, t) for d, t in zip(arrays["level2"], arrays["level1_name"])} == \
            {("HueBridge", "Lighting"), ("D-LinkSiren", "Sensor")}


def test_beam_build_equals_single_process(tmp_path, ndpi_dir):
    # `python -m pclip_jax.data.build`: the Apache Beam pipeline (DirectRunner, 2 worker processes) writes the
    # same examples and metadata as the single-process build of the same captures.
    pytest.importorskip("apache_beam")
    import tensorflow_datasets as tfds

    from pclip_jax.data import build

    manual = _manual_dir(tmp_path / "manual", ndpi_dir, "flat")
    common = ["ndpi_traffic", "--manual_dir", str(manual), "--config", "k16_b128"]
    single = build.run([*common, "--data_dir", str(tmp_path / "single")])
    beam = build.run([*common, "--data_dir", str(tmp_path / "beam"), "--beam_runner", "DirectRunner",
                       "--beam_workers", "2"])
    assert single["runner"] == "single-process" and beam["runner"] == "DirectRunner"
    assert single["splits"] == beam["splits"] and min(single["splits"].values()) > 0
    assert single["digest"] == beam["digest"]
    meta = [tfds.builder_from_directory(r["data_dir"]).info.metadata for r in (single, beam)]
    assert meta[0] == meta[1] and meta[0]["split_captures"]["test"]
    assert meta[0]["flows_ingested"] == sum(meta[0]["dropped"].values())  # every ingested flow kept or counted
    with pytest.raises(SystemExit):
        build.run([*common, "--data_dir", str(tmp_path / "x"), "--beam_workers", "2"])  # needs --beam_runner
