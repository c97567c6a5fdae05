"""Test set-up: 8 fake CPU devices for the pmap tests, and the data: the real captures and weights in ../shared
when they are there (CI has them), else small stand-ins built at test time (tests/synthetic_data.py).

Fixtures: `ndpi_dir`, `iot_dir` and `minilm_dir` give the real data or the stand-ins; `real_ndpi_dir` and
`real_minilm_dir` give the real data only and skip without it (tests of facts about the real corpus or the real
weights), as does the `real_data` marker. A threshold that is a fact about the size of the real corpus is written
`on_corpus(real, stand_in)`: the first on the real captures, the second on the stand-ins.

The data folder is ../shared, or the folder the environment variable PCLIP_SHARED names. To run the suite as a
clone without the data does (stand-ins, real-data tests skipped) where ../shared is present:

    PCLIP_SHARED=/nonexistent python -m pytest -q tests/
"""
import os

# Must happen before JAX is imported anywhere in the test session.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")


def _session_compilation_cache() -> None:
    """One persistent XLA compilation cache for the whole session, inherited by the jobs and CLIs the tests start
    as subprocesses: dozens of tests train the same tiny config, and compiling its programs was most of their time
    (a test-config job: 50 s cold, 19 s with the programs cached). Set through JAX's environment variables, so
    `runtime.restored_compilation_cache` puts this back after an entry point chose its own (a workdir's cache/xla);
    pytest-xdist's workers inherit it from the controller, so they share it too; removed when the session ends.
    PCLIP_TEST_XLA_CACHE=0 turns it off."""
    import atexit
    import shutil
    import tempfile

    if os.environ.get("PCLIP_TEST_XLA_CACHE", "1") == "0" or "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    directory = tempfile.mkdtemp(prefix="pclip_tests_xla_")
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    os.environ.update(JAX_COMPILATION_CACHE_DIR=directory, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")


_session_compilation_cache()

import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = pathlib.Path(os.environ.get("PCLIP_SHARED", REPO.parent / "shared"))
NDPI_DIR = SHARED / "data" / "ndpi"
MINILM_DIR = SHARED / "models" / "all-MiniLM-L6-v2"
IOT_DIR = SHARED / "data" / "iot_sentinel"
HAVE_NDPI = (NDPI_DIR / "pcap").is_dir()
HAVE_MINILM = (MINILM_DIR / "model.safetensors").is_file()
HAVE_IOT = IOT_DIR.is_dir()


def on_corpus(real, stand_in):
    """`real` where the tests read the real nDPI captures, `stand_in` where they read the stand-ins."""
    return real if HAVE_NDPI else stand_in


@pytest.fixture(scope="session")
def real_ndpi_dir():
    if not HAVE_NDPI:
        pytest.skip(f"real-data test: nDPI captures not found at {NDPI_DIR}")
    return NDPI_DIR


@pytest.fixture(scope="session")
def real_minilm_dir():
    if not HAVE_MINILM:
        pytest.skip(f"real-data test: all-MiniLM-L6-v2 weights not found at {MINILM_DIR}")
    return MINILM_DIR


@pytest.fixture(scope="session")
def ndpi_dir(tmp_path_factory):
    """The real nDPI captures, or stand-ins with the same names and nDPI-format results."""
    if HAVE_NDPI:
        return NDPI_DIR
    from tests.synthetic_data import build_ndpi_corpus

    return build_ndpi_corpus(tmp_path_factory.mktemp("data") / "ndpi")


@pytest.fixture(scope="session")
def iot_dir(tmp_path_factory):
    """The IoT Sentinel captures (one folder of setup captures per device), or stand-ins in the same layout."""
    if HAVE_IOT:
        return IOT_DIR
    from tests.synthetic_data import build_iot_corpus

    return build_iot_corpus(tmp_path_factory.mktemp("data") / "iot_sentinel")


@pytest.fixture(scope="session")
def minilm_dir(tmp_path_factory):
    """all-MiniLM-L6-v2, or a tiny randomly initialised BERT in the same layout."""
    if HAVE_MINILM:
        return MINILM_DIR
    from tests.synthetic_data import build_text_encoder

    return build_text_encoder(tmp_path_factory.mktemp("models") / "tiny-bert")


def pytest_configure(config):
    config.addinivalue_line("markers", "real_data: needs the real captures and weights of ../shared (facts about "
                                       "the real corpus, or not yet checked on the stand-ins); skipped without them")
    config.addinivalue_line("markers", "fresh_process: the test's body runs in a new Python process (its own JAX "
                                       "runtime and compiler state), its result reported here")


FRESH_PROCESS = "PCLIP_FRESH_PROCESS"


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """Runs a `fresh_process` test as its own pytest process. Why: after a few hundred tests had compiled their
    programs in one process, XLA:CPU's compiler segfaulted compiling the pre-training pmap step of test_train's
    tests (CI and here, three runs; each test alone passes), so the tests that train the towers start clean."""
    if not pyfuncitem.get_closest_marker("fresh_process") or os.environ.get(FRESH_PROCESS) == "1":
        return None
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", pyfuncitem.nodeid],
                          cwd=str(REPO), env={**os.environ, FRESH_PROCESS: "1"}, capture_output=True, text=True,
                          timeout=1800)
    if proc.returncode != 0 or "1 passed" not in proc.stdout:
        pytest.fail(f"{pyfuncitem.nodeid} in a fresh process: exit {proc.returncode}\n{proc.stdout[-4000:]}"
                    f"{proc.stderr[-2000:]}", pytrace=False)
    return True


def pytest_collection_modifyitems(config, items):
    if HAVE_NDPI and HAVE_MINILM:
        return
    skip = pytest.mark.skip(reason=f"real-data test: ../shared data not found at {SHARED}")
    for item in items:
        if item.get_closest_marker("real_data"):
            item.add_marker(skip)
