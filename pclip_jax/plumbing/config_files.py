"""Loading experiment config files (configs/*.py) outside absl, for benchmarks and scripts."""
from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Sequence


def load_config(path: str | pathlib.Path, overrides: Sequence[str] = ()):
    """`get_config()` of a config file, with `a.b.c=value` overrides (values parsed as JSON, strings as is)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} not found")
    spec = importlib.util.spec_from_file_location(f"pclip_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected KEY=VALUE")
        node = config
        *parents, leaf = key.split(".")
        for name in parents:
            node = node[name]
        current = node[leaf]
        if isinstance(current, str):
            node[leaf] = value
        else:
            parsed = json.loads(value.lower() if isinstance(current, bool) else value)
            node[leaf] = type(current)(parsed) if current is not None else parsed
    return config
