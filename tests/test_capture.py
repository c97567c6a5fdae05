"""Reading captures: formats, byte orders, link types, malformed input (on nDPI captures: the real ones, or
stand-ins where the test is not about the real corpus)."""
import dataclasses
import os
import shutil
import struct

import dpkt
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pclip_jax.data import capture
from pclip_jax.data.ingest import IngestConfig, ingest_file

from tests.conftest import on_corpus
from tests.pcap_tools import ethernet_to, read_frames, write_pcap

BASE = "tls_certificate_too_long.pcap"  # Ethernet, untagged, IPv4 + IPv6, TCP/UDP/IGMP, 315 packets


def _flows(path, **cfg):
    return ingest_file(path, os.path.basename(path), IngestConfig(**cfg))


def _same_tensors(a, b, skip_stats=()):
    assert len(a) == len(b) > 0
    for k in ("bytes", "sizes", "iat", "tcp_flags", "num_packets"):
        np.testing.assert_array_equal(a.tensors[k], b.tensors[k], err_msg=k)
    keep = [i for i, n in enumerate(a.stats_names) if n not in skip_stats]
    np.testing.assert_array_equal(a.tensors["stats"][:, keep], b.tensors["stats"][:, keep])
    for k in ("proto", "client_ip", "server_ip", "client_port", "server_port", "c2s_packets", "s2c_packets",
              "first_ts", "last_ts"):
        np.testing.assert_array_equal(a.meta[k], b.meta[k], err_msg=k)


def test_all_ndpi_captures_read_without_exception(real_ndpi_dir):
    files = capture.find_captures([real_ndpi_dir / "pcap"])
    assert len(files) == 477
    total, with_errors = 0, {}
    for path, _ in files:
        errors = []
        for b in capture.read_batches(path, errors):
            h = capture.parse_headers(b)
            assert len(h.kind) == len(b)
            total += len(b)
        if errors:
            with_errors[path.name] = errors
    assert total > 90_000
    # The corpus' deliberately broken captures are reported with file, offset and reason.
    assert "fuzz-2021-10-13.pcap" in with_errors and "corrupt record length" in with_errors[
        "fuzz-2021-10-13.pcap"][0].reason
    assert with_errors["someip_sd_sample.pcap"][0].reason == "unknown link type 192"



def _need_compiled():
    if capture._capture_c is None:
        if shutil.which("cc") or shutil.which("gcc"):
            pytest.fail("a C compiler is installed but pclip_jax.data._capture_c was not built (pip install -e .)")
        pytest.skip("no C compiler: ingest uses the Python/numpy reader")


def _same_headers(batch, where):
    compiled, reference = capture.parse_headers(batch), capture.parse_headers_py(batch)
    for f in dataclasses.fields(capture.Headers):
        a, b = getattr(compiled, f.name), getattr(reference, f.name)
        assert a.dtype == b.dtype, (where, f.name)
        np.testing.assert_array_equal(a, b, err_msg=f"{where}: {f.name}")


