"""Capture files -> packets: pcap / pcapng records and their link-layer, IP and L4 headers.

Speed comes from doing as little as possible per packet in Python: one tight loop finds the record
boundaries of a chunk of the file, then every header field of every packet of the chunk is read at once with
numpy gathers at computed offsets. Only rare packets (IPv6 extension headers, IP-in-IP tunnels, MPLS, PPPoE) go
through a per-packet Python path. Where the install had a C compiler, ``_capture_c.c`` does the record walk and
the header fields in compiled code, step for step as the Python/numpy code here (the reference, used without
it; tested equal on real and mutated captures; docs/architecture.md, "Ingest speed").

Bad input never raises: the reader stops at the damage and records a ``CaptureError`` (file, byte
offset, reason); everything read before it is kept.
"""
from __future__ import annotations

import bz2
import concurrent.futures
import dataclasses
import functools
import gzip
import io
import lzma
import os
import select
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np

try:  # the compiled record walk and header parser (setup.py builds them when a C compiler is at hand)
    from pclip_jax.data import _capture_c
except ImportError:  # pragma: no cover - depends on the install
    _capture_c = None

PCAP_MAGICS = {
    b"\xd4\xc3\xb2\xa1": ("<", 1000),  # little-endian, microseconds
    b"\xa1\xb2\xc3\xd4": (">", 1000),
    b"\x4d\x3c\xb2\xa1": ("<", 1),  # little-endian, nanoseconds
    b"\xa1\xb2\x3c\x4d": (">", 1),
}
PCAPNG_MAGIC = b"\x0a\x0d\x0d\x0a"
CAPTURE_SUFFIXES = (".pcap", ".pcapng", ".cap")
# Compressed captures (`tcpdump -w - | gzip`): read through the decompressor, as Wireshark and tshark do. Recognised
# by their magic bytes; in folders a file is taken when its name is a capture name plus one of these suffixes or
# when its decompressed start is a capture's magic.
COMPRESSED_MAGICS = {b"\x1f\x8b": "gzip", b"\xfd7zXZ\x00": "xz", b"BZh": "bzip2", b"\x28\xb5\x2f\xfd": "zstd"}
COMPRESSED_SUFFIXES = {".gz": "gzip", ".xz": "xz", ".bz2": "bzip2", ".zst": "zstd"}
# Standard input, as `tcpdump -w - | python -m pclip_jax.ingest - --out DIR` writes it.
STDIN = "-"
# How long a FIFO or character device named as an input may stay silent before its first byte: long enough for a
# writer started beside the reader (`mkfifo f; tcpdump -w f & ingest f`), short enough that a FIFO with no writer
# is a message, not a hang.
STREAM_FIRST_BYTE_SECONDS = 10.0
# Decoded timestamps must lie in [0, 2**62) ns (1970 to 2116): then every difference of two fits in int64, in
# numpy and in the compiled walk. Packets outside it (a corrupt pcapng tick count, resolution or offset) are
# dropped and counted in one capture problem per batch.
TS_LIMIT_NS = 1 << 62

# Link types (https://www.tcpdump.org/linktypes.html).
LINKTYPE_NULL, LINKTYPE_ETHERNET, LINKTYPE_PPP = 0, 1, 9
LINKTYPE_RAW, LINKTYPE_RAW_12, LINKTYPE_RAW_14 = 101, 12, 14
LINKTYPE_PPP_HDLC, LINKTYPE_C_HDLC, LINKTYPE_LOOP = 50, 104, 108
LINKTYPE_SLL, LINKTYPE_SLL2, LINKTYPE_IPV4, LINKTYPE_IPV6 = 113, 276, 228, 229
LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, LINKTYPE_NFLOG, LINKTYPE_FDDI = 105, 127, 239, 10
# Wi-Fi (monitor mode, with or without radiotap), Linux NFLOG and FDDI: variable-length link headers
# (`_variable_link_layer`; compiled as `variable_link_layer` in _capture_c.c).
VARIABLE_HEADER_LINKTYPES = frozenset({LINKTYPE_IEEE802_11, LINKTYPE_RADIOTAP, LINKTYPE_NFLOG, LINKTYPE_FDDI})
SUPPORTED_LINKTYPES = frozenset({0, 1, 9, 12, 14, 50, 101, 104, 108, 113, 228, 229, 276}) | VARIABLE_HEADER_LINKTYPES

# Largest record we accept; larger lengths are treated as corruption (libpcap uses 256 KiB too).
MAX_RECORD = 262144
# Largest non-packet pcapng block (name resolution, decryption secrets, custom blocks can be large).
MAX_BLOCK = 16 << 20
# Zero bytes appended to every chunk so that fixed-offset header reads never index past the end.
_PAD = 256
_IPV6_EXT = (0, 43, 44, 60, 51, 135, 139, 140)
_VLAN_TPIDS = (0x8100, 0x88A8, 0x9100)

# Packet kinds after header parsing.
FLOW, LATER_FRAGMENT, NON_IP, MALFORMED = 0, 1, 2, 3


@dataclasses.dataclass
class CaptureError:
    """A problem found in a capture: the file, the byte offset where it starts, and why."""

    file: str
    offset: int
    reason: str

    def __str__(self) -> str:
        return f"{self.file}: byte {self.offset}: {self.reason}"

    def as_dict(self) -> dict:
        return {"file": self.file, "offset": int(self.offset), "reason": self.reason}


@dataclasses.dataclass
class PacketBatch:
    """Packets of one chunk of a capture. ``buf`` holds the chunk; the other arrays have one entry per packet."""

    buf: np.ndarray  # uint8, chunk bytes + zero padding
    off: np.ndarray  # int64, start of the link-layer frame in buf
    caplen: np.ndarray  # int64, captured bytes
    wirelen: np.ndarray  # int64, length on the wire (what nDPI counts)
    ts: np.ndarray  # int64, nanoseconds since the epoch
    linktype: np.ndarray  # int32
    rec_off: np.ndarray  # int64, file offset of the record (for messages)

    def __len__(self) -> int:
        return len(self.off)


