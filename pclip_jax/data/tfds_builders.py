"""TFDS builders for labelled flow datasets, written as array_record and read without TensorFlow.

    builder = NdpiTraffic(data_dir=..., file_format="array_record",
                          download_config=tfds.download.DownloadConfig(manual_dir="../shared/data/ndpi"))
    builder.download_and_prepare(file_format="array_record", download_config=...)
    source = builder.as_data_source()          # {'train': ..., 'test': ...}; see input_pipeline.py

All builders run the same code path as `python -m pclip_jax.ingest`: ingest → attach_labels → filter_flows →
split_by_capture. `info.metadata` records the configuration, how many flows each filter dropped and why, the label
match counts, the captures of each split and the names behind the integer label features.

Builders: `ndpi_traffic` (nDPI regression corpus: downloads the nDPI source archive, or reads a manual dir),
`pcap_folder` (any folder of captures, labels by folder or CSV), `iscx_vpn2016`, `ustc_tfc2016` (manual download).
"""
from __future__ import annotations

import abc
import dataclasses
import pathlib
import sys
import types
from typing import Optional, Sequence

import numpy as np
import tensorflow_datasets as tfds

from pclip_jax.data import labels as labels_lib
from pclip_jax.data import taxonomy
from pclip_jax.data import capture
from pclip_jax.data.flow_table import FlowTable, merge_summaries
from pclip_jax.data.ingest import IngestConfig, ingest_file
from pclip_jax.data.tensors import STATS_NAMES
from pclip_jax.graph.schema import load_kg, shipped_kg_path
from pclip_jax.data import splits as splits_lib

from pclip_jax.data.download import NDPI_ARCHIVE_URL, NDPI_COMMIT, reachable as _reachable  # noqa: F401
NDPI_SUBDIR = pathlib.PurePosixPath("tests/cfgs/default")
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")


@dataclasses.dataclass(eq=False)
class TrafficConfig(tfds.core.BuilderConfig):
    """What a flow dataset is made of: tensor sizes, labels, filters and the split. See docs/labels.md."""
    packets: int = 16                 # K: packets per flow
    bytes: int = 128                  # B: bytes per packet, from the IP header on
    mask: bool = True                 # zero the shortcut header fields (docs/masking.md)
    labels: str = ""                  # label spec; '' = the builder's default
    label_column: str = "level1"      # stratify splits (and decide 'unlabelled') on this column
    min_packets: int = 3
    drop_one_way: bool = True
    drop_unlabelled: bool = True
    test_fraction: float = 0.3
    split_seed: int = 0
    copies: int = 1                   # >1: a corpus this many times larger (benchmarks/train_throughput.py): copy c
                                      # of capture X is named copyC/X, its times shifted by C days, in X's split


_BASE_CONFIG_FIELDS = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}


def _default_configs():
    return [
        TrafficConfig(name="k16_b128", description="16 packets x 128 bytes per flow (the project default)."),
        TrafficConfig(name="k5_b320", packets=5, bytes=320,
                      description="5 packets x 320 bytes per flow (the YaTC / NetMamba input)."),
    ]


def _find_capture_root(root: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path] | None:
    """(pcap dir, result dir) of an nDPI tree: flat `pcap/`+`result/` or the source layout."""
    for base in (root, root / NDPI_SUBDIR):
        if (base / "pcap").is_dir() and (base / "result").is_dir():
            return base / "pcap", base / "result"
    # An extracted archive has one top folder (nDPI-<commit>/).
    for sub in sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        if (sub / NDPI_SUBDIR / "pcap").is_dir():
            return sub / NDPI_SUBDIR / "pcap", sub / NDPI_SUBDIR / "result"
    return None


def _manual_dir(dl_manager, instructions: str = "") -> Optional[pathlib.Path]:
    """The manual dir the user gave, None when none was given; a given dir that is missing or empty is an error."""
    given = getattr(dl_manager, "_manual_dir", None)  # TFDS raises on `.manual_dir` for both cases alike
    if not given:
        return None
    path = pathlib.Path(str(given)).expanduser()
    if not path.is_dir() or not any(path.iterdir()):
        if path.parts[-2:] == ("downloads", "manual"):
            return None  # TFDS's default <data_dir>/downloads/manual, not something the user asked for
        raise FileNotFoundError(f"manual dir {path} does not exist or is empty.{instructions}")
    return path


