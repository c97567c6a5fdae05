"""The ingest API and CLI: folders, workers, summary, save/load, strict mode, light start-up."""
import csv
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from pclip_jax.data.flow_table import META_COLUMNS, FlowTable
from pclip_jax.data.ingest import IngestConfig, IngestError, ingest
from tests.conftest import on_corpus

CAPTURES = ["tls_certificate_too_long.pcap", "quic_interop_V.pcapng", "KakaoTalk_chat.pcap", "nats.pcap",
            "dlt_ppp.pcap", "6in4tunnel.pcap"]


@pytest.fixture
def capture_dir(ndpi_dir, tmp_path):
    """A folder tree of captures, one truncated, plus files that are not captures."""
    root = tmp_path / "caps"
    (root / "sub").mkdir(parents=True)
    for i, name in enumerate(CAPTURES):
        shutil.copy(ndpi_dir / "pcap" / name, root / ("sub" if i % 2 else ".") / name)
    data = (ndpi_dir / "pcap" / "malware.pcap").read_bytes()
    (root / "sub" / "broken.cap").write_bytes(data[:-10])
    (root / "notes.txt").write_text("not a capture")
    # A capture without a capture suffix is found by its magic number.
    shutil.copy(ndpi_dir / "pcap" / "bjnp.pcap", root / "sub" / "bjnp.dump")
    return root


def _ingest(paths, **kw):
    return ingest(paths, IngestConfig(**kw), progress=False)


def test_folder_ingest_summary_and_columns(capture_dir):
    t = _ingest([capture_dir])
    s = t.summary
    assert s["files"] == len(CAPTURES) + 2
    assert sorted(s["per_file"]) == sorted(["tls_certificate_too_long.pcap", "sub/quic_interop_V.pcapng",
                                            "KakaoTalk_chat.pcap", "sub/nats.pcap", "dlt_ppp.pcap",
                                            "sub/6in4tunnel.pcap", "sub/broken.cap", "sub/bjnp.dump"])
    [err] = s["errors"]
    assert err["file"] == "sub/broken.cap" and "truncated" in err["reason"] and err["offset"] > 0
    assert s["per_file"]["sub/broken.cap"]["flows"] > 0  # flows before the damage are kept
    assert s["flows"] == len(t) == sum(f["flows"] for f in s["per_file"].values())
    assert s["packets"] == sum(f["packets"] for f in s["per_file"].values()) > on_corpus(1000, 500)
    assert list(t.meta)[:len(META_COLUMNS)] == list(META_COLUMNS)
    for name in set(t.meta["capture"].tolist()):
        ids = t.meta["flow_id"][t.meta["capture"] == name]
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
    # Flow ids follow first packets (these captures are in time order).
    first = t.meta["first_ts"][t.meta["capture"] == "tls_certificate_too_long.pcap"]
    assert len(first) > 10 and (np.diff(first) >= 0).all()


def test_workers_give_the_same_table(capture_dir):
    a = _ingest([capture_dir])
    b = _ingest([capture_dir], workers=2)
    assert len(a) == len(b)
    for k in a.meta:
        np.testing.assert_array_equal(a.meta[k], b.meta[k], err_msg=k)
    for k in a.tensors:
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k], err_msg=k)
    assert a.summary["errors"] == b.summary["errors"]


def test_a_capture_s_table_holds_its_flows_not_its_reading_buffers(capture_dir):
    """One capture's table owns arrays the size of its flows: the reader's generously sized output page (1,024
    flows at least) is not kept alive by a capture with a handful of flows, or a corpus of small captures holds a
    page per capture until they are joined (the 2,304 Zeek/Suricata captures: 1.3 GB instead of 165 MB)."""
    from pclip_jax.data.ingest import capture_jobs, ingest_tables

    jobs = capture_jobs([capture_dir])
    tables = list(ingest_tables(jobs, IngestConfig()))
    assert [t.summary["files"] for t in tables] == [1] * len(jobs) and sum(len(t) for t in tables) > 0
    for t in tables:
        assert len(t) < 512  # small captures: the case this is about
        for name in ("bytes", "sizes", "iat", "tcp_flags"):
            a = t.tensors[name]
            held = a.base.nbytes if isinstance(a.base, np.ndarray) else a.nbytes
            assert held <= max(a.nbytes, 1) * 2, (t.summary["per_file"], name, held, a.nbytes)
    # The per-capture tables joined are the table `ingest` returns.
    whole = _ingest([capture_dir])
    joined = FlowTable.concat(tables)
    for k in whole.tensors:
        np.testing.assert_array_equal(whole.tensors[k], joined.tensors[k], err_msg=k)


def test_strict_raises_with_the_problem(capture_dir):
    with pytest.raises(IngestError, match=r"sub/broken.cap: byte \d+: truncated"):
        _ingest([capture_dir], strict=True)