class _Prepended(io.RawIOBase):
    """A raw stream that first returns ``head`` (bytes already read to sniff the format), then ``raw``'s bytes.

    Over a file descriptor (standard input, a FIFO, a device) a read returns what has arrived rather than waiting
    for a full chunk: it blocks only until some bytes are there, then takes whatever more is ready without waiting
    (up to the buffer's size), so a live stream's packets reach the flow tracker as they come, and a fast pipe
    still gives large chunks."""

    def __init__(self, head: bytes, raw):
        self._head, self._raw = memoryview(head), raw
        try:
            self._fd = raw.fileno()
        except (AttributeError, OSError, ValueError):
            self._fd = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self._head.nbytes:
            n = min(len(b), self._head.nbytes)
            b[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        view = memoryview(b).cast("B")
        got = self._raw.readinto(view)
        if not got or self._fd is None:
            return got or 0
        while got < len(view) and select.select([self._fd], [], [], 0)[0]:
            more = self._raw.readinto(view[got:])
            if not more:
                break
            got += more
        return got

    def close(self) -> None:
        self._raw.close()
        super().close()


class _StopAtDamage(io.RawIOBase):
    """A decompressed stream that ends where its compressed data is damaged or cut short, keeping everything decoded
    before (one `read1` at a time, so no decoded byte is held back by a failing read); `damage` says why it ended."""

    def __init__(self, stream):
        self._stream, self.damage = stream, None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.damage is not None:
            return 0
        try:
            data = self._stream.read1(len(b))
        except Exception as e:  # noqa: BLE001 - each decompressor has its own error types; all mean "damaged here"
            self.damage = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            return 0
        b[:len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


def _read_upto(fh, n: int) -> bytes:
    """Up to ``n`` bytes, fewer only at the end of the stream (a pipe's read may return less than asked)."""
    out = b""
    while len(out) < n:
        more = fh.read(n - len(out))
        if not more:
            break
        out += more
    return out


def _decompressor(kind: str, raw):
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw, mode="rb")
    if kind == "xz":
        return lzma.LZMAFile(raw, "rb")
    if kind == "bzip2":
        return bz2.BZ2File(raw, "rb")
    try:  # zstd: the `zstandard` package (an install requirement; Python 3.14 has it in the standard library)
        import zstandard
    except ImportError:
        raise ValueError("zstd-compressed capture: needs the zstandard package (pip install zstandard)") from None
    return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)


def _wait_for_first_byte(fd: int, seconds: float) -> None:
    """Block until the FIFO/device ``fd`` (opened non-blocking) has data or its writer came and went, at most
    ``seconds``; raise OSError naming it otherwise."""
    deadline = time.monotonic() + seconds
    poller = select.poll()
    poller.register(fd, select.POLLIN | select.POLLHUP)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise OSError(f"no data after {seconds:g} s (a FIFO with no writer?); start the writer first")
        if poller.poll(left * 1000):
            return


def file_size(path: str | os.PathLike) -> int:
    """Bytes of a regular file (for progress bars); 0 for standard input, FIFOs, devices and what cannot be read."""
    try:
        return os.path.getsize(path) if str(path) != STDIN and os.path.isfile(path) else 0
    except OSError:
        return 0


def _widen_pipe(fd: int) -> None:
    """Let a pipe hold up to 1 MiB (Linux; 64 KiB by default): when the reader falls behind, each read then takes a
    larger chunk, so the per-chunk cost is paid less often, and the writer blocks later."""
    try:
        import fcntl
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (OSError, ValueError, ImportError):  # not Linux, or above /proc/sys/fs/pipe-max-size: keep the default
        pass


def open_capture(path: str | os.PathLike, stream_wait: float | None = None):
    """Open a capture for reading: ``(binary file object, size in bytes or None for a stream, decoder)``; the
    decoder (None for an uncompressed capture) has ``damage``: None, or why the compressed data ended early.

    Regular files are read as they are. Standard input (``-``), FIFOs and character devices are streams (a FIFO
    waits at most ``stream_wait`` seconds, default STREAM_FIRST_BYTE_SECONDS, for its first byte: never hangs). gzip, xz, bzip2 and zstd captures are
    decompressed on the fly, also from streams (the size is then None). Raises OSError (with the reason) or
    ValueError for what cannot be read; the caller names the file.
    """
    if str(path) == STDIN:  # unbuffered: a read returns the bytes that have arrived
        raw, size = io.FileIO(sys.stdin.fileno(), "rb", closefd=False), None
        _widen_pipe(raw.fileno())
    else:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            raw, size = open(path, "rb"), st.st_size
        elif stat.S_ISFIFO(st.st_mode) or stat.S_ISCHR(st.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                _wait_for_first_byte(fd, STREAM_FIRST_BYTE_SECONDS if stream_wait is None else stream_wait)
                os.set_blocking(fd, True)
            except BaseException:
                os.close(fd)
                raise
            raw, size = io.FileIO(fd, "rb", closefd=True), None
            _widen_pipe(fd)
        elif stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError("a folder, not a capture")
        else:
            raise OSError(f"not a regular file, FIFO or character device (mode {st.st_mode:#o})")
    head = _read_upto(raw, 6)
    kind = next((k for m, k in COMPRESSED_MAGICS.items() if head.startswith(m)), None)
    if size is not None:
        raw.seek(0)
        if kind is None:
            return raw, size, None
        body = raw
    else:
        body = _Prepended(head, raw)
        if kind is None:
            return body, None, None
    decoded = _StopAtDamage(_decompressor(kind, body))
    return io.BufferedReader(decoded, 1 << 20), None, decoded


def sniff(path: str | os.PathLike) -> str | None:
    """Return 'pcap' or 'pcapng' from the file's magic number (through gzip/xz/bzip2/zstd compression), None when
    it is neither, unreadable, or not a regular file (sniffing must never block on a FIFO)."""
    try:
        if not Path(path).is_file():
            return None
        fh, _, _ = open_capture(path)
        with fh:
            head = _read_upto(fh, 4)
    except Exception:  # noqa: BLE001 - any failure to read (each decompressor has its own error types) is "no"
        return None
    if head in PCAP_MAGICS:
        return "pcap"
    if head == PCAPNG_MAGIC:
        return "pcapng"
    return None


def _capture_named(f: Path) -> bool:
    """Whether a file's name says it is a capture: x.pcap, x.pcapng, x.cap, or one of them compressed (x.pcap.gz)."""
    suffixes = [x.lower() for x in f.suffixes[-2:]]
    if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
        suffixes = suffixes[:-1]
    return bool(suffixes) and suffixes[-1] in CAPTURE_SUFFIXES


def _not_a_file_reason(f: Path) -> str:
    """Why a folder entry that is not a regular file is skipped."""
    try:
        mode = os.stat(f).st_mode
    except OSError as e:
        return f"cannot read ({e.strerror or e}{', a broken link' if f.is_symlink() else ''})"
    kind = ("a FIFO" if stat.S_ISFIFO(mode) else "a character device" if stat.S_ISCHR(mode) else
            "a block device" if stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode) else "not a regular file")
    return (f"{kind}{' (through a link)' if f.is_symlink() else ''}: not read from a folder "
            "(name it as an input to read it as a stream)")