class _TrafficBuilder(tfds.core.GeneratorBasedBuilder, abc.ABC):
    """Shared body of the flow builders; subclasses say where the captures are and how they are labelled."""

    VERSION = tfds.core.Version("1.2.0")
    RELEASE_NOTES = {"1.0.0": "First release: masked packet tensors, statistics, level-1/level-2 labels.",
                     "1.1.0": "server_name feature (TLS SNI, HTTP Host, DNS question); per-session random values "
                              "(TCP timestamps, TLS hello random/session id, QUIC connection ids) masked.",
                     "1.2.0": "first_ts/last_ts features (float64); packet bytes stored as one raw value; built one capture at a time, so the single-process and "
                              "the Apache Beam build (pclip_jax.data.build) write the same examples."}
    BUILDER_CONFIGS = _default_configs()
    DEFAULT_LABELS = ""
    GRAPH = ""  # a shipped knowledge graph that names the classes (data/taxonomy.py), '' = the label hierarchy
    DESCRIPTION = ""

    @abc.abstractmethod
    def _sources(self, dl_manager) -> tuple[list[str], str]:
        """(capture inputs: files or folders, label spec)."""

    def _info(self) -> tfds.core.DatasetInfo:
        k, b, s = self.builder_config.packets, self.builder_config.bytes, len(STATS_NAMES)
        i64, i32 = np.int64, np.int32
        features = tfds.features.FeaturesDict({
            # Raw bytes in one value, not 2,048 int64s: a training batch reads this feature alone (data/flow_source.py).
            "bytes": tfds.features.Tensor(shape=(k, b), dtype=np.uint8, encoding=tfds.features.Encoding.BYTES),
            "sizes": tfds.features.Tensor(shape=(k,), dtype=i32),
            "iat": tfds.features.Tensor(shape=(k,), dtype=np.float32),
            "tcp_flags": tfds.features.Tensor(shape=(k,), dtype=np.uint8),
            "num_packets": tfds.features.Scalar(dtype=i32),
            "stats": tfds.features.Tensor(shape=(s,), dtype=np.float32),
            "level1": tfds.features.ClassLabel(names=list(labels_lib.LEVEL1_CLASSES)),  # -1 = unlabelled
            "level2_id": tfds.features.Scalar(dtype=i32),   # index in metadata['level2_names'], -1 = none
            "label_id": tfds.features.Scalar(dtype=i32),    # index in metadata['label_names'], -1 = none
            "level1_name": tfds.features.Text(),
            "level2": tfds.features.Text(),
            "label": tfds.features.Text(),
            "app": tfds.features.Text(),
            "category": tfds.features.Text(),
            "encrypted": tfds.features.Scalar(dtype=i32),
            "capture": tfds.features.Text(),
            "server_name": tfds.features.Text(),            # '' when the flow announced none
            # Capture time of the first / last packet, as 8 raw bytes (a tf.Example float is float32: ~2 min steps).
            "first_ts": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
            "last_ts": tfds.features.Tensor(shape=(), dtype=np.float64, encoding=tfds.features.Encoding.BYTES),
            "flow_id": tfds.features.Scalar(dtype=i64),
            "proto": tfds.features.Scalar(dtype=i32),
            "c2s_packets": tfds.features.Scalar(dtype=i64),
            "s2c_packets": tfds.features.Scalar(dtype=i64),
            "c2s_bytes": tfds.features.Scalar(dtype=i64),
            "s2c_bytes": tfds.features.Scalar(dtype=i64),
        })
        return tfds.core.DatasetInfo(
            builder=self, description=self.DESCRIPTION + _COMMON_DESCRIPTION, features=features,
            metadata=tfds.core.BeamMetadataDict() if self._beam else tfds.core.MetadataDict(), homepage="https://github.com/ntop/nDPI")

    def __init__(self, *args, beam: bool = False, **kwargs):
        # Beam mode: the same per-capture steps as a Beam pipeline (build(..., beam_runner=...)). TFDS hands a
        # pipeline to `_split_generators` only when its signature names one, so the Beam variant is bound here.
        self._beam = beam
        if beam:
            self._split_generators = self._beam_split_generators
        super().__init__(*args, **kwargs)

    def _capture_jobs(self, dl_manager) -> tuple[list[tuple[str, str]], str]:
        """([(capture path, capture name)], label spec); names as `ingest` gives them (path under its input)."""
        inputs, spec = self._sources(dl_manager)
        jobs = [(str(path), str(path.relative_to(root))) for path, root in capture.find_captures(inputs)]
        if not jobs:
            raise ValueError(f"{self.name}: no captures found in {inputs} (captures end in "
                             f"{', '.join(CAPTURE_SUFFIXES)})")
        self._inputs = [str(i) for i in inputs]
        return jobs, self.builder_config.labels or spec

    def _split_generators(self, dl_manager):
        jobs, spec = self._capture_jobs(dl_manager)
        cfg = self.builder_config
        from tqdm import tqdm

        read = [read_capture(job, cfg, spec, self.GRAPH)
                for job in tqdm(jobs, desc=f"{self.name}: ingest", unit="capture", file=sys.stderr,
                                dynamic_ncols=True)]
        plan = plan_splits([c.info for c in read], cfg, self.name, self._inputs, spec)
        self.info.metadata.update(plan["metadata"])
        counts = {s: sum(c.info["kept"] for c in read if plan["capture_split"].get(c.name) == s) for s in SPLITS}
        print(f"[{self.name}] {plan['metadata']['flows_ingested']} flows ingested, dropped "
              f"{plan['metadata']['dropped']}; train {counts['train']} / test {counts['test']} flows", file=sys.stderr)
        return {s: self._generate_examples(read, s, plan) for s in SPLITS}

    def _generate_examples(self, read: list, split: str, plan: dict):
        for flows in read:
            yield from capture_examples(flows, split, plan)

    def _beam_split_generators(self, dl_manager, pipeline):
        """The Beam pipeline: one element per capture → ingest → labels → filters; the per-capture label
        summaries are combined into one split plan (a side input), and each split keeps its captures' flows."""
        import apache_beam as beam

        jobs, spec = self._capture_jobs(dl_manager)
        cfg, name, inputs, graph = self.builder_config, self.name, self._inputs, self.GRAPH
        read = (pipeline
                | "captures" >> beam.Create(jobs)
                | "spread" >> beam.Reshuffle()
                | "ingest_and_label" >> beam.Map(read_capture, cfg, spec, graph))
        plan = (read
                | "summaries" >> beam.Map(lambda c: c.info)
                | "all_summaries" >> beam.combiners.ToList()
                | "plan" >> beam.Map(plan_splits, cfg, name, inputs, spec))
        for key in METADATA_KEYS:
            self.info.metadata[key] = plan | f"metadata_{key}" >> beam.Map(lambda p, k=key: p["metadata"][k])
        side = beam.pvalue.AsSingleton(plan)
        return {s: read | f"examples_{s}" >> beam.FlatMap(lambda c, p, s=s: capture_examples(c, s, p), side)
                for s in SPLITS}


