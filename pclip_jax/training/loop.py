"""The one training loop of pre-training and of the GNN: pmapped steps, NaN guard, logging, checkpoints and resume,
validation with the best parameters kept on disk.

A stage supplies its state (unreplicated), a pmapped step `(replicated_state, batch) -> (state, metrics)` and the
batches from a given step on; the loop does the rest the same way for both stages:

* resume from the newest intact checkpoint in `checkpoint_dir` (`pclip_jax.plumbing.checkpointing`), the batches too: an
  iterator with `get_state` / `set_state` (`data.batches.StepBatches`) has its state saved with each checkpoint and
  restored with it;
* every `log_every` steps: metrics averaged over the window (plus steps/s and examples/s) to the metric writer and
  the progress bar; a non-finite loss stops with `NanLossError` naming the step;
* every `eval_every` steps (and at the end): `validate(params)`, the best parameters kept in `best_dir` with their
  step and score, so a resumed run remembers them; the best parameters are returned instead of the last ones;
* checkpoints every `checkpoint_every` steps (0: only at the end) and always at the last step.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import sys
import time
from typing import Any, Callable, Iterator, Optional

import jax
import numpy as np
from tqdm import tqdm

from pclip_jax.plumbing import checkpointing, files, runtime
from pclip_jax.plumbing.metric_writer import MetricWriter


class NanLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the stage, the step and what to try."""


@dataclasses.dataclass(frozen=True)
class LoopSpec:
    name: str                        # "pre-training", "gnn": progress bar and messages
    num_steps: int                   # the schedule's length
    log_every: int
    checkpoint_every: int            # 0 = only at the end
    keep_checkpoints: int
    eval_every: int                  # validation interval (with a validator)
    stop_after: int = 0              # >0: stop early at this step with the full run's schedule
    examples_per_step: int = 0       # global batch, for examples/s
    validate_initial: bool = False   # also validate the initial parameters (step 0) as a candidate
    validation_metric: str = "validation_mauc"  # the metric writer's name
    validation_label: str = "validation mAUC"   # what the messages call it
    nan_hint: str = "lower the learning rate"
    postfix: tuple = (("loss", "loss"),)  # (label, metric) shown on the progress bar

    @property
    def last_step(self) -> int:
        return min(self.num_steps, self.stop_after or self.num_steps)


@dataclasses.dataclass
class LoopResult:
    params: Any                      # best parameters when validated, else the last ones (host numpy)
    state: Any                       # the last state (host)
    steps: int                       # steps done
    best_step: Optional[int]
    best_score: Optional[float]
    history: list                    # logged rows (dicts with `step`)


class BestKeeper:
    """The best parameters by a validation score, on disk (one orbax checkpoint + `best.json`)."""

    def __init__(self, directory: str | pathlib.Path):
        self.directory = pathlib.Path(directory)
        self.meta = self.directory / "best.json"
        info = files.read_json(self.meta) if self.meta.is_file() else {}
        self.step, self.score = info.get("step"), float(info.get("score", -math.inf))
        self._checkpoints: Optional[checkpointing.Checkpoints] = None

    @property
    def checkpoints(self) -> checkpointing.Checkpoints:
        if self._checkpoints is None:
            self._checkpoints = checkpointing.Checkpoints(self.directory, 1, 1)
        return self._checkpoints

    def offer(self, step: int, score: float, params) -> bool:
        if not math.isfinite(score) or score <= self.score:
            return False
        self.checkpoints.save(step, params, force=True)
        self.step, self.score = step, score
        files.write_json(self.meta, {"step": step, "score": score})
        return True

    def load(self, like) -> Optional[Any]:
        """The kept parameters (structure of `like`), or None when there are none or they are damaged."""
        if self.step is None:
            return None
        try:
            params, step = self.checkpoints.restore(like)
        finally:
            self.close()
        return params if step is not None else None

    def close(self) -> None:
        if self._checkpoints is not None:
            self._checkpoints.close()
            self._checkpoints = None


