"""One writer for metrics: JSON lines + TensorBoard event files (tensorboardX, no TensorFlow). Process 0 only."""
from __future__ import annotations

import json
import pathlib
from typing import Mapping

import jax
import numpy as np


class MetricWriter:
    def __init__(self, workdir: str | pathlib.Path, name: str = "train"):
        self.enabled = jax.process_index() == 0
        self._jsonl = None
        self._tb = None
        if not self.enabled:
            return
        path = pathlib.Path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(path / f"metrics_{name}.jsonl", "a", encoding="utf-8")
        try:
            from tensorboardX import SummaryWriter
            self._tb = SummaryWriter(str(path / "tensorboard" / name))
        except ImportError:  # TensorBoard files are optional; the JSON lines are always written.
            self._tb = None

    def write(self, step: int, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(np.asarray(v)) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
        self._jsonl.flush()
        if self._tb is not None:
            for k, v in clean.items():
                self._tb.add_scalar(k, v, int(step))

    def close(self) -> None:
        if self._jsonl:
            self._jsonl.close()
        if self._tb is not None:
            self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