SPLITS = ("train", "test")
METADATA_KEYS = ("config", "inputs", "labels_spec", "flows_ingested", "dropped", "labels", "ingest",
                 "split_captures", "level2_names", "label_names", "stats_names")


@dataclasses.dataclass
class CaptureFlows:
    """One capture after ingest → labels → levels → filters, and its small summary (`info`)."""
    name: str
    table: FlowTable
    info: dict


def read_capture(job: tuple[str, str], cfg: TrafficConfig, spec: str, graph: str = "") -> CaptureFlows:
    """Ingests, labels and filters one capture (the unit of work of both ways of building)."""
    path, name = job
    table = ingest_file(path, name, IngestConfig(packets=cfg.packets, bytes=cfg.bytes, mask=cfg.mask))
    for e in table.summary["errors"]:
        print(f"warning: {e['file']}: byte {e['offset']}: {e['reason']}", file=sys.stderr)
    table = labels_lib.attach_labels(table, spec, progress=False)
    if graph:
        table, _ = taxonomy.resolve_levels(table, "graph", load_kg(shipped_kg_path(graph)))
    n_ingested = len(table.meta["capture"])
    ingest_summary = {k: v for k, v in table.summary.items()
                      if k not in ("labels", "seconds") and not isinstance(v, (list, dict))}
    label_summary = {k: v for k, v in table.summary.get("labels", {}).items() if not k.endswith("_list")}
    table, dropped = splits_lib.filter_flows(table, cfg.min_packets, cfg.drop_one_way, cfg.drop_unlabelled,
                                             cfg.label_column)
    meta = table.meta
    info = {"name": name, "flows_ingested": n_ingested, "dropped": dropped, "kept": len(meta["capture"]),
            "ingest": ingest_summary, "labels": label_summary,
            "label_column": np.asarray(meta[cfg.label_column]).astype(str).tolist(),
            "level2": sorted(set(np.asarray(meta["level2"]).astype(str).tolist()) - {""}),
            "label": sorted(set(np.asarray(meta["label"]).astype(str).tolist()) - {""}),
            "stats_names": list(getattr(table, "stats_names", []))}
    return CaptureFlows(name, table, info)


