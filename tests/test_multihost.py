"""Multi-process data parallelism on this machine: `launch/multihost.sh --local 2` (two processes with 4 CPU
devices each, a coordinator on 127.0.0.1) runs the test config end to end, and its pre-training losses and
parameters equal the single-process run on 8 devices (batches are a pure function of (seed, step), cut per process
after they are drawn), with jax.pmap and with compat.pmap's shard_map implementation ($PCLIP_DATA_PARALLEL), which
also equals it in one process."""
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from pclip_jax.training import restore as inference
from pclip_jax import job
from pclip_jax.plumbing.workdir import Workdir
from tests.conftest import REPO
from tests.test_train import _config


def _losses(workdir):
    rows = [json.loads(x) for x in (workdir / "metrics_train.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if "loss" in r]


def test_two_processes_equal_one(ndpi_dir, minilm_dir, tmp_path):
    config = _config(ndpi_dir, minilm_dir, 4)
    config.train.log_every = 1
    # One data cache for the four runs: the first fills it (flows, text features), the others only read it.
    config.data.cache_dir = str(tmp_path / "cache")
    single = tmp_path / "single"
    assert jax.device_count() == 8  # conftest: 8 CPU devices in this process
    job.train_and_evaluate(config, str(single))
    overrides = [f"--config.data.inputs={tuple(config.data.inputs)!r}", f"--config.data.labels={config.data.labels}",
                 f"--config.text.encoder={config.text.encoder}", "--config.train.num_steps=4",
                 "--config.train.checkpoint_every=10", "--config.train.log_every=1",
                 f"--config.data.cache_dir={config.data.cache_dir}"]
    p1 = jax.tree_util.tree_flatten_with_path(inference.load_towers(Workdir(single)).params)[0]
    one = _losses(single)
    single_results = json.loads((single / "results.json").read_text())
    # jax.pmap, and compat.pmap's shard_map implementation (what runs once JAX drops pmap), across two processes; and
    # shard_map in one process of 8 devices. Each runs in a process of its own, as a user's job would.
    for implementation, processes in (("pmap", 2), ("shard_map", 2), ("shard_map", 1)):
        multi = tmp_path / f"{implementation}_{processes}"
        env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
        env["PCLIP_DATA_PARALLEL"] = implementation
        if processes == 1:
            env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
            command = [sys.executable, "-m", "pclip_jax.main", "--config", str(REPO / "configs" / "test.py"),
                       "--workdir", str(multi)]
        else:
            command = [str(REPO / "launch" / "multihost.sh"), "--local", str(processes),
                       str(REPO / "configs" / "test.py"), str(multi)]
        run = subprocess.run(command + overrides, capture_output=True, text=True, env=env, timeout=1200, cwd=REPO)
        assert run.returncode == 0, run.stderr[-3000:]
        results = json.loads((multi / "results.json").read_text())
        assert results["devices"]["processes"] == processes and results["devices"]["count"] == 8
        assert results["devices"]["local"] == 8 // processes
        assert results["devices"]["data_parallel"] == implementation and "gnn" in results

        two = _losses(multi)
        assert [s for s, _ in one] == [s for s, _ in two] == [1, 2, 3, 4]
        np.testing.assert_allclose([v for _, v in two], [v for _, v in one], rtol=1e-5)
        p2 = dict((jax.tree_util.keystr(k), v)
                  for k, v in jax.tree_util.tree_flatten_with_path(inference.load_towers(Workdir(multi)).params)[0])
        for path, a in p1:
            name, b = jax.tree_util.keystr(path), np.asarray(p2[jax.tree_util.keystr(path)])
            if "['key']['bias']" in name:
                # Softmax ignores a bias added to every key: its true gradient is 0, what it gets is rounding noise
                # (reduction order differs across processes) that Adam scales to steps of the learning rate.
                lr = config.train.learning_rate
                assert np.abs(b).max() <= 4 * lr and np.abs(a).max() <= 4 * lr
                continue
            np.testing.assert_allclose(b, np.asarray(a), rtol=1e-4, atol=1e-6,
                                       err_msg=f"{implementation} x{processes} {name}")
        if processes == 1:  # the same program on the same devices: the evaluation (embedding, GNN) agrees too
            assert results["zero_shot"]["mauc"] == pytest.approx(single_results["zero_shot"]["mauc"], abs=1e-6)
            assert results["gnn"]["level1"]["mauc"] == pytest.approx(single_results["gnn"]["level1"]["mauc"],
                                                                     abs=1e-6)
