"""Build a large benchmark capture by concatenating the real nDPI captures.

    python benchmarks/make_bench_capture.py ../shared/data/ndpi/pcap /tmp/bench.pcap --packets 1000000
    python benchmarks/make_bench_capture.py ../shared/data/ndpi/pcap /tmp/bench.pcapng --format pcapng

Only captures whose packets are all Ethernet are used, so the result is a plain Ethernet pcap (µs) that
every tool (nfstream/libpcap, scapy, this project) reads; or the same packets as a pcapng file.
Each capture is placed in its own time window:
its timestamps are shifted to start after the previous one (plus a gap longer than any idle timeout),
and gaps longer than 1000 s inside a capture are shortened to 1000 s so that the whole file stays within
32-bit seconds. The corpus is repeated until the packet target is reached; every repetition has new
timestamps, so flows of different repetitions never merge.
"""
from __future__ import annotations

import argparse
import struct
import sys
from pathlib import Path

import numpy as np

from pclip_jax.data import capture

GAP_NS = 1000 * 1_000_000_000  # > idle timeouts of all tools compared
START_NS = 1_000_000_000 * 1_000_000_000  # 2001-09-09


def load_ethernet_captures(folder: Path):
    """[(name, records)] for all-Ethernet captures: records = (ts_ns array, wirelen array, list of frames)."""
    out = []
    for path, _ in capture.find_captures([folder]):
        errors: list = []
        ts, wl, frames, ok = [], [], [], True
        for b in capture.read_batches(path, errors):
            if (b.linktype != capture.LINKTYPE_ETHERNET).any():
                ok = False
                break
            ts.append(b.ts)
            wl.append(b.wirelen)
            raw = b.buf.tobytes()
            frames.extend(raw[o:o + c] for o, c in zip(b.off.tolist(), b.caplen.tolist()))
        if ok and frames and not errors:
            out.append((path.name, np.concatenate(ts), np.concatenate(wl), frames))
    return out


def retime(ts: np.ndarray) -> np.ndarray:
    """Timestamps relative to the capture's first packet, with gaps over GAP_NS shortened to GAP_NS."""
    d = np.diff(ts, prepend=ts[0])
    d = np.clip(d, -GAP_NS, GAP_NS)
    return np.cumsum(d)


def _pcap_record(tt: int, w: int, f: bytes) -> bytes:
    return struct.pack("<IIII", tt // 1_000_000_000, (tt % 1_000_000_000) // 1000, len(f), w) + f


def _pcapng_record(tt: int, w: int, f: bytes) -> bytes:
    """An enhanced packet block (interface 0, µs timestamps, no options)."""
    us = tt // 1000
    blen = 32 + (len(f) + 3) // 4 * 4
    return (struct.pack("<IIIIIII", 6, blen, 0, us >> 32, us & 0xFFFFFFFF, len(f), w) + f
            + bytes(blen - 32 - len(f)) + struct.pack("<I", blen))


def _pcapng_head() -> bytes:
    shb = struct.pack("<IIIHHqI", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1, 28)
    idb = struct.pack("<IIHHII", 1, 20, 1, 0, 262144, 20)  # Ethernet, snaplen, no options (µs)
    return shb + idb


def write_bench(caps, out: Path, target_packets: int, fmt: str = "pcap") -> tuple[int, int]:
    """Write the repeated corpus as an Ethernet µs pcap (or pcapng); return (packets, bytes written)."""
    record = _pcapng_record if fmt == "pcapng" else _pcap_record
    n = 0
    cursor = START_NS
    with open(out, "wb") as fh:
        fh.write(_pcapng_head() if fmt == "pcapng" else struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        rep = 0
        while n < target_packets:
            for name, ts, wl, frames in caps:
                rel = retime(ts)
                t = cursor + rel - rel.min()
                for tt, w, f in zip(t.tolist(), wl.tolist(), frames):
                    fh.write(record(tt, w, f))
                n += len(frames)
                cursor = int(t.max()) + GAP_NS
                if n >= target_packets:
                    break
            rep += 1
        size = fh.tell()
    return n, size


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", help="folder of captures (e.g. ../shared/data/ndpi/pcap)")
    ap.add_argument("out", help="output .pcap")
    ap.add_argument("--packets", type=int, default=1_000_000, help="approximate number of packets")
    ap.add_argument("--format", choices=("pcap", "pcapng"), default="pcap",
                    help="pcapng: the same packets as enhanced packet blocks (Wireshark's default format)")
    args = ap.parse_args(argv)
    caps = load_ethernet_captures(Path(args.corpus))
    if not caps:
        print(f"error: no readable all-Ethernet captures in {args.corpus}", file=sys.stderr)
        return 1
    n, size = write_bench(caps, Path(args.out), args.packets, args.format)
    print(f"wrote {args.out}: {n} packets, {size / 1e6:.1f} MB, from {len(caps)} captures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
