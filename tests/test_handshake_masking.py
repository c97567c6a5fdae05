"""Per-session values inside TLS and DTLS handshakes are zeroed in the packet rows (docs/masking.md, "Per-session
random values"): hand-built hellos cut at many widths and with lying lengths, the numpy reference equal to the
compiled rows byte for byte; then real captures read 320 bytes wide (the peers' width) hold none of the server
names, key shares, tickets, cookies or randoms that dpkt finds in them, nor does any peer's input view."""
import collections
import dataclasses
import ipaddress
import pathlib
import struct

import dpkt
import numpy as np
import pytest

from pclip_jax.data import capture, tensors
from pclip_jax.data.ingest import IngestConfig, ingest_file

SNI = b"www.example.org"
SUPPORTED_VERSIONS = b"\x00\x2b\x00\x05\x04\x03\x04\x03\x03"
SUPPORTED_GROUPS = b"\x00\x0a\x00\x08\x00\x06\x0a\x0a\x00\x1d\x00\x17"


# ----------------------------------------------------------------------------------------------- hand-built rows

def _v8(b: bytes) -> bytes:
    return bytes([len(b)]) + b


def _v16(b: bytes) -> bytes:
    return struct.pack("!H", len(b)) + b


def _n24(n: int) -> bytes:
    return struct.pack("!I", n)[1:]


def _ext(t: int, body: bytes) -> bytes:
    return struct.pack("!HH", t, len(body)) + body


class Secrets:
    """Per-session values for a hand-built handshake: distinct non-zero bytes, or (``on`` False) zeros of the same
    length: the same handshake built both ways differs exactly in what masking must zero. ``values`` keeps them
    by name."""

    def __init__(self, on: bool):
        self.on, self.values = on, {}

    def __call__(self, name: str, n: int) -> bytes:
        k = len(self.values) + 1
        v = np.random.default_rng(k).integers(1, 256, n).astype(np.uint8).tobytes() if self.on else bytes(n)
        self.values[name] = v
        return v


def client_hello_body(s: Secrets, dtls: bool = False) -> bytes:
    """A ClientHello body with every extension masking knows, plus kept ones (supported_versions, groups)."""
    head = b"\x03\x03" + s("random", 32) + _v8(s("session_id", 32)) + (_v8(s("cookie", 20)) if dtls else b"")
    exts = [
        _ext(0, _v16(b"\x00" + _v16(SNI if s.on else bytes(len(SNI))))),  # server_name
        SUPPORTED_VERSIONS,  # kept
        SUPPORTED_GROUPS,  # kept
        _ext(51, _v16(b"\x0a\x0a" + _v16(s("grease_share", 1)) + b"\x00\x1d" + _v16(s("x25519", 32)))),  # key_share
        _ext(35, s("ticket", 48)),  # session_ticket
        _ext(44, _v16(s("cookie_ext", 16))),  # cookie
        _ext(0xFE0D, b"\x00\x00\x01\x00\x01\x42" + _v16(s("ech_enc", 32)) + _v16(s("ech_payload", 60))),  # ECH outer
        _ext(0xFFCE, s("esni", 24)),  # ESNI (draft)
        _ext(21, s("padding", 20)),  # padding (non-zero here, to see it zeroed)
        _ext(41, _v16(_v16(s("psk_identity", 40)) + s("ticket_age", 4)) + _v16(_v8(s("binder", 32)))),  # PSK
    ]
    return head + _v16(b"\x13\x01\x13\x02\xc0\x2b") + _v8(b"\x00") + _v16(b"".join(exts))


def server_hello_body(s: Secrets) -> bytes:
    head = b"\x03\x03" + s("random", 32) + _v8(s("session_id", 32)) + b"\x13\x01\x00"
    exts = [_ext(43, b"\x03\x04"), _ext(51, b"\x00\x1d" + _v16(s("x25519", 32))),
            _ext(41, b"\x00\x01")]  # pre_shared_key in a ServerHello: the chosen identity's index, kept
    return head + _v16(b"".join(exts))


