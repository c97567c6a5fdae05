"""Packets -> flows -> tensors, checked against nDPI's own per-flow counts on real captures; the tests of how flows
are cut and written also run on the stand-ins of those captures (tests/synthetic_data.py)."""
import collections
import ipaddress

import numpy as np
import pytest

from pclip_jax.data import capture, flows, tensors
from pclip_jax.data.ingest import IngestConfig, ingest, ingest_file
from pclip_jax.data.labels import parse_ndpi_out
from tests.conftest import on_corpus

# ndpiReader's regression outputs never time flows out, so its counts are compared with timeouts off.
NO_TIMEOUTS = dict(idle_timeout=1e9, active_timeout=1e9)

# Link types 1, 0 (BSD null), 9 (PPP), 101 (raw), 104 (Cisco HDLC), 113 (Linux SLL), 228 (raw IPv4), in pcap and
# pcapng; VLAN; IPv6; IP-in-IP tunnels; IP fragments; TCP, UDP, ICMP(v6), IGMP, ESP, AH, OSPF, PIM, VRRP.
NDPI_CAPTURES = [
    "1kxun.pcap", "4in4tunnel.pcap", "6in4tunnel.pcap", "6in6tunnel.pcap", "BGP_redist.pcap",
    "KakaoTalk_chat.pcap", "ah.pcapng", "ajp.pcap", "anyconnect-vpn.pcap", "bjnp.pcap", "custom_categories.pcapng",
    "dlt_ppp.pcap", "dns_fragmented.pcap", "esp.pcapng", "hsrp2_ipv6.pcapng", "http2.pcapng", "nats.pcap",
    "openwire.pcapng", "ospfv2_add_new_prefix.pcap", "ossfuzz_seed_fake_traces_1.pcapng", "pim.pcap",
    "quic-v2.pcapng", "quic_interop_V.pcapng", "tls_certificate_too_long.pcap", "vrrp3.pcapng", "wechat.pcap",
    "zoom.pcap", "netflix.pcap",
]


def _key(proto, a, pa, b, pb):
    x = (ipaddress.ip_address(a).compressed, int(pa))
    y = (ipaddress.ip_address(b).compressed, int(pb))
    return (int(proto),) + (x + y if x <= y else y + x)


def _compare_with_ndpi(table, out_path):
    """(nDPI flows found in the capture, of those: equal packets and bytes per direction)."""
    m = table.meta
    by_key = collections.defaultdict(list)
    for r in range(len(table)):
        by_key[_key(m["proto"][r], m["client_ip"][r], m["client_port"][r], m["server_ip"][r],
                    m["server_port"][r])].append(r)
    found = equal = 0
    for f in parse_ndpi_out(out_path, []):
        rows = by_key.get(_key(f.proto, f.src_ip, f.src_port, f.dst_ip, f.dst_port))
        if not rows:
            continue
        found += 1
        for r in rows:
            fwd = ipaddress.ip_address(m["client_ip"][r]).compressed == f.src_ip and m["client_port"][r] == f.src_port
            pk = (int(m["c2s_packets"][r]), int(m["s2c_packets"][r]))
            by = (int(m["c2s_bytes"][r]), int(m["s2c_bytes"][r]))
            if not fwd:
                pk, by = pk[::-1], by[::-1]
            if pk == (f.src_packets, f.dst_packets) and by == (f.src_bytes, f.dst_bytes):
                equal += 1
                break
    return found, equal


def test_counts_equal_ndpi_on_diverse_captures(real_ndpi_dir):
    linktypes, protos = set(), set()
    total = 0
    for name in NDPI_CAPTURES:
        path = real_ndpi_dir / "pcap" / name
        t = ingest_file(path, name, IngestConfig(**NO_TIMEOUTS))
        found, equal = _compare_with_ndpi(t, real_ndpi_dir / "result" / (name + ".out"))
        assert found > 0 and equal == found, (name, found, equal)
        total += found
        errors = []
        for b in capture.read_batches(path, errors):
            linktypes |= set(b.linktype.tolist())
        protos |= set(t.meta["proto"].tolist())
    assert len(NDPI_CAPTURES) >= 20 and total > 600
    assert linktypes >= {0, 1, 9, 101, 104, 113, 228}
    assert protos >= {1, 2, 6, 17, 50, 51, 58, 89, 103, 112}


