"""Cleartext server names (TLS SNI, HTTP Host, DNS/mDNS/LLMNR/NetBIOS questions) against nDPI's own
`Hostname/SNI` field, on the real captures of ../shared/data/ndpi, and the name features the packet tower reads."""
import re

import numpy as np
import pytest

from pclip_jax.data import names
from pclip_jax.data.ingest import IngestConfig, ingest
from pclip_jax.data.labels import parse_ndpi_line

_HOST = re.compile(r"\[Hostname/SNI: ([^\]]*)\]")
_IP_LITERAL = re.compile(r"^[0-9.]+$|:")


@pytest.fixture(scope="module")
def ndpi_table(ndpi_dir):
    return ingest([str(ndpi_dir / "pcap")], IngestConfig(), progress=False)


def _ndpi_names(ndpi_dir):
    """(capture, proto, endpoints) -> (nDPI master protocol, its Hostname/SNI) for every flow line that has one."""
    out = {}
    for f in sorted((ndpi_dir / "result").glob("*.out")):
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            m = _HOST.search(line)
            if not m:
                continue
            try:
                flow = parse_ndpi_line(line, n)
            except ValueError:  # the few malformed lines nDPI printed
                continue
            if flow is not None:
                key = (f.name[:-4], flow.proto, frozenset([(flow.src_ip, flow.src_port), (flow.dst_ip, flow.dst_port)]))
                out[key] = (flow.master, m.group(1).lower().rstrip("."))
    return out


def test_names_agree_with_ndpi(ndpi_dir, ndpi_table):
    meta = ndpi_table.meta
    ours = {}
    for i in range(len(ndpi_table)):
        key = (meta["capture"][i], int(meta["proto"][i]),
               frozenset([(meta["client_ip"][i], int(meta["client_port"][i])),
                          (meta["server_ip"][i], int(meta["server_port"][i]))]))
        ours.setdefault(key, set()).add(str(meta["server_name"][i]))
    tally = {}
    for key, (master, want) in _ndpi_names(ndpi_dir).items():
        # Fuzzed captures carry damaged names on purpose; IP-literal Host headers are dropped by design.
        if key not in ours or key[0].startswith("fuzz") or _IP_LITERAL.search(want):
            continue
        if master in ("TLS", "HTTP", "DNS"):  # (mDNS/LLMNR packets often carry several questions; nDPI may
            #                                    print another than the first)
            same, total = tally.get(master, (0, 0))
            tally[master] = (same + (want in ours[key]), total + 1)
    assert set(tally) == {"TLS", "HTTP", "DNS"}, tally
    for master, (same, total) in tally.items():
        assert total >= 100 and same / total >= 0.93, (master, same, total)  # measured: 0.95, 0.95, 0.998


def test_no_addresses_in_names(ndpi_table):
    got = ndpi_table.meta["server_name"]
    assert (got != "").sum() > 1000
    assert not any(re.match(r"^[0-9.]+$", n) for n in got if n)  # IPv4 literals (a shortcut) are dropped


def test_parsers_reject_truncated_and_foreign_payloads(ndpi_dir, ndpi_table):
    # A real ClientHello from the corpus: every strict prefix that cuts into the name yields "" (never a partial name).
    import dpkt

    path = ndpi_dir / "pcap" / "tls_verylong_certificate.pcap"
    hello = None
    with open(path, "rb") as fh:
        for _, buf in dpkt.pcap.Reader(fh):
            ip = dpkt.ethernet.Ethernet(buf).data
            payload = bytes(getattr(ip.data, "data", b""))
            if payload[:1] == b"\x16" and names.tls_server_name(payload):
                hello = payload
                break
    assert hello is not None, f"{path}: no ClientHello with a server name"
    full = names.tls_server_name(hello)
    cut = hello.index(full.encode()) + len(full)
    for n in range(cut - len(full), cut):
        assert names.tls_server_name(hello[:n]) == ""
    assert names.tls_server_name(hello[:cut]) == full
    assert names.server_name(hello, 17) == full  # record parsing does not depend on the transport
    assert names.http_host(hello) == "" and names.dns_question(hello) == ""


def test_netbios_names_are_decoded():
    assert names.name_words("r3---sn-4g5e.googlevideo.com") == "r3 sn 4g5e googlevideo com"
    q = (b"\x12\x34\x01\x10\x00\x01\x00\x00\x00\x00\x00\x00\x20" + b"FHEPFCELEHFCEPFFFACACACACACACABL"
         + b"\x00\x00\x20\x00\x01")
    assert names.dns_question(q) == "workgroup"


def test_name_features(minilm_dir, ndpi_table):
    from pclip_jax.name_features import NameEncoder

    enc = NameEncoder(minilm_dir)
    got = ndpi_table.meta["server_name"][:400]
    vecs = enc(got)
    assert vecs.shape == (len(got), enc.dim) and vecs.dtype == np.float16
    named = got != ""
    assert np.allclose(np.linalg.norm(vecs[named].astype(np.float32), axis=1), 1.0, atol=1e-2)
    assert not vecs[~named].any()
    # Same name, same vector; related services are closer than unrelated ones.
    v = enc(["www.youtube.com", "m.youtube.com", "ntp.ubuntu.com"]).astype(np.float32)
    assert v[0] @ v[1] > v[0] @ v[2]
