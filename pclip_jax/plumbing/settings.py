"""Typed, validated experiment settings: parsed once from an ml_collections config, read everywhere after.

`configs/*.py` stay ml_collections files (overrides as `--config.train.batch_size=512`); the library reads frozen
dataclasses instead, so a field's type, range and default live in one place (here) and a bad value is a one-line
`SettingsError` that names the field and what it accepts, before any data is read:

    settings = from_config(config)          # ConfigDict, dict or Settings
    settings.train.batch_size               # int >= 1, always present

`to_dict` / `from_dict` round-trip through a workdir's `config.json`; `upgrade_dict` fills what older workdirs
lack with the values the code of their time used.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
import typing
from typing import Any, Mapping, Optional

# Version of the `config.json` layout a workdir stores (see `upgrade_dict`).
SETTINGS_FORMAT = 2
LABEL_COLUMNS = ("level1", "level2", "label", "app", "category")
LABEL_KINDS = ("ndpi", "folder", "csv", "rules", "dpi")
# data.split: by capture, by time within captures, and the two application tasks (data/splits.py, docs/labels.md).
SPLITS = ("capture", "time", "seen_applications", "novel_applications")
SOURCE_SEP = "="  # `data.inputs` entry "PATH=LABELS": a source with its own label spec (a mixed corpus)


def split_input(entry: str) -> tuple[str, Optional[str]]:
    """A `data.inputs` entry as (path, label spec): 'PATH=LABELS' → (PATH, LABELS), 'PATH' → (PATH, None)."""
    path, sep, spec = entry.partition(SOURCE_SEP)
    return (path, spec) if sep else (entry, None)


class SettingsError(ValueError):
    """A config field with a bad value, type or name. The message names the field."""


def _check(ok: bool, field: str, value: Any, accepts: str) -> None:
    if not ok:
        raise SettingsError(f"config.{field}={value!r}: must be {accepts}")


def _one_of(field: str, value: Any, allowed: tuple) -> None:
    _check(value in allowed, field, value, "one of " + ", ".join(repr(a) for a in allowed))


@dataclasses.dataclass(frozen=True)
class DataSettings:
    manual_dir: str = "../shared/data/ndpi"  # flat pcap/ + result/ or an unpacked nDPI source tree
    inputs: tuple = ()                       # capture files/folders instead of manual_dir; "PATH=LABELS" entries
                                             # are sources with their own label spec (a mixed corpus)
    labels: str = ""                         # label spec; '' = ndpi:<manual_dir>/result
    cache_dir: str = ""                      # '' = <workdir>/cache
    dataset: str = ""                        # a built dataset dir (python -m pclip_jax.data.build; data_dir/name/
                                             # config/version): flows, labels and test split from it, packet bytes
                                             # read per batch; manual_dir/inputs/labels then unused
    reader: str = "auto"                     # how a built dataset's packet bytes are read per batch: 'fixed' (its
                                             # fixed/ raw rows, memory-mapped: pclip_jax.data.fixed), 'tfds' (one
                                             # tf.Example parse a flow), 'auto' = fixed when the dataset has it
    packets: int = 16
    bytes: int = 128
    mask: bool = True
    use_names: bool = True
    payload_rows: bool = False
    min_packets: int = 3
    drop_one_way: bool = True
    label_level: str = "level1"              # the evaluated level: level1 (service class, device type), level2, ...
    taxonomy: str = "auto"                   # where level1/level2 come from: auto, hierarchy, graph, raw (data/taxonomy.py)
    split: str = "capture"                   # "capture": whole captures to train or test; "time": per capture, by
                                             # time; the nDPI application tasks (docs/labels.md): "seen_applications"
                                             # (closed set: every tested application has training captures),
                                             # "novel_applications" (whole applications held out of training)
    min_class_flows: int = 20
    test_fraction: float = 0.3
    validation_fraction: float = 0.15
    # data.split="novel_applications" only: whole training captures of trained applications also go to test (this
    # fraction of their flows), the in-distribution side of novelty detection; results report seen and novel halves.
    seen_test_fraction: float = 0.3
    split_seed: int = 0
    fraction: float = 1.0
    # With fraction < 1: pre-training also sees the training flows outside the fraction, labels hidden (their text
    # is the flow's own facts), as when labels are scarce but traffic is not; probe and GNN still fit on the fraction.
    unlabelled_pretraining: bool = False

    def validate(self, prefix: str = "data") -> None:
        _check(self.packets >= 1, f"{prefix}.packets", self.packets, "an integer >= 1")
        _check(self.bytes >= 20, f"{prefix}.bytes", self.bytes, "an integer >= 20 (an IPv4 header)")
        _check(self.min_packets >= 1, f"{prefix}.min_packets", self.min_packets, "an integer >= 1")
        _one_of(f"{prefix}.label_level", self.label_level, LABEL_COLUMNS)
        _one_of(f"{prefix}.taxonomy", self.taxonomy, ("auto", "hierarchy", "graph", "raw"))
        _one_of(f"{prefix}.split", self.split, SPLITS)
        if self.split == "novel_applications":
            _check(self.label_level in ("level1", "category"), f"{prefix}.label_level", self.label_level,
                   "'level1' or 'category' with data.split='novel_applications' (the evaluated classes must be "
                   "coarser than the held-out applications)")
        _one_of(f"{prefix}.reader", self.reader, ("auto", "fixed", "tfds"))
        if self.dataset:
            _check(self.split == "capture", f"{prefix}.split", self.split,
                   "'capture' with data.dataset (a built dataset is split by capture when it is built)")
            _check(not self.inputs, f"{prefix}.inputs", self.inputs, "empty with data.dataset (the dataset holds the flows)")
        _check(self.min_class_flows >= 1, f"{prefix}.min_class_flows", self.min_class_flows, "an integer >= 1")
        _check(0.0 <= self.seen_test_fraction < 1.0, f"{prefix}.seen_test_fraction", self.seen_test_fraction,
               "a fraction in [0, 1)")
        _check(0 < self.test_fraction < 1, f"{prefix}.test_fraction", self.test_fraction, "in (0, 1)")
        _check(0 <= self.validation_fraction < 1, f"{prefix}.validation_fraction", self.validation_fraction,
               "in [0, 1)")
        _check(0 < self.fraction <= 1, f"{prefix}.fraction", self.fraction, "in (0, 1]")
        if self.labels:
            _one_of(f"{prefix}.labels (kind before ':')", self.labels.partition(":")[0], LABEL_KINDS)
        for i, entry in enumerate(self.inputs):
            path, spec = split_input(entry)
            _check(bool(path), f"{prefix}.inputs[{i}]", entry, "a capture file or folder (PATH or PATH=LABELS)")
            if spec is not None:
                _one_of(f"{prefix}.inputs[{i}] (label kind after '{SOURCE_SEP}')", spec.partition(":")[0],
                        LABEL_KINDS)

    @property
    def mixed(self) -> bool:
        """Whether `inputs` names sources with their own label specs (one pre-training corpus, per-source split
        and evaluation; `data/prepare.py`)."""
        return any(split_input(entry)[1] is not None for entry in self.inputs)


def field_values(section: Any, fields_of: type) -> dict:
    """The values of `section` (a settings section) for the fields that `fields_of` declares, a dataclass the
    section inherits: the section handed to the model config that shares its field list."""
    return {f.name: getattr(section, f.name) for f in dataclasses.fields(fields_of)}


@dataclasses.dataclass(frozen=True)
class PacketTowerFields:
    """The packet tower's architecture, declared once: the settings' `model` section (`ModelSettings`) and the
    tower's own config (`models/packet_tower.py`'s `PacketTowerConfig`, which adds what other sections decide: the
    input shape from data.packets/bytes, the name token from data.use_names, the compute dtype from train.dtype)."""
    width: int = 192
    depth: int = 3
    heads: int = 6
    patch_size: int = 8
    pool_queries: int = 1                    # learned queries pooling each packet's patches (several read several
                                             # fields)
    byte_dim: int = 16
    mlp_ratio: int = 2
    dropout: float = 0.1
    name_fusion: str = "both"                # "token": the name as one more transformer token only; "both": also
                                             # added to the pooled output
    size_embed_dim: int = 0                  # > 0: each packet's exact size also through a learned table of that
                                             # width (models/packet_tower.py); 0: the log size only

    def validate(self, prefix: str = "model") -> None:
        for name in ("width", "depth", "heads", "patch_size", "pool_queries", "byte_dim", "mlp_ratio"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        _check(self.width % self.heads == 0, f"{prefix}.heads", self.heads,
               f"a divisor of {prefix}.width={self.width}")
        _check(0 <= self.dropout < 1, f"{prefix}.dropout", self.dropout, "in [0, 1)")
        _one_of(f"{prefix}.name_fusion", self.name_fusion, ("token", "both"))
        _check(self.size_embed_dim >= 0, f"{prefix}.size_embed_dim", self.size_embed_dim, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class TwoTowerFields:
    """The two towers' shared space, declared once: the settings' `model` section and `models/two_towers.py`'s
    `TwoTowerConfig` (which adds the packet tower and the temperature and bias it starts from)."""
    embed_dim: int = 256


@dataclasses.dataclass(frozen=True)
class ModelSettings(TwoTowerFields, PacketTowerFields):
    """The towers: the packet tower's architecture (`PacketTowerFields`), the shared space (`TwoTowerFields`) and
    the width of the server-name vectors the packet tower reads."""
    name_dim: int = 384                      # server-name vector width = the text encoder's hidden size

    def validate(self, prefix: str = "model") -> None:
        PacketTowerFields.validate(self, prefix)
        for name in ("embed_dim", "name_dim"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), "an integer >= 1")


@dataclasses.dataclass(frozen=True)
class TextSettings:
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"  # HF repo id or a local directory
    trainable: bool = False                  # False: locked text tower (cached features); True: tuned
    from_scratch: bool = False               # True: a small text transformer trained from scratch
    descriptions: str = ""                   # '' = the shipped class descriptions
    graph_descriptions: bool = False         # classes without phrasings take the knowledge graph's descriptions
    max_len: int = 64
    batch_size: int = 128
    variants_per_flow: int = 4
    p_facts: float = 0.5
    # Pre-training texts may name the flow's application (its level-2 label) beside its class; False: the class
    # only, so that no label finer than the evaluated classes reaches the model (the peer suite's protocol rule).
    application_texts: bool = True
    # Names as text (issue 31): the probability that a pre-training text of a flow with a server name is the name's
    # words ("a connection to r3 sn googlevideo com") instead of its class prompt, for labelled flows and for flows
    # whose labels are hidden alike; the packet tower's own name input is then hidden for that pair, so it learns
    # to say the name from the traffic's shape. 0 = off.
    name_texts: float = 0.0

    @property
    def trained(self) -> bool:
        """Whether the text encoder is trained with the packet tower (tuned or from scratch)."""
        return self.trainable or self.from_scratch

    def validate(self, prefix: str = "text") -> None:
        _check(bool(self.encoder), f"{prefix}.encoder", self.encoder, "a model directory or a Hugging Face repo id")
        _check(self.max_len >= 8, f"{prefix}.max_len", self.max_len, "an integer >= 8")
        _check(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        _check(self.variants_per_flow >= 1, f"{prefix}.variants_per_flow", self.variants_per_flow, "an integer >= 1")
        _check(0 <= self.p_facts <= 1, f"{prefix}.p_facts", self.p_facts, "in [0, 1]")
        _check(0 <= self.name_texts <= 1, f"{prefix}.name_texts", self.name_texts, "in [0, 1]")


@dataclasses.dataclass(frozen=True)
class AugmentSettings:
    iat_scale: float = 1.0                   # >1: log-uniform IAT scaling in [1/s, s]
    byte_dropout: float = 0.0
    packet_dropout: float = 0.0
    name_dropout: float = 0.25               # hide a flow's server name (ECH, unseen handshakes)

    def validate(self, prefix: str = "train.augment") -> None:
        _check(self.iat_scale >= 1, f"{prefix}.iat_scale", self.iat_scale, ">= 1 (1 = off)")
        for name in ("byte_dropout", "packet_dropout", "name_dropout"):
            _check(0 <= getattr(self, name) < 1, f"{prefix}.{name}", getattr(self, name), "in [0, 1)")


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    batch_size: int = 1024                   # global, split over all devices
    num_steps: int = 5000
    learning_rate: float = 1e-3
    warmup_steps: int = 200
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    loss: str = "clip"                       # 'clip' (softmax) or 'sigmoid' (SigLIP)
    multi_positive: bool = True
    class_balance: float = 0.5
    augment: AugmentSettings = AugmentSettings()
    dtype: str = "bfloat16"
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    eval_every: int = 250                    # validation zero-shot mAUC, keeps the best parameters
    keep_checkpoints: int = 3
    stop_after: int = 0                      # >0: stop at this step with the full run's schedule (preemption drills)
    prefetch: int = 2                        # batches read and prepared ahead, by as many threads (per worker)
    workers: int = 0                         # >0: batches made in this many worker processes (Grain), each
                                             # `prefetch` batches ahead; 0 = threads of the training process
    # After pre-training, a copy of the packet tower fine-tuned with a class head by cross-entropy, as the peers
    # are (training/finetune.py): one more evaluation (`finetuned`); the pre-trained tower stays for the rest.
    finetune_steps: int = 0                  # 0 = off
    finetune_learning_rate: float = 3e-4

    def validate(self, prefix: str = "train") -> None:
        for name in ("batch_size", "num_steps", "log_every", "checkpoint_every", "keep_checkpoints", "prefetch"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        for name in ("warmup_steps", "eval_every", "stop_after", "workers", "finetune_steps"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", getattr(self, name), "an integer >= 0")
        _check(self.finetune_learning_rate > 0, f"{prefix}.finetune_learning_rate", self.finetune_learning_rate,
               "a number > 0")
        _check(self.learning_rate > 0, f"{prefix}.learning_rate", self.learning_rate, "> 0")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, ">= 0")
        _check(self.grad_clip > 0, f"{prefix}.grad_clip", self.grad_clip, "> 0")
        _one_of(f"{prefix}.loss", self.loss, ("clip", "sigmoid"))
        _one_of(f"{prefix}.dtype", self.dtype, ("float32", "bfloat16"))
        _check(0 <= self.class_balance <= 1, f"{prefix}.class_balance", self.class_balance, "in [0, 1]")
        self.augment.validate(f"{prefix}.augment")


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    batch_size: int = 1024
    # Linear probe fitted per application and summed to classes ("class": one weight vector per class).
    probe_targets: str = "application"

    def validate(self, prefix: str = "eval") -> None:
        _check(self.batch_size >= 1, f"{prefix}.batch_size", self.batch_size, "an integer >= 1")
        _one_of(f"{prefix}.probe_targets", self.probe_targets, ("application", "class"))


@dataclasses.dataclass(frozen=True)
class GnnConfig:
    """Hyper-parameters of the hierarchical GNN (`models/gnn.py`; defaults: ~0.2M parameters for Dp=256, Dt=384).
    The model's own config and the settings' `gnn.model` section alike: its fields are declared here only."""
    hidden: int = 96
    num_layers: int = 2
    num_heads: int = 4
    mlp_ratio: int = 2
    dropout: float = 0.1
    similarity_prior: bool = True        # add α·cos(flow, node text) when Dp == Dt (towers in one space)
    similarity_init: float = 1.0         # α at init; the main job sets the pre-trained temperature, so the GNN
                                         # starts from the zero-shot decision and learns corrections to it
    level_loss_weights: tuple[float, float] = (1.0, 1.0)
    factored: bool = True                # graph nodes do not read the flow: their message passing runs once per
                                         # model, not per flow (models/gnn.py, "Factored"); False: the per-flow
                                         # formulation (a copy of the graph per flow)
    flow_features: int = 0               # trailing columns of the flow input that are not the shared-space
                                         # embedding (e.g. raw packet sizes and timing): projected by a layer of
                                         # their own and kept out of the similarity term

    def validate(self, prefix: str = "gnn.model") -> None:
        for name in ("hidden", "num_layers", "num_heads", "mlp_ratio"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        _check(self.hidden % self.num_heads == 0, f"{prefix}.num_heads", self.num_heads,
               f"a divisor of {prefix}.hidden={self.hidden}")
        _check(0 <= self.dropout < 1, f"{prefix}.dropout", self.dropout, "in [0, 1)")
        _check(len(self.level_loss_weights) == 2 and all(w >= 0 for w in self.level_loss_weights),
               f"{prefix}.level_loss_weights", self.level_loss_weights, "two weights >= 0")
        _check(self.flow_features >= 0, f"{prefix}.flow_features", self.flow_features, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class GnnTrainConfig:
    """How to train the GNN head (`training/train_gnn.py`); `batch_size` is global (split over local devices). The
    settings' `gnn` section (`GnnSettings`) is these fields and the job's own."""
    model: GnnConfig = GnnConfig()
    batch_size: int = 64
    num_steps: int = 300
    learning_rate: float = 3e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 25
    checkpoint_every: int = 0                # 0 = only at the end
    keep_checkpoints: int = 2
    class_balanced: bool = True              # weight level-1 classes by 1/sqrt(frequency): rare classes count for mAUC

    @classmethod
    def from_config(cls, config: Any) -> "GnnTrainConfig":
        """From an ml_collections ConfigDict / mapping with the same field names (`model` a mapping of GnnConfig
        fields); a subclass (the settings' `gnn` section) as its fields of this class."""
        if isinstance(config, cls):
            return config if type(config) is cls else cls(**field_values(config, cls))
        d = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        model = d.pop("model", {}) or {}
        model = model if isinstance(model, GnnConfig) else GnnConfig(**{
            k: tuple(v) if isinstance(v, list) else v for k, v in dict(model).items()})
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown GNN training option(s) {sorted(unknown)}; known {sorted(known)}")
        return cls(model=model, **d)

    def validate(self, prefix: str = "gnn") -> None:
        for name in ("batch_size", "num_steps", "log_every", "keep_checkpoints"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        for name in ("warmup_steps", "checkpoint_every"):
            _check(getattr(self, name) >= 0, f"{prefix}.{name}", getattr(self, name), "an integer >= 0")
        _check(self.learning_rate > 0, f"{prefix}.learning_rate", self.learning_rate, "> 0")
        _check(self.weight_decay >= 0, f"{prefix}.weight_decay", self.weight_decay, ">= 0")
        _check(self.grad_clip > 0, f"{prefix}.grad_clip", self.grad_clip, "> 0")
        self._validate_seed(prefix)
        self.model.validate(f"{prefix}.model")

    def _validate_seed(self, prefix: str) -> None:
        _check(self.seed >= 0, f"{prefix}.seed", self.seed, "an integer >= 0")


@dataclasses.dataclass(frozen=True)
class GnnSettings(GnnTrainConfig):
    """The detection stage: the GNN's training config (`GnnTrainConfig`'s fields, `model` included) and what the
    job decides around it (the graph, its mission, node texts, early stopping, what it fits on)."""
    enabled: bool = True
    kg: str = "ndpi"                         # a shipped graph name, a YAML path, or '' = built from the labels
    mission: str = ""                        # a mission name from the graph, or a statement
    node_prompts: bool = True                # node text = graph descriptions + pre-training prompts
    similarity_from_temperature: bool = True  # the similarity term starts at the towers' learned temperature
    min_flows_level2: int = 5
    eval_every: int = 25                     # validation level-1 mAUC; the best step is kept (early stopping)
    fit_on: str = "train"                    # "train+validation": fit on both, no early stopping
    # GnnTrainConfig.seed with the job's default: -1 takes train.seed (the GNN's initialisation and batch order).
    seed: int = -1

    def validate(self, prefix: str = "gnn") -> None:
        super().validate(prefix)
        for name in ("min_flows_level2", "eval_every"):
            _check(getattr(self, name) >= 1, f"{prefix}.{name}", getattr(self, name), "an integer >= 1")
        _one_of(f"{prefix}.fit_on", self.fit_on, ("train", "train+validation"))
        # The job's GNN reads the towers' embedding alone (benchmarks/detection_inputs.py adds raw features).
        _check(self.model.flow_features == 0, f"{prefix}.model.flow_features", self.model.flow_features,
               "0 in a job's settings (its GNN reads the towers' embedding only)")

    def _validate_seed(self, prefix: str) -> None:
        _check(self.seed >= -1, f"{prefix}.seed", self.seed, "an integer >= 0, or -1 for train.seed")

    def train_config(self, **changes: Any) -> GnnTrainConfig:
        """This section as the GNN's own training config (its `GnnTrainConfig` fields), with `changes`."""
        return GnnTrainConfig(**{**field_values(self, GnnTrainConfig), **changes})


@dataclasses.dataclass(frozen=True)
class Settings:
    data: DataSettings = DataSettings()
    model: ModelSettings = ModelSettings()
    text: TextSettings = TextSettings()
    train: TrainSettings = TrainSettings()
    eval: EvalSettings = EvalSettings()
    gnn: GnnSettings = GnnSettings()

    def validate(self) -> "Settings":
        for f in dataclasses.fields(self):
            getattr(self, f.name).validate(f.name)
        return self

    def replace(self, **sections: Mapping[str, Any]) -> "Settings":
        """A copy with some fields changed: `settings.replace(train={"num_steps": 10})` (validated)."""
        return from_dict(_merge(to_dict(self), sections))


def _merge(base: dict, changes: Mapping) -> dict:
    out = dict(base)
    for k, v in changes.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def _coerce(value: Any, kind: Any, field: str) -> Any:
    """`value` as the field's declared type; a wrong type is a SettingsError naming the field."""
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, Mapping):
            raise SettingsError(f"config.{field}: expected a section of fields, got {value!r}")
        return _build(kind, value, field)
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise SettingsError(f"config.{field}={value!r}: must be True or False")
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise SettingsError(f"config.{field}={value!r}: must be an integer")
        return int(value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"config.{field}={value!r}: must be a number")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise SettingsError(f"config.{field}={value!r}: must be a string")
        return value
    if kind is tuple or typing.get_origin(kind) is tuple:
        if isinstance(value, str):  # `--config.data.inputs=DIR` from the command line: one input
            return (value,) if value else ()
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"config.{field}={value!r}: must be a tuple")
        items = [a for a in typing.get_args(kind) if a is not Ellipsis]
        if len(set(items)) == 1:  # tuple[float, float], tuple[str, ...]: each item as that type
            return tuple(_coerce(v, items[0], f"{field}[{i}]") for i, v in enumerate(value))
        return tuple(value)
    raise TypeError(f"settings field {field}: unsupported type {kind}")


