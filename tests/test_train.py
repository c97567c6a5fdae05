"""Pre-training on real captures with the tiny test config: checkpoint resume, results, evaluate CLI."""
import json

import jax
import numpy as np
import pytest

from configs import test as test_config
from pclip_jax import train as train_lib
from pclip_jax.data.prepare import prepare_flows
from pclip_jax.models.two_towers import TwoTowers
from pclip_jax.text_features import TextFeaturizer

CAPTURES = ["1kxun.pcap", "443-chrome.pcap", "443-firefox.pcap", "dns_long_domainname.pcap", "quic.pcap",
            "signal.pcap", "whatsapp_login_call.pcap", "skype.pcap", "bittorrent.pcap", "ookla.pcap",
            "google_ssl.pcap", "netflix.pcap", "teams.pcap", "zoom.pcap", "ssh.pcap", "telegram.pcap"]


def _config(ndpi_dir, minilm_dir, steps):
    config = test_config.get_config()
    config.unlock()
    present = [str(ndpi_dir / "pcap" / c) for c in CAPTURES if (ndpi_dir / "pcap" / c).is_file()]
    config.data.inputs = tuple(present)
    config.data.labels = f"ndpi:{ndpi_dir / 'result'}"
    config.text.encoder = str(minilm_dir)
    config.train.num_steps = steps
    config.train.checkpoint_every = 10
    config.train.log_every = 5
    return config


@pytest.fixture(scope="module")
def setup(ndpi_dir, minilm_dir, tmp_path_factory):
    config = _config(ndpi_dir, minilm_dir, 20)
    cache = tmp_path_factory.mktemp("cache")
    config.data.cache_dir = str(cache)
    prepared = prepare_flows(config.data, cache, progress=False)
    featurizer = TextFeaturizer(config.text.encoder, max_len=config.text.max_len)
    texts = train_lib.build_train_texts(prepared, config, featurizer, cache)
    return config, prepared, featurizer, texts


def test_split_is_capture_disjoint(setup):
    _, prepared, _, _ = setup
    assert set(prepared.split_captures["train"]).isdisjoint(prepared.split_captures["test"])
    assert len(prepared.train_idx) and len(prepared.test_idx)


def test_resume_equals_straight_run(setup, tmp_path):
    config, prepared, _, texts = setup
    model = TwoTowers(train_lib.model_config(config))
    straight, steps = train_lib.train(config, tmp_path / "a", prepared, texts, model, progress=False)
    assert steps == 20
    # Interrupt after 10 of the 20 steps (same schedule), then resume in the same workdir.
    first = config.copy_and_resolve_references()
    first.unlock()
    first.train.stop_after = 10
    train_lib.train(first, tmp_path / "b", prepared, texts, model, progress=False)
    resumed, steps_b = train_lib.train(config, tmp_path / "b", prepared, texts, model, progress=False)
    assert steps_b == 20
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The parameters moved: training did something.
    assert any(np.abs(np.asarray(a)).sum() > 0 for a in jax.tree.leaves(straight))
    lines = (tmp_path / "a" / "metrics_train.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 20 and np.isfinite(json.loads(lines[-1])["loss"])
