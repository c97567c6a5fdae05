"""Capture builders for damaged input, and a mutation harness for ingest (a test tool and a script).

Builders write small pcap / pcapng files byte by byte (so a test can put a damaged option or an impossible
timestamp exactly where it wants), from frames made here: no capture from ../shared is needed.

The harness mutates seed captures (byte flips, extreme length and timestamp fields, truncation, records cut out
or repeated, pcapng options that overrun their block) and checks, for every mutant:
  * reading never raises and never hangs (a per-mutant alarm);
  * the compiled record walk / header parser / flow tracker (`_capture_c`) give exactly what the Python/numpy
    reference gives: packets, parsed headers, flows and problems;
  * no good packet is lost: every record that ends before the first mutated byte is read unchanged.

In the suite (tests/test_bad_input.py) a few hundred mutants run; as a script, as many as asked:

    python -m tests.capture_fuzz --mutants 20000 [--seed 0] [CAPTURE_OR_FOLDER ...]

With an AddressSanitizer + UndefinedBehaviorSanitizer build of the extension the same run also finds memory
errors and undefined behaviour in the C code (docs/architecture.md, "Fuzzing ingest").
"""
from __future__ import annotations

import argparse
import dataclasses
import random
import signal
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from pclip_jax.data import capture, flows

# ------------------------------------------------------------------------------------------------------------
# Frames and files


