"""Live classification through a pipe, one core: sustained packets/s and flows/s, answer latency, memory over time,
against nfstream + nDPI on the same capture.

    python benchmarks/live_classify.py CAPTURE --model EXPORT [--rate PPS] [--seconds S] [--json OUT]

A replayer writes CAPTURE as a pcap stream into `python -m pclip_jax.classify --backend onnx --model EXPORT -`
(a child pinned to one core, one onnxruntime thread), stamping each packet with the wall-clock time it is written,
so a record's `last_ts` (the newest packet its answer saw) gives the answer's latency when the record is read back.
The capture is replayed in a loop until `--seconds` have passed (each pass with the IPv4/IPv6 addresses' first byte
changed, so its flows are new flows; addresses are masked in the model's inputs, so answers do not change).

* `--rate 0` (default): as fast as the pipe takes it. A pipe never drops a packet: the writer blocks when classify
  falls behind, so the packets/s reached is the rate classify sustains with no loss (and the stream's packet count
  is checked against what classify reports reading).
* `--rate R`: packets paced at R/s; latency is then the answer delay at that load (p50, p99 from each answer's
  newest packet to its line).
* Peak RSS of the child is sampled every 0.5 s: at 1 minute, at the end of every minute and at the end (flat
  memory: a ratio near 1 once the flow table has filled, i.e. after the idle timeout, 120 s by default).
* nfstream + nDPI: the same capture file (one pass), one core (`benchmarks/classify_throughput.py`'s child).
"""
from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.classify_throughput import ONE_THREAD, _pin, run_nfstream  # noqa: E402
from pclip_jax.data import capture  # noqa: E402


def load_frames(path: str) -> tuple[int, list[bytes]]:
    """(link type, frames) of a capture with one link type."""
    errors: list = []
    frames, linktypes = [], set()
    for b in capture.read_batches(path, errors):
        raw = b.buf.tobytes()
        linktypes |= set(b.linktype.tolist())
        frames += [raw[o:o + c] for o, c in zip(b.off.tolist(), b.caplen.tolist())]
    if len(linktypes) != 1:
        raise SystemExit(f"{path}: needs one link type, has {sorted(linktypes)}")
    return linktypes.pop(), frames


def _ip_offset(frame: bytes, linktype: int) -> int | None:
    if linktype == capture.LINKTYPE_ETHERNET:
        off, etype = 14, frame[12:14]
        while etype in (b"\x81\x00", b"\x88\xa8") and len(frame) >= off + 4:
            etype, off = frame[off + 2:off + 4], off + 4
        return off if etype in (b"\x08\x00", b"\x86\xdd") else None
    return 0 if linktype in (capture.LINKTYPE_RAW, capture.LINKTYPE_IPV4, capture.LINKTYPE_IPV6) else None


def renumber(frame: bytes, linktype: int, lap: int) -> bytes:
    """The frame with the first byte of both IP addresses moved by `lap` (a new flow key per pass)."""
    if not lap:
        return frame
    off = _ip_offset(frame, linktype)
    if off is None or len(frame) < off + 40:
        return frame
    b = bytearray(frame)
    version = b[off] >> 4
    src, dst = (off + 12, off + 16) if version == 4 else (off + 8, off + 24) if version == 6 else (None, None)
    if src is None:
        return frame
    b[src] = (b[src] + lap) & 0xFF
    b[dst] = (b[dst] + lap) & 0xFF
    return bytes(b)


