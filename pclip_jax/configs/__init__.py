"""Experiment configs shipped with the package (ml_collections `get_config()` files).

`configs/*.py` at the top of the repository re-export these, so `--config configs/quickstart.py` works in a
checkout and `--config quickstart` (a shipped name) works from any directory after `pip install .`.
"""
import pathlib

SHIPPED = ("default", "quickstart", "test", "iot_sentinel", "folder", "mixed")


def shipped_config_path(name: str) -> pathlib.Path:
    return pathlib.Path(__file__).resolve().parent / f"{name}.py"