def ipv4_tcp(src: int, dst: int, sport: int, dport: int, flags: int = 0x18, payload: bytes = b"",
             seq: int = 1, ack: int = 0) -> bytes:
    """An Ethernet frame holding an IPv4/TCP segment (checksums left zero: ingest does not check them)."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0,
                     src.to_bytes(4, "big"), dst.to_bytes(4, "big")) + tcp
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip


def ipv4_udp(src: int, dst: int, sport: int, dport: int, payload: bytes = b"") -> bytes:
    udp = struct.pack(">HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     src.to_bytes(4, "big"), dst.to_bytes(4, "big")) + udp
    return b"\x02\x00\x00\x00\x00\x01" + b"\x02\x00\x00\x00\x00\x02" + b"\x08\x00" + ip


def conversations(n_flows: int = 6, packets: int = 8, start_ns: int = 1_700_000_000 * 10**9,
                  seed: int = 0) -> list[tuple[int, bytes]]:
    """(timestamp ns, Ethernet frame) of `n_flows` two-way conversations (TCP with a handshake and data both ways,
    and UDP request/response), interleaved in time."""
    rng = random.Random(seed)
    out = []
    for f in range(n_flows):
        client, server = 0x0A000001 + f, 0xC0A80001 + f % 3
        sport, t = 40000 + f, start_ns + f * 7_000_000
        if f % 3 == 2:  # UDP
            for i in range(packets):
                up = i % 2 == 0
                payload = bytes(rng.randrange(256) for _ in range(20 + rng.randrange(200)))
                frame = ipv4_udp(client, server, sport, 53, payload) if up else ipv4_udp(server, client, 53, sport,
                                                                                        payload)
                out.append((t + i * 1_000_000, frame))
            continue
        out.append((t, ipv4_tcp(client, server, sport, 443, 0x02)))
        out.append((t + 1_000_000, ipv4_tcp(server, client, 443, sport, 0x12)))
        out.append((t + 2_000_000, ipv4_tcp(client, server, sport, 443, 0x10)))
        for i in range(3, packets):
            up = i % 2 == 1
            payload = bytes(rng.randrange(256) for _ in range(30 + rng.randrange(600)))
            frame = ipv4_tcp(client, server, sport, 443, 0x18, payload) if up else \
                ipv4_tcp(server, client, 443, sport, 0x18, payload)
            out.append((t + i * 1_000_000, frame))
    return sorted(out, key=lambda x: x[0])


def pcap_bytes(packets, linktype: int = 1, byteorder: str = "<", nano: bool = False) -> bytes:
    """A classic pcap file of (ts ns, frame) pairs."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype)]
    for t, frame in packets:
        frac = t % 10**9 if nano else (t % 10**9) // 1000
        out.append(struct.pack(byteorder + "IIII", t // 10**9, frac, len(frame), len(frame)) + frame)
    return b"".join(out)


def pcapng_block(block_type: int, body: bytes, byteorder: str = "<") -> bytes:
    pad = b"\0" * (-len(body) % 4)
    length = 12 + len(body) + len(pad)
    return struct.pack(byteorder + "II", block_type, length) + body + pad + struct.pack(byteorder + "I", length)


def pcapng_option(code: int, value: bytes, byteorder: str = "<", declared: int | None = None) -> bytes:
    """One option; `declared` overrides the length field (a damaged option declares more than it holds)."""
    n = len(value) if declared is None else declared
    return struct.pack(byteorder + "HH", code, n) + value + b"\0" * (-len(value) % 4)


def pcapng_bytes(packets, linktype: int = 1, byteorder: str = "<", idb_options: bytes = b"",
                 ticks=None) -> bytes:
    """A pcapng file: section header, one interface (with `idb_options`, raw: end them with option 0 yourself
    when they should be terminated) and an enhanced packet block per (ts ns, frame). The tick count of each packet
    is ts in microseconds unless `ticks` gives them (any 64-bit values)."""
    bo = byteorder
    out = [pcapng_block(0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1), bo),
           pcapng_block(1, struct.pack(bo + "HHI", linktype, 0, 262144) + idb_options, bo)]
    for i, (t, frame) in enumerate(packets):
        tick = t // 1000 if ticks is None else ticks[i]
        out.append(pcapng_block(6, struct.pack(bo + "IIIII", 0, tick >> 32, tick & 0xFFFFFFFF, len(frame),
                                               len(frame)) + frame, bo))
    return b"".join(out)


# ------------------------------------------------------------------------------------------------------------
# Reading a capture both ways


@dataclasses.dataclass
class Reading:
    """What ingest makes of one capture: packets (time, lengths, link type, file offset, bytes), flows, problems."""

    packets: list
    headers: dict
    flows: dict
    errors: list


def read(path, compiled: bool, chunk_bytes: int = 1 << 16) -> Reading:
    errors: list = []
    packets: list = []
    headers: dict = {}
    tracker = flows.FlowTracker(16, 64, idle_timeout=5.0, active_timeout=30.0, compiled=compiled)
    n = 0
    for b in capture.read_batches(path, errors, chunk_bytes, compiled=compiled):
        raw = b.buf.tobytes()
        packets += [(t, w, lt, o, raw[f:f + min(c, 256)]) for t, w, lt, o, f, c in
                    zip(b.ts.tolist(), b.wirelen.tolist(), b.linktype.tolist(), b.rec_off.tolist(), b.off.tolist(),
                        b.caplen.tolist())]
        h = capture.parse_headers(b) if compiled else capture.parse_headers_py(b)
        for k, v in dataclasses.asdict(h).items():
            if k in ("ip_off", "ip_end"):  # offsets into the chunk: relative to the frame (chunk sizes differ)
                v = np.where(np.asarray(v) >= 0, np.asarray(v) - b.off, v)
            headers.setdefault(k, []).append(np.asarray(v))
        tracker.add(b, h, n)
        tracker.expire()
        n += len(b)
    done = tracker.finish()
    return Reading(packets, {k: np.concatenate(v) for k, v in headers.items()},
                   {k: np.asarray(v) for k, v in done.items()}, [e.as_dict() for e in errors])


def differences(a: Reading, b: Reading) -> list[str]:
    """What differs between two readings of one capture (empty when they are equal)."""
    out = []
    if a.packets != b.packets:
        out.append("packets")
    for k in sorted(set(a.headers) | set(b.headers)):
        if k not in a.headers or k not in b.headers or not np.array_equal(a.headers[k], b.headers[k]):
            out.append(f"headers.{k}")
    for k in sorted(set(a.flows) | set(b.flows)):
        x, y = a.flows.get(k), b.flows.get(k)
        if x is None or y is None or x.shape != y.shape or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            out.append(f"flows.{k}")
    if a.errors != b.errors:
        out.append("errors")
    return out


# ------------------------------------------------------------------------------------------------------------
# Mutations


def record_ends(data: bytes) -> list[int]:
    """File offsets where each packet record/block of a clean capture ends (packet blocks only, for pcapng)."""
    ends = []
    if data[:4] == capture.PCAPNG_MAGIC:
        bo = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        pos = 0
        while pos + 12 <= len(data):
            btype, blen = struct.unpack_from(bo + "II", data, pos)
            if blen < 12:
                break
            if btype in (2, 3, 6):
                ends.append(pos + blen)
            pos += blen
        return ends
    bo = capture.PCAP_MAGICS[data[:4]][0]
    pos = 24
    while pos + 16 <= len(data):
        incl = struct.unpack_from(bo + "I", data, pos + 8)[0]
        pos += 16 + incl
        ends.append(pos)
    return ends


def _cut_idb_options(data: bytes, rng: random.Random) -> tuple[bytes, int] | None:
    """The capture with its first interface description block's options cut at a random byte after an option's
    header (the block's lengths rewritten to match), and the IDB's offset; None without such a block."""
    if data[:4] != capture.PCAPNG_MAGIC:
        return None
    bo = "<" if data[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
    pos = struct.unpack_from(bo + "I", data, 4)[0]  # the block after the section header
    if pos + 20 > len(data) or struct.unpack_from(bo + "I", data, pos)[0] != 1:
        return None
    blen = struct.unpack_from(bo + "I", data, pos + 4)[0]
    opts = data[pos + 16:pos + blen - 4]
    headers, p = [], 0
    while p + 4 <= len(opts):
        code, ln = struct.unpack_from(bo + "HH", opts, p)
        if code == 0:
            break
        headers.append(p)
        p += 4 + ((ln + 3) & ~3)
    if not headers:
        return None
    p = rng.choice(headers)
    keep = opts[:p + 4 + rng.randrange(struct.unpack_from(bo + "H", opts, p + 2)[0] + 1)]
    keep += b"\0" * (-len(keep) % 4)  # blocks stay 4-byte aligned; the zero padding is not the declared value
    body = data[pos + 8:pos + 16] + keep
    block = struct.pack(bo + "II", 1, 12 + len(body)) + body + struct.pack(bo + "I", 12 + len(body))
    return data[:pos] + block + data[pos + blen:], pos


EXTREMES = (0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF)


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, int]:
    """One mutant of a capture and the offset of its first changed byte (bytes before it are the original's)."""
    b = bytearray(data)
    kind = rng.randrange(8)
    if kind == 7:  # the first interface block's options cut short: an option declares bytes the block lacks
        cut = _cut_idb_options(data, rng)
        if cut is not None:
            return cut
        kind = 0
    if kind == 0:  # flip a few bytes in one place
        at = rng.randrange(len(b))
        for i in range(at, min(len(b), at + rng.randrange(1, 5))):
            b[i] = rng.randrange(256)
        return bytes(b), at
    if kind == 1:  # an extreme 32-bit value at a 4-byte boundary (lengths, timestamps, link types)
        at = rng.randrange(len(b) // 4) * 4
        b[at:at + 4] = struct.pack("<I", rng.choice(EXTREMES))
        return bytes(b[:len(data)]), at
    if kind == 2:  # truncated
        at = rng.randrange(len(b))
        return bytes(b[:at]), at
    ends = record_ends(data)
    if len(ends) < 2:
        return bytes(b[:-1]), len(b) - 1
    i = rng.randrange(len(ends) - 1)
    start, end = ends[i], ends[i + 1]
    if kind == 3:  # a record cut out
        return bytes(b[:start] + b[end:]), start
    if kind == 4:  # a record repeated
        return bytes(b[:end] + b[start:end] + b[end:]), end
    if kind == 5:  # an extreme 16-bit value in a record's header area (pcapng option lengths and codes too)
        at = start + rng.randrange(min(32, end - start)) // 2 * 2
        b[at:at + 2] = struct.pack("<H", rng.choice(EXTREMES) & 0xFFFF)
        return bytes(b), at
    # a 64-bit timestamp far out (pcapng: high and low words; pcap: seconds and fraction)
    at = start + (12 if data[:4] == capture.PCAPNG_MAGIC else 0)
    b[at:at + 8] = struct.pack("<Q", rng.choice((2**63 - 1, 2**63, 2**64 - 1, 2**62, 2**32 - 1)))
    return bytes(b), at


def seed_captures() -> dict[str, bytes]:
    """Built seeds: the same conversations as pcap (both byte orders, µs and ns) and pcapng (with a resolution
    and an offset option, in both byte orders), raw IP and Linux cooked link types."""
    packets = conversations(6, 10)
    raw_ip = [(t, f[14:]) for t, f in packets]
    resolution = pcapng_option(9, b"\x09") + pcapng_option(14, struct.pack("<q", 0)) + pcapng_option(0, b"")
    resolution_be = pcapng_option(9, b"\x06", ">") + pcapng_option(0, b"", ">")
    unterminated = pcapng_option(2, b"eth0") + pcapng_option(9, b"\x06") + pcapng_option(14, struct.pack("<q", 0))
    return {
        "le.pcap": pcap_bytes(packets),
        "be_nano.pcap": pcap_bytes(packets, byteorder=">", nano=True),
        "raw.pcap": pcap_bytes(raw_ip, linktype=101),
        "le.pcapng": pcapng_bytes(packets),
        "ns.pcapng": pcapng_bytes(packets, idb_options=resolution, ticks=[t for t, _ in packets]),
        "be.pcapng": pcapng_bytes(packets, byteorder=">", idb_options=resolution_be),
        "unterminated.pcapng": pcapng_bytes(packets, idb_options=unterminated),
    }


@dataclasses.dataclass
class FuzzCounts:
    mutants: int = 0
    packets_read: int = 0
    capture_problems: int = 0
    exceptions: int = 0
    hangs: int = 0
    mismatches: int = 0
    good_packets_lost: int = 0
    failures: list = dataclasses.field(default_factory=list)  # (seed, mutant number, what)

    def clean(self) -> bool:
        return not (self.exceptions or self.hangs or self.mismatches or self.good_packets_lost)


class _Timeout(Exception):
    pass


def _alarm(signum, frame):
    raise _Timeout()


def run(seeds: dict[str, bytes], mutants: int, seed: int = 0, seconds_per_mutant: int = 20,
        keep_failures: Path | None = None, progress=None) -> FuzzCounts:
    """Mutate `seeds` round robin, `mutants` in all; check each (module docstring)."""
    rng = random.Random(seed)
    counts = FuzzCounts()
    names = sorted(seeds)
    reference = {}
    with tempfile.TemporaryDirectory(prefix="pclip-fuzz-") as tmp:
        for k, name in enumerate(names):
            path = Path(tmp) / f"seed-{k}{Path(name).suffix}"
            path.write_bytes(seeds[name])
            reference[name] = read(path, compiled=False).packets
        old = signal.signal(signal.SIGALRM, _alarm)
        try:
            for i in range(mutants):
                name = names[i % len(names)]
                data, first_changed = mutate(seeds[name], rng)
                path = Path(tmp) / f"mutant{Path(name).suffix}"
                path.write_bytes(data)
                counts.mutants += 1
                what = None
                signal.alarm(seconds_per_mutant)
                try:
                    # One read size for both: flows may legitimately depend on where chunks end when a mutant's
                    # time runs backwards (expiry follows a watermark per chunk), in both implementations alike.
                    chunk = rng.choice((1 << 10, 1 << 16, 8 << 20))
                    compiled = read(path, compiled=True, chunk_bytes=chunk)
                    python = read(path, compiled=False, chunk_bytes=chunk)
                    signal.alarm(0)
                    counts.packets_read += len(compiled.packets)
                    counts.capture_problems += len(compiled.errors)
                    diff = differences(compiled, python)
                    if diff:
                        counts.mismatches += 1
                        what = "compiled != reference: " + ", ".join(diff)
                    good = [p for p, end in zip(reference[name], record_ends(seeds[name])) if end <= first_changed]
                    if compiled.packets[:len(good)] != good:
                        counts.good_packets_lost += 1
                        what = (what + "; " if what else "") + f"good packets lost before byte {first_changed}"
                except _Timeout:
                    counts.hangs += 1
                    what = f"no result after {seconds_per_mutant} s"
                except Exception as e:  # noqa: BLE001 - every exception is a finding
                    signal.alarm(0)
                    counts.exceptions += 1
                    what = f"{type(e).__name__}: {e}"
                if what:
                    counts.failures.append((name, i, what))
                    if keep_failures is not None:
                        keep_failures.mkdir(parents=True, exist_ok=True)
                        (keep_failures / f"{i:06d}-{Path(name).name}").write_bytes(data)
                if progress is not None:
                    progress(counts)
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, old)
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.capture_fuzz", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("captures", nargs="*", help="seed captures or folders (small ones; default: the built seeds)")
    ap.add_argument("--mutants", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-seed-bytes", type=int, default=64 << 10, help="skip larger seed captures")
    ap.add_argument("--keep-failures", type=Path, help="write each failing mutant into this folder")
    args = ap.parse_args(argv)
    seeds = seed_captures()
    for path, _ in capture.find_captures(args.captures):
        if path.stat().st_size <= args.max_seed_bytes:
            data = path.read_bytes()
            if data[:4] in capture.PCAP_MAGICS or data[:4] == capture.PCAPNG_MAGIC:
                if not read(path, compiled=False).errors:  # seeds must read cleanly
                    seeds[str(path)] = data
    t0 = time.time()

    def progress(c: FuzzCounts):
        if c.mutants % 500 == 0:
            print(f"{c.mutants:,} mutants, {time.time() - t0:.0f} s, {len(c.failures)} failures", file=sys.stderr)

    counts = run(seeds, args.mutants, args.seed, keep_failures=args.keep_failures, progress=progress)
    print(f"seeds {len(seeds)}, mutants {counts.mutants:,}, packets read {counts.packets_read:,}, capture problems "
          f"{counts.capture_problems:,}; exceptions {counts.exceptions}, hangs {counts.hangs}, compiled != "
          f"reference {counts.mismatches}, good packets lost {counts.good_packets_lost} ({time.time() - t0:.0f} s)")
    for name, i, what in counts.failures[:20]:
        print(f"  mutant {i} of {name}: {what}")
    return 0 if counts.clean() else 1


if __name__ == "__main__":
    sys.exit(main())