def tls_record(typ: int, body: bytes) -> bytes:
    """A TLS handshake record holding one message: record header (5 bytes), handshake header (4), body."""
    return b"\x16\x03\x01" + _v16(bytes([typ]) + _n24(len(body)) + body)


def dtls_record(typ: int, body: bytes, start: int = 0, stop: int | None = None) -> bytes:
    """A DTLS 1.2 handshake record, epoch 0, holding one message or its fragment body[start:stop]: record header
    (type, version, epoch, sequence number, length: 13 bytes), handshake header (type, length, message sequence,
    fragment offset, fragment length: 12), fragment."""
    part = body[start:stop]
    hs = bytes([typ]) + _n24(len(body)) + b"\x00\x00" + _n24(start) + _n24(len(part)) + part
    return b"\x16\xfe\xfd" + b"\x00\x00" + bytes(6) + _v16(hs)


def dtls_flight(s: Secrets) -> bytes:
    """A datagram of several records: a certificate (kept), the client key exchange, a change cipher spec, and
    a session ticket sent in two fragments (the second one all ticket)."""
    ticket = b"\x00\x00\x1c\x20" + _v16(s("ticket", 120))
    return (dtls_record(11, _n24(40) + _n24(37) + bytes(range(1, 38))) + dtls_record(16, _v8(s("p256_point", 65)))
            + b"\x14\xfe\xfd" + b"\x00\x00" + bytes(6) + _v16(b"\x01")
            + dtls_record(4, ticket, 0, 50) + dtls_record(4, ticket, 50))


HANDSHAKES = {  # name -> (transport, payload built from a Secrets)
    "tls_client_hello": (6, lambda s: tls_record(1, client_hello_body(s))),
    "tls_server_hello": (6, lambda s: tls_record(2, server_hello_body(s))),
    "tls_new_session_ticket": (6, lambda s: tls_record(4, b"\x00\x00\x1c\x20" + _v16(s("ticket", 160)))),
    "tls_client_key_exchange_ecdhe": (6, lambda s: tls_record(16, _v8(s("x25519", 32)))),
    "tls_client_key_exchange_dhe": (6, lambda s: tls_record(16, _v16(s("dh_public", 256)))),
    "dtls_client_hello": (17, lambda s: dtls_record(1, client_hello_body(s, dtls=True))),
    "dtls_hello_verify_request": (17, lambda s: dtls_record(3, b"\xfe\xff" + _v8(s("cookie", 20)))),
    "dtls_server_hello": (17, lambda s: dtls_record(2, server_hello_body(s))),
    "dtls_client_key_exchange": (17, lambda s: dtls_record(16, _v8(s("p256_point", 65)))),
    "dtls_flight_of_records": (17, dtls_flight),
}


def packet(proto: int, payload: bytes) -> bytes:
    """IPv4 + TCP (no options) or UDP + payload."""
    l4 = (struct.pack("!HHIIBBHHH", 50000, 443, 1000, 2000, 0x50, 0x18, 512, 0, 0) if proto == 6
          else struct.pack("!HHHH", 50000, 443, 8 + len(payload), 0))
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4) + len(payload), 1, 0x4000, 64, proto, 0,
                       bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2])) + l4 + payload