def _build(cls, values: Mapping, prefix: str):
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"config.{prefix}.{unknown[0]}: unknown field; {prefix} has "
                            + ", ".join(sorted(known)))
    return cls(**{k: _coerce(v, hints[k], f"{prefix}.{k}") for k, v in values.items()})


def from_dict(values: Mapping) -> Settings:
    """Settings from a nested dict (missing fields take their defaults), validated."""
    hints = typing.get_type_hints(Settings)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise SettingsError(f"config.{unknown[0]}: unknown section; sections are " + ", ".join(hints))
    return Settings(**{k: _build(hints[k], v, k) for k, v in values.items()}).validate()


def from_config(config: Any) -> Settings:
    """Settings from an ml_collections ConfigDict (or a dict, or Settings), validated."""
    if isinstance(config, Settings):
        return config
    if hasattr(config, "to_dict"):
        config = config.to_dict()
    return from_dict(config)


def to_dict(settings: Settings) -> dict:
    """A JSON-ready nested dict (tuples as lists)."""
    return dataclasses.asdict(settings)


# What the code before SETTINGS_FORMAT 2 did for a field its config.json lacked (`config.get(key, default)`).
_LEGACY_DEFAULTS = {
    "data": {"use_names": False, "payload_rows": False, "validation_fraction": 0.0, "fraction": 1.0,
             "cache_dir": "", "inputs": (), "taxonomy": "hierarchy", "split": "capture"},
    "model": {"pool_queries": 1, "name_fusion": "token", "name_dim": 384},
    "text": {"trainable": False, "from_scratch": False, "descriptions": "", "graph_descriptions": False},
    "train": {"stop_after": 0, "augment": {"name_dropout": 0.0}},
    "eval": {"probe_targets": "application"},
    "gnn": {"node_prompts": False, "similarity_from_temperature": True, "fit_on": "train", "eval_every": 25,
            "mission": ""},
}


