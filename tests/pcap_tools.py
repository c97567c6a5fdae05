"""Helpers for the ingest tests: read the frames of a real capture and write them back in other formats."""
from __future__ import annotations

import struct
from pathlib import Path

from pclip_jax.data import capture


def read_frames(path) -> list[tuple[int, int, int, bytes]]:
    """[(ts_ns, wirelen, linktype, frame bytes)] of every packet of a capture (which must read cleanly)."""
    errors: list = []
    out = []
    for b in capture.read_batches(path, errors):
        raw = b.buf.tobytes()
        for t, w, lt, o, c in zip(b.ts.tolist(), b.wirelen.tolist(), b.linktype.tolist(), b.off.tolist(),
                                  b.caplen.tolist()):
            out.append((t, w, lt, raw[o:o + c]))
    assert not errors, errors
    return out


def write_pcap(path: Path, frames, linktype: int, byteorder: str = "<", nano: bool = False) -> Path:
    """Classic pcap in either byte order, micro- or nanosecond timestamps (wire lengths kept)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    with open(path, "wb") as fh:
        fh.write(struct.pack(byteorder + "IHHiIII", magic, 2, 4, 0, 0, 262144, linktype))
        for t, w, _, f in frames:
            frac = t % 1_000_000_000 if nano else (t % 1_000_000_000) // 1000
            fh.write(struct.pack(byteorder + "IIII", t // 1_000_000_000, frac, len(f), w))
            fh.write(f)
    return path


def ethernet_to(frame: bytes, linktype: int) -> bytes:
    """Re-frame an (untagged) Ethernet frame for another link type, keeping the IP packet unchanged."""
    etype, ip = frame[12:14], frame[14:]
    v6 = etype == b"\x86\xdd"
    if linktype in (101, 12, 14, 228, 229):
        return ip
    if linktype == 113:  # Linux cooked v1
        return struct.pack(">HHH8s", 0, 1, 6, frame[6:12] + b"\0\0") + etype + ip
    if linktype == 276:  # Linux cooked v2
        return etype + b"\0\0" + struct.pack(">IHBB8s", 2, 1, 0, 6, frame[6:12] + b"\0\0") + ip
    if linktype == 0:  # BSD null, host byte order (little-endian here)
        return struct.pack("<I", 30 if v6 else 2) + ip
    if linktype == 108:  # OpenBSD loop, network byte order
        return struct.pack(">I", 24 if v6 else 2) + ip
    if linktype == 1001:  # QinQ: Ethernet with an 802.1ad and an 802.1Q tag (outer VLAN 100)
        return frame[:12] + struct.pack(">HHHH", 0x88A8, 100, 0x8100, 200) + frame[12:]
    raise ValueError(linktype)
