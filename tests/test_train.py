"""Pre-training on real captures with the tiny test config: capture-disjoint split, resume, tuned text tower."""
import dataclasses
import json

import jax
import numpy as np
import pytest

from configs import test as test_config
from pclip_jax.training import towers as embedding, loop
from pclip_jax.training import experiment
from pclip_jax.text import prompts as text_lib
from pclip_jax.training import pretrain as train_lib
from pclip_jax.models.text_tower import load_text_encoder
from pclip_jax.plumbing.settings import from_config
from pclip_jax.text.feature_cache import TextFeaturizer
from pclip_jax.plumbing.workdir import Workdir


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
    cache = tmp_path_factory.mktemp("cache")
    settings = from_config(_config(ndpi_dir, minilm_dir, 20)).replace(data={"cache_dir": str(cache)})
    prepared = experiment.prepare_experiment(settings, cache)
    featurizer = TextFeaturizer(settings.text.encoder, max_len=settings.text.max_len)
    texts = train_lib.build_train_texts(prepared, settings, featurizer, cache)
    return settings, prepared, featurizer, texts


def test_split_is_capture_disjoint(setup):
    _, prepared, _, _ = setup
    parts = prepared.split_captures
    assert set(parts["train"]).isdisjoint(parts["test"])
    assert set(parts["validation"]).isdisjoint(parts["train"]) and set(parts["validation"]).isdisjoint(parts["test"])
    assert len(prepared.train_idx) and len(prepared.test_idx)
    # Every evaluated class keeps training flows after the validation captures are carved out.
    assert set(np.unique(prepared.class_ids[prepared.train_idx])) >= set(range(len(prepared.class_names)))


def test_unlabelled_pretraining_hides_the_labels_outside_the_fraction(setup):
    """With data.fraction < 1 and data.unlabelled_pretraining, pre-training runs on every training flow of the split,
    those outside the fraction without class and with their facts as their only text; off (the default), or with
    all the data, pre-training sees exactly the fraction."""
    settings, _, featurizer, _ = setup
    cache = settings.data.cache_dir
    scarce = settings.replace(data={"fraction": 0.3, "unlabelled_pretraining": True})
    prepared = experiment.prepare_experiment(scarce, cache)
    pool, fraction = prepared.train_pool_idx, prepared.train_idx
    assert pool is not None and set(fraction) < set(pool) and len(fraction) < 0.5 * len(pool)
    view, hidden = train_lib.pretraining_flows(prepared, scarce)
    np.testing.assert_array_equal(view.train_idx, pool)
    assert hidden.sum() == len(pool) - len(fraction) and not hidden[fraction].any()
    assert (view.class_ids[hidden] == -1).all()
    np.testing.assert_array_equal(view.class_ids[fraction], prepared.class_ids[fraction])
    texts = train_lib.build_train_texts(view, scarce, featurizer, cache, hidden)
    meta = prepared.table.meta
    facts = text_lib.flow_facts_batch(
        prepared.table.tensors["sizes"][pool], prepared.table.tensors["iat"][pool],
        prepared.table.tensors["num_packets"][pool], np.asarray(meta["proto"])[pool],
        duration=np.asarray(meta["last_ts"])[pool] - np.asarray(meta["first_ts"])[pool])
    for row, i in enumerate(pool):
        chosen = {texts.texts[v] for v in texts.variants[row]}
        if hidden[i]:
            assert chosen == {facts[row]}, (i, chosen)  # no class or application description
        else:
            assert any(t != facts[row] for t in chosen) or settings.text.p_facts == 1.0
    # The probe and the GNN fit on the fraction: the prepared flows keep it.
    assert prepared.train_idx is fraction
    for off in (scarce.replace(data={"unlabelled_pretraining": False}), settings):
        same, none = train_lib.pretraining_flows(experiment.prepare_experiment(off, cache), off)
        assert none is None and len(same.train_idx) == (len(fraction) if off is not settings else len(pool))