def _plain(value):
    """JSON-ready Python values (Beam writes metadata with json.dumps)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def plan_splits(infos: list[dict], cfg: TrafficConfig, name: str, inputs: list[str], spec: str) -> dict:
    """The capture-disjoint split and the dataset metadata from the per-capture summaries (in any order)."""
    infos = sorted(infos, key=lambda i: i["name"])
    captures = [i["name"] for i in infos for _ in i["label_column"]]
    labels = [x for i in infos for x in i["label_column"]]
    light = types.SimpleNamespace(meta={"capture": np.asarray(captures, dtype=str),
                                        cfg.label_column: np.asarray(labels, dtype=str)})
    split = splits_lib.split_by_capture(light, cfg.test_fraction, cfg.split_seed, cfg.label_column)
    if not all(len(v) for v in split.values()):
        raise ValueError(f"{name}: after filtering, {len(captures)} flows in {len(set(captures))} captures: too few "
                         f"to split train/test ({ {k: len(v) for k, v in split.items()} })")
    capture_split = {captures[r]: s for s, rows in split.items() for r in rows.tolist()}
    dropped = merge_summaries([i["dropped"] for i in infos])
    metadata = {
        "config": {"name": cfg.name, **{f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrafficConfig)
                                         if f.name not in _BASE_CONFIG_FIELDS}},
        "inputs": list(inputs), "labels_spec": spec,
        "flows_ingested": sum(i["flows_ingested"] for i in infos), "dropped": dropped,
        "labels": merge_summaries([i["labels"] for i in infos]),
        "ingest": merge_summaries([i["ingest"] for i in infos]),
        "split_captures": {s: sorted({captures[r] for r in rows.tolist()}) for s, rows in split.items()},
        "level2_names": sorted(set().union(*(i["level2"] for i in infos))),
        "label_names": sorted(set().union(*(i["label"] for i in infos))),
        "stats_names": infos[0]["stats_names"] if infos else [],
    }
    return {"capture_split": capture_split, "metadata": _plain(metadata)}


def capture_examples(flows: CaptureFlows, split: str, plan: dict):
    """(key, example) of the capture's flows when the plan puts the capture in `split`."""
    if plan["capture_split"].get(flows.name) != split:
        return
    meta, t = flows.table.meta, flows.table.tensors
    level1_id = {n: i for i, n in enumerate(labels_lib.LEVEL1_CLASSES)}
    level2_id = {n: i for i, n in enumerate(plan["metadata"]["level2_names"])}
    label_id = {n: i for i, n in enumerate(plan["metadata"]["label_names"])}
    copies = int(plan["metadata"]["config"].get("copies", 1))
    for copy, r in ((c, r) for c in range(copies) for r in range(len(meta["capture"]))):
        capture_name = str(meta["capture"][r]) if copy == 0 else f"copy{copy}/{meta['capture'][r]}"
        shift = copy * 86400.0
        level1, level2, label = str(meta["level1"][r]), str(meta["level2"][r]), str(meta["label"][r])
        yield f"{capture_name}#{int(meta['flow_id'][r])}", {
            "bytes": t["bytes"][r], "sizes": t["sizes"][r].astype(np.int32), "iat": t["iat"][r],
            "tcp_flags": t["tcp_flags"][r], "num_packets": int(t["num_packets"][r]), "stats": t["stats"][r],
            "level1": level1_id.get(level1, -1), "level1_name": level1,
            "level2_id": level2_id.get(level2, -1), "level2": level2,
            "label_id": label_id.get(label, -1), "label": label,
            "app": str(meta["app"][r]), "category": str(meta["category"][r]),
            "encrypted": int(meta["encrypted"][r]), "capture": capture_name, "flow_id": int(meta["flow_id"][r]),
            "server_name": str(meta["server_name"][r]),
            "first_ts": float(meta["first_ts"][r]) + shift, "last_ts": float(meta["last_ts"][r]) + shift,
            "proto": int(meta["proto"][r]), "c2s_packets": int(meta["c2s_packets"][r]),
            "s2c_packets": int(meta["s2c_packets"][r]), "c2s_bytes": int(meta["c2s_bytes"][r]),
            "s2c_bytes": int(meta["s2c_bytes"][r]),
        }


