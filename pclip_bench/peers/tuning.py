"""One tuning protocol for every model of the peer suite (docs/peers.md, "Protocol").

- **Budget.** Every neural model, PacketCLIP included, sees the same number of training flows in its gradient steps
  (`FLOWS_SEEN`: pre-training plus fine-tuning; PacketCLIP's detection stage trains on the frozen tower's
  embeddings, as a peer's classifier head would, and is not counted), under the same early-stopping rule: the
  validation captures' mAUC at `CHECKS` evenly spaced points of the run, the best point's parameters kept.
- **Search.** A declared space per family (`SEARCH_SPACES`): learning rate × training length (a share of the
  budget) for every neural model; the trees' own main knobs. Each candidate is trained on the *tuning split*
  (`data.split_seed = TUNING_SEED`, all the training data) and scored by its validation mAUC only
  (`pclip_bench.protocol.tune`); the test captures of the tuning split are never read (their answers are not kept).
- **Frozen.** The chosen configuration is written once per (dataset, model) to `W/tuned/<dataset>/<model>.json` and
  used unchanged for every evaluation split (`EVALUATION_SEEDS`) and training fraction; each cell records it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

TUNING_SEED = 100                   # the tuning split's seed: not an evaluation split
EVALUATION_SEEDS = (0, 1, 2, 3, 4)  # five capture splits, each also the models' initialisation seed
FLOWS_SEEN = 51_200                 # training flows through every neural model's gradient steps
CHECKS = 8                          # validation checks per run (the early-stopping rule)
PCLIP_BATCH = 256                   # PacketCLIP's contrastive batch (in-batch negatives); peers' batch is 64
PEER_BATCH = 64
PRETRAIN_SHARE = 1 / 3              # of a peer's budget, for its self-supervised pre-training when it has one

LEARNING_RATES = (3e-4, 1e-3, 3e-3)
LENGTHS = (0.5, 1.0)                # share of the budget
NEURAL_SPACE = {"learning_rate": LEARNING_RATES, "length": LENGTHS}
SEARCH_SPACES: dict[str, dict] = {
    "pclip": NEURAL_SPACE,
    "cnn1d": NEURAL_SPACE, "fsnet": NEURAL_SPACE, "yatc": NEURAL_SPACE, "netmamba": NEURAL_SPACE,
    "etbert": NEURAL_SPACE,
    "extra_trees": {"max_features": ("sqrt", 0.3), "min_samples_leaf": (1, 3)},
    "lightgbm": {"num_leaves": (15, 63), "learning_rate": (0.05, 0.1)},
}
# Models that take another model's tuned configuration: the hybrid is PacketCLIP's tower (tuned as `pclip`) under
# ExtraTrees (its knobs tuned as `extra_trees`, on the trees' features alone).
TUNED_AS = {"pclip_trees": ("pclip", "extra_trees")}


# One rule each for inputs and labels, for every model. Inputs: no model reads the server-name vector (the byte
# rows have names and per-session values zeroed, docs/masking.md), so every model sees packets only. Labels: no
# model learns from labels finer than the evaluated classes: on the level-1 nDPI tasks PacketCLIP's pre-training
# texts name the class only, its probe is fitted per class and its GNN's level-2 loss is off (the peers only ever
# see class ids). IoT Sentinel is evaluated at its finest level (devices), so there is nothing finer to withhold.
SAME_INPUTS = ("data.use_names=false",)
NO_FINER_LABELS = ("eval.probe_targets=class", "text.application_texts=false", "gnn.model.level_loss_weights=[1.0,0.0]")
LEVEL1_DATASETS = ("ndpi", "ndpi_closed", "ndpi_novel")


def protocol_overrides(dataset: str) -> list[str]:
    """The config overrides that put every model of `dataset` under the same input and label rules."""
    return [*SAME_INPUTS, *(NO_FINER_LABELS if dataset in LEVEL1_DATASETS else ())]


def candidate_name(candidate: Mapping[str, Any]) -> str:
    """A file-name-safe, stable name of one candidate configuration, e.g. 'learning_rate=0.001,length=0.5'."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in candidate.items())


def pclip_overrides(candidate: Mapping[str, Any]) -> list[str]:
    """PacketCLIP's config overrides for a neural candidate: its share of the budget in steps of `PCLIP_BATCH`
    flows, validation every 1/`CHECKS` of the run (`train.eval_every`: best step kept)."""
    steps = max(int(round(candidate["length"] * FLOWS_SEEN / PCLIP_BATCH)), CHECKS)
    return [f"train.learning_rate={candidate['learning_rate']}", f"train.num_steps={steps}",
            f"train.batch_size={PCLIP_BATCH}", f"train.eval_every={max(steps // CHECKS, 1)}",
            f"train.warmup_steps={max(steps // 10, 1)}"]


def peer_train_config(candidate: Mapping[str, Any], seed: int, has_pretraining: bool):
    """A peer's `PeerTrainConfig` for a neural candidate: the budget's share split between self-supervised
    pre-training (`PRETRAIN_SHARE`, when the peer has it) and fine-tuning, validation every 1/`CHECKS` of
    fine-tuning."""
    from pclip_bench.peers.train import PeerTrainConfig  # JAX on use: the summary and tests of the space run without

    steps = max(int(round(candidate["length"] * FLOWS_SEEN / PEER_BATCH)), CHECKS)
    pre = int(round(steps * PRETRAIN_SHARE)) if has_pretraining else 0
    fine = steps - pre
    return PeerTrainConfig(pretrain_steps=pre, steps=fine, batch_size=PEER_BATCH,
                           learning_rate=float(candidate["learning_rate"]),
                           pretrain_learning_rate=float(candidate["learning_rate"]),
                           warmup_steps=max(fine // 10, 1), eval_every=max(fine // CHECKS, 1), seed=seed)


@dataclasses.dataclass(frozen=True)
class Tuned:
    """A model's frozen configuration: the chosen candidate and every candidate's validation mAUC."""
    model: str
    dataset: str
    chosen: dict
    candidates: list
    split_seed: int = TUNING_SEED

    def record(self) -> dict:
        return dataclasses.asdict(self)
