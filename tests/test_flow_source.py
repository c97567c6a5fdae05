"""Pre-training input read from a built dataset (array_record) on demand: the same rows, the same batches and the
same losses as the in-memory flow table, and a prefetcher that changes nothing but timing."""
import dataclasses
import json
import pathlib

import numpy as np
import pytest

from configs import test as test_config
import tensorflow_datasets as tfds

from pclip_jax import job
from pclip_jax.training import pretrain as train
from pclip_jax.data import flow_source, input_pipeline, tfds_builders
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.training.towers import build_model
from pclip_jax.data.flow_table import NAME_KEY
from pclip_jax.text.name_features import NameEncoder
from pclip_jax.plumbing.settings import from_config
from pclip_jax.text.feature_cache import TextFeaturizer
from pclip_jax.plumbing.workdir import Workdir
from tests.test_tfds import CAPTURES, _manual_dir

K, B = 4, 32


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, ndpi_dir, minilm_dir):
    tmp = tmp_path_factory.mktemp("flow_source")
    manual = _manual_dir(tmp / "manual", ndpi_dir, "flat")
    config = tfds_builders.TrafficConfig(name="k4_b32_x2", packets=K, bytes=B, copies=2)
    builder = tfds_builders.build("ndpi_traffic", tmp / "data", manual_dir=manual, config=config)
    cfg = test_config.get_config()
    cfg.text.encoder = str(minilm_dir)
    settings = from_config(cfg)
    return pathlib.Path(str(builder.data_dir)), settings, manual, tmp


def _in_memory(prepared):
    """The same prepared flows with every tensor read into memory."""
    tensors = {k: np.asarray(v[np.arange(len(v))]) if not isinstance(v, np.ndarray) else v
               for k, v in prepared.table.tensors.items()}
    return dataclasses.replace(prepared, table=dataclasses.replace(prepared.table, tensors=tensors))


def test_rows_equal_the_ingested_flows(dataset):
    path, settings, manual, _ = dataset
    settings = settings.replace(data={"dataset": str(path), "packets": K, "bytes": B})
    prepared = flow_source.prepare_from_dataset(settings.data, progress=False)
    assert isinstance(prepared.table.tensors["bytes"], flow_source.DiskColumn)
    assert len(prepared.train_idx) and len(prepared.val_idx) and len(prepared.test_idx)
    captures = prepared.table.meta["capture"].astype(str)
    assert not set(captures[prepared.test_idx]) & set(captures[prepared.train_idx])
    copies = np.char.startswith(captures, "copy1/")
    assert copies.sum() == (~copies).sum()  # every capture twice
    # The same flows straight from ingest (masking and all) as the dataset's rows, in any split.
    table = ingest([str(manual / "pcap")], IngestConfig(packets=K, bytes=B), progress=False)
    where = {(c, int(f)): i for i, (c, f) in enumerate(zip(table.meta["capture"], table.meta["flow_id"]))}
    rows = flow_source.TableRows(prepared.table.tensors, np.arange(len(captures)))
    pick = np.random.default_rng(0).choice(len(captures), size=16, replace=False)
    got = rows.read(pick)
    for j, r in enumerate(pick.tolist()):
        i = where[(captures[r].removeprefix("copy1/"), int(prepared.table.meta["flow_id"][r]))]
        for key in flow_source.TENSOR_KEYS:
            np.testing.assert_array_equal(got[key][j], table.tensors[key][i], err_msg=key)
    # Copies keep their flows and shift their times by a day.
    first = prepared.table.meta["first_ts"].astype(float)
    base = {(c, int(f)): t for c, f, t in zip(captures, prepared.table.meta["flow_id"], first)}
    shifted = [t - base[(c.removeprefix("copy1/"), f)] for (c, f), t in base.items() if c.startswith("copy1/")]
    assert shifted and np.allclose(shifted, 86400.0)