_COMMON_DESCRIPTION = """

Each example is one bidirectional flow: the first K packets x B bytes from the IP header on (shortcut fields
masked, docs/masking.md), signed sizes, inter-arrival times, TCP flags and flow statistics; labels `level1`
(service class id, -1 unlabelled), `level2`/`label` (strings and ids into metadata), the capture it came from.
Train and test are disjoint by capture file, stratified by class (docs/labels.md). `info.metadata['dropped']`
counts the flows removed by the filters (too_few_packets, one_way, unknown_protocol, unlabelled) and
`info.metadata['labels']` the label match counts."""


class NdpiTraffic(_TrafficBuilder):
    """The nDPI regression corpus with nDPI's own flow labels."""

    DESCRIPTION = (f"Captures and ndpiReader outputs of nDPI's regression tests (github.com/ntop/nDPI at "
                   f"{NDPI_COMMIT}, tests/cfgs/default/{{pcap,result}}; LGPL-3.0). Labels: nDPI protocol, "
                   f"category and encryption flag, mapped to service classes by label_hierarchy.yaml.")
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Online, the builder downloads {NDPI_ARCHIVE_URL} itself. Offline, give a manual dir in either layout:
      * the nDPI source tree (or its archive unpacked): <manual_dir>/tests/cfgs/default/pcap and .../result
      * flat: <manual_dir>/pcap/<capture> and <manual_dir>/result/<capture>.out (e.g. ../shared/data/ndpi)
    """

    def _sources(self, dl_manager):
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        found = _find_capture_root(manual) if manual else None
        if found is None and manual is not None:
            raise FileNotFoundError(f"ndpi_traffic: manual dir {manual} has neither pcap/+result/ nor "
                                    f"{NDPI_SUBDIR}/{{pcap,result}}.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        if found is None:
            if not _reachable(NDPI_ARCHIVE_URL):
                raise RuntimeError(f"ndpi_traffic: offline (cannot reach {NDPI_ARCHIVE_URL}) and no manual dir "
                                   f"given.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            try:
                extracted = pathlib.Path(str(dl_manager.download_and_extract(NDPI_ARCHIVE_URL)))
            except Exception as e:  # offline, proxy, ... : say what to do instead
                raise RuntimeError(f"ndpi_traffic: could not download {NDPI_ARCHIVE_URL} ({e}).\n"
                                   f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}") from e
            found = _find_capture_root(extracted)
            if found is None:
                raise FileNotFoundError(f"ndpi_traffic: {extracted} has no {NDPI_SUBDIR}/pcap")
        pcap_dir, result_dir = found
        return [str(pcap_dir)], f"ndpi:{result_dir}"


class PcapFolder(_TrafficBuilder):
    """Any folder of captures (searched recursively), labelled by folder name or a CSV file."""

    DESCRIPTION = "Captures from a user folder, labelled by their parent folder name or a CSV of flow labels."
    BUILDER_CONFIGS = [
        TrafficConfig(name="folder", labels="folder",
                      description="Class = name of the folder a capture sits in (the usual public-dataset layout)."),
        TrafficConfig(name="folder_raw_labels", labels="folder", label_column="label",
                      description="Folder labels used as they are, even when they do not name a service class."),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Put your captures (.pcap, .pcapng, .cap) under <manual_dir>, one folder per class for folder labels, e.g.
    <manual_dir>/Chat/a.pcap, <manual_dir>/VoIP/b.pcapng. For CSV labels use a config with
    labels='csv:/path/labels.csv' (columns capture, proto, ip_a, port_a, ip_b, port_b, label; see docs/labels.md).
    """

    def _sources(self, dl_manager):
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        if manual is None:
            raise FileNotFoundError(f"pcap_folder needs a manual dir.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return [str(manual)], "folder"


class IscxVpn2016(_TrafficBuilder):
    """ISCX VPN-nonVPN 2016, labelled by file-name rules (the published class list)."""

    DESCRIPTION = ("ISCX VPN-nonVPN 2016 (UNB CIC). Service class from the capture's file name (rules in "
                   "label_hierarchy.yaml); `category` is VPN or NonVPN.")
    BUILDER_CONFIGS = _default_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the PCAP archives of ISCX VPN-nonVPN 2016 from https://www.unb.ca/cic/datasets/vpn.html
    (NonVPN-PCAPs-01..03, VPN-PCAPs-01..02), unpack them into <manual_dir> (any sub-folders), keeping the
    original file names (e.g. vpn_skype_audio1.pcap, facebook_chat_4a.pcap): the labels come from the names.
    """

    def _sources(self, dl_manager):
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        if manual is None:
            raise FileNotFoundError(f"iscx_vpn2016 needs a manual dir.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return [str(manual)], "rules:iscx_vpn2016"


class UstcTfc2016(_TrafficBuilder):
    """USTC-TFC2016: 10 benign applications and 10 malware families, labelled by file name."""

    DESCRIPTION = ("USTC-TFC2016 (Wang et al., 2017): 10 benign applications and 10 malware families; class "
                   "from the file name (rules in label_hierarchy.yaml); `category` is Benign or Malware.")
    BUILDER_CONFIGS = _default_configs()
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download USTC-TFC2016 from https://github.com/yungshenglu/USTC-TFC2016 (Benign/ and Malware/ folders), unpack
    the .7z/.rar parts into <manual_dir> keeping the file names (e.g. Weibo-1.pcap, Zeus.pcap).
    """

    def _sources(self, dl_manager):
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        if manual is None:
            raise FileNotFoundError(f"ustc_tfc2016 needs a manual dir.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
        return [str(manual)], "rules:ustc_tfc2016"


IOT_SENTINEL_COMMIT = "0743dc668bb317600663be18a35f89fad134400a"
IOT_SENTINEL_ARCHIVE_URL = f"https://github.com/andypitcher/IoT_Sentinel/archive/{IOT_SENTINEL_COMMIT}.tar.gz"
IOT_SENTINEL_SUBDIR = pathlib.PurePosixPath("captures_IoT_Sentinel/captures_IoT-Sentinel")


class IotSentinel(_TrafficBuilder):
    """IoT Sentinel (Miettinen et al., ICDCS 2017): setup captures of 31 smart-home devices, one folder each."""

    DESCRIPTION = (f"IoT Sentinel device-setup captures (github.com/andypitcher/IoT_Sentinel at {IOT_SENTINEL_COMMIT}, "
                   f"{IOT_SENTINEL_SUBDIR}; MIT). Label = the device folder; level 1 = the device type and level 2 "
                   f"= the device, from the shipped knowledge graph `iot_sentinel`.")
    BUILDER_CONFIGS = [TrafficConfig(name="k16_b128", label_column="level2",
                                     description="16 packets x 128 bytes per flow, split stratified by device.")]
    GRAPH = "iot_sentinel"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
    Online, the builder downloads {IOT_SENTINEL_ARCHIVE_URL} itself. Offline, give a manual dir with one folder per
    device holding its Setup-*.pcap captures (e.g. ../shared/data/iot_sentinel), or the repository unpacked
    (<manual_dir>/{IOT_SENTINEL_SUBDIR}/<device>/).
    """

    def _sources(self, dl_manager):
        manual = _manual_dir(dl_manager, self.MANUAL_DOWNLOAD_INSTRUCTIONS)
        if manual is None:
            if not _reachable(IOT_SENTINEL_ARCHIVE_URL):
                raise RuntimeError(f"iot_sentinel: offline (cannot reach {IOT_SENTINEL_ARCHIVE_URL}) and no manual "
                                   f"dir given.{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")
            manual = pathlib.Path(str(dl_manager.download_and_extract(IOT_SENTINEL_ARCHIVE_URL)))
        for base in [manual, manual / IOT_SENTINEL_SUBDIR, *(p / IOT_SENTINEL_SUBDIR for p in manual.iterdir()
                                                              if p.is_dir())]:
            if base.is_dir() and any(p.is_dir() and any(p.glob("*.pcap")) for p in base.iterdir()):
                return [str(base)], "folder"
        raise FileNotFoundError(f"iot_sentinel: no device folders with .pcap captures in {manual}."
                                f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS}")


BUILDERS = {"ndpi_traffic": NdpiTraffic, "pcap_folder": PcapFolder, "iscx_vpn2016": IscxVpn2016,
            "ustc_tfc2016": UstcTfc2016, "iot_sentinel": IotSentinel}


def build(name: str, data_dir: str | pathlib.Path, manual_dir: str | pathlib.Path | None = None,
          config: str | TrafficConfig | None = None, beam_runner: str | None = None, beam_workers: int = 1,
          beam_args: Sequence[str] = ()) -> tfds.core.DatasetBuilder:
    """Builds (or reuses) a dataset as array_record and returns its builder; read it with `as_data_source()`.

    With `beam_runner` (e.g. 'DirectRunner', 'DataflowRunner', 'FlinkRunner', 'SparkRunner') the same steps run as
    an Apache Beam pipeline; `beam_workers` > 1 runs the DirectRunner's workers as processes and `beam_args` are
    further pipeline options (`--project=...`). Both ways write the same examples (`dataset_digest`).
    """
    try:
        cls = BUILDERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}") from None
    options = None
    if beam_runner:
        try:
            from apache_beam.options.pipeline_options import PipelineOptions
        except ImportError:
            raise RuntimeError("--beam_runner needs Apache Beam: pip install 'pclip_jax[beam]'") from None
        flags = list(beam_args)
        if beam_workers > 1:
            flags += [f"--direct_num_workers={beam_workers}", "--direct_running_mode=multi_processing"]
        options = PipelineOptions(flags)
    builder = cls(data_dir=str(data_dir), config=config, file_format="array_record", beam=bool(beam_runner))
    dl_config = tfds.download.DownloadConfig(manual_dir=str(manual_dir) if manual_dir else None,
                                             beam_runner=beam_runner or None, beam_options=options)
    builder.download_and_prepare(file_format="array_record", download_config=dl_config)
    return builder


def _example_digest(example: dict) -> bytes:
    import hashlib

    h = hashlib.sha256()
    for key in sorted(example):
        value = np.asarray(example[key])
        h.update(f"{key}\x00{value.dtype.str}\x00{value.shape}\x00".encode() + value.tobytes())
    return h.digest()


def dataset_digest(builder) -> dict:
    """Per-split example counts and a SHA-256 over every split's decoded examples (features by name, dtype, shape
    and bytes), independent of shards, of the order a runner wrote them in and of how a protobuf library ordered
    the serialised fields (that differs between the Beam workers and this process)."""
    import hashlib

    total = hashlib.sha256()
    counts = {}
    sources = builder.as_data_source()
    for split in sorted(sources):
        source = sources[split]
        digests = sorted(_example_digest(source[i]) for i in range(len(source)))
        counts[split] = len(digests)
        total.update(split.encode() + b"\x00" + len(digests).to_bytes(8, "little") + b"".join(digests))
    return {"splits": counts, "digest": total.hexdigest()}