def find_captures(inputs, skipped: list | None = None) -> list[tuple[Path, Path]]:
    """Expand files and folders (recursively) into ``(capture, root)`` pairs, sorted, without duplicates.

    In folders a file is taken when its name is a capture's (.pcap/.pcapng/.cap, also compressed: .pcap.gz,
    .pcapng.xz, ...) or its (decompressed) magic says it is a capture. FIFOs, devices, sockets and broken links
    in folders are never opened (a FIFO would block); they and the regular files that are not captures are
    appended to ``skipped`` as ``(path, reason)`` when a list is given, so the caller can name every one.
    Inputs named explicitly are always taken: files, FIFOs and character devices (read as streams), and ``-``
    (standard input). A non-capture then yields an error when read.
    """
    out, seen = [], set()
    for item in inputs:
        if str(item) == STDIN:
            if STDIN not in seen:
                seen.add(STDIN)
                out.append((Path(STDIN), Path(".")))
            continue
        p = Path(item)
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_dir():
                    continue
                if not f.is_file():  # follows links: a link to a regular file is a file
                    if skipped is not None:
                        skipped.append((f, _not_a_file_reason(f)))
                    continue
                if _capture_named(f) or sniff(f) is not None:
                    if f.resolve() not in seen:
                        seen.add(f.resolve())
                        out.append((f, p))
                elif skipped is not None:
                    skipped.append((f, "not a capture (name and magic bytes)"))
        elif p.exists():
            if p.resolve() not in seen:
                seen.add(p.resolve())
                out.append((p, p.parent))
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return out


def _windows(buf: np.ndarray, pos: np.ndarray, width: int) -> np.ndarray:
    """Copy ``buf[p:p+width]`` for every p in ``pos`` (all within buf) into a uint8 [n, width] array."""
    return np.lib.stride_tricks.sliding_window_view(buf, width)[pos]


def record_offsets_py(chunk, n: int, big_endian: bool) -> tuple[np.ndarray, int]:
    """Offsets (int64) of the pcap records that lie wholly within ``chunk[:n]``, walking from offset 0, and the
    offset of the first record not taken. ``chunk`` must have at least 16 zero bytes after ``n``.
    The compiled ``_capture_c.record_offsets`` does the same (tested equal)."""
    incl_of = struct.Struct((">" if big_endian else "<") + "8xI").unpack_from
    pos, recs = 0, []
    append = recs.append
    while True:  # zero padding after the data makes a read past the end see length 0: one test ends it
        nxt = pos + 16 + incl_of(chunk, pos)[0]
        if nxt > n:
            break
        append(pos)
        pos = nxt
    return np.asarray(recs, dtype=np.int64), pos


def record_offsets(chunk, n: int, big_endian: bool) -> tuple[np.ndarray, int]:
    """``record_offsets_py``, compiled where the extension was built."""
    if _capture_c is None:
        return record_offsets_py(chunk, n, big_endian)
    raw, pos = _capture_c.record_offsets(chunk, n, big_endian)
    return np.frombuffer(raw, dtype=np.int64), pos


def _batch(buf: np.ndarray, pos: np.ndarray, bo: str, ts_mult: int, linktype: int, base: int) -> PacketBatch:
    """Build a PacketBatch for pcap records starting at the offsets ``pos`` (all complete in ``buf``)."""
    # Gather the 16-byte record headers of all packets at once and view them as 4 uint32 each.
    hdr = _windows(buf, pos, 16).view(bo + "u4").astype(np.int64)
    return PacketBatch(
        buf=buf, off=pos + 16, caplen=hdr[:, 2], wirelen=hdr[:, 3],
        ts=hdr[:, 0] * 1_000_000_000 + hdr[:, 1] * ts_mult,
        linktype=np.full(len(pos), linktype, np.int32), rec_off=pos + base)


def _read_pcap(fh, size: int | None, name: str, chunk_bytes: int, errors: list,
               compiled: bool) -> Iterator[PacketBatch]:
    """``size``: the file's length, or None for a stream (standard input, a FIFO, a decompressed capture)."""
    head = _read_upto(fh, 24)
    if len(head) < 24:
        errors.append(CaptureError(name, 0, f"truncated pcap file header ({len(head)} of 24 bytes)"))
        return
    bo, ts_mult = PCAP_MAGICS[head[:4]]
    snaplen, linktype = struct.unpack_from(bo + "II", head, 16)
    linktype &= 0x0FFFFFFF  # upper bits carry FCS information
    if linktype not in SUPPORTED_LINKTYPES:
        errors.append(CaptureError(name, 20, f"unknown link type {linktype}"))
        return
    limit = max(MAX_RECORD, snaplen if snaplen < (1 << 24) else 0)
    incl_of = struct.Struct(bo + "8xI").unpack_from
    base, n_rest = 24, 0
    # Small files get small buffers (allocating and clearing chunk_bytes per file would dominate).
    chunk_bytes = max(1, min(chunk_bytes, size if size is not None else chunk_bytes))
    packets = 0
    # Two buffers used in turn: a batch's bytes stay valid while the next chunk is read into the other one.
    bufs = [bytearray(), bytearray()]

    def fill(turn: int, prev: bytearray, pos: int, n_rest: int) -> tuple[bytearray, int, int]:
        """Next chunk into bufs[turn]: the partial record left at prev[pos:], then up to chunk_bytes from the file."""
        need = n_rest + chunk_bytes + _PAD
        if len(bufs[turn]) < need:  # a new buffer (the old one may still be viewed by a batch)
            bufs[turn] = bytearray(max(need, 2 * len(bufs[turn])))
        chunk = bufs[turn]
        chunk[:n_rest] = prev[pos:pos + n_rest] if n_rest else b""
        got = fh.readinto(memoryview(chunk)[n_rest:n_rest + chunk_bytes])
        n = n_rest + got
        # Zero padding after the data makes the walk's read past the end see length 0: one test ends it.
        chunk[n:n + _PAD] = bytes(_PAD)
        return chunk, got, n

    # A file of several chunks reads the next chunk on a helper thread (file reads release the GIL) while the
    # consumer works on this one.
    pool = None
    turn, ahead = 0, None
    chunk, got, n = fill(0, bufs[1], 0, 0)
    try:
        while True:
            recs, pos = (record_offsets if compiled else record_offsets_py)(chunk, n, bo == ">")
            err = None
            b = None
            if len(recs):
                buf = np.frombuffer(chunk, dtype=np.uint8, count=n + _PAD)
                b = _batch(buf, recs, bo, ts_mult, linktype, base)
                bad = np.nonzero(b.caplen > limit)[0]
                if len(bad):  # a corrupt length that still pointed inside the chunk
                    k = int(bad[0])
                    pos = int(recs[k])
                    err = f"corrupt record length {int(b.caplen[k])} (limit {limit})"
                    b = PacketBatch(buf, *(a[:k] for a in (b.off, b.caplen, b.wirelen, b.ts, b.linktype, b.rec_off)))
            if err is None and n - pos >= 16 and incl_of(chunk, pos)[0] > limit:
                err = f"corrupt record length {incl_of(chunk, pos)[0]} (limit {limit})"
            ahead = None
            more = got and (size is None or fh.tell() < size)
            if err is None and more:  # more to come, and the batch before this one is done
                if pool is None:                            # with the other buffer: read ahead into it
                    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pclip-read")
                ahead = pool.submit(fill, 1 - turn, chunk, pos, n - pos)
            if b is not None and len(b):
                packets += len(b)
                yield b
            if err is not None:
                errors.append(CaptureError(name, base + pos, err))
                return
            if not got:  # end of file
                if pos < n:
                    need = 16 + incl_of(chunk, pos)[0] if n - pos >= 16 else 16
                    errors.append(CaptureError(
                        name, base + pos, f"truncated record: needs {need} bytes, file ends after {n - pos}"))
                elif not packets:
                    errors.append(CaptureError(name, base + pos, "no packets: the capture holds only its header"))
                return
            following = ahead.result() if ahead is not None else fill(1 - turn, chunk, pos, n - pos)
            base += pos
            turn = 1 - turn
            chunk, got, n = following
    finally:
        if pool is not None:
            pool.shutdown(wait=True)