def test_names_as_text_pair_named_flows_with_their_name_and_hide_it(setup):
    """text.name_texts: a flow with a server name gets the name's words as a pre-training text (every variant at
    probability 1), a flow without one never does; the texts that are a name's are marked, the same for the same
    seed; a flow paired with its name's text has its own name input hidden in the batch, and at 0 (the default)
    names stay in the batches and no text is a name's."""
    settings, prepared, featurizer, plain = setup
    named = settings.replace(text={"name_texts": 1.0})
    texts = train_lib.build_train_texts(prepared, named, featurizer, settings.data.cache_dir)
    server = np.asarray(prepared.table.meta["server_name"]).astype(str)[prepared.train_idx]
    assert 0 < (server != "").sum() < len(server)  # the captures hold flows with and without names
    for row, name in enumerate(server):
        chosen = [texts.texts[v] for v in texts.variants[row]]
        if name:
            assert chosen == [text_lib.name_text(name)] * len(chosen), (name, chosen)
        else:
            assert not any(t.startswith(text_lib.NAME_TEXT_PREFIX) for t in chosen)
    np.testing.assert_array_equal(texts.name_text, [t.startswith(text_lib.NAME_TEXT_PREFIX) for t in texts.texts])
    again = train_lib.build_train_texts(prepared, named, featurizer, settings.data.cache_dir)
    np.testing.assert_array_equal(again.variants, texts.variants)
    assert text_lib.name_text("r3---sn-4g5e.googlevideo.com") == "a connection to r3 sn 4g5e googlevideo com"
    assert plain.name_text is None and not any(t.startswith(text_lib.NAME_TEXT_PREFIX) for t in plain.texts)

    from pclip_jax.data.batches import BatchRecipe
    from pclip_jax.data.flow_table import NAME_KEY
    no_dropout = dataclasses.replace(settings.train,  # names dropped only by name_texts here
                                     augment=dataclasses.replace(settings.train.augment, name_dropout=0.0))
    hidden_names = [BatchRecipe.of(prepared, texts, no_dropout, 32)(step)[NAME_KEY] for step in range(3)]
    kept_names = [BatchRecipe.of(prepared, plain, no_dropout, 32)(step)[NAME_KEY] for step in range(3)]
    assert all(not v.any() for v in hidden_names)  # every named flow was paired with its name: all hidden
    assert any(v.any(axis=1).sum() > 0 for v in kept_names)


def test_finetuning_trains_a_copy_of_the_tower_with_a_class_head(setup, tmp_path):
    """train.finetune_steps: a copy of the packet tower and a zero-initialised class head learn the training
    flows' classes (the loss falls below ln C, where the zero head starts), the step with the best validation mAUC
    is kept, validation and test answers are written as the `finetuned` evaluation (probabilities over the
    evaluated classes), the pre-trained parameters are left as they were, and the same seed gives the same
    answers; 0 steps (the default) is no fine-tuning."""
    from pclip_jax.training import finetune

    settings, full, _, _ = setup
    # Validation captures carved from the training ones (the stand-in split folds its own into training).
    captures = np.asarray(full.table.meta["capture"]).astype(str)
    held = set(np.unique(captures[full.train_idx])[::4])
    in_val = np.isin(captures[full.train_idx], list(held))
    prepared = dataclasses.replace(full, train_idx=full.train_idx[~in_val], val_idx=full.train_idx[in_val])
    tuned = settings.replace(train={"finetune_steps": 24, "eval_every": 6, "finetune_learning_rate": 3e-3,
                                    "batch_size": 32})
    model = embedding.build_model(tuned)
    params = embedding.init_params(model, tuned, jax.random.PRNGKey(0))
    before = jax.tree_util.tree_map(np.array, params["packet_tower"])
    wd = Workdir(tmp_path / "a")
    report = finetune.finetune(tuned, wd, prepared, model, params, progress=False)
    classes = len(prepared.class_names)
    assert [h["step"] for h in report["history"]] == [6, 12, 18, 24]
    assert report["history"][-1]["loss"] < np.log(classes)
    assert (prepared.class_ids[prepared.val_idx] >= 0).sum() > 10
    assert report["best_step"] in (6, 12, 18, 24) and report["validation_mauc"] == max(
        h["validation_mauc"] for h in report["history"])
    answers = wd.load_answers()[finetune.EVALUATION]
    for split, idx in (("test", prepared.test_idx), ("validation", prepared.val_idx)):
        kept = np.asarray(idx)[prepared.class_ids[np.asarray(idx)] >= 0]
        assert answers[split]["scores"].shape == (len(kept), classes)
        np.testing.assert_allclose(answers[split]["scores"].sum(1), 1.0, rtol=1e-5)
        np.testing.assert_array_equal(answers[split]["y_true"], prepared.class_ids[kept])
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array,
                                                                                         params["packet_tower"]))
    again = Workdir(tmp_path / "b")
    finetune.finetune(tuned, again, prepared, model, params, progress=False)
    np.testing.assert_allclose(again.load_answers()[finetune.EVALUATION]["test"]["scores"], answers["test"]["scores"],
                               rtol=1e-5, atol=1e-6)
    assert finetune.finetune(settings, wd, prepared, model, params, progress=False) is None
    # Without validation captures: the last step.
    last = finetune.finetune(tuned, Workdir(tmp_path / "c"), full if not len(full.val_idx) else
                             dataclasses.replace(full, val_idx=full.val_idx[:0]), model, params, progress=False)
    assert last["best_step"] == 24 and all(h["validation_mauc"] is None for h in last["history"])