def test_ndpi_agreement_over_the_whole_corpus(real_ndpi_dir):
    t = ingest([real_ndpi_dir / "pcap"], IngestConfig(**NO_TIMEOUTS), progress=False)
    found = equal = 0
    for name in np.unique(t.meta["capture"]):
        out = real_ndpi_dir / "result" / (name + ".out")
        if out.is_file():
            f, e = _compare_with_ndpi(t.select(t.meta["capture"] == name), out)
            found, equal = found + f, equal + e
    assert found > 5000
    assert equal / found >= 0.99, (found, equal)


def test_idle_timeout_splits_only_at_long_gaps(ndpi_dir):
    path = ndpi_dir / "pcap" / "gnutella.pcap"  # real UDP conversations with gaps of several minutes
    merged = ingest_file(path, "g", IngestConfig(**NO_TIMEOUTS))
    split = ingest_file(path, "g", IngestConfig())
    assert len(split) > len(merged)
    assert split.summary["packets"] == merged.summary["packets"]
    tot = lambda t: int(t.meta["c2s_packets"].sum() + t.meta["s2c_packets"].sum())  # noqa: E731
    assert tot(split) == tot(merged)
    m = split.meta
    last = {}
    n_gaps = 0
    for r in np.argsort(m["first_ts"], kind="stable"):
        k = _key(m["proto"][r], m["client_ip"][r], m["client_port"][r], m["server_ip"][r], m["server_port"][r])
        if k in last and m["proto"][r] != 6:
            assert m["first_ts"][r] - last[k] > 120.0
            n_gaps += 1
        last[k] = m["last_ts"][r]
    assert n_gaps > 10


def test_active_timeout_bounds_flow_duration(ndpi_dir):
    path = ndpi_dir / "pcap" / "tplink_shp.pcap"  # UDP broadcasts every minute for half an hour
    t = ingest_file(path, "t", IngestConfig(active_timeout=600.0, idle_timeout=1e9))
    d = t.meta["last_ts"] - t.meta["first_ts"]
    assert d.max() <= 600.0 and (d > 500).any()
    longer = ingest_file(path, "t", IngestConfig(**NO_TIMEOUTS))
    assert (longer.meta["last_ts"] - longer.meta["first_ts"]).max() > 1200.0


def test_tcp_reuse_after_rst_starts_a_new_flow_but_teardown_stays(ndpi_dir):
    path = ndpi_dir / "pcap" / "rtsp.pcap"  # 10.1.1.10:52478 -> :8554 refused with RSTs, then reused with a SYN
    t = ingest_file(path, "r", IngestConfig(**NO_TIMEOUTS))
    m = t.meta
    rows = np.nonzero((m["client_port"] == 52478) & (m["server_port"] == 8554))[0]
    assert len(rows) == 2
    first, second = rows[np.argsort(m["first_ts"][rows])]
    assert t.tensors["tcp_flags"][first, t.tensors["num_packets"][first] - 1] & 0x04  # ended by an RST
    assert t.tensors["tcp_flags"][second, 0] == 0x02  # the new flow starts with the SYN
    # Normal FIN teardowns: the packets after both FINs (the last ACK) stay in the flow.
    t = ingest_file(ndpi_dir / "pcap" / "1kxun.pcap", "k", IngestConfig(packets=256, bytes=40))
    closed = 0
    for r in np.nonzero(t.meta["proto"] == 6)[0]:
        n = t.tensors["num_packets"][r]
        fl, sz = t.tensors["tcp_flags"][r, :n], t.tensors["sizes"][r, :n]
        fins = np.nonzero(fl & 1)[0]
        if n < 256 and len(fins) >= 2 and (sz[fins] > 0).any() and (sz[fins] < 0).any() and fins[-1] < n - 1:
            assert (fl[fins[-1] + 1:] & 0x02 == 0).all()
            closed += 1
    assert closed >= 3
    # Over whole captures, no flow is a lone ACK, as a teardown shattered into extra flows would be.
    for name in ("1kxun.pcap", "tls_certificate_too_long.pcap", "rtsp.pcap", "http_ipv6.pcap"):
        t = ingest_file(ndpi_dir / "pcap" / name, name, IngestConfig())
        tcp = t.meta["proto"] == 6
        first_flags = t.tensors["tcp_flags"][tcp, 0]
        assert not ((first_flags == 0x10) & (t.tensors["num_packets"][tcp] == 1)).any(), name