def _tsres_ns(opts: bytes, bo: str) -> tuple[int, int, int, str | None]:
    """Parse IDB options: (numerator, denominator) converting ticks to ns, the ts offset in seconds, and a problem
    (None, or why the options are damaged: every option's length is checked against the block's end, and the
    options read before a damaged one are kept)."""
    num, den, offset = 1000, 1, 0  # default resolution: microseconds
    p = 0
    while p + 4 <= len(opts):
        code, ln = struct.unpack_from(bo + "HH", opts, p)
        if code == 0:
            break
        if p + 4 + ln > len(opts):
            return num, den, offset, (f"interface option {code} at byte {p} of the options declares {ln} bytes, "
                                      f"{len(opts) - p - 4} remain in the block")
        val = opts[p + 4:p + 4 + ln]
        if code == 9 and ln >= 1:
            r = val[0]
            # Resolutions finer than 1e-18 s (or 2^-60 s) do not fit int64 arithmetic: only a corrupt IDB has them.
            if r & 0x80 and (r & 0x7F) <= 60:  # power of two
                num, den = 1_000_000_000, 1 << (r & 0x7F)
            elif r <= 9:
                num, den = 10 ** (9 - r), 1
            elif r <= 18:
                num, den = 1, 10 ** (r - 9)
        elif code == 14 and ln == 8:
            offset = struct.unpack(bo + "q", val)[0]
            if abs(offset) > 1 << 32:  # more than a century: corrupt, ignored
                offset = 0
        p += 4 + ((ln + 3) & ~3)
    return num, den, offset, None


def _read_pcapng(fh, size: int | None, name: str, chunk_bytes: int, errors: list,
                 compiled: bool) -> Iterator[PacketBatch]:
    if size is not None and size <= chunk_bytes:  # one chunk: nothing to overlap
        yield from _pcapng_chunks(name, errors, lambda: fh.read(chunk_bytes), compiled)
        return
    # The next chunk is read on a helper thread while this one is processed (file reads release the GIL).
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="pclip-read") as pool:
        # A live stream gives what has arrived (`_Prepended`); a file or decoder is read in full chunks.
        read = fh.read if isinstance(fh, _Prepended) else functools.partial(_read_upto, fh)
        ahead = [pool.submit(read, chunk_bytes)]

        def next_data() -> bytes:
            data = ahead[0].result()
            if data:
                ahead[0] = pool.submit(read, chunk_bytes)
            return data

        yield from _pcapng_chunks(name, errors, next_data, compiled)


def _pcapng_chunks(name: str, errors: list, next_data, compiled: bool) -> Iterator[PacketBatch]:
    """pcapng blocks of the chunks ``next_data()`` returns (b"" at the end of the file) as PacketBatches."""
    bo = "<"
    ifaces: list[tuple[int, int, int, int, int]] = []  # linktype, snaplen, num, den, offset
    warned_iface: set = set()
    base, rest, seen_shb = 0, b"", False
    packets, errors_before = 0, len(errors)
    hdr_of = {"<": struct.Struct("<II").unpack_from, ">": struct.Struct(">II").unpack_from}
    while True:
        data = next_data()
        chunk = rest + data
        n = len(chunk)
        pos, err = 0, None
        epb: list[int] = []  # offsets of enhanced packet blocks found one by one (fast path)
        runs: list[np.ndarray] = []  # ... and found in runs by the compiled walk (kept as arrays)
        extra: list[tuple] = []  # simple / obsolete packet blocks: (pos, ifid, ts_ticks, caplen, wirelen, dataoff)
        flush_now = False
        unpack = hdr_of[bo]
        while pos + 12 <= n:
            if seen_shb and compiled:  # a run of enhanced packet blocks, compiled
                offsets, pos = _capture_c.epb_run(chunk, pos, n, bo == ">", MAX_RECORD + 4096)
                if offsets:
                    runs.append(np.frombuffer(offsets, np.int64))
                if pos + 12 > n:
                    break
            btype, blen = unpack(chunk, pos)
            if btype == 0x0A0D0D0A:  # section header: byte order may change
                bom = chunk[pos + 8:pos + 12]
                if bom == b"\x4d\x3c\x2b\x1a":
                    nbo = "<"
                elif bom == b"\x1a\x2b\x3c\x4d":
                    nbo = ">"
                else:
                    err = "corrupt section header (bad byte-order magic)"
                    break
                if epb or runs or extra:
                    flush_now = True  # emit packets of the previous section (its interfaces) first
                    break
                bo, unpack = nbo, hdr_of[nbo]
                btype, blen = unpack(chunk, pos)
                ifaces, seen_shb = [], True
                warned_iface = {w for w in warned_iface if not isinstance(w, int)}  # a new section's interfaces
            elif not seen_shb:
                err = "not a pcapng section header"
                break
            if blen < 12 or blen % 4 or blen > (MAX_RECORD + 4096 if btype in (2, 3, 6) else MAX_BLOCK):
                err = f"corrupt block length {blen} (block type {btype:#x})"
                break
            if pos + blen > n:
                break
            if struct.unpack_from(bo + "I", chunk, pos + blen - 4)[0] != blen:
                err = f"corrupt block: trailing length differs from {blen}"
                break
            if btype == 6:
                epb.append(pos)
            elif btype == 1:
                if blen < 20:
                    err = "corrupt interface description block"
                    break
                lt, _, snap = struct.unpack_from(bo + "HHI", chunk, pos + 8)
                num, den, tsoff, bad_option = _tsres_ns(chunk[pos + 16:pos + blen - 4], bo)
                if bad_option is not None:  # the interface is kept with the options read before the damage
                    errors.append(CaptureError(name, base + pos, f"interface description block {len(ifaces)}: "
                                                                 f"{bad_option}"))
                ifaces.append((lt, snap, num, den, tsoff))  # an unknown link type is reported by its first packet
            elif btype == 3 and blen >= 16:  # simple packet block: interface 0, no timestamp
                wl = struct.unpack_from(bo + "I", chunk, pos + 8)[0]
                extra.append((pos, 0, 0, min(wl, blen - 16), wl, pos + 12))
            elif btype == 2 and blen >= 32:  # obsolete packet block
                ifid, _, th, tl, cl, wl = struct.unpack_from(bo + "HHIIII", chunk, pos + 8)
                extra.append((pos, ifid, (th << 32) | tl, min(cl, blen - 32), wl, pos + 28))
            pos += blen
        if epb or runs or extra:
            b = _pcapng_batch(chunk, _epb_offsets(runs, epb), extra, bo, ifaces, base, name, errors, warned_iface)
            if b is not None and len(b):
                packets += len(b)
                yield b
        if err is not None:
            errors.append(CaptureError(name, base + pos, err))
            return
        if not data and not flush_now:
            if pos < n:
                errors.append(CaptureError(name, base + pos, f"truncated block: file ends {n - pos} bytes into it"))
            elif not packets and len(errors) == errors_before:
                errors.append(CaptureError(name, base + pos, "no packets: the capture holds no packet block"))
            return
        rest = chunk[pos:]
        base += pos