def upgrade_dict(values: Mapping) -> dict:
    """A stored config dict in the current layout. Format 1 (no `_format` key, written before typed settings)
    gets the defaults its code used for missing fields; `train.eval_every` defaulted to `checkpoint_every`."""
    values = {k: v for k, v in values.items()}
    fmt = values.pop("_format", 1)
    if fmt > SETTINGS_FORMAT:
        raise SettingsError(f"config format {fmt} is newer than this pclip_jax understands ({SETTINGS_FORMAT})")
    if fmt == 1:
        train = dict(values.get("train", {}))
        if "eval_every" not in train and "checkpoint_every" in train:
            train["eval_every"] = train["checkpoint_every"]
        values["train"] = train
        for section, defaults in _LEGACY_DEFAULTS.items():
            values[section] = _merge(defaults, values.get(section, {}))
        values["gnn"]["mission"] = values["gnn"]["mission"] or ""
    return values


# ---------------------------------------------------------------------------------------------- paths

def _absolute(path: str, base: pathlib.Path) -> str:
    p = pathlib.Path(path).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _label_spec_absolute(spec: str, base: pathlib.Path) -> str:
    kind, sep, target = spec.partition(":")
    return f"{kind}:{_absolute(target, base)}" if sep and target else spec


def _input_absolute(entry: str, base: pathlib.Path) -> str:
    path, spec = split_input(entry)
    return _absolute(path, base) + ("" if spec is None else SOURCE_SEP + _label_spec_absolute(spec, base))