def test_save_load_select_concat_roundtrip(capture_dir, tmp_path):
    t = _ingest([capture_dir])
    t.save(tmp_path / "out")
    u = FlowTable.load(tmp_path / "out")
    assert list(u.meta) == list(t.meta) and u.stats_names == t.stats_names
    for k in t.meta:
        np.testing.assert_array_equal(u.meta[k], t.meta[k], err_msg=k)
    for k in t.tensors:
        np.testing.assert_array_equal(u.tensors[k], t.tensors[k], err_msg=k)
    assert u.summary["flows"] == len(u)
    half = u.select(np.arange(len(u)) % 2 == 0)
    rest = u.select(np.nonzero(np.arange(len(u)) % 2 == 1)[0])
    both = FlowTable.concat([half, rest])
    assert len(both) == len(u)
    np.testing.assert_array_equal(np.sort(both.meta["first_ts"]), np.sort(u.meta["first_ts"]))
    np.testing.assert_array_equal(half.tensors["bytes"], u.tensors["bytes"][::2])


def test_cli_writes_outputs_and_strict_exits_nonzero(capture_dir, tmp_path):
    out = tmp_path / "o"
    cmd = [sys.executable, "-m", "pclip_jax.ingest", str(capture_dir), "--out", str(out), "--packets", "8",
           "--bytes", "64", "--quiet"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "sub/broken.cap: byte" in r.stderr and "truncated" in r.stderr
    with open(out / "flows.csv") as fh:
        rows = list(csv.DictReader(fh))
    for col in ("capture", "proto", "client_ip", "client_port", "server_ip", "server_port", "vlan", "first_ts",
                "last_ts", "c2s_packets", "s2c_packets", "c2s_bytes", "s2c_bytes"):
        assert col in rows[0]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["flows"] == len(rows) and summary["errors"][0]["file"] == "sub/broken.cap"
    with np.load(out / "tensors.npz", allow_pickle=False) as z:
        assert z["bytes"].shape == (len(rows), 8, 64)
    strict = subprocess.run(cmd + ["--strict", "--out", str(tmp_path / "s")], capture_output=True, text=True)
    assert strict.returncode != 0
    assert "sub/broken.cap: byte" in strict.stderr and "truncated" in strict.stderr


def test_cli_no_mask_keeps_addresses(ndpi_dir, tmp_path):
    cap = str(ndpi_dir / "pcap" / "nats.pcap")
    for flag, d in (([], "m"), (["--no-mask"], "n")):
        r = subprocess.run([sys.executable, "-m", "pclip_jax.ingest", cap, "--out", str(tmp_path / d), "--quiet",
                            *flag], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    m, n = FlowTable.load(tmp_path / "m"), FlowTable.load(tmp_path / "n")
    v4 = (n.tensors["bytes"][:, 0, 0] >> 4) == 4
    assert v4.any()
    assert (m.tensors["bytes"][v4, 0, 12:20] == 0).all() and (n.tensors["bytes"][v4, 0, 12:20] != 0).any()


def test_cli_attaches_ndpi_labels(ndpi_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "pclip_jax.ingest", str(ndpi_dir / "pcap" / "KakaoTalk_chat.pcap"),
                        "--out", str(tmp_path / "o"), "--labels", f"ndpi:{ndpi_dir / 'result'}", "--quiet"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    t = FlowTable.load(tmp_path / "o")
    assert "label" in t.meta and (t.meta["label"] != "").any()


def test_ingest_path_does_not_import_jax():
    code = ("import sys, pclip_jax.ingest, pclip_jax.data.ingest, pclip_jax.data.labels; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('jax', 'flax', 'tensorflow', 'optax')]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_missing_input_is_a_clear_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pclip_jax.ingest", str(tmp_path / "nope.pcap"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 1 and "nope.pcap: no such file or folder" in r.stderr


def test_processes_sharing_a_flow_table_cache_take_turns(ndpi_dir, tmp_path):
    """Processes that need the same cached flow table at once (a multi-process job on one machine) wait for each
    other instead of racing to swap in the same directory: while this test holds the cache's lock both wait (and
    say so), then one builds the table and the other loads it."""
    import time

    from pclip_jax.data import prepare
    from pclip_jax.plumbing.files import exclusive_lock

    inputs, cache_root = [str(ndpi_dir / "pcap")], tmp_path / "cache"
    code = ("import sys, pathlib; from pclip_jax.data.ingest import IngestConfig; "
            "from pclip_jax.data.prepare import ingest_cached; "
            "print(len(ingest_cached([sys.argv[1]], '', IngestConfig(), pathlib.Path(sys.argv[2]), progress=False)))")
    logs = [tmp_path / f"stderr{i}.txt" for i in range(2)]
    with exclusive_lock(prepare.cache_lock(prepare.flow_table_cache(inputs, "", IngestConfig(), cache_root))):
        procs = [subprocess.Popen([sys.executable, "-c", code, inputs[0], str(cache_root)], stdout=subprocess.PIPE,
                                  stderr=open(log, "w"), text=True) for log in logs]
        deadline = time.time() + 300
        while not all("waiting for another process" in log.read_text() for log in logs):
            assert time.time() < deadline and all(p.poll() is None for p in procs), [x.read_text() for x in logs]
            time.sleep(0.2)
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [x.read_text()[-2000:] for x in logs]
    assert outs[0] == outs[1] and int(outs[0]) > on_corpus(5000, 300)
    assert len([d for d in cache_root.iterdir() if d.is_dir()]) == 1