def replay(pipe, frames: list[bytes], linktype: int, rate: float, seconds: float, stats: dict) -> None:
    """Write pcap records into `pipe` until `seconds` have passed (whole passes over `frames` at least once)."""
    pipe.write(struct.pack("<IHHiIII", 0xA1B23C4D, 2, 4, 0, 0, 262144, linktype))  # nanosecond pcap
    t0 = time.time()
    sent = 0
    lap = 0
    buf = []
    while True:
        for frame in frames:
            now = time.time()
            if rate > 0:
                due = t0 + sent / rate
                if due > now:
                    if buf:
                        pipe.write(b"".join(buf))
                        pipe.flush()
                        buf = []
                    time.sleep(due - now)
                    now = time.time()
            ns = int(now * 1e9)
            f = renumber(frame, linktype, lap)
            buf.append(struct.pack("<IIII", ns // 1_000_000_000, ns % 1_000_000_000, len(f), len(f)) + f)
            sent += 1
            if len(buf) >= (64 if rate <= 0 else 8):
                pipe.write(b"".join(buf))
                buf = []
        lap += 1
        if time.time() - t0 >= seconds:
            break
    if buf:
        pipe.write(b"".join(buf))
    pipe.flush()
    stats.update(packets_sent=sent, passes=lap, send_seconds=time.time() - t0)
    pipe.close()


def read_records(stream, stats: dict) -> None:
    latencies, flows, finals, kinds = [], 0, 0, {}
    for line in stream:
        now = time.time()
        r = json.loads(line)
        if r.get("final"):
            finals += 1
            continue
        flows += 1
        kinds[r["answer"]] = kinds.get(r["answer"], 0) + 1
        if r["answer"] == "early":  # answered at its K-th packet; the others wait for their flow's end by design
            latencies.append(now - r["last_ts"])
    stats.update(flows=flows, finals=finals, answers=kinds, latencies=latencies, read_done=time.time())


def sample_rss(pid: int, stats: dict, start: float) -> None:
    """Peak RSS of the child so far, at 1 minute and at the end of every minute (`peak_rss_mb_by_minute`)."""
    peak, at_minute = 0, None
    by_minute: list[float] = []
    status = Path(f"/proc/{pid}/status")
    while True:
        try:
            text = status.read_text()
        except OSError:
            break
        kb = next((int(line.split()[1]) for line in text.splitlines() if line.startswith("VmRSS:")), 0)
        peak = max(peak, kb)
        if at_minute is None and time.time() - start >= 60:
            at_minute = peak
        while time.time() - start >= 60 * (len(by_minute) + 1):
            by_minute.append(peak / 1024)
        stats["peak_rss_mb"] = peak / 1024
        stats["peak_rss_mb_at_1_min"] = None if at_minute is None else at_minute / 1024
        stats["peak_rss_mb_by_minute"] = by_minute
        time.sleep(0.5)


def _quantile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def run_live(capture_path: str, model: str, rate: float, seconds: float, extra: list[str]) -> dict:
    linktype, frames = load_frames(capture_path)
    cmd = [sys.executable, "-m", "pclip_jax.classify", "--backend", "onnx", "--model", model, "-", "--quiet",
           "--threads", "1", *extra]
    child = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=_pin, env={**os.environ, **ONE_THREAD}, text=False)
    stats: dict = {}
    start = time.time()
    sampler = threading.Thread(target=sample_rss, args=(child.pid, stats, start), daemon=True)
    reader = threading.Thread(target=read_records, args=(child.stdout, stats), daemon=True)
    sampler.start()
    reader.start()
    # The models load first (seconds): the replay starts when classify says it reads, so no answer's latency holds
    # the load time.
    err_lines = []
    for line in child.stderr:
        err_lines.append(line.decode())
        if line.startswith(b"[live] models loaded") or child.poll() is not None:
            break
    errs = threading.Thread(target=lambda: err_lines.extend(x.decode() for x in child.stderr), daemon=True)
    errs.start()
    replay(child.stdin, frames, linktype, rate, seconds, stats)
    _, status, usage = os.wait4(child.pid, 0)
    child.returncode = os.waitstatus_to_exitcode(status)
    cpu = usage.ru_utime + usage.ru_stime
    reader.join()
    errs.join()
    err = "".join(err_lines)
    if child.returncode != 0:
        raise SystemExit(f"classify failed (exit {child.returncode}):\n{err[-3000:]}")
    import re
    m = re.search(r"stream: ([\d,]+) packets", err)
    read_packets = int(m.group(1).replace(",", "")) if m else None
    wall = stats["read_done"] - start
    lat = stats.pop("latencies")
    out = {"rate_asked": rate, "seconds": seconds, "packets_sent": stats["packets_sent"],
           "packets_read_by_classify": read_packets, "lost_packets": None if read_packets is None else
           stats["packets_sent"] - read_packets, "passes": stats["passes"], "wall_seconds": wall,
           "packets_per_s": stats["packets_sent"] / wall, "flows": stats["flows"], "flows_per_s": stats["flows"] / wall,
           "cpu_seconds": cpu, "packets_per_cpu_s": stats["packets_sent"] / cpu, "flows_per_cpu_s": stats["flows"] / cpu,
           "answers": stats["answers"], "latency_p50_ms": 1000 * _quantile(lat, 0.5),
           "latency_p99_ms": 1000 * _quantile(lat, 0.99), "peak_rss_mb": stats.get("peak_rss_mb"),
           "peak_rss_mb_at_1_min": stats.get("peak_rss_mb_at_1_min"),
           "peak_rss_mb_by_minute": stats.get("peak_rss_mb_by_minute", [])}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("capture", help="a capture with one link type (benchmarks/make_bench_capture.py makes one)")
    ap.add_argument("--model", required=True, help="an export of python -m pclip_jax.export")
    ap.add_argument("--rate", type=float, nargs="*", default=[0.0], help="packets/s (0: as fast as it takes)")
    ap.add_argument("--seconds", type=float, default=0.0, help="replay in a loop at least this long (0: one pass)")
    ap.add_argument("--skip-nfstream", action="store_true")
    ap.add_argument("--json", default=None, help="write the figures here")
    args, extra = ap.parse_known_args(argv)
    results = {"capture": args.capture, "model": args.model, "runs": []}
    if not args.skip_nfstream:
        nf = run_nfstream([args.capture])
        nf["flows_per_s"] = nf["flows"] / nf["seconds"]
        results["nfstream_ndpi"] = nf
        print(f"nfstream + nDPI (file, one core): {nf['flows']:,} flows in {nf['seconds']:.2f} s = "
              f"{nf['flows_per_s']:,.0f} flows/s ({nf['flows'] / nf['cpu_seconds']:,.0f} per CPU second)")
    for rate in args.rate:
        r = run_live(args.capture, args.model, rate, args.seconds, extra)
        results["runs"].append(r)
        ratio = ""
        if "nfstream_ndpi" in results:
            nf = results["nfstream_ndpi"]
            r["flows_per_s_vs_nfstream"] = r["flows_per_s"] / nf["flows_per_s"]
            r["flows_per_cpu_s_vs_nfstream"] = r["flows_per_cpu_s"] / (nf["flows"] / nf["cpu_seconds"])
            ratio = (f", {r['flows_per_s_vs_nfstream']:.2f}x nfstream + nDPI flows/s "
                     f"({r['flows_per_cpu_s_vs_nfstream']:.2f}x per CPU second)")
        print(f"live, rate {'max' if rate <= 0 else f'{rate:,.0f}/s'}: {r['packets_sent']:,} packets in "
              f"{r['wall_seconds']:.1f} s = {r['packets_per_s']:,.0f} packets/s ({r['packets_per_cpu_s']:,.0f} per CPU "
              f"second), {r['flows']:,} flows = "
              f"{r['flows_per_s']:,.0f} flows/s{ratio}; lost packets {r['lost_packets']}; latency p50 "
              f"{r['latency_p50_ms']:.1f} ms, p99 {r['latency_p99_ms']:.1f} ms; peak RSS {r['peak_rss_mb']:.0f} MB"
              + (f" ({r['peak_rss_mb_at_1_min']:.0f} MB at 1 min)" if r["peak_rss_mb_at_1_min"] else "")
              + (f"; peak RSS at the end of each minute: {', '.join(f'{m:.0f}' for m in r['peak_rss_mb_by_minute'])} MB"
                 if len(r["peak_rss_mb_by_minute"]) > 1 else "")
              + f"; answers {r['answers']}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