def _epb_offsets(runs: list, singles: list) -> np.ndarray:
    """The enhanced packet blocks' offsets in file order, from the compiled runs and those found one by one."""
    if not runs:
        return np.asarray(singles, dtype=np.int64)
    pos = np.concatenate(runs + [np.asarray(singles, dtype=np.int64)])
    if singles:
        pos.sort()
    return pos


def _pcapng_batch(chunk, pos, extra, bo, ifaces, base, name, errors, warned) -> PacketBatch | None:
    """``pos``: int64 offsets of the enhanced packet blocks in ``chunk``; ``extra``: the other packet blocks."""
    buf = np.frombuffer(chunk + bytes(_PAD), dtype=np.uint8)
    # EPB: type, len, ifid, ts_hi, ts_lo, caplen, wirelen, data...
    h = _windows(buf, pos, 28).view(bo + "u4").astype(np.int64)
    ifid, caplen, wirelen = h[:, 2], h[:, 5], h[:, 6]
    ticks = (h[:, 3].astype(np.uint64) << np.uint64(32)) | h[:, 4].astype(np.uint64)  # 64 bits: unsigned
    off = pos + 28
    blen = h[:, 1]
    caplen = np.minimum(caplen, blen - 32)
    if extra:
        e = np.asarray([x[:2] + x[3:] for x in extra], dtype=np.int64)  # the tick counts may not fit int64
        pos = np.concatenate([pos, e[:, 0]])
        ifid = np.concatenate([ifid, e[:, 1]])
        ticks = np.concatenate([ticks, np.asarray([x[2] for x in extra], dtype=np.uint64)])
        caplen = np.concatenate([caplen, e[:, 2]])
        wirelen = np.concatenate([wirelen, e[:, 3]])
        off = np.concatenate([off, e[:, 4]])
        order = np.argsort(pos, kind="stable")
        pos, ifid, ticks, caplen, wirelen, off = (a[order] for a in (pos, ifid, ticks, caplen, wirelen, off))
    ok = (ifid < len(ifaces)) & (caplen >= 0)
    if not ok.all():
        bad = int(pos[~ok][0])
        if "ifid" not in warned:
            warned.add("ifid")
            errors.append(CaptureError(name, base + bad, "packet refers to an undefined interface"))
        pos, ifid, ticks, caplen, wirelen, off = (a[ok] for a in (pos, ifid, ticks, caplen, wirelen, off))
    ts = np.zeros(len(pos), np.int64)
    lt = np.zeros(len(pos), np.int32)
    in_range = np.ones(len(pos), bool)
    for i, (ltype, _, num, den, tsoff) in enumerate(ifaces):
        m = ifid == i
        if not m.any():
            continue
        if ltype not in SUPPORTED_LINKTYPES and i not in warned:
            # Reported where packets are lost, once per interface: files often declare interfaces they never use.
            warned.add(i)
            errors.append(CaptureError(name, base + int(pos[np.argmax(m)]),
                                       f"unknown link type {ltype} (interface {i}): its packets are skipped"))
        lt[m] = ltype
        ts[m], in_range[m] = _ticks_to_ns(ticks[m], num, den, tsoff)
    if not in_range.all():  # dropped, not clamped: a made-up time would split or merge flows at random
        first = int(pos[~in_range][0])
        errors.append(CaptureError(name, base + first, f"timestamp outside 1970-2116 (a corrupt tick count, "
                                                       f"resolution or offset): {int((~in_range).sum())} packet(s) "
                                                       f"of this chunk dropped"))
        pos, caplen, wirelen, off, ts, lt = (a[in_range] for a in (pos, caplen, wirelen, off, ts, lt))
    return PacketBatch(buf=buf, off=off, caplen=caplen, wirelen=wirelen, ts=ts, linktype=lt, rec_off=pos + base)


