"""Bad input never costs the run: damaged pcapng options, impossible timestamps, FIFOs and devices, compressed
captures, header-only captures, standard input. The captures are built here (tests/capture_fuzz.py), so these tests
need nothing from ../shared."""
import bz2
import gzip
import lzma
import os
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from pclip_jax import ingest as ingest_cli
from pclip_jax.data import capture, flows
from pclip_jax.data.flow_table import FlowTable
from pclip_jax.data.ingest import ingest
from tests import capture_fuzz as cf

PACKETS = cf.conversations(n_flows=6, packets=8)
GOOD_FLOWS = 6


def _flow_rows(table: FlowTable) -> list:
    """The flows of a table without the capture name (compare the same packets read from differently named files)."""
    cols = [c for c in table.meta if c not in ("capture", "flow_id")]
    return sorted(zip(*(table.meta[c].tolist() for c in cols), table.tensors["bytes"].reshape(len(table), -1)
                      .sum(1).tolist()))


def _ingest_cli(args, capsys):
    code = ingest_cli.main([str(a) for a in args] + ["--quiet"])
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("compiled", [True, False])
def test_damaged_interface_options_are_a_capture_problem_not_a_crash(tmp_path, compiled):
    """An IDB whose last option declares more bytes than the block holds (if_tsoffset declaring 8 with none
    present; if_tsresol declaring 1): both readers report the file and the block's offset and read its packets
    with the options read before the damage (here: the default microsecond resolution)."""
    cases = {
        "tsoffset.pcapng": struct.pack("<HH", 14, 8),
        "tsresol.pcapng": struct.pack("<HH", 9, 1),
        "after_a_good_one.pcapng": cf.pcapng_option(2, b"eth0") + struct.pack("<HH", 9, 1),
    }
    for name, options in cases.items():
        path = tmp_path / name
        path.write_bytes(cf.pcapng_bytes(PACKETS, idb_options=options))
        errors = []
        got = sum(len(b) for b in capture.read_batches(path, errors, compiled=compiled))
        assert got == len(PACKETS), name
        assert len(errors) == 1 and errors[0].file == str(path), errors
        idb_offset = struct.unpack_from("<I", path.read_bytes(), 4)[0]
        assert errors[0].offset == idb_offset and "declares" in errors[0].reason, errors[0]