def with_absolute_paths(settings: Settings, base: Optional[pathlib.Path] = None) -> Settings:
    """Relative paths (captures, labels, cache, text encoder directory, descriptions, graph file) made absolute
    against `base` (default: the current directory), so a workdir's config.json works from any directory. A text
    encoder that is no existing directory is kept as is (a Hugging Face repo id)."""
    base = pathlib.Path.cwd() if base is None else pathlib.Path(base)
    d, t, g = settings.data, settings.text, settings.gnn
    encoder = t.encoder
    local = pathlib.Path(encoder).expanduser()
    if local.is_absolute() or (base / local).is_dir() or not re.fullmatch(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?", encoder):
        encoder = _absolute(encoder, base)
    return dataclasses.replace(
        settings,
        data=dataclasses.replace(d, manual_dir=_absolute(d.manual_dir, base) if d.manual_dir else "",
                                 inputs=tuple(_input_absolute(i, base) for i in d.inputs),
                                 labels=_label_spec_absolute(d.labels, base),
                                 cache_dir=_absolute(d.cache_dir, base) if d.cache_dir else "",
                                 dataset=_absolute(d.dataset, base) if d.dataset else ""),
        text=dataclasses.replace(t, encoder=encoder,
                                 descriptions=_absolute(t.descriptions, base) if t.descriptions else ""),
        gnn=dataclasses.replace(g, kg=_absolute(g.kg, base) if g.kg.endswith((".yaml", ".yml")) else g.kg))