def test_compiled_record_walk_equals_python_loop(ndpi_dir):
    """The compiled pcap record walk (setup.py builds it wherever a C compiler is) finds the same records as the
    Python loop: every classic pcap of the corpus, whole and cut mid-record, random bytes, both byte orders."""
    _need_compiled()
    rng = np.random.default_rng(0)
    files = [p for p, _ in capture.find_captures([ndpi_dir / "pcap"]) if capture.sniff(p) == "pcap"]
    assert len(files) > on_corpus(250, 40)
    checked = 0
    for path in files:
        data = path.read_bytes()[24:]
        big = data and path.read_bytes()[:4] in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
        for n in {len(data), int(rng.integers(0, len(data) + 1))}:
            chunk = bytearray(data[:n]) + bytes(capture._PAD)
            want, want_stop = capture.record_offsets_py(chunk, n, big)
            got, got_stop = capture.record_offsets(chunk, n, big)
            np.testing.assert_array_equal(got, want, err_msg=path.name)
            assert got_stop == want_stop, path.name
            checked += len(want)
    for big in (False, True):  # lengths from random bytes: mostly huge, a few land inside
        noise = bytearray(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        noise[8:12] = (20).to_bytes(4, "big" if big else "little")
        chunk = noise + bytes(capture._PAD)
        want, want_stop = capture.record_offsets_py(chunk, len(noise), big)
        got, got_stop = capture.record_offsets(chunk, len(noise), big)
        np.testing.assert_array_equal(got, want)
        assert got_stop == want_stop and len(want) >= 1
    assert checked > on_corpus(90_000, 5_000)


def _same_batches(path, chunk_bytes=1 << 20):
    """read_batches with the compiled record/block walks and with the Python loops: same batches, same errors."""
    errors = [[], []]
    runs = [list((b.buf.copy(), b) for b in capture.read_batches(path, errors[k], chunk_bytes, compiled=c))
            for k, c in enumerate((True, False))]
    assert len(runs[0]) == len(runs[1]), path
    for (buf_c, c), (buf_p, p) in zip(*runs):
        np.testing.assert_array_equal(buf_c[:len(buf_p)], buf_p[:len(buf_c)])
        for f in ("off", "caplen", "wirelen", "ts", "linktype", "rec_off"):
            np.testing.assert_array_equal(getattr(c, f), getattr(p, f), err_msg=f"{path}: {f}")
    assert [e.as_dict() for e in errors[0]] == [e.as_dict() for e in errors[1]]


def test_compiled_reader_equals_python_loops_on_every_capture(ndpi_dir):
    """pcap record walk and pcapng enhanced-packet-block runs, compiled and in Python: the same batches and the
    same errors on all 3,111 captures in ../shared (or the stand-ins), in 1 MB chunks and (nDPI) in 20 kB ones."""
    _need_compiled()
    data = ndpi_dir.parent
    files = capture.find_captures([data / d for d in ("ndpi/pcap", "iot_sentinel", "zeek", "suricata-verify")
                                   if (data / d).is_dir()])
    assert sum(capture.sniff(p) == "pcapng" for p, _ in files) > on_corpus(50, 2)
    for path, _ in files:
        _same_batches(path)
    for path, _ in capture.find_captures([ndpi_dir / "pcap"]):
        _same_batches(path, 20_000)


def test_compiled_headers_equal_numpy_on_every_real_capture(real_ndpi_dir):
    """Every header field from the compiled parser equals the numpy reference on all captures in ../shared: nDPI,
    IoT Sentinel, and the 2,304 Zeek and Suricata test captures (every link type and encapsulation they hold)."""
    _need_compiled()
    data = real_ndpi_dir.parent
    roots = [data / d for d in ("ndpi/pcap", "iot_sentinel", "zeek", "suricata-verify") if (data / d).is_dir()]
    packets, kinds = 0, np.zeros(4, np.int64)
    for path, _ in capture.find_captures(roots):
        for b in capture.read_batches(path, [], 1 << 20):
            _same_headers(b, path.name)
            packets += len(b)
            kinds += np.bincount(capture.parse_headers(b).kind, minlength=4)
    assert packets > 200_000 and (kinds > 0).all()  # flows, later fragments, non-IP and malformed all seen

@pytest.mark.parametrize("byteorder,nano", [("<", False), (">", False), ("<", True), (">", True)])
def test_pcap_byte_orders_and_resolutions(ndpi_dir, tmp_path, byteorder, nano):
    src = ndpi_dir / "pcap" / BASE
    frames = read_frames(src)
    out = write_pcap(tmp_path / "x.pcap", frames, 1, byteorder, nano)
    assert capture.sniff(out) == "pcap"
    _same_tensors(_flows(src), _flows(out))
    assert read_frames(out) == frames  # µs timestamps survive both encodings exactly


def test_pcapng_and_pcap_of_same_packets_give_identical_tensors(ndpi_dir, tmp_path):
    frames = read_frames(ndpi_dir / "pcap" / BASE)
    with open(tmp_path / "a.pcap", "wb") as fh:
        w = dpkt.pcap.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for t, _, _, f in frames:
            w.writepkt(f, ts=t / 1e9)
    with open(tmp_path / "a.pcapng", "wb") as fh:
        w = dpkt.pcapng.Writer(fh, snaplen=65535, linktype=dpkt.pcap.DLT_EN10MB)
        for t, _, _, f in frames:
            w.writepkt(f, ts=t / 1e9)
    assert capture.sniff(tmp_path / "a.pcapng") == "pcapng"
    a, b = _flows(tmp_path / "a.pcap"), _flows(tmp_path / "a.pcapng")
    _same_tensors(a, b)
    np.testing.assert_array_equal(a.meta["c2s_bytes"], b.meta["c2s_bytes"])


def test_pcapng_several_interfaces_and_link_types(ndpi_dir, tmp_path):
    """One pcapng whose packets are spread over interfaces of 7 link types gives the flows of the Ethernet original."""
    src = ndpi_dir / "pcap" / BASE
    frames = read_frames(src)
    linktypes = [1, 101, 113, 276, 0, 108, 229, 228, 12]
    idbs = [dpkt.pcapng.InterfaceDescriptionBlockLE(snaplen=65535, linktype=lt) for lt in linktypes]
    with open(tmp_path / "multi.pcapng", "wb") as fh:
        w = dpkt.pcapng.Writer(fh, idb=idbs)
        count = [0, 0]
        for t, _, _, f in frames:
            v6 = int(f[12:14] == b"\x86\xdd")
            # IPv6 packets start with the IPv6-only link type (few in this capture), IPv4 ones cycle the rest.
            choices = [linktypes.index(lt) for lt in ([229, 276, 0, 108, 1, 101, 113, 12] if v6 else linktypes)
                       if lt != 229 or v6]
            choices = [k for k in choices if linktypes[k] != 228 or not v6]
            k = choices[count[v6] % len(choices)]
            count[v6] += 1
            data = ethernet_to(f, linktypes[k]) if linktypes[k] != 1 else f
            us = t // 1000
            w.writepkt(dpkt.pcapng.EnhancedPacketBlockLE(iface_id=k, ts_high=us >> 32, ts_low=us & 0xFFFFFFFF,
                                                         pkt_data=data, pkt_len=len(data)))
    errors = []
    seen = set()
    for b in capture.read_batches(tmp_path / "multi.pcapng", errors):
        seen |= set(b.linktype.tolist())
    assert not errors and seen == set(linktypes)
    # Wire lengths differ with the link header, so byte-count statistics are left out of the comparison.
    _same_tensors(_flows(src), _flows(tmp_path / "multi.pcapng"),
                  skip_stats=("c2s_bytes", "s2c_bytes", "bytes_per_s", "down_up_ratio"))


def _write(path, data):
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("name,linktype", [("radiotap.pcap", 127), ("wlanmon.pcap", 105)])
def test_wifi_monitor_captures_give_their_ip_flows(real_ndpi_dir, tmp_path, name, linktype):
    """802.11 data frames (monitor mode, with and without a radiotap header; Zeek's test traces): LLC/SNAP is
    unwrapped, QoS and padded headers included; the ARP-only traces of the same kind give no flow and no error.
    Before the per-packet link layer these captures were refused as "unknown link type"."""
    traces = real_ndpi_dir.parent / "zeek" / "testing" / "btest" / "Traces"
    errors = []
    seen = {int(x) for b in capture.read_batches(traces / name, errors) for x in b.linktype}
    assert not errors and seen == {linktype}
    t = _flows(traces / name)
    got = sorted(zip(t.meta["client_ip"].astype(str), t.meta["server_ip"].astype(str),
                     t.meta["server_port"].astype(int), t.meta["proto"].astype(int)))
    assert got == [("172.17.156.76", "208.67.220.220", 53, 17), ("fe80::a667:6ff:fef7:ec54", "ff02::fb", 5353, 17)]
    assert sorted((t.meta["c2s_packets"] + t.meta["s2c_packets"]).tolist()) == [1, 2]
    arp = _flows(traces / f"arp-who-has-{name}")
    assert len(arp) == 0 and arp.summary["errors"] == []
    # Damaged link headers (radiotap lengths, frame control, LLC) are skipped packets, never an exception.
    _mutated_headers_agree(traces / name, tmp_path)


def _mutated_headers_agree(path, tmp_path, copies=200):
    """Copies of a capture with 3 random bytes changed past the first record header: parsing never raises, and the
    compiled link layer gives the numpy reference's headers."""
    data = path.read_bytes()
    rng = np.random.default_rng(0)
    for _ in range(copies):
        mutated = bytearray(data)
        for pos in rng.integers(40, len(data), size=3):
            mutated[pos] = int(rng.integers(0, 256))
        _same_headers(next(capture.read_batches(_write(tmp_path / "m.pcap", mutated), [])), "mutated")


def test_nflog_capture_gives_its_http_flow(real_ndpi_dir, tmp_path):
    """Linux NFLOG (link type 239, `tcpdump -i nflog`): the packet is the payload TLV of each record. A record
    whose TLV lengths run past its end is skipped as non-IP, not an error that ends the capture."""
    traces = real_ndpi_dir.parent / "zeek" / "testing" / "btest" / "Traces"
    t = _flows(traces / "nflog-http.pcap")
    assert len(t) == 1 and t.summary["errors"] == []
    assert (str(t.meta["client_ip"][0]), str(t.meta["server_ip"][0]), int(t.meta["server_port"][0])) == \
        ("10.0.2.15", "93.184.216.34", 80)
    assert int(t.meta["c2s_packets"][0]) + int(t.meta["s2c_packets"][0]) == 13
    bad = _flows(traces / "nflog-bad-tlv-len.pcap")
    assert len(bad) == 0 and bad.summary["errors"] == []
    _mutated_headers_agree(traces / "nflog-http.pcap", tmp_path)


def test_fddi_captures_give_their_flows(real_ndpi_dir, tmp_path):
    """FDDI (link type 10: 13-byte MAC header, then LLC/SNAP), Zeek's traces: a DNS query over TCP, and a 1996
    campus trace of 1,333 packets that are all IP."""
    traces = real_ndpi_dir.parent / "zeek" / "testing" / "btest" / "Traces"
    dns = _flows(traces / "dns-inverse-query.pcap")
    assert dns.summary["errors"] == [] and len(dns) == 1
    assert (str(dns.meta["server_ip"][0]), int(dns.meta["server_port"][0]), int(dns.meta["proto"][0])) == \
        ("131.243.64.3", 53, 6)
    assert int(dns.meta["c2s_packets"][0]) + int(dns.meta["s2c_packets"][0]) == 11
    llc = _flows(traces / "llc.pcap")
    assert llc.summary["errors"] == [] and llc.summary["non_ip_packets"] == 0 and len(llc) == 55
    assert int((llc.meta["c2s_packets"] + llc.meta["s2c_packets"]).sum()) <= 1333
    _mutated_headers_agree(traces / "dns-inverse-query.pcap", tmp_path)


def test_pcapng_unknown_link_type_is_reported_only_where_packets_are_lost(real_ndpi_dir, tmp_path):
    """An interface of an unknown link type that carries no packet is not a problem (Zeek's
    ldap/gap-data-missing.pcapng declares 59 such interfaces); one that does is reported once, at its first
    packet, and the other interfaces' flows are all kept."""
    real = _flows(real_ndpi_dir.parent / "zeek" / "testing" / "btest" / "Traces" / "ldap" / "gap-data-missing.pcapng")
    assert len(real) == 2 and real.summary["errors"] == []
    src = real_ndpi_dir / "pcap" / BASE
    frames = read_frames(src)
    idbs = [dpkt.pcapng.InterfaceDescriptionBlockLE(snaplen=65535, linktype=lt) for lt in (1, 274, 4242)]
    with open(tmp_path / "x.pcapng", "wb") as fh:
        w = dpkt.pcapng.Writer(fh, idb=idbs)
        for k, (t, _, _, f) in enumerate(frames):
            us = t // 1000
            iface = 2 if k in (5, 9) else 0  # two packets on the unknown link type 4242, none on 274
            w.writepkt(dpkt.pcapng.EnhancedPacketBlockLE(iface_id=iface, ts_high=us >> 32, ts_low=us & 0xFFFFFFFF,
                                                         pkt_data=f, pkt_len=len(f)))
    got = _flows(tmp_path / "x.pcapng")
    assert [e["reason"] for e in got.summary["errors"]] == [
        "unknown link type 4242 (interface 2): its packets are skipped"]
    assert got.summary["errors"][0]["offset"] > 0
    assert len(got) >= len(_flows(src)) - 2


def test_qinq_outer_vlan_is_the_flow_vlan(ndpi_dir, tmp_path):
    src = ndpi_dir / "pcap" / BASE
    frames = [(t, w + 8, lt, ethernet_to(f, 1001)) for t, w, lt, f in read_frames(src)]
    out = write_pcap(tmp_path / "qinq.pcap", frames, 1)
    a, b = _flows(src), _flows(out)
    _same_tensors(a, b, skip_stats=("c2s_bytes", "s2c_bytes", "bytes_per_s", "down_up_ratio"))
    assert (a.meta["vlan"] == 0).all() and (b.meta["vlan"] == 100).all()


def test_real_vlan_sll_null_ppp_hdlc_captures(real_ndpi_dir):
    """Captures with 802.1Q, Linux SLL, BSD null, PPP and Cisco HDLC framing yield IP flows."""
    by_type = {}
    for path, _ in capture.find_captures([real_ndpi_dir / "pcap"]):
        errors = []
        for b in capture.read_batches(path, errors):
            h = capture.parse_headers(b)
            for lt in set(b.linktype.tolist()):
                m = b.linktype == lt
                by_type.setdefault(lt, [0, 0])
                by_type[lt][0] += int(m.sum())
                by_type[lt][1] += int((m & (h.kind == capture.FLOW)).sum())
            if (h.vlan > 0).any():
                by_type.setdefault("vlan", [0, 0])[1] += int((h.vlan > 0).sum())
    for lt in (0, 1, 9, 101, 104, 113, "vlan"):
        assert by_type[lt][1] > 0, (lt, by_type.get(lt))
    for lt in (0, 101, 113):  # nothing but IP on these in the corpus
        assert by_type[lt][1] >= 0.95 * by_type[lt][0], (lt, by_type[lt])


def _first_record_offsets(path):
    errors = []
    offs = []
    for b in capture.read_batches(path, errors):
        offs.extend(b.rec_off.tolist())
    return offs


def test_malformed_inputs_keep_flows_before_the_damage(ndpi_dir, tmp_path):
    src = ndpi_dir / "pcap" / BASE
    data = src.read_bytes()
    whole = _flows(src)
    n = whole.summary["packets"]
    offs = _first_record_offsets(src)
    last = offs[-1]

    (tmp_path / "trunc.pcap").write_bytes(data[:-5])
    t = _flows(tmp_path / "trunc.pcap")
    assert t.summary["packets"] == n - 1
    [e] = t.summary["errors"]
    assert e["offset"] == last and "truncated record" in e["reason"]

    bad = bytearray(data)
    k = offs[200]
    bad[k + 8:k + 12] = struct.pack("<I", 0x7FFFFFF0)
    (tmp_path / "corrupt.pcap").write_bytes(bytes(bad))
    t = _flows(tmp_path / "corrupt.pcap")
    assert t.summary["packets"] == 200
    [e] = t.summary["errors"]
    assert e["offset"] == k and "corrupt record length" in e["reason"]

    garbage = bytes(range(256)) * 40
    (tmp_path / "garbage.pcap").write_bytes(data + garbage)
    t = _flows(tmp_path / "garbage.pcap")
    assert t.summary["packets"] == n and t.summary["errors"][0]["offset"] == len(data)
    np.testing.assert_array_equal(t.tensors["bytes"], whole.tensors["bytes"])

    (tmp_path / "empty.pcap").write_bytes(b"")
    t = _flows(tmp_path / "empty.pcap")
    assert len(t) == 0 and t.summary["errors"][0]["reason"] == "empty file"

    (tmp_path / "readme.pcap").write_bytes((ndpi_dir / "result" / (BASE + ".out")).read_bytes())
    t = _flows(tmp_path / "readme.pcap")
    assert len(t) == 0 and "not a pcap/pcapng capture" in t.summary["errors"][0]["reason"]

    unk = bytearray(data)
    unk[20:24] = struct.pack("<I", 4242)
    (tmp_path / "unknown.pcap").write_bytes(bytes(unk))
    t = _flows(tmp_path / "unknown.pcap")
    assert t.summary["errors"] == [{"file": "unknown.pcap", "offset": 20, "reason": "unknown link type 4242"}]

    ng = ndpi_dir / "pcap" / "quic_interop_V.pcapng"
    full = _flows(ng)
    raw = ng.read_bytes()
    (tmp_path / "trunc.pcapng").write_bytes(raw[:_first_record_offsets(ng)[-1] + 20])  # inside the last packet
    t = _flows(tmp_path / "trunc.pcapng")
    assert t.summary["packets"] == full.summary["packets"] - 1
    assert "truncated block" in t.summary["errors"][0]["reason"]


SMALL = ["tls_certificate_too_long.pcap", "quic_interop_V.pcapng", "malware.pcap", "6in4tunnel.pcap"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(SMALL),
       flips=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 7)), max_size=20),
       head_flips=st.lists(st.tuples(st.integers(0, 299), st.integers(0, 7)), max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)),
       insert=st.one_of(st.none(), st.tuples(st.floats(0, 1), st.binary(min_size=1, max_size=64))))
def test_random_mutations_never_raise(ndpi_dir, tmp_path, which, flips, head_flips, cut, insert):
    data = bytearray((ndpi_dir / "pcap" / which).read_bytes())
    for where, bit in flips:
        data[int(where * (len(data) - 1))] ^= 1 << bit
    for where, bit in head_flips:  # file, section and interface headers, first records
        data[where] ^= 1 << bit
    if insert is not None:
        at = int(insert[0] * len(data))
        data[at:at] = insert[1]
    if cut is not None:
        del data[int(cut * len(data)):]
    p = tmp_path / which
    p.write_bytes(bytes(data))
    if capture._capture_c is not None:  # damage: the compiled reader and parser still equal the reference
        _same_batches(p, 4096)
        for b in capture.read_batches(p, []):
            _same_headers(b, which)
    t = _flows(p)  # must not raise
    assert len(t) == len(t.tensors["bytes"]) and t.summary["packets"] >= 0
    for e in t.summary["errors"]:
        assert e["file"] == which and 0 <= e["offset"] <= len(data) and e["reason"]