def test_a_damaged_capture_in_a_folder_costs_only_itself(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.pcap").write_bytes(cf.pcap_bytes(PACKETS))
    (folder / "bad_tsoffset.pcapng").write_bytes(cf.pcapng_bytes(PACKETS[:3], idb_options=struct.pack("<HH", 14, 8)))
    (folder / "bad_tsresol.pcapng").write_bytes(cf.pcapng_bytes(PACKETS[:3], idb_options=struct.pack("<HH", 9, 1)))
    code, err = _ingest_cli([folder, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert "Traceback" not in err
    assert "bad_tsoffset.pcapng: byte 28:" in err and "bad_tsresol.pcapng: byte 28:" in err
    table = FlowTable.load(tmp_path / "out")
    good = table.select(table.meta["capture"] == "good.pcap")
    assert len(good) == GOOD_FLOWS
    assert _flow_rows(good) == _flow_rows(ingest([folder / "good.pcap"], progress=False))
    assert table.summary["files"] == 3 and len(table.summary["errors"]) == 2


def test_timestamps_outside_the_epoch_range_are_dropped_and_counted_the_same_both_ways(tmp_path):
    """pcapng tick counts are 64-bit: with a coarse resolution they overflow int64 nanoseconds. Such packets are
    dropped (a made-up time would split or merge flows at random) and counted in one capture problem; the
    compiled and the reference readers agree."""
    binary_seconds = cf.pcapng_option(9, bytes([0x80 | 1])) + cf.pcapng_option(0, b"")  # 2^-1 s per tick
    base = 2 * 1_700_000_000
    ticks = [base, 2**63 + 5, base + 1, 2**64 - 1, base + 2]
    frames = [(0, f) for _, f in PACKETS[:5]]
    path = tmp_path / "times.pcapng"
    path.write_bytes(cf.pcapng_bytes(frames, idb_options=binary_seconds, ticks=ticks))
    readings = [cf.read(path, compiled=c) for c in (True, False)]
    assert cf.differences(*readings) == []
    kept = readings[0]
    assert [p[0] for p in kept.packets] == [(base + i) * 500_000_000 for i in range(3)]
    assert len(kept.errors) == 1 and "2 packet(s)" in kept.errors[0]["reason"]


def test_flow_walk_has_no_overflow_at_int64_extremes(tmp_path):
    """The UBSan reproducer: consecutive times 9e18 apart in one flow. `t - last` overflowed int64 in the compiled
    walk (3 flows compiled, 2 in the reference); now both compute the exact difference."""
    path_frames = [f for _, f in PACKETS if f[23] == 6][:3]  # three TCP packets (no SYN needed)
    same = [path_frames[2]] * 3  # one key
    path = tmp_path / "one_key.pcap"
    path.write_bytes(cf.pcap_bytes([(i, f) for i, f in enumerate(same)]))
    results = []
    for compiled in (True, False):
        tracker = flows.FlowTracker(16, 64, compiled=compiled)
        for b in capture.read_batches(path, []):
            b.ts[:] = [0, 9 * 10**18, -9 * 10**18]
            tracker.add(b, capture.parse_headers(b), 0)
        results.append(tracker.finish())
    assert len(results[0]["key"]) == len(results[1]["key"]) == 2
    for k in results[0]:
        np.testing.assert_array_equal(results[0][k], results[1][k], err_msg=k)


@pytest.mark.parametrize("suffix, compress", [
    (".gz", gzip.compress), (".xz", lzma.compress), (".bz2", bz2.compress),
    (".zst", lambda d: __import__("zstandard").ZstdCompressor().compress(d)),
])
def test_compressed_captures_read_like_the_plain_ones(tmp_path, suffix, compress, capsys):
    plain = tmp_path / "plain" / "x.pcapng"
    plain.parent.mkdir()
    plain.write_bytes(cf.pcapng_bytes(PACKETS))
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / f"x.pcapng{suffix}").write_bytes(compress(plain.read_bytes()))
    (folder / f"unnamed{suffix}").write_bytes(compress(cf.pcap_bytes(PACKETS)))  # found by its magic bytes
    (folder / f"notes.txt{suffix}").write_bytes(compress(b"not a capture"))
    code, err = _ingest_cli([folder, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    table = FlowTable.load(tmp_path / "out")
    assert sorted(set(table.meta["capture"])) == sorted([f"unnamed{suffix}", f"x.pcapng{suffix}"])
    expected = _flow_rows(ingest([plain], progress=False))
    for name in set(table.meta["capture"]):
        assert _flow_rows(table.select(table.meta["capture"] == name)) == expected, name
    assert [s["file"] for s in table.summary["skipped_files"]] == [str(folder / f"notes.txt{suffix}")]


def test_a_damaged_compressed_stream_keeps_the_packets_before_the_damage(tmp_path):
    data = gzip.compress(cf.pcap_bytes(PACKETS))
    path = tmp_path / "cut.pcap.gz"
    path.write_bytes(data[:len(data) * 2 // 3])
    errors = []
    got = sum(len(b) for b in capture.read_batches(path, errors))
    assert 0 < got < len(PACKETS) and len(errors) == 1 and errors[0].file == str(path)


def test_header_only_and_empty_captures_are_reported(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "header.pcap").write_bytes(cf.pcap_bytes([]))
    (folder / "header.pcapng").write_bytes(cf.pcapng_bytes([]))
    (folder / "empty.pcap").write_bytes(b"")
    (folder / "good.pcap").write_bytes(cf.pcap_bytes(PACKETS))
    code, err = _ingest_cli([folder, "--out", tmp_path / "out"], capsys)
    assert code == 0
    reasons = {e["file"]: e["reason"] for e in FlowTable.load(tmp_path / "out").summary["errors"]}
    assert reasons["header.pcap"].startswith("no packets") and reasons["header.pcapng"].startswith("no packets")
    assert reasons["empty.pcap"] == "empty file"
    assert "good.pcap" not in reasons


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifos_and_devices_never_hang(tmp_path, capsys, monkeypatch):
    """In a folder a FIFO and a link to a character device are named and skipped (opening a FIFO blocks until a
    writer comes); named as inputs they are read as streams, and a FIFO with no writer is a capture problem after
    the wait, not a hang."""
    monkeypatch.setattr(capture, "STREAM_FIRST_BYTE_SECONDS", 0.5)
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "good.pcap").write_bytes(cf.pcap_bytes(PACKETS))
    os.mkfifo(folder / "live.pcap")
    (folder / "zero.pcap").symlink_to("/dev/zero")
    code, err = _ingest_cli([folder, "--out", tmp_path / "out"], capsys)
    assert code == 0
    assert f"{folder / 'live.pcap'}: skipped: a FIFO" in err
    assert f"{folder / 'zero.pcap'}: skipped: a character device (through a link)" in err
    table = FlowTable.load(tmp_path / "out")
    assert set(table.meta["capture"]) == {"good.pcap"}
    assert {s["file"] for s in table.summary["skipped_files"]} == {str(folder / "live.pcap"), str(folder / "zero.pcap")}
    # No writer: reported after the wait.
    code, err = _ingest_cli([folder / "live.pcap", "--out", tmp_path / "out2"], capsys)
    assert code == 0 and "live.pcap: byte 0: cannot open: no data after 0.5 s" in err
    # A writer: read as a stream, the same flows as the file.
    writer = threading.Thread(target=lambda: (folder / "live.pcap").write_bytes(cf.pcap_bytes(PACKETS)))
    writer.start()
    code, err = _ingest_cli([folder / "live.pcap", "--out", tmp_path / "out3"], capsys)
    writer.join()
    assert code == 0, err
    assert _flow_rows(FlowTable.load(tmp_path / "out3")) == _flow_rows(table)


def test_standard_input_equals_the_file(tmp_path):
    data = cf.pcapng_bytes(PACKETS)
    (tmp_path / "x.pcapng").write_bytes(data)
    proc = subprocess.run([sys.executable, "-m", "pclip_jax.ingest", "-", "--out", str(tmp_path / "out"), "--quiet"],
                          input=gzip.compress(data), capture_output=True, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    table = FlowTable.load(tmp_path / "out")
    assert set(table.meta["capture"]) == {"-"}
    assert _flow_rows(table) == _flow_rows(ingest([tmp_path / "x.pcapng"], progress=False))


def test_short_mutation_run_finds_nothing():
    """A few hundred mutants of the built seeds (python -m tests.capture_fuzz runs as many as asked): no exception,
    no hang, compiled = reference, no good packet lost."""
    counts = cf.run(cf.seed_captures(), mutants=320, seed=1)
    assert counts.clean(), counts.failures[:5]
    assert counts.mutants == 320 and counts.capture_problems > 0 and counts.packets_read > 0


def test_the_mutation_harness_finds_a_damaged_option_crash(monkeypatch):
    """The harness is not blind: with the pre-fix option parser (no length check) it reports exceptions."""
    def unchecked(opts, bo):
        num, den, offset, p = 1000, 1, 0, 0
        while p + 4 <= len(opts):
            code, ln = struct.unpack_from(bo + "HH", opts, p)
            if code == 0:
                break
            val = opts[p + 4:p + 4 + ln]
            if code == 9 and ln >= 1:
                num, den = 10 ** (9 - min(val[0], 9)), 1
            elif code == 14 and ln == 8:
                offset = struct.unpack(bo + "q", val)[0]
            p += 4 + ((ln + 3) & ~3)
        return num, den, offset, None

    monkeypatch.setattr(capture, "_tsres_ns", unchecked)
    counts = cf.run({"u.pcapng": cf.seed_captures()["unterminated.pcapng"]}, mutants=120, seed=0)
    assert counts.exceptions > 0