def test_tensor_layout_matches_flow_counts(ndpi_dir):
    t = ingest_file(ndpi_dir / "pcap" / "1kxun.pcap", "k", IngestConfig(packets=8, bytes=64))
    T, m = t.tensors, t.meta
    n = len(t)
    assert T["bytes"].shape == (n, 8, 64) and T["bytes"].dtype == np.uint8
    assert T["sizes"].shape == (n, 8) and T["sizes"].dtype == np.int32
    assert T["iat"].dtype == np.float32 and T["tcp_flags"].dtype == np.uint8
    assert T["stats"].shape == (n, len(tensors.STATS_NAMES)) == (n, len(t.stats_names))
    total = m["c2s_packets"] + m["s2c_packets"]
    np.testing.assert_array_equal(T["num_packets"], np.minimum(total, 8))
    k = np.arange(8)[None, :]
    valid = k < T["num_packets"][:, None]
    assert (T["sizes"][~valid] == 0).all() and (T["bytes"][~valid] == 0).all() and (T["iat"][~valid] == 0).all()
    assert (T["sizes"][valid] != 0).all() and (T["iat"][:, 0] == 0).all()
    short = total <= 8
    np.testing.assert_array_equal((T["sizes"][short] > 0).sum(1), m["c2s_packets"][short])
    np.testing.assert_allclose(T["iat"][short].sum(1), (m["last_ts"] - m["first_ts"])[short], atol=1e-4)
    s = dict(zip(t.stats_names, T["stats"].T))
    np.testing.assert_allclose(s["duration"], m["last_ts"] - m["first_ts"], rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(s["c2s_packets"], m["c2s_packets"])
    np.testing.assert_array_equal(s["s2c_bytes"], m["s2c_bytes"])
    # The first row of a flow is its first packet: an IPv4/IPv6 header whose length is the first size.
    ver = T["bytes"][:, 0, 0] >> 4
    assert set(ver.tolist()) <= {4, 6}
    v4 = ver == 4
    ip_len = T["bytes"][v4, 0, 2].astype(int) << 8 | T["bytes"][v4, 0, 3]
    np.testing.assert_array_equal(ip_len, np.abs(T["sizes"][v4, 0]))
    assert (s["c2s_size_min"] <= s["c2s_size_mean"] + 1e-3).all() and (s["all_size_max"] >= 20).all()
    for bit, flag in enumerate(tensors.FLAG_NAMES):  # flag counts agree with the per-packet flags
        np.testing.assert_array_equal(s[f"{flag}_count"][short], ((T["tcp_flags"][short] >> bit) & 1).sum(1))
    assert (s["syn_count"] > 0).sum() > 10


def _addr_bytes(ip):
    return ipaddress.ip_address(ip).packed


def _masked_and_plain(ndpi_dir, name):
    """The same capture ingested with the default masking and without any."""
    path = ndpi_dir / "pcap" / name
    return ingest_file(path, name, IngestConfig()), ingest_file(path, name, IngestConfig(mask=False))


@pytest.mark.parametrize("name", ["1kxun.pcap", "quic_interop_V.pcapng", "6in4tunnel.pcap", "anyconnect-vpn.pcap",
                                  "KakaoTalk_chat.pcap", "wechat.pcap"])
def test_masked_tensors_hold_no_ip_address_of_the_flow(ndpi_dir, name):
    masked, plain = _masked_and_plain(ndpi_dir, name)
    leaks_plain = 0
    for r in range(len(masked)):
        addrs = {_addr_bytes(masked.meta["client_ip"][r]), _addr_bytes(masked.meta["server_ip"][r])}
        addrs -= {b"\0" * 4, b"\xff" * 4, b"\0" * 16}  # identify nothing; occur as plain zero/0xff runs
        n = masked.tensors["num_packets"][r]
        for row_m, row_p in zip(masked.tensors["bytes"][r, :n], plain.tensors["bytes"][r, :n]):
            mb, pb = row_m.tobytes(), row_p.tobytes()
            for a in addrs:
                assert a not in mb, (name, r, masked.meta["client_ip"][r], masked.meta["server_ip"][r])
                leaks_plain += a in pb
    assert leaks_plain > 0  # the check can fail: unmasked rows do hold the addresses
    # Header fields: IPv4 TTL, ID, checksum and TCP/UDP ports are zero in every masked first row.
    b = masked.tensors["bytes"][:, 0]
    v4 = (b[:, 0] >> 4) == 4
    assert (b[v4][:, [4, 5, 8, 10, 11]] == 0).all()
    ihl = (b[v4, 0] & 15).astype(int) * 4
    ported = np.isin(masked.meta["proto"][v4], (6, 17))
    rows = np.nonzero(ported)[0]
    ports = b[v4][rows[:, None], ihl[rows, None] + np.arange(4)]
    assert (ports == 0).all()
    if v4.any():
        assert (plain.tensors["bytes"][:, 0][v4][:, 8] != 0).any()  # TTLs are there without masking
    v6 = (b[:, 0] >> 4) == 6
    assert (b[v6][:, [2, 3, 7]] == 0).all() and (b[v6][:, 1] & 0x0F == 0).all()  # flow label, hop limit


def test_tcp_sequence_numbers_are_relative(ndpi_dir):
    t = ingest_file(ndpi_dir / "pcap" / "tls_certificate_too_long.pcap", "x", IngestConfig())
    tcp = np.nonzero((t.meta["proto"] == 6) & (t.tensors["tcp_flags"][:, 0] == 0x02))[0]
    assert len(tcp) > 5
    for r in tcp:
        rows, sizes, fl = t.tensors["bytes"][r], t.tensors["sizes"][r], t.tensors["tcp_flags"][r]
        v4 = rows[0, 0] >> 4 == 4
        l4 = (rows[0, 0] & 15) * 4 if v4 else 40
        seq = lambda i: int.from_bytes(rows[i, l4 + 4:l4 + 8].tobytes(), "big")  # noqa: E731
        ack = lambda i: int.from_bytes(rows[i, l4 + 8:l4 + 12].tobytes(), "big")  # noqa: E731
        assert seq(0) == 0 and ack(0) == 0  # SYN
        if sizes[1] < 0 and fl[1] == 0x12:  # SYN-ACK: its own sequence starts at 0 and acks the SYN
            assert seq(1) == 0 and ack(1) == 1
        if sizes[2] > 0 and fl[2] & 0x10:
            assert seq(2) == 1 and ack(2) == 1  # the handshake's final ACK


@pytest.mark.parametrize("name", ["1kxun.pcap", "quic_interop_V.pcapng", "gnutella.pcap"])
def test_chunk_boundaries_do_not_change_flows(ndpi_dir, name):
    """Streaming in tiny chunks (flows spanning hundreds of chunks, expiry between them) gives the same table."""
    path = ndpi_dir / "pcap" / name
    whole = ingest_file(path, name, IngestConfig())
    small = ingest_file(path, name, IngestConfig(chunk_bytes=3000))
    assert len(whole) == len(small) > 0
    for k in whole.meta:
        np.testing.assert_array_equal(whole.meta[k], small.meta[k], err_msg=k)
    for k in whole.tensors:
        np.testing.assert_allclose(whole.tensors[k], small.tensors[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _session_id_spans(row: bytes) -> list[tuple[int, int]]:
    """Scalar reference: byte spans of the per-session random values in an unmasked IPv4/IPv6 row."""
    ver = row[0] >> 4
    l4, proto = ((row[0] & 15) * 4, row[9]) if ver == 4 else (40, row[6])
    spans = []
    if proto == 6 and l4 + 13 <= len(row):
        hlen = (row[l4 + 12] >> 4) * 4
        i, end = l4 + 20, min(l4 + hlen, len(row))
        while i < end:
            kind = row[i]
            if kind == 0:
                break
            if kind == 1:
                i += 1
                continue
            ln = row[i + 1] if i + 1 < len(row) else 0
            if ln < 2:
                break
            if kind == 8 and ln == 10:
                spans.append((i + 2, i + 10))
            i += ln
        p = l4 + hlen
        if p + 44 <= len(row) and row[p] == 0x16 and row[p + 1] == 3 and row[p + 5] in (1, 2):
            spans += [(p + 11, p + 43), (p + 44, p + 44 + min(row[p + 43], 32))]
    if proto == 17 and l4 + 14 <= len(row):
        p = l4 + 8
        if row[p] & 0xC0 == 0xC0 and any(row[p + 1:p + 5]) and row[p + 5] <= 20:
            d = row[p + 5]
            spans.append((p + 6, p + 6 + d))
            if p + 6 + d < len(row) and row[p + 6 + d] <= 20:
                spans.append((p + 7 + d, p + 7 + d + row[p + 6 + d]))
    return [(a, min(b, len(row))) for a, b in spans if a < len(row)]


@pytest.mark.parametrize("name", ["tls_verylong_certificate.pcap", "quic-33.pcapng", "wechat.pcap"])
def test_per_session_random_values_are_zeroed(ndpi_dir, name):
    masked, plain = _masked_and_plain(ndpi_dir, name)
    found = 0
    for f in range(len(masked)):
        for k in range(int(masked.tensors["num_packets"][f])):
            row, raw = masked.tensors["bytes"][f, k], plain.tensors["bytes"][f, k]
            if raw[0] >> 4 not in (4, 6):
                continue
            for a, b in _session_id_spans(bytes(raw)):
                found += raw[a:b].any()
                assert not row[a:b].any(), (name, f, k, a, b)
    assert found > 0, f"{name}: no TCP timestamp, TLS hello or QUIC long header found"


def _payload_bytes(row: bytes) -> int:
    """Transport payload length of an unmasked IPv4/IPv6 row (TCP/UDP; 0 for others)."""
    v4 = row[0] >> 4 == 4
    ihl, proto = ((row[0] & 15) * 4, row[9]) if v4 else (40, row[6])
    total = int.from_bytes(row[2:4], "big") if v4 else 40 + int.from_bytes(row[4:6], "big")
    if proto == 6:
        return total - ihl - (row[ihl + 12] >> 4) * 4
    return total - ihl - 8 if proto == 17 else 0


@pytest.mark.parametrize("name", ["tls_verylong_certificate.pcap", "wechat.pcap", "KakaoTalk_chat.pcap"])
def test_payload_rows_are_the_first_packets_that_carry_payload(ndpi_dir, name):
    path = ndpi_dir / "pcap" / name
    every = ingest_file(path, name, IngestConfig(packets=64, mask=False))
    payload = ingest_file(path, name, IngestConfig(packets=8, mask=False, payload_rows=True))
    assert len(every) == len(payload)
    np.testing.assert_array_equal(every.tensors["stats"], payload.tensors["stats"])  # statistics see every packet
    checked = 0
    for f in range(len(every)):
        n = int(every.tensors["num_packets"][f])
        if n == 64 or (every.meta["proto"][f] not in (6, 17)):
            continue  # longer than the reference rows, or no transport payload to count
        rows = [k for k in range(n) if _payload_bytes(bytes(every.tensors["bytes"][f, k])) > 0][:8]
        assert int(payload.tensors["num_packets"][f]) == len(rows), (name, f)
        for j, k in enumerate(rows):
            np.testing.assert_array_equal(payload.tensors["bytes"][f, j], every.tensors["bytes"][f, k])
            assert payload.tensors["sizes"][f, j] == every.tensors["sizes"][f, k]
        checked += len(rows) < n
    assert checked > 0, f"{name}: no flow with bare ACKs to skip"


def test_a_timestamp_jump_does_not_make_flows_depend_on_chunk_size(ndpi_dir, tmp_path):
    """One packet stamped a day late (a clock glitch) in the middle of a real capture: reading it whole or in
    tiny chunks (expiry between them) gives the same flows; before, every flow active at the next chunk boundary
    was cut in two there."""
    from tests.pcap_tools import read_frames, write_pcap

    frames = read_frames(ndpi_dir / "pcap" / "1kxun.pcap")
    middle = len(frames) // 2
    t, w, lt, f = frames[middle]
    frames[middle] = (t + 86_400 * 10**9, w, lt, f)
    path = write_pcap(tmp_path / "jump.pcap", frames, lt)
    whole = ingest_file(path, "jump.pcap", IngestConfig())
    small = ingest_file(path, "jump.pcap", IngestConfig(chunk_bytes=3000))
    assert len(whole) == len(small) > 0
    for k in whole.meta:
        np.testing.assert_array_equal(whole.meta[k], small.meta[k], err_msg=k)


def test_compiled_tracker_equals_python_tracker(ndpi_dir):
    """FlowTracker's compiled steps (keys and their groups, the packet-by-packet walk of keys numpy cannot settle
    -- a SYN after a FIN/RST, flows past the active timeout --, server names) give exactly the flows of the
    Python/numpy reference (compiled=False): the whole corpus in small chunks, with timeouts short enough that
    long flows are cut (so the walk runs thousands of times)."""
    if capture._capture_c is None:
        pytest.skip("the compiled helpers were not built (tests/test_capture.py says whether they should be)")
    short = dict(idle_timeout=5.0, active_timeout=10.0)
    flows_short = 0
    for path, _ in capture.find_captures([ndpi_dir / "pcap"]):
        trackers = [flows.FlowTracker(16, 64, compiled=c, **short) for c in (True, False)]
        for b in capture.read_batches(path, [], 64 << 10):
            h = capture.parse_headers(b)
            for t in trackers:
                t.add(b, h, 0)
                t.expire()
        got, want = (t.finish() for t in trackers)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=f"{path.name}: {k}")
        flows_short += len(want["key"])
    # Only the walk cuts flows at the active timeout: without it there are fewer flows.
    no_active = len(ingest([ndpi_dir / "pcap"], IngestConfig(bytes=64, idle_timeout=5.0, active_timeout=1e9),
                           progress=False))
    assert flows_short > no_active + on_corpus(100, 3), (flows_short, no_active)


def test_compiled_rows_equal_numpy_masking(ndpi_dir):
    """Packet rows from the compiled path (extract + mask_rows + mask_session_ids + scrub_addresses in one pass)
    equal the numpy reference byte for byte: every flow packet of the corpus at widths 16, 128 and 700, masked and
    not, with random relative TCP numbers; then again with 2% of each chunk's bytes replaced at random (options,
    TLS and QUIC headers, addresses in payloads all damaged in every way)."""
    if capture._capture_c is None:
        pytest.skip("the compiled helpers were not built (tests/test_capture.py says whether they should be)")
    rng = np.random.default_rng(0)
    tracker = flows.FlowTracker(compiled=True)
    reference = flows.FlowTracker(compiled=False)
    rows_checked = 0
    for damage in (False, True):
        for path, _ in capture.find_captures([ndpi_dir / "pcap"]):
            for b in capture.read_batches(path, [], 1 << 20):
                if damage:
                    at = rng.integers(0, len(b.buf), len(b.buf) // 50)
                    b.buf = b.buf.copy()
                    b.buf[at] = rng.integers(0, 256, len(at))
                h = capture.parse_headers(b)
                pk = np.nonzero(h.kind == capture.FLOW)[0]
                seq, ack = rng.integers(0, 1 << 32, (2, len(pk)))
                args = (b.buf, h.ip_off[pk], h.ip_end[pk], h, pk, h.proto[pk], h.l4[pk], seq, ack)
                settings = ((128, True),) if damage else ((16, True), (128, True), (700, True), (128, False))
                for width, mask in settings:
                    for t in (tracker, reference):
                        t.B, t.mask = width, mask
                    got, want = tracker._packet_rows(*args), reference._packet_rows(*args)
                    np.testing.assert_array_equal(got, want, err_msg=f"{path.name} width {width} mask {mask}")
                    rows_checked += len(pk)
    assert rows_checked > on_corpus(400_000, 20_000)