@pytest.mark.fresh_process
def test_resume_equals_straight_run(request, tmp_path):
    """Stopped after 10 of 20 steps and resumed, pre-training ends where a straight run does. The module's data
    fixture is taken lazily: in the suite's process this test only starts its fresh one (conftest)."""
    settings, prepared, _, texts = request.getfixturevalue("setup")
    model = embedding.build_model(settings)
    straight, steps = train_lib.pretrain(settings, Workdir(tmp_path / "a"), prepared, texts, model, progress=False)
    assert steps == 20
    # Interrupt after 10 of the 20 steps (same schedule), then resume in the same workdir.
    first = settings.replace(train={"stop_after": 10})
    train_lib.pretrain(first, Workdir(tmp_path / "b"), prepared, texts, model, progress=False)
    resumed, steps_b = train_lib.pretrain(settings, Workdir(tmp_path / "b"), prepared, texts, model, progress=False)
    assert steps_b == 20
    for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    # The parameters moved away from their initial values: training did something.
    init_rng = jax.random.split(jax.random.PRNGKey(settings.train.seed))[0]
    initial = train_lib.create_state(settings, model, init_rng, texts.features.shape[1]).params
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(straight["packet_tower"]), jax.tree.leaves(initial["packet_tower"]))]
    assert min(moved) >= 0 and np.median(moved) > 1e-4
    lines = (tmp_path / "a" / "metrics_train.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 20 and np.isfinite(json.loads(lines[-1])["loss"])
    # Training time counts both runs' logged windows (steps 1-10 and 11-20), each step once; a finished run
    # invoked again adds no time (results.json's train_seconds for a resumed job).
    rates = {}
    for line in (tmp_path / "b" / "metrics_train.jsonl").read_text().splitlines():
        row = json.loads(line)
        if "steps_per_sec" in row:
            rates[row["step"]] = row["steps_per_sec"]
    assert sorted(rates) == [5, 10, 15, 20]
    seconds = loop.logged_seconds(tmp_path / "b" / "metrics_train.jsonl")
    assert seconds == pytest.approx(sum(5 / r for r in rates.values()))
    train_lib.pretrain(settings, Workdir(tmp_path / "b"), prepared, texts, model, progress=False)
    assert loop.logged_seconds(tmp_path / "b" / "metrics_train.jsonl") == seconds
    assert loop.logged_seconds(tmp_path / "no_such_file.jsonl") is None


@pytest.mark.fresh_process
@pytest.mark.parametrize("trainable,from_scratch,dtype",
                         [(True, False, "float32"), (False, True, "float32"), (False, False, "bfloat16")])
def test_tuned_text_tower_and_bf16_train(setup, tmp_path, trainable, from_scratch, dtype):
    """The text tower can be tuned (its weights move from the pretrained ones) or trained from scratch, and
    bf16 compute trains."""
    settings, prepared, featurizer, texts = setup
    settings = settings.replace(text={"trainable": trainable, "from_scratch": from_scratch},
                                train={"dtype": dtype, "num_steps": 2})
    model = embedding.build_model(settings)
    if trainable or from_scratch:
        texts = train_lib.build_train_texts(prepared, settings, featurizer, None)
        assert texts.tokens is not None
    params, steps = train_lib.pretrain(settings, Workdir(tmp_path), prepared, texts, model, progress=False)
    assert steps == 2
    assert all(np.isfinite(np.asarray(x, np.float32)).all() for x in jax.tree.leaves(params))
    if trainable:
        pretrained = load_text_encoder(settings.text.encoder)[1]
        moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
                 for a, b in zip(jax.tree.leaves(params["text_encoder"]), jax.tree.leaves(pretrained))]
        assert max(moved) > 0
    if trainable or from_scratch:  # downstream features come from the trained encoder, under their own cache key
        tuned = embedding.text_featurizer(settings, params)
        assert tuned.identity != featurizer.identity
        emb = tuned(["an encrypted video stream"], progress=False)
        assert emb.shape[0] == 1 and np.isfinite(emb).all()
