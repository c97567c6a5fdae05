"""Every command-line entry point reports a bad input the same way: one line `error: ...` on stderr, exit status 1,
no traceback (`--verbose` adds it). Run as a user runs them, `python -m ...`, from the repository root."""
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _cli(*args, cwd=REPO):
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


# One bad input per CLI, and what its one line must name.
CASES = {
    "ingest": (["pclip_jax.ingest", "{tmp}/missing.pcap", "--out", "{tmp}/out", "--quiet"], "missing.pcap"),
    "data.build": (["pclip_jax.data.build", "ndpi_traffic", "--manual_dir", "{tmp}/missing", "--data_dir",
                    "{tmp}/dd"], "missing"),
    "kg.generate": (["pclip_jax.kg.generate", "--mission", "find VPN tunnels", "--endpoint", "http://127.0.0.1:9/v1",
                     "--model", "m", "--out", "{tmp}/kg.yaml", "--timeout", "5"], "cannot reach the endpoint"),
    "main": (["pclip_jax.main", "--config=configs/test.py", "--workdir", "{tmp}/wd", "--config.train.num_steps=0"],
             "num_steps"),
    "evaluate": (["pclip_jax.evaluate", "--workdir", "{tmp}/no_workdir", "{tmp}/x.pcap", "--labels", "folder"],
                 "no_workdir"),
    "classify": (["pclip_jax.classify", "--workdir", "{tmp}/no_workdir", "{tmp}/x.pcap"], "no_workdir"),
    "export": (["pclip_jax.export", "--workdir", "{tmp}/no_workdir", "--out", "{tmp}/export"], "no_workdir"),
}


@pytest.mark.parametrize("cli", sorted(CASES))
def test_a_bad_input_is_one_line_and_exit_1(cli, tmp_path):
    args, named = CASES[cli]
    r = _cli(*[a.format(tmp=tmp_path) for a in args])
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stderr[-2000:])
    assert len(lines) >= 1 and lines[-1].startswith("error: ") and named in lines[-1], r.stderr[-2000:]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "kg.yaml").exists()


@pytest.mark.parametrize("cli", ["ingest", "data.build", "kg.generate"])
def test_verbose_adds_the_traceback(cli, tmp_path):
    args, named = CASES[cli]
    r = _cli(*[a.format(tmp=tmp_path) for a in args], "--verbose")
    assert r.returncode == 1 and "Traceback" in r.stderr and f"error: " in r.stderr and named in r.stderr, r.stderr


def test_ingest_labels_error_names_the_spec(tmp_path):
    """A bad --labels target is one line naming the flag's value (after the captures were read)."""
    from tests.synthetic_data import build_ndpi_corpus

    root = build_ndpi_corpus(tmp_path / "ndpi", ["ftp.pcap"])
    r = _cli("pclip_jax.ingest", str(root / "pcap"), "--out", str(tmp_path / "out"), "--quiet",
             "--labels", f"ndpi:{tmp_path / 'no_results'}")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [
        f"error: --labels ndpi:{tmp_path / 'no_results'}: labels ndpi:{tmp_path / 'no_results'}: not a directory"]
