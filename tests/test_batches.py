"""The fast input pipeline: a built dataset's fixed layout reads the same rows as its tf.Examples, batches are a
pure function of (seed, step) whether threads or worker processes (Grain) make them, and a run killed and resumed
reads the same batches as one that ran straight, through the iterator state its checkpoint keeps."""
import dataclasses
import json
import shutil

import numpy as np
import pytest

from pclip_jax.plumbing import checkpointing
from pclip_jax.training import pretrain as train
from pclip_jax.data import batches as batches_lib
from pclip_jax.data import fixed, flow_source
from pclip_jax.training.towers import build_model
from pclip_jax.text.feature_cache import TextFeaturizer
from pclip_jax.plumbing.workdir import Workdir
from tests.test_flow_source import B, K, dataset  # noqa: F401  (the module-scoped built dataset)


@pytest.fixture(scope="module")
def with_fixed(dataset, tmp_path_factory):  # noqa: F811
    """A copy of the built dataset with its fixed layout written (the original stays tf.Examples only)."""
    path, settings, _, _ = dataset
    copy = tmp_path_factory.mktemp("fixed") / "dataset"
    shutil.copytree(path, copy)
    fixed.write_fixed(copy, chunk=64, progress=False)  # several chunks a split
    return copy, settings.replace(data={"dataset": str(copy), "packets": K, "bytes": B, "use_names": False})


