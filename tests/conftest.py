"""Test set-up: 8 fake CPU devices for the pmap tests, and paths to the real data in ../shared."""
import os

# Must happen before JAX is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("PCLIP_SHARED", REPO.parent / "shared"))
NDPI_DIR = SHARED / "data" / "ndpi"
MINILM_DIR = SHARED / "models" / "all-MiniLM-L6-v2"


@pytest.fixture(scope="session")
def ndpi_dir():
    if not (NDPI_DIR / "pcap").is_dir():
        pytest.skip(f"nDPI captures not found at {NDPI_DIR}")
    return NDPI_DIR


@pytest.fixture(scope="session")
def minilm_dir():
    if not (MINILM_DIR / "model.safetensors").is_file():
        pytest.skip(f"all-MiniLM-L6-v2 weights not found at {MINILM_DIR}")
    return MINILM_DIR