def masked_rows(packets: list[bytes], width: int, proto: int = 6) -> np.ndarray:
    """Masked rows of these IPv4 packets: the numpy reference (extract_rows, mask_rows, mask_session_ids,
    scrub_addresses), checked equal byte for byte to the compiled packet_rows where the extension was built."""
    n = len(packets)
    buf = np.frombuffer(b"".join(packets), np.uint8).copy()
    lens = np.array([len(p) for p in packets], np.int64)
    start = np.concatenate([[0], np.cumsum(lens)[:-1]]).astype(np.int64)
    end = start + lens
    ipver, protos = np.full(n, 4, np.uint8), np.full(n, proto, np.uint8)
    l4, seq, ack = np.full(n, 20, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
    src, dst = np.zeros((n, 16), np.uint8), np.zeros((n, 16), np.uint8)
    src[:, :4], dst[:, :4] = buf[start[:, None] + np.arange(12, 16)], buf[start[:, None] + np.arange(16, 20)]
    want = tensors.extract_rows(buf, start, end, width)
    tensors.mask_rows(want, ipver, protos, l4, seq, ack)
    tensors.mask_session_ids(want, protos, l4)
    tensors.scrub_addresses(want, src, dst, ipver)
    if capture._capture_c is not None:
        got = np.empty((n, width), np.uint8)
        capture._capture_c.packet_rows(buf, start, end, got, True, ipver, protos, l4, seq, ack, src, dst)
        np.testing.assert_array_equal(got, want, err_msg=f"compiled rows differ from numpy at width {width}")
    return want


def _widths(full: int) -> list[int]:
    return [16, 40, 48, 60, 64, 80, 100, 128, 150, 200, 256, 320, full - 1, full, full + 64]


@pytest.mark.parametrize("name", sorted(HANDSHAKES))
def test_handshake_values_are_zeroed_and_types_and_lengths_kept(name):
    """The handshake built with secrets, masked, equals the same handshake built with zeros in their place:
    every per-session value is zeroed and nothing else of the payload changes (extension types, lengths, the
    kept extensions), at every width the row may be cut to."""
    proto, build = HANDSHAKES[name]
    secrets = Secrets(True)
    on, off = packet(proto, build(secrets)), packet(proto, build(Secrets(False)))
    assert len(on) == len(off) and on != off
    pay = 20 + (20 if proto == 6 else 8)
    for width in _widths(len(on)):
        got, want = masked_rows([on, off], width, proto)
        np.testing.assert_array_equal(got, want, err_msg=f"{name} width {width}")
        raw_off = np.frombuffer(off[:width].ljust(width, b"\0"), np.uint8)
        np.testing.assert_array_equal(want[pay:], raw_off[pay:], err_msg=f"{name} width {width}: payload changed")
    row = masked_rows([on], len(on), proto)[0].tobytes()
    assert SNI not in row and not any(v in row for v in secrets.values.values() if len(v) > 1)
    if name.endswith("client_hello"):  # spelled out: types, lengths and the kept extensions are there
        assert SUPPORTED_VERSIONS in row and SUPPORTED_GROUPS in row
        assert _ext(0, _v16(b"\x00" + _v16(bytes(len(SNI))))) in row
        assert _ext(51, _v16(b"\x0a\x0a" + _v16(b"\x00") + b"\x00\x1d" + _v16(bytes(32)))) in row


def _client_hello_lying(lie: str, on: bool) -> tuple[bytes, dict]:
    """A TLS ClientHello packet whose lengths lie (``lie``), and where some of its fields start."""
    body = bytearray(client_hello_body(Secrets(on)))
    at = {"sid": 34, "suites": 35 + 32}
    at["exts"] = at["suites"] + 2 + 6 + 2
    at["sni"] = at["exts"] + 2
    at["x25519"] = body.index(b"\x0a\x0a\x00\x01", at["exts"]) + 5 + 4  # after the GREASE share, group, length
    record = bytearray(tls_record(1, bytes(body)))
    hdr = 9  # record and handshake headers before the body
    if lie == "record_and_handshake_lengths_zero":
        record[3:5], record[6:9] = b"\x00\x01", b"\x00\x00\x00"
    elif lie == "extensions_block_past_the_row":
        record[hdr + at["exts"]:hdr + at["exts"] + 2] = b"\xff\xff"
    elif lie == "server_name_past_the_row":
        record[hdr + at["sni"] + 2:hdr + at["sni"] + 4] = b"\xff\xff"
    elif lie == "key_longer_than_its_extension":
        record[hdr + at["x25519"] - 2:hdr + at["x25519"]] = b"\x04\x00"
    elif lie == "cipher_suites_past_the_row":
        record[hdr + at["suites"]:hdr + at["suites"] + 2] = b"\xff\xff"
    elif lie == "session_id_over_32":
        record[hdr + at["sid"]] = 0xFF
    else:
        raise ValueError(lie)
    return packet(6, bytes(record)), {k: 40 + hdr + v for k, v in at.items()}


LIES = ["record_and_handshake_lengths_zero", "extensions_block_past_the_row", "server_name_past_the_row",
        "key_longer_than_its_extension", "cipher_suites_past_the_row", "session_id_over_32"]


@pytest.mark.parametrize("lie", LIES)
def test_lying_lengths_never_read_past_the_row(lie):
    """Lengths are read, never trusted: the walk stays inside the row and inside the extension a length belongs
    to; numpy and the compiled rows agree at every width (``masked_rows`` checks)."""
    on, at = _client_hello_lying(lie, True)
    off, _ = _client_hello_lying(lie, False)
    for width in _widths(len(on)):
        masked_rows([on, off], width)
    got, want = masked_rows([on, off], len(on))
    random = slice(at["sid"] - 32, at["sid"])
    assert not got[random].any() and not got[at["sid"] + 1:at["sid"] + 33].any()  # fixed fields: always zeroed
    if lie in ("record_and_handshake_lengths_zero", "extensions_block_past_the_row", "key_longer_than_its_extension"):
        # the walk never used the lying length, or clipped it to the row / to the extension: fully masked
        np.testing.assert_array_equal(got, want)
    elif lie == "server_name_past_the_row":
        assert SNI not in got.tobytes()  # the name is zeroed; the walk of its list runs to the row's end
        np.testing.assert_array_equal(got[:at["sni"] + 9], want[:at["sni"] + 9])
    else:
        # cipher suites pointing past the row, or a session id over 32 bytes (no valid hello): what follows
        # cannot be located, and is left as it is rather than guessed at
        assert SNI in got.tobytes()
        np.testing.assert_array_equal(got[at["sid"] + 33:], np.frombuffer(on, np.uint8)[at["sid"] + 33:])


def test_dtls_walk_stops_at_the_fragment_end():
    """A DTLS ClientHello sent in two fragments (two records of one datagram): the first fragment's fields and
    extensions are walked up to its end, never into the next record; a later fragment of a hello cannot be
    parsed alone and is kept as it is (docs/masking.md)."""
    secrets = Secrets(True)
    body = client_hello_body(secrets, dtls=True)
    cut = body.index(SUPPORTED_VERSIONS) + len(SUPPORTED_VERSIONS)  # after server_name and supported_versions
    second = dtls_record(1, body, cut)
    on = packet(17, dtls_record(1, body, 0, cut) + second)
    got = masked_rows([on], len(on), 17)[0].tobytes()
    assert SNI not in got and not any(secrets.values[k] in got for k in ("random", "session_id", "cookie"))
    assert got.endswith(second) and secrets.values["x25519"] in second


def test_damaged_handshakes_numpy_equals_compiled():
    """Handshake rows with random bytes replaced (2 to 40 per row), at widths 16 to 700: numpy == compiled."""
    if capture._capture_c is None:
        pytest.skip("the compiled helpers were not built (tests/test_capture.py says whether they should be)")
    rng = np.random.default_rng(7)
    for proto in (6, 17):
        base = [packet(p, build(Secrets(True))) for p, build in HANDSHAKES.values() if p == proto]
        pk = []
        for _ in range(150):
            p = bytearray(base[rng.integers(len(base))])
            at = rng.integers(40 if proto == 6 else 28, len(p), rng.integers(2, 40))
            for a in at:
                p[a] = int(rng.choice([0, 1, 2, 0xFF, int(rng.integers(256))]))
            pk.append(bytes(p))
        for width in (16, 60, 100, 128, 320, 700):
            masked_rows(pk, width, proto)


# ----------------------------------------------------------------------------------------------- real captures

TLS_CAPTURES = ["sites.pcapng", "tunnelbear.pcap", "instagram.pcap", "chrome.pcap", "firefox.pcap",
                "443-firefox.pcap", "tls_ech.pcapng", "tls-esni-fuzzed.pcap"]
DTLS_CAPTURES = ["dtls.pcap", "dtls2.pcap", "dtls_session_id_and_coockie_both.pcap", "dtls_certificate_fragments.pcap",
                 "stun_zoom.pcapng", "geforcenow.pcapng", "stun_dtls_rtp.pcapng"]


def _ip(buf: bytes, linktype: int):
    try:
        if linktype == dpkt.pcap.DLT_EN10MB:
            return dpkt.ethernet.Ethernet(buf).data
        if linktype == dpkt.pcap.DLT_LINUX_SLL:
            return dpkt.sll.SLL(buf).data
        if linktype in (dpkt.pcap.DLT_RAW, 12, 14, 228, 229):
            return dpkt.ip.IP(buf) if buf[0] >> 4 == 4 else dpkt.ip6.IP6(buf)
        if linktype == dpkt.pcap.DLT_NULL:
            return dpkt.loopback.Loopback(buf).data
    except (dpkt.UnpackError, IndexError, ValueError, struct.error):
        pass
    return None


def _items(v: bytes, q: int, pre: int, size: int, post: int = 0) -> list[bytes]:
    out = []
    while q + pre + size <= len(v):
        n, a = int.from_bytes(v[q + pre:q + pre + size], "big"), q + pre + size
        out.append(v[a:a + n])
        q = a + n + post
    return out


def _flow_key(proto: int, a, pa: int, b, pb: int) -> tuple:
    x, y = (ipaddress.ip_address(a), int(pa)), (ipaddress.ip_address(b), int(pb))
    return (int(proto),) + (x + y if x <= y else y + x)


def _messages(ip, seg, fragments: dict):
    """(type, body) of every complete handshake message in the TLS records of a TCP segment, or in the DTLS
    records of a datagram (fragments reassembled in ``fragments``), records read one after the other."""
    d, pos, dtls = bytes(seg.data), 0, isinstance(seg, dpkt.udp.UDP)
    head = 13 if dtls else 5
    while pos + head <= len(d) and d[pos] in (20, 21, 22, 23, 24) and d[pos + 1] == (0xFE if dtls else 3):
        start = pos
        rec = d[start + head:start + head + int.from_bytes(d[start + head - 2:start + head], "big")]
        pos = start + head + len(rec)
        if d[start] != 22 or (dtls and d[start + 3:start + 5] != b"\0\0"):
            continue  # not a handshake record, or encrypted (DTLS epoch > 0)
        m = 0
        while m + (12 if dtls else 4) <= len(rec):
            typ, n = rec[m], int.from_bytes(rec[m + 1:m + 4], "big")
            if not dtls:
                if m + 4 + n <= len(rec):
                    yield typ, rec[m + 4:m + 4 + n]
                m += 4 + n
                continue
            seq, off, flen = (int.from_bytes(rec[m + a:m + b], "big") for a, b in ((4, 6), (6, 9), (9, 12)))
            key = (ip.src, seg.sport, ip.dst, seg.dport, seq, typ)
            buf, have = fragments.setdefault(key, (bytearray(n), set()))
            part = rec[m + 12:m + 12 + flen]
            buf[off:off + len(part)] = part[:max(0, n - off)]
            have.update(range(off, min(off + len(part), n)))
            if len(have) == n:
                del fragments[key]
                yield typ, bytes(buf)
            m += 12 + flen


def handshake_secrets(path: pathlib.Path) -> tuple[dict[str, set[bytes]], dict[tuple, set[bytes]]]:
    """The per-session values of the capture's TLS and DTLS handshakes as dpkt reads them (its TLS hello parser;
    DTLS hellos handed to it without their cookie): ({kind: values}, {flow key: server names})."""
    found, names, fragments = collections.defaultdict(set), collections.defaultdict(set), {}
    with open(path, "rb") as fh:
        reader = dpkt.pcap.UniversalReader(fh)
        linktype = reader.datalink()
        for _, buf in reader:
            ip = _ip(buf, linktype)
            seg = getattr(ip, "data", None)
            if not isinstance(seg, (dpkt.tcp.TCP, dpkt.udp.UDP)):
                continue
            for typ, body in _messages(ip, seg, fragments):
                if isinstance(seg, dpkt.udp.UDP) and typ == 3 and len(body) >= 3:
                    found["cookie"].add(body[3:3 + body[2]])
                    continue
                if isinstance(seg, dpkt.udp.UDP) and typ == 1 and len(body) > 35 and 35 + body[34] < len(body):
                    at = 35 + body[34]  # the cookie, taken out: the rest is a TLS ClientHello body
                    cookie = body[at + 1:at + 1 + body[at]]
                    found["cookie"].add(cookie)
                    body = body[:at] + body[at + 1 + len(cookie):]
                if typ == 16 and body:
                    found["client_key"].add(body[1:] if body[0] == len(body) - 1 else body[2:])
                elif typ == 4 and len(body) >= 6:
                    found["ticket"].add(body[6:6 + int.from_bytes(body[4:6], "big")])
                elif typ in (1, 2):
                    try:
                        hello = (dpkt.ssl.TLSClientHello if typ == 1 else dpkt.ssl.TLSServerHello)(body)
                    except (dpkt.UnpackError, IndexError, ValueError, KeyError, struct.error):
                        continue
                    found["random"].add(hello.random)
                    found["session_id"].add(hello.session_id)
                    for t, v in getattr(hello, "extensions", None) or []:
                        if t == 0 and typ == 1:
                            names[_flow_key(ip.p if isinstance(ip, dpkt.ip.IP) else ip.nxt, ip.src, seg.sport,
                                            ip.dst, seg.dport)].update(_items(v, 2, 1, 2))
                        elif t == 51:
                            found["key_share"].update(_items(v, 2 if typ == 1 else 0, 2, 2))
                        elif t == 41 and typ == 1:
                            ids = int.from_bytes(v[:2], "big")
                            found["psk"].update(_items(v[:2 + ids], 2, 0, 2, 4) + _items(v, 4 + ids, 0, 1))
                        elif t == 35:
                            found["ticket"].add(v)
                        elif t == 0xFE0D and typ == 1 and v[:1] == b"\0":
                            found["ech"].update(_items(v, 6, 0, 2))
    return found, names


def _pieces(values: set[bytes]) -> np.ndarray:
    """Every 8-byte window of the values (a value cut by the row's end still shows some), as uint64, leaving out
    those with 4 or more zero bytes (they would match zero padding)."""
    out = {v[i:i + 8] for v in values for i in range(len(v) - 7) if v[i:i + 8].count(0) < 4}
    return np.unique(np.frombuffer(b"".join(sorted(out)), "<u8"))


def _find(pieces: dict[str, np.ndarray], rows: np.ndarray) -> collections.Counter:
    """How many of ``rows`` (uint8 [M, L]) contain a piece of each kind, for the kinds found at least once."""
    hits = collections.Counter()
    if not len(rows):
        return hits
    windows = np.ascontiguousarray(np.lib.stride_tricks.sliding_window_view(rows, 8, axis=1)).view("<u8")[..., 0]
    for kind, p in pieces.items():
        if len(p):
            hits[kind] += int(np.isin(windows, p).any(1).sum())
    return +hits


@pytest.fixture(scope="module")
def peer_config(tmp_path_factory):
    """The ingest settings the peer suite reads its table with (`suite.neural_rows`: the dataset's data block,
    320 bytes wide), for both datasets."""
    from pclip_bench.peers import suite

    configs = set()
    for dataset in suite.DATASETS:
        _, settings = suite.dataset_settings(suite.Cell(dataset, "yatc", 1.0, 0), tmp_path_factory.mktemp("w"))
        peer = settings.replace(data={"bytes": max(settings.data.bytes, suite.PEER_BYTES)})
        configs.add(IngestConfig.from_data_config(peer.data))
    assert len(configs) == 1
    config = configs.pop()
    assert config.mask and config.bytes == suite.PEER_BYTES == 320
    return config


def _peer_views(table) -> dict[str, np.ndarray]:
    """Every byte-reading peer input of each flow, turned back into the bytes it holds; each view checked to be
    the masked rows (so derived from them, not from the capture)."""
    from pclip_bench.peers import inputs, models, trees

    t, idx = table.tensors, np.arange(len(table))
    rows = t["bytes"]
    views = {}
    image = np.rint(models.PEERS["yatc"].features(t, idx) * 255).astype(np.uint8).reshape(len(idx), 5, 320)
    np.testing.assert_array_equal(image, rows[:, :5, :320])
    views["yatc"] = image.reshape(len(idx), -1)
    strides = np.rint(models.PEERS["netmamba"].features(t, idx) * 255).astype(np.uint8).reshape(len(idx), -1)
    np.testing.assert_array_equal(strides, views["yatc"])
    views["netmamba"] = strides
    data, real = inputs.flow_bytes(t, idx, 784)
    first = np.rint(models.PEERS["cnn1d"].features(t, idx) * 255).astype(np.uint8)
    np.testing.assert_array_equal(first, data)
    views["cnn1d"] = first
    tokens, mask = models.PEERS["etbert"].features(t, idx)
    ok = mask[:, 1:]  # real bigrams: token j + 1 is bytes (j, j + 1)
    grams = np.where(ok, tokens[:, 1:] - len(inputs.SPECIAL), 0)
    etbert = np.concatenate([grams[:, :1] >> 8, grams & 0xFF], 1).astype(np.uint8)  # bigrams back to bytes
    real_bytes = np.concatenate([ok[:, :1], ok], 1)
    np.testing.assert_array_equal(etbert[real_bytes], data[:, :etbert.shape[1]][real_bytes])
    views["etbert"] = etbert
    feats = trees.tree_features(t, idx, 320, with_names=False)
    k = rows.shape[1]
    tree_bytes = feats[:, 2 * k:2 * k + trees.BYTE_PACKETS * 320].astype(np.uint8)
    np.testing.assert_array_equal(tree_bytes, rows[:, :trees.BYTE_PACKETS, :320].reshape(len(idx), -1))
    views["trees"] = tree_bytes
    return views


@pytest.mark.parametrize("name", TLS_CAPTURES + DTLS_CAPTURES)
def test_wide_rows_and_peer_views_hold_no_handshake_secrets(real_ndpi_dir, peer_config, name):
    """A real capture ingested as the peers read it (320 bytes, masked): no row and no peer input view holds a
    piece of a key share, PSK, ticket, ECH value, cookie, random, session id or client key exchange that dpkt
    finds in the capture's handshakes, and no client-to-server row of a flow holds a piece of the server name its
    ClientHello sent (other flows' HTTP Host and DNS names are kept, and so are servers' TLS 1.2 certificates,
    which name the server too); ingested without masking, the same search finds them (the check can fail)."""
    path = real_ndpi_dir / "pcap" / name
    secrets, names = handshake_secrets(path)
    pieces = {kind: _pieces(v) for kind, v in secrets.items()}
    assert sum(map(len, pieces.values())) > 0, f"{name}: dpkt found no handshake"
    masked = ingest_file(path, name, peer_config)
    plain = ingest_file(path, name, dataclasses.replace(peer_config, mask=False))

    def rows(table):
        t = table.tensors
        return t["bytes"][np.arange(t["bytes"].shape[1])[None, :] < t["num_packets"][:, None]]

    def own_names(table):
        hits = collections.Counter()
        m, t = table.meta, table.tensors
        for f in range(len(table)):
            key = _flow_key(m["proto"][f], m["client_ip"][f], m["client_port"][f], m["server_ip"][f],
                            m["server_port"][f])
            if key in names:
                hits += _find({"server_name": _pieces(names[key])}, t["bytes"][f][t["sizes"][f] > 0])
        return hits

    leaks = _find(pieces, rows(masked)) + own_names(masked)
    assert not leaks, f"{name}: {dict(leaks)}"
    found = _find(pieces, rows(plain)) + own_names(plain)
    assert found["random"] > 0, f"{name}: {dict(found)}"
    if name in ("sites.pcapng", "tunnelbear.pcap", "instagram.pcap", "chrome.pcap", "firefox.pcap"):
        assert found["server_name"] > 0 and found["key_share"] + found["client_key"] > 0, dict(found)
    for view, flows in _peer_views(masked).items():
        leaks = _find(pieces, flows)
        assert not leaks, f"{name} {view}: {dict(leaks)}"