def test_fixed_reader_equals_the_tfds_reader(with_fixed):
    path, settings = with_fixed
    fast = flow_source.prepare_from_dataset(settings.data, progress=False)
    slow = flow_source.prepare_from_dataset(settings.replace(data={"reader": "tfds"}).data, progress=False)
    assert isinstance(fast.table.tensors["bytes"], fixed.FixedColumn)
    assert isinstance(slow.table.tensors["bytes"], flow_source.DiskColumn)
    np.testing.assert_array_equal(fast.train_idx, slow.train_idx)
    column, reference = fast.table.tensors["bytes"], slow.table.tensors["bytes"]
    assert column.shape == reference.shape and column.dtype == reference.dtype == np.uint8
    every = np.arange(len(column))
    np.testing.assert_array_equal(column[every], reference[every])  # train then test rows, in the source's order
    assert column[every].any()  # real packet bytes, not zeros on both sides
    mixed = np.random.default_rng(0).choice(len(column), size=50)  # rows of both splits in one read, repeated
    np.testing.assert_array_equal(column[mixed], reference[mixed])
    with pytest.raises(IndexError):
        column[np.array([0, len(column)])]
    # A training batch is the same from either reader.
    texts = train.TrainTexts(features=np.random.default_rng(1).standard_normal((7, 5)).astype(np.float32),
                             variants=np.random.default_rng(2).integers(0, 7, (len(fast.train_idx), 2)),
                             texts=[""] * 7)
    for step in (0, 3):
        a = batches_lib.BatchRecipe.of(fast, texts, settings.train, 16)(step)
        b = batches_lib.BatchRecipe.of(slow, texts, settings.train, 16)(step)
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_fixed_layout_is_checked(with_fixed, dataset, tmp_path):  # noqa: F811
    path, settings = with_fixed
    original = dataset[0]
    with pytest.raises(FileNotFoundError, match="no fixed layout"):
        flow_source.prepare_from_dataset(settings.replace(data={"dataset": str(original), "reader": "fixed"}).data,
                                         progress=False)
    # A fixed layout written from other array_record files (the dataset rebuilt since): stale, never read.
    stale = tmp_path / "stale"
    shutil.copytree(path, stale)
    manifest = json.loads((stale / "fixed" / "manifest.json").read_text())
    files = manifest["splits"]["train"]["source_files"]
    files[next(iter(files))] += 1
    (stale / "fixed" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(fixed.StaleFixedError, match="rebuilt since"):
        fixed.open_fixed(stale)
    auto = flow_source.prepare_from_dataset(settings.replace(data={"dataset": str(stale)}).data, progress=False)
    assert isinstance(auto.table.tensors["bytes"], flow_source.DiskColumn)  # auto falls back, saying so
    fixed.write_fixed(stale, progress=False)  # and writing it again makes it current
    assert fixed.open_fixed(stale)["train"]["bytes"].shape[0] == len(auto.train_idx) + len(auto.val_idx)


def _recipe(with_fixed, batch=16):
    _, settings = with_fixed
    prepared = flow_source.prepare_from_dataset(settings.data, progress=False)
    rng = np.random.default_rng(3)
    texts = train.TrainTexts(features=rng.standard_normal((9, 6)).astype(np.float32),
                             variants=rng.integers(0, 9, (len(prepared.train_idx), 3)), texts=[""] * 9)
    augment = settings.train.augment.__class__(iat_scale=2.0, byte_dropout=0.1, packet_dropout=0.2)
    return batches_lib.BatchRecipe.of(prepared, texts, settings.train.__class__(augment=augment), batch)


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_batches_are_a_function_of_seed_and_step(with_fixed):
    recipe = _recipe(with_fixed)
    reference = [recipe(step) for step in range(6)]
    assert not _equal(reference[0], reference[1])  # steps differ
    other_seed = dataclasses.replace(recipe, seed=1)
    assert not _equal(other_seed(0), reference[0]) and _equal(other_seed(0), other_seed(0))
    # Threads, two worker processes (Grain, spawned: the recipe pickled, the fixed layout reopened there), and a
    # start in the middle: the same batches, in step order.
    for workers, start in ((0, 0), (2, 0), (1, 3)):
        feed = batches_lib.StepBatches(recipe, start, stop=6, workers=workers, prefetch=2)
        try:
            got = list(feed)
        finally:
            feed.close()
        assert len(got) == 6 - start
        for step, batch in zip(range(start, 6), got):
            assert _equal(batch, reference[step]), (workers, step)
    # Two processes, each making its own half of the global batch, make the one batch between them.
    halves = [dataclasses.replace(recipe, mine=part) for part in (slice(0, 8), slice(8, 16))]
    joined = {k: np.concatenate([h(4)[k] for h in halves]) for k in reference[4]}
    assert _equal(joined, reference[4])


def test_iterator_state_restarts_where_it_says(with_fixed):
    recipe = _recipe(with_fixed)
    feed = batches_lib.StepBatches(recipe, 0, stop=10, prefetch=3)
    next(feed), next(feed)
    state = feed.get_state()
    assert state == {"next_step": 2, "fingerprint": recipe.fingerprint()}
    other = batches_lib.StepBatches(recipe, 0, stop=10)
    other.set_state({**state, "next_step": 7})
    assert _equal(next(other), recipe(7)) and _equal(next(feed), recipe(2))
    feed.close(), other.close()
    changed = dataclasses.replace(recipe, class_balance=0.0)
    assert changed.fingerprint() != recipe.fingerprint()


def test_killed_run_resumes_the_same_batches(with_fixed, tmp_path, monkeypatch):
    """Pre-training stopped at step 4 of 8 (a preemption) in worker processes, resumed with threads: the batches of
    steps 5-8 are those of the straight run (recorded as they reach the step), the checkpoint holds the iterator
    state, and the losses match step for step."""
    path, settings = with_fixed
    settings = settings.replace(train={"num_steps": 8, "log_every": 1, "checkpoint_every": 4, "eval_every": 0,
                                       "batch_size": 16})
    prepared = flow_source.prepare_from_dataset(settings.data, progress=False)
    featurizer = TextFeaturizer(settings.text.encoder, max_len=settings.text.max_len)
    texts = train.build_train_texts(prepared, settings, featurizer, tmp_path)
    model = build_model(settings)
    seen = {}
    real_next = batches_lib.StepBatches.__next__

    def recording_next(self):
        step = self.next_step
        batch = real_next(self)
        seen.setdefault(run, []).append((step, {k: np.asarray(v) for k, v in batch.items()}))
        return batch

    monkeypatch.setattr(batches_lib.StepBatches, "__next__", recording_next)

    def losses(wd):
        rows = [json.loads(x) for x in (wd.path / "metrics_train.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    run = "straight"
    straight = Workdir(tmp_path / "straight")
    train.pretrain(settings, straight, prepared, texts, model, progress=False)
    run = "killed"
    resumed = Workdir(tmp_path / "resumed")
    train.pretrain(settings.replace(train={"stop_after": 4, "workers": 2}), resumed, prepared, texts, model,
                   progress=False)
    ckpts = checkpointing.Checkpoints(resumed.checkpoints, writable=False)
    try:
        ckpts.restore()
        assert ckpts.data_state["next_step"] == 4 and ckpts.data_state["fingerprint"]
    finally:
        ckpts.close()
    run = "resumed"
    train.pretrain(settings, resumed, prepared, texts, model, progress=False)
    assert [s for s, _ in seen["straight"]] == list(range(8))
    assert [s for s, _ in seen["killed"]] == list(range(4)) and [s for s, _ in seen["resumed"]] == list(range(4, 8))
    for (step, a), (_, b) in zip(seen["straight"], seen["killed"] + seen["resumed"]):
        assert _equal(a, b), step
    a, b = losses(straight), losses(resumed)
    assert sorted(a) == sorted(b) == list(range(1, 9))
    np.testing.assert_allclose([b[s] for s in range(1, 9)], [a[s] for s in range(1, 9)], rtol=1e-5)