def test_names_per_batch_equal_names_per_table(dataset, minilm_dir):
    path, settings, _, _ = dataset
    settings = settings.replace(data={"dataset": str(path), "packets": K, "bytes": B})
    encoder = NameEncoder(str(minilm_dir))
    prepared = flow_source.prepare_from_dataset(settings.data, encoder, progress=False)
    column = prepared.table.tensors[NAME_KEY]
    assert isinstance(column, flow_source.NameColumn) and column.shape == (len(prepared.class_ids), encoder.dim)
    whole = encoder(prepared.table.meta["server_name"])
    pick = np.array([5, 0, 3, 3, len(whole) - 1])
    np.testing.assert_array_equal(column[pick], whole[pick])
    assert (prepared.table.meta["server_name"] != "").any()


def test_pretraining_from_the_dataset_equals_in_memory(dataset, tmp_path):
    path, settings, _, _ = dataset
    settings = settings.replace(data={"dataset": str(path), "packets": K, "bytes": B, "use_names": False},
                                train={"num_steps": 3, "log_every": 1, "checkpoint_every": 3, "eval_every": 0})
    on_disk = flow_source.prepare_from_dataset(settings.data, progress=False)
    featurizer = TextFeaturizer(settings.text.encoder, max_len=settings.text.max_len)
    texts = train.build_train_texts(on_disk, settings, featurizer, tmp_path)
    model = build_model(settings)
    losses = []
    for name, prepared in (("disk", on_disk), ("memory", _in_memory(on_disk))):
        wd = Workdir(tmp_path / name)
        wd.path.mkdir()
        train.pretrain(settings, wd, prepared, texts, model, progress=False)
        losses.append([json.loads(x)["loss"] for x in (wd.path / "metrics_train.jsonl").read_text().splitlines()
                       if "loss" in json.loads(x)])
    assert len(losses[0]) == 3
    assert losses[0] == losses[1]


def test_main_job_on_a_built_dataset(dataset, tmp_path):
    # The whole job (pre-training, probe, zero-shot, GNN) with data.dataset: its test flows are the dataset's.
    path, settings, _, _ = dataset
    cfg = test_config.get_config()
    cfg.text.encoder = settings.text.encoder
    cfg.data.dataset = str(path)
    results = job.train_and_evaluate(cfg, str(tmp_path / "job"))
    built = tfds.builder_from_directory(str(path))
    assert results["data"]["test_flows"] == built.info.splits["test"].num_examples
    assert results["data"]["flows"] == sum(built.info.splits[s].num_examples for s in ("train", "test"))
    assert json.loads((tmp_path / "job" / "split.json").read_text())["test"] == sorted(
        set(np.asarray(input_pipeline._stack(input_pipeline.get_many(built.as_data_source()["test"],
                                                                    np.arange(built.info.splits["test"].num_examples)),
                                              ["capture"])["capture"]).tolist()))
    assert "gnn" in results and 0 <= results["test"]["mauc"] <= 1


def test_dataset_settings_are_checked(dataset, tmp_path):
    path, settings, _, _ = dataset
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        flow_source.prepare_from_dataset(settings.replace(data={"dataset": str(tmp_path)}).data)
    with pytest.raises(ValueError, match="packets=4 but data.packets=16"):
        flow_source.prepare_from_dataset(settings.replace(data={"dataset": str(path), "packets": 16}).data)


def test_prefetcher_keeps_order_and_raises():
    import threading
    import time

    def slow_square(step):
        time.sleep(0.01 * (step % 3))  # later steps often finish first
        return step * step, threading.current_thread().name

    it = flow_source.Prefetcher(slow_square, start=5, depth=3)
    got = [next(it) for _ in range(20)]
    it.close()
    assert [v for v, _ in got] == [s * s for s in range(5, 25)]
    assert len({name for _, name in got}) > 1  # made by several threads

    def broken(step):
        if step == 2:
            raise ValueError("bad batch")
        return step

    it = flow_source.Prefetcher(broken, depth=2)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="bad batch"):
        next(it)
    it.close()
