"""Reading a built flow dataset (tfds_builders.py) back as numpy: whole splits or batches. No TensorFlow.

    source = load_source("ndpi_traffic", "train", data_dir)           # random-access array_record source
    for batch in as_numpy(source, batch_size=256, shuffle=True, seed=0):
        batch["bytes"]   # uint8 [256, K, B]; text features come back as numpy str arrays
    arrays = load_split("ndpi_traffic", "test", data_dir)             # the whole split as one dict of arrays
"""
from __future__ import annotations

import pathlib
from typing import Iterator, Optional, Sequence

import numpy as np


def _dataset_dir(name: str, data_dir: pathlib.Path, config: Optional[str]) -> pathlib.Path:
    """data_dir/name/config/version of a prepared dataset (the newest version when several are there)."""
    from pclip_jax.data import tfds_builders  # here: importing it imports TensorFlow Datasets (seconds)

    cls = tfds_builders.BUILDERS.get(name)
    if cls is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(tfds_builders.BUILDERS)}")
    config = config or cls.BUILDER_CONFIGS[0].name
    base = data_dir / name / config
    versions = sorted((p for p in base.glob("*") if (p / "dataset_info.json").is_file()),
                      key=lambda p: tuple(int(x) for x in p.name.split(".") if x.isdigit()))
    if not versions:
        raise FileNotFoundError(f"{name} (config {config}) is not prepared under {data_dir}: no "
                                f"{base}/<version>/dataset_info.json; build it with "
                                f"pclip_jax.data.tfds_builders.build(...)")
    return versions[-1]


def load_source(name: str, split: str, data_dir: str | pathlib.Path, config: Optional[str] = None):
    """The random-access data source of one split of a prepared dataset (`as_data_source()[split]`).

    Reads what is on disk (features.json, array_record files), so custom configurations work too.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(str(_dataset_dir(name, pathlib.Path(data_dir), config)))
    sources = builder.as_data_source()
    if split not in sources:
        raise KeyError(f"{name} has no split {split!r}; splits: {sorted(sources)}")
    return sources[split]


def _stack(examples: Sequence[dict], keys: Optional[Sequence[str]]) -> dict[str, np.ndarray]:
    keys = list(keys) if keys else list(examples[0]) if examples else []
    out = {}
    for k in keys:
        vals = [e[k] for e in examples]
        if vals and isinstance(vals[0], bytes):
            out[k] = np.array([v.decode("utf-8", errors="replace") for v in vals], dtype=str)
        else:
            out[k] = np.stack([np.asarray(v) for v in vals]) if vals else np.zeros(0)
    return out


def get_many(source, idx: np.ndarray) -> list[dict]:
    """Examples `idx` of a random-access source, in one call where the source batches reads."""
    if hasattr(source, "__getitems__"):
        return list(source.__getitems__(idx.tolist()))
    return [source[int(i)] for i in idx]


def as_numpy(source, batch_size: int, shuffle: bool = False, seed: int = 0, drop_remainder: bool = False,
             keys: Optional[Sequence[str]] = None, num_epochs: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Batches of a random-access source as dicts of stacked numpy arrays (text as str arrays).

    `shuffle` reorders the examples per epoch with a seeded permutation (epoch e uses seed (seed, e));
    `keys` keeps only those features; `num_epochs=None` repeats forever.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n = len(source)
    epoch = 0
    while num_epochs is None or epoch < num_epochs:
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            yield _stack(get_many(source, order[start:start + batch_size]), keys)
        epoch += 1


def load_split(name: str, split: str, data_dir: str | pathlib.Path, config: Optional[str] = None,
               keys: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """A whole split as one dict of numpy arrays, in the source's order."""
    source = load_source(name, split, data_dir, config)
    return _stack(get_many(source, np.arange(len(source))), keys)