def _ticks_to_ns(ticks: np.ndarray, num: int, den: int, tsoff: int) -> tuple[np.ndarray, np.ndarray]:
    """pcapng tick counts (uint64) -> (int64 ns since the epoch, whether each is in [0, TS_LIMIT_NS)).

    The range is decided on a float64 estimate with a margin (it is never near the limits for real captures),
    then the in-range values are computed exactly in integers, where no intermediate can overflow."""
    offset_ns = tsoff * 1_000_000_000
    approx = ticks.astype(np.float64) * (num / den) + offset_ns
    ok = (approx >= 0) & (approx < 0.99 * TS_LIMIT_NS)
    t = np.where(ok, ticks, np.uint64(0))
    if den == 1:  # t * num < 2**62 + |offset|: fits int64
        ns = t.astype(np.int64) * num + offset_ns
    elif num == 1:  # sub-nanosecond decimal resolution: exact floor division in uint64
        ns = (t // np.uint64(den)).astype(np.int64) + offset_ns
    else:  # binary resolution (2^-k s): float64 keeps 53 bits, about 1 ns at today's times
        ns = (t.astype(np.float64) * (num / den)).astype(np.int64) + offset_ns
    ok &= ns >= 0
    return np.where(ok, ns, 0), ok


def read_batches(path: str | os.PathLike, errors: list, chunk_bytes: int = 8 << 20,
                 name: str | None = None, compiled: bool = True) -> Iterator[PacketBatch]:
    """Stream a pcap or pcapng file as PacketBatches of about ``chunk_bytes`` each.

    ``compiled=False`` walks records and blocks with the Python reference loops even where ``_capture_c`` was
    built (the tests compare the two).

    Problems are appended to ``errors`` as CaptureError; reading stops at the first damage and
    everything before it is yielded. Never raises for bad content (only for programming errors).
    A batch's ``buf`` is valid until the next batch is yielded (the chunk after that is then read into it, on
    a helper thread, while the consumer works on the next batch): copy what must outlive that.
    """
    name = str(path) if name is None else name
    try:
        fh, size, decoder = open_capture(path)
    except (OSError, ValueError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        errors.append(CaptureError(name, 0, f"cannot open: {reason}"))
        return
    with fh:
        try:
            magic = _read_upto(fh, 4)
            if size is None:  # a stream cannot seek back: its first bytes are handed to the reader again
                fh = _Prepended(magic, fh)
            else:
                fh.seek(0)
        except (OSError, EOFError, ValueError, lzma.LZMAError) as e:
            errors.append(CaptureError(name, 0, f"cannot read: {e}"))
            return
        if not magic:
            errors.append(CaptureError(name, 0, "empty file" if size is not None else "empty stream"))
            return
        compiled = compiled and _capture_c is not None
        reader = _read_pcap if magic in PCAP_MAGICS else _read_pcapng if magic == PCAPNG_MAGIC else None
        if reader is None:
            errors.append(CaptureError(name, 0, f"not a pcap/pcapng capture (magic bytes {magic.hex()})"))
            return
        before = len(errors)
        try:
            yield from reader(fh, size, name, chunk_bytes, errors, compiled)
        except OSError as e:  # a failing device or file system
            errors.append(CaptureError(name, 0, f"read failed after the packets before it ({e}); those are kept"))
        if decoder is not None and decoder.damage is not None:
            # The reader saw the decoded data end (maybe inside a record, reported as truncated): say why instead.
            errors[before:] = [e for e in errors[before:] if not e.reason.startswith("truncated")]
            errors.append(CaptureError(name, 0, f"compressed data damaged or cut short ({decoder.damage}); the "
                                                f"packets decoded before it are kept"))


# ----------------------------------------------------------------------------------------------
# Link layer, IP and L4 headers, vectorised over a batch.


@dataclasses.dataclass
class Headers:
    """Parsed headers, one entry per packet of a PacketBatch."""

    kind: np.ndarray  # uint8: FLOW, LATER_FRAGMENT, NON_IP, MALFORMED
    ip_off: np.ndarray  # int64, start of the (innermost) IP header in buf
    ip_end: np.ndarray  # int64, end of the IP packet's captured bytes in buf (excludes link padding)
    ipver: np.ndarray  # uint8, 4 or 6
    ip_size: np.ndarray  # int64, IP total length (header + payload) of the packet on the wire
    proto: np.ndarray  # uint8, transport protocol
    l4: np.ndarray  # int64, transport header offset relative to ip_off (-1 when not present)
    src: np.ndarray  # uint8 [n, 16], IPv4 addresses in the first 4 bytes
    dst: np.ndarray
    sport: np.ndarray  # int64 (0 for port-less protocols)
    dport: np.ndarray
    vlan: np.ndarray  # int64, outer VLAN id (0 = none)
    flags: np.ndarray  # uint8, TCP flags (0 for non-TCP)
    payload: np.ndarray  # int64, transport payload bytes (from header lengths)


def _be16(buf, pos):
    return (buf[pos].astype(np.int64) << 8) | buf[pos + 1]


def _be32(buf, pos):
    return (_be16(buf, pos) << 16) | _be16(buf, pos + 2)


def parse_headers(b: PacketBatch) -> Headers:
    """Find the IP header of every packet through its link layer and read IP and transport fields
    (``parse_headers_py``, compiled where the extension was built)."""
    if _capture_c is None:
        return parse_headers_py(b)
    n = len(b)
    h = _ip_fields(b.buf, n)
    l3, etype = np.empty(n, np.int64), np.empty(n, np.int64)
    as_c = np.ascontiguousarray
    _capture_c.parse_headers(as_c(b.buf), as_c(b.off, np.int64), as_c(b.caplen, np.int64),
                             as_c(b.wirelen, np.int64), as_c(b.linktype, np.int32), h.kind, h.ip_off, h.ip_end,
                             h.ipver, h.ip_size, h.proto, h.l4, h.src, h.dst, h.sport, h.dport, h.vlan, h.flags,
                             h.payload, l3, etype)
    kind = h.kind
    for i in np.nonzero(kind == 255)[0].tolist():  # MPLS, PPPoE, IPv6 extension headers, IP-in-IP
        _parse_slow(b, i, int(l3[i]), int(etype[i]), h, kind)
    kind[kind == 255] = MALFORMED
    return h


def parse_headers_py(b: PacketBatch) -> Headers:
    """``parse_headers`` in numpy: the reference the compiled version is tested against."""
    buf, n = b.buf, len(b)
    off, end = b.off, b.off + b.caplen
    lt = b.linktype
    l3 = np.full(n, -1, np.int64)  # IP header offset
    etype = np.zeros(n, np.int64)  # ethertype-like: 0x0800 / 0x86DD; 0 = read version nibble
    vlan = np.zeros(n, np.int64)
    slow = np.zeros(n, bool)  # needs the per-packet path (MPLS, PPPoE)

    m = np.nonzero(lt == LINKTYPE_ETHERNET)[0]
    if len(m):
        p = off[m] + 12
        et = _be16(buf, p)
        tagged = np.isin(et, _VLAN_TPIDS)
        if tagged.any():
            t = np.nonzero(tagged)[0]
            vlan[m[t]] = _be16(buf, p[t] + 2) & 0x0FFF  # outer tag
            for _ in range(4):  # QinQ and deeper stacks
                p[t] += 4
                et[t] = _be16(buf, p[t])
                t = t[np.isin(et[t], _VLAN_TPIDS)]
                if not len(t):
                    break
        l3[m] = p + 2
        etype[m] = et
        slow[m] = np.isin(et, (0x8847, 0x8848, 0x8864))
    m = np.nonzero(np.isin(lt, (LINKTYPE_RAW, LINKTYPE_RAW_12, LINKTYPE_RAW_14, LINKTYPE_IPV4, LINKTYPE_IPV6)))[0]
    if len(m):
        l3[m] = off[m]
    m = np.nonzero(lt == LINKTYPE_SLL)[0]
    if len(m):
        l3[m] = off[m] + 16
        etype[m] = _be16(buf, off[m] + 14)
    m = np.nonzero(lt == LINKTYPE_SLL2)[0]
    if len(m):
        l3[m] = off[m] + 20
        etype[m] = _be16(buf, off[m])
    m = np.nonzero((lt == LINKTYPE_NULL) | (lt == LINKTYPE_LOOP))[0]
    if len(m):
        le = buf[off[m]].astype(np.int64) | (buf[off[m] + 1].astype(np.int64) << 8)
        be = _be16(buf, off[m] + 2)
        fam = np.where(lt[m] == LINKTYPE_LOOP, be, np.where(le != 0, le, be))
        l3[m] = off[m] + 4
        etype[m] = np.where(fam == 2, 0x0800, np.where(np.isin(fam, (10, 24, 28, 30)), 0x86DD, -1))
    # Variable-length link headers: one packet at a time here (the reference; the compiled parser does the same).
    for i in np.nonzero(np.isin(lt, tuple(VARIABLE_HEADER_LINKTYPES)))[0].tolist():
        p, et = _variable_link_layer(buf, int(off[i]), int(end[i]), int(lt[i]))
        l3[i], etype[i] = p, max(et, 0)
        slow[i] = et in (0x8847, 0x8848, 0x8864)
    m = np.nonzero(np.isin(lt, (LINKTYPE_PPP, LINKTYPE_PPP_HDLC, LINKTYPE_C_HDLC)))[0]
    if len(m):
        p = off[m]
        hdlc = (buf[p] == 0xFF) & (buf[p + 1] == 0x03)  # PPP address/control bytes
        chdlc = lt[m] == LINKTYPE_C_HDLC
        p = p + np.where(chdlc, 2, np.where(hdlc, 2, 0))
        pr = _be16(buf, p)
        l3[m] = p + 2
        etype[m] = np.where(chdlc, pr, np.where(pr == 0x21, 0x0800, np.where(pr == 0x57, 0x86DD, -1)))

    kind = np.full(n, NON_IP, np.uint8)
    have = (l3 >= 0) & (l3 < end)
    ver = np.where(have, buf[np.where(have, l3, 0)] >> 4, 0)
    is_ip = have & (((etype == 0x0800) & (ver == 4)) | ((etype == 0x86DD) & (ver == 6)) |
                    ((etype == 0) & ((ver == 4) | (ver == 6))))
    h = _ip_fields(buf, n)
    h.vlan = vlan
    idx = np.nonzero(is_ip & ~slow)[0]
    _parse_ip(buf, idx, l3[idx], end[idx], b.wirelen[idx] - (l3[idx] - off[idx]), h, kind)
    rare = np.nonzero(slow | (kind == 255))[0]
    for i in rare.tolist():
        _parse_slow(b, i, int(l3[i]), int(etype[i]), h, kind)
    kind[kind == 255] = MALFORMED
    h.kind = kind
    return h


def _ip_fields(buf, n) -> Headers:
    z = lambda dt: np.zeros(n, dt)  # noqa: E731
    return Headers(kind=z(np.uint8), ip_off=z(np.int64), ip_end=z(np.int64), ipver=z(np.uint8),
                   ip_size=z(np.int64), proto=z(np.uint8), l4=np.full(n, -1, np.int64),
                   src=np.zeros((n, 16), np.uint8), dst=np.zeros((n, 16), np.uint8), sport=z(np.int64),
                   dport=z(np.int64), vlan=z(np.int64), flags=z(np.uint8), payload=z(np.int64))


def _parse_ip(buf, idx, p, end, wire_ip, h: Headers, kind) -> None:
    """Vectorised IPv4/IPv6 + TCP/UDP parse for packets ``idx`` whose IP header starts at ``p``.

    Packets needing the slow path (IPv6 extension headers, IP-in-IP) get kind 255.
    """
    if not len(idx):
        return
    ver = buf[p] >> 4
    avail = end - p
    v4 = ver == 4
    ihl = np.where(v4, (buf[p] & 15).astype(np.int64) * 4, 40)
    tot = np.where(v4, _be16(buf, p + 2), _be16(buf, p + 4) + 40)
    # TSO / jumbo packets carry total length 0: fall back to the wire length.
    tot = np.where((tot < ihl) | (v4 & (tot == 0)) | (~v4 & (tot == 40) & (wire_ip > 40)), wire_ip, tot)
    proto = np.where(v4, buf[p + 9], buf[p + 6]).astype(np.int64)
    frag = np.where(v4, _be16(buf, p + 6), 0)
    frag_off = frag & 0x1FFF
    bad = (avail < np.where(v4, 20, 40)) | (v4 & (ihl < 20))
    k = np.where(bad, MALFORMED, FLOW).astype(np.uint8)
    k[~bad & v4 & (frag_off > 0)] = LATER_FRAGMENT
    slow = ~bad & ((~v4 & np.isin(proto, _IPV6_EXT)) | np.isin(proto, (4, 41)))
    k[slow] = 255
    kind[idx] = k
    h.ip_off[idx] = p
    h.ip_end[idx] = p + np.clip(np.minimum(avail, tot), 0, None)
    h.ipver[idx] = ver
    h.ip_size[idx] = tot
    h.proto[idx] = proto
    # Addresses: IPv4 at 12/16 (4 bytes), IPv6 at 8/24 (16 bytes).
    i4 = np.nonzero(v4)[0]
    i6 = np.nonzero(~v4)[0]
    if len(i4):
        r = np.arange(4)
        h.src[idx[i4], :4] = buf[p[i4, None] + 12 + r]
        h.dst[idx[i4], :4] = buf[p[i4, None] + 16 + r]
    if len(i6):
        r = np.arange(16)
        h.src[idx[i6]] = buf[p[i6, None] + 8 + r]
        h.dst[idx[i6]] = buf[p[i6, None] + 24 + r]
    _parse_l4(buf, idx, p, ihl, avail, tot, proto, k == FLOW, h)


def _parse_l4(buf, idx, p, ihl, avail, tot, proto, ok, h: Headers) -> None:
    l4 = p + ihl
    tcp = ok & (proto == 6) & (avail >= ihl + 14)
    udp = ok & ((proto == 17) | (proto == 132) | (proto == 136)) & (avail >= ihl + 4)
    ported = tcp | udp
    sp = np.where(ported, _be16(buf, l4), 0)
    dp = np.where(ported, _be16(buf, l4 + 2), 0)
    fl = np.where(tcp, buf[l4 + 13], 0).astype(np.uint8)
    hl = np.where(proto == 6, np.where(tcp, (buf[l4 + 12] >> 4).astype(np.int64) * 4, 20),
                  np.where(proto == 17, 8, 0))
    h.sport[idx] = sp
    h.dport[idx] = dp
    h.flags[idx] = fl
    h.l4[idx] = np.where(ok, ihl, -1)
    h.payload[idx] = np.clip(tot - ihl - hl, 0, None)


def _le16(buf, p: int) -> int:
    return int(buf[p]) | int(buf[p + 1]) << 8


def _variable_link_layer(buf, off: int, end: int, lt: int) -> tuple[int, int]:
    """(offset of the network-layer header, its ethertype; 0 = read the IP version nibble) for the link types of
    VARIABLE_HEADER_LINKTYPES; (-1, -1) when the packet carries no network-layer payload we read."""
    if lt == LINKTYPE_NFLOG:
        # 4-byte header (address family, version, resource id), then TLVs: length (host order, includes the
        # 4-byte TLV header; padded to 4) and type; type 9 (NFULA_PAYLOAD) is the packet from its IP header on.
        if off + 4 > end:
            return -1, -1
        family = int(buf[off])
        etype = 0x0800 if family == 2 else 0x86DD if family == 10 else 0
        p = off + 4
        while p + 4 <= end:
            length, tlv_type = _le16(buf, p), _le16(buf, p + 2)
            if length < 4 or p + length > end:  # written by a big-endian host?
                length, tlv_type = int(_be16(buf, p)), int(_be16(buf, p + 2))
                if length < 4 or p + length > end:
                    return -1, -1  # a damaged TLV list: the record is skipped, the capture goes on
            if tlv_type == 9:
                return p + 4, etype
            p += (length + 3) & ~3
        return -1, -1
    if lt == LINKTYPE_FDDI:  # frame control, destination, source (13 bytes), then 802.2 LLC/SNAP
        return _llc_snap(buf, off + 13, end)
    p = off
    fcs_flags = 0
    if lt == LINKTYPE_RADIOTAP:
        if off + 8 > end:
            return -1, -1
        p = off + _le16(buf, off + 2)
        if p < off + 8 or p + 24 > end:
            return -1, -1
        # The flags field (bit 1 of the first "present" word) says whether the 802.11 header is padded to 32 bits.
        present, q = int.from_bytes(bytes(buf[off + 4:off + 8]), "little"), off + 8
        while int.from_bytes(bytes(buf[q - 4:q]), "little") & 0x80000000 and q + 4 <= p:
            q += 4  # extended present bitmaps
        if present & 1:  # TSFT: 8 bytes, 8-aligned from the radiotap header's start
            q = off + ((q - off + 7) & ~7) + 8
        if present & 2 and q < p:
            fcs_flags = int(buf[q])
    if p + 24 > end:
        return -1, -1
    fc0, fc1 = int(buf[p]), int(buf[p + 1])
    if (fc0 >> 2) & 3 != 2 or fc1 & 0x40 or (fc0 >> 4) & 4:  # not data, protected, or a null-data frame
        return -1, -1
    header = 24 + (6 if fc1 & 3 == 3 else 0)  # the fourth address of a WDS frame
    if (fc0 >> 4) & 8:  # QoS data: QoS control, plus HT control when "order" is set
        header += 2 + (4 if fc1 & 0x80 else 0)
    if fcs_flags & 0x20:  # data pad
        header = (header + 3) & ~3
    return _llc_snap(buf, p + header, end)


def _llc_snap(buf, q: int, end: int) -> tuple[int, int]:
    """An 802.2 LLC/SNAP header at ``q``: (the payload's offset, its ethertype); (-1, -1) for other LLC frames."""
    if q + 8 > end or (int(buf[q]), int(buf[q + 1]), int(buf[q + 2])) != (0xAA, 0xAA, 0x03):
        return -1, -1
    return q + 8, int(buf[q + 6]) << 8 | int(buf[q + 7])


def _parse_slow(b: PacketBatch, i: int, l3: int, etype: int, h: Headers, kind) -> None:
    """Per-packet path: MPLS / PPPoE below IP, IPv6 extension headers, IP-in-IP (decapsulated like nDPI)."""
    buf = b.buf
    end = int(b.off[i] + b.caplen[i])
    wire_end = int(b.off[i] + b.wirelen[i])
    p = l3
    kind[i] = MALFORMED
    if etype in (0x8847, 0x8848):  # MPLS label stack, then IP by version nibble
        while p + 4 <= end:
            bottom = buf[p + 2] & 1
            p += 4
            if bottom:
                break
        etype = 0
    elif etype == 0x8864:  # PPPoE session + PPP protocol
        if p + 8 > end:
            return
        pp = int(buf[p + 6]) << 8 | int(buf[p + 7])
        etype = {0x21: 0x0800, 0x57: 0x86DD}.get(pp, -1)
        p += 8
    for _ in range(4):  # at most a few levels of IP-in-IP
        if p >= end or etype == -1:
            kind[i] = NON_IP
            return
        ver = int(buf[p]) >> 4
        if ver == 4:
            if p + 20 > end:
                return
            ihl = (int(buf[p]) & 15) * 4
            tot = int(buf[p + 2]) << 8 | int(buf[p + 3])
            proto = int(buf[p + 9])
            if ihl < 20:
                return
            frag_off = (int(buf[p + 6]) << 8 | int(buf[p + 7])) & 0x1FFF
            if frag_off:
                kind[i] = LATER_FRAGMENT
                return
            hlen = ihl
            src, dst = buf[p + 12:p + 16], buf[p + 16:p + 20]
        elif ver == 6:
            if p + 40 > end:
                return
            tot = (int(buf[p + 4]) << 8 | int(buf[p + 5])) + 40
            proto = int(buf[p + 6])
            hlen = 40
            src, dst = buf[p + 8:p + 24], buf[p + 24:p + 40]
            while proto in _IPV6_EXT:  # skip extension headers
                q = p + hlen
                if q + 8 > end:
                    return
                if proto == 44:  # fragment header
                    if (int(buf[q + 2]) << 8 | int(buf[q + 3])) & 0xFFF8:
                        kind[i] = LATER_FRAGMENT
                        return
                    ext = 8
                elif proto == 51:  # AH: length in 4-byte units
                    ext = (int(buf[q + 1]) + 2) * 4
                else:
                    ext = (int(buf[q + 1]) + 1) * 8
                proto = int(buf[q])
                hlen += ext
        else:
            kind[i] = NON_IP
            return
        if proto in (4, 41) and p + hlen < end:  # IP-in-IP: nDPI classifies the inner packet
            p += hlen
            etype = 0
            continue
        break
    wire_ip = wire_end - p
    if tot < hlen or tot == 0 or (ver == 6 and tot == 40 and wire_ip > 40):
        tot = wire_ip
    avail = end - p
    kind[i] = FLOW
    h.ip_off[i] = p
    h.ip_end[i] = p + max(0, min(avail, tot))
    h.ipver[i] = ver
    h.ip_size[i] = tot
    h.proto[i] = proto
    h.src[i] = 0
    h.dst[i] = 0
    h.src[i, :len(src)] = src
    h.dst[i, :len(dst)] = dst
    # Transport fields with plain ints (numpy calls on one-element arrays cost tens of microseconds).
    q = p + hlen
    sp = dp = fl = 0
    l4hdr = 0
    if proto == 6:
        l4hdr = 20
        if avail >= hlen + 14:
            sp, dp, fl = int(buf[q]) << 8 | int(buf[q + 1]), int(buf[q + 2]) << 8 | int(buf[q + 3]), int(buf[q + 13])
            l4hdr = (int(buf[q + 12]) >> 4) * 4
    elif proto in (17, 132, 136):
        l4hdr = 8 if proto == 17 else 0
        if avail >= hlen + 4:
            sp, dp = int(buf[q]) << 8 | int(buf[q + 1]), int(buf[q + 2]) << 8 | int(buf[q + 3])
    h.sport[i], h.dport[i], h.flags[i] = sp, dp, fl
    h.l4[i] = hlen
    h.payload[i] = max(0, tot - hlen - l4hdr)