def run(spec: LoopSpec, state: Any, p_step: Callable, batches_from: Callable[[int], Iterator],
        checkpoint_dir: pathlib.Path, metrics_dir: pathlib.Path, metrics_name: str,
        params_of: Callable[[Any], Any], validate: Optional[Callable[[Any], float]] = None,
        best_dir: Optional[pathlib.Path] = None, progress: bool = True) -> LoopResult:
    """Runs (or resumes) a stage's training; see the module docstring."""
    ckpts = checkpointing.Checkpoints(checkpoint_dir, spec.checkpoint_every or spec.num_steps, spec.keep_checkpoints)
    state, restored = ckpts.restore_for_training(state)
    start = int(params_step(state))
    if restored is not None and progress:
        print(f"[{spec.name}] resumed from the checkpoint of step {restored} ({checkpoint_dir})", file=sys.stderr)
    last_step = spec.last_step
    best = BestKeeper(best_dir) if validate is not None and best_dir is not None else None
    writer = MetricWriter(metrics_dir, metrics_name)
    history: list[dict] = []
    if best is not None and spec.validate_initial and start == 0:
        initial = jax.device_get(params_of(state))
        score = float(validate(initial))
        best.offer(0, score, initial)
        writer.write(0, {spec.validation_metric: score})
    rstate = runtime.replicate(state)
    bar = tqdm(total=spec.num_steps, initial=start, desc=spec.name, unit="step", file=sys.stderr,
               disable=not progress or jax.process_index() != 0)
    batches = batches_from(start)
    if ckpts.data_state is not None and hasattr(batches, "set_state"):
        batches.set_state(ckpts.data_state)  # the iterator state saved with the checkpoint (data.batches)
    pending, t0, window_start = [], time.time(), start
    for step in range(start, last_step):
        rstate, metrics = p_step(rstate, next(batches))
        pending.append(metrics)
        done = step + 1
        if done % spec.log_every == 0 or done == last_step:
            window = [{k: float(np.asarray(v)[0]) for k, v in m.items()} for m in jax.device_get(pending)]
            pending = []
            for offset, m in enumerate(window):
                if not math.isfinite(m["loss"]):
                    bar.close()
                    writer.close()
                    ckpts.close()
                    raise NanLossError(f"{spec.name}: loss became {m['loss']} at step {window_start + offset + 1}; "
                                       f"stopping. Try to {spec.nan_hint}.")
            elapsed = max(time.time() - t0, 1e-9)
            row = {k: float(np.mean([m[k] for m in window])) for k in window[-1]}
            row["steps_per_sec"] = len(window) / elapsed
            if spec.examples_per_step:
                row["flows_per_sec"] = len(window) * spec.examples_per_step / elapsed
            writer.write(done, row)
            history.append({"step": done, **row})
            bar.set_postfix({label: f"{row[key]:.3f}" for label, key in spec.postfix if key in row})
            bar.update(len(window))
            t0, window_start = time.time(), done
        if best is not None and (done % spec.eval_every == 0 or done == last_step):
            now = jax.device_get(params_of(runtime.unreplicate(rstate)))
            score = float(validate(now))
            improved = best.offer(done, score, now)
            writer.write(done, {spec.validation_metric: score})
            if progress:
                bar.write(f"[{spec.name}] step {done}: {spec.validation_label} {score:.4f}"
                          f"{' (best)' if improved else f' (best {best.score:.4f} at step {best.step})'}",
                          file=sys.stderr)
        if (spec.checkpoint_every and done % spec.checkpoint_every == 0) or done == last_step:
            ckpts.save(done, runtime.unreplicate(rstate), force=done == last_step,
                       data_state=batches.get_state() if hasattr(batches, "get_state") else None)
    bar.close()
    writer.close()
    ckpts.close()
    final = jax.device_get(runtime.unreplicate(rstate))
    params = jax.device_get(params_of(final))
    if best is not None:
        kept = best.load(params)
        if kept is not None:
            if progress:
                print(f"[{spec.name}] using the parameters of step {best.step} ({spec.validation_label} "
                      f"{best.score:.4f})", file=sys.stderr)
            params = kept
        best.close()
    return LoopResult(params=params, state=final, steps=max(start, last_step),
                      best_step=None if best is None else best.step,
                      best_score=None if best is None else best.score, history=history)


def params_step(state: Any) -> int:
    """The step counter of a state: a flax TrainState (`.step`) or a dict with a `step` entry."""
    return int(state["step"] if isinstance(state, dict) else state.step)


def logged_seconds(metrics_file: str | pathlib.Path) -> Optional[float]:
    """Seconds the loop spent on the steps logged in `metrics_file` (the JSON lines `run` writes), over every run
    that wrote to it: Σ window steps / steps_per_sec. A resumed run adds its own windows (a step logged twice — run
    again after a restart — counts once, as last logged), and a finished run that is re-invoked adds nothing, so
    this is the training time of the model, unlike the wall time of one invocation. None without logged steps."""
    path = pathlib.Path(metrics_file)
    if not path.is_file():
        return None
    rate_at: dict[int, float] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:  # a line cut short by a kill mid-write
            continue
        if row.get("steps_per_sec"):
            rate_at[int(row["step"])] = float(row["steps_per_sec"])
    seconds, previous = 0.0, 0
    for step in sorted(rate_at):
        seconds += (step - previous) / rate_at[step]
        previous = step
    return seconds if rate_at else None
