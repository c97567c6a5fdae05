"""Text for a flow: class descriptions file, flow facts on real captures, sampling, zero-shot prompts."""
import collections
import re

import dpkt
import numpy as np
import pytest

from pclip_jax.text import prompts as text
from pclip_jax.data import labels as labels_lib
from tests.conftest import on_corpus

K = 32


def _dpkt_flows(path, k=K):
    """Bidirectional 5-tuple flows of an Ethernet capture read with dpkt, in flow-table layout
    (signed IP lengths, client = first sender, gaps in seconds), keyed by (proto, client port,
    server port). Independent of the project's own ingest."""
    flows = collections.OrderedDict()
    with open(path, "rb") as fh:
        reader = dpkt.pcap.Reader(fh)
        assert reader.datalink() == dpkt.pcap.DLT_EN10MB
        for ts, buf in reader:
            ip = dpkt.ethernet.Ethernet(buf).data
            if isinstance(ip, dpkt.ip.IP):
                proto, length = ip.p, ip.len
            elif isinstance(ip, dpkt.ip6.IP6):
                proto, length = ip.nxt, ip.plen + 40
            else:
                continue
            src = (ip.src, getattr(ip.data, "sport", 0))
            dst = (ip.dst, getattr(ip.data, "dport", 0))
            key = (proto, frozenset((src, dst)))
            f = flows.setdefault(key, {"client": src, "server": dst, "ts": [], "sizes": []})
            f["ts"].append(ts)
            f["sizes"].append(length if src == f["client"] else -length)
    out = {}
    for (proto, _), f in flows.items():
        n = min(k, len(f["ts"]))
        sizes, iat = np.zeros(k, np.int32), np.zeros(k, np.float32)
        sizes[:n] = f["sizes"][:n]
        iat[1:n] = np.diff(np.asarray(f["ts"][:n], np.float64))
        out[(proto, f["client"][1], f["server"][1])] = dict(
            sizes=sizes, iat=iat, num_packets=n, proto=proto,
            duration=float(f["ts"][-1] - f["ts"][0]), total=len(f["ts"]))
    return out


def _capture_flows(ndpi_dir):
    return {name: _dpkt_flows(ndpi_dir / "pcap" / name) for name in ("wa_voice.pcap", "ftp.pcap")}


@pytest.fixture(scope="module")
def real_flows(real_ndpi_dir):
    """Flows of two real captures (the tests of flows nDPI reported name them by their ports)."""
    return _capture_flows(real_ndpi_dir)


@pytest.fixture(scope="module")
def capture_flows(ndpi_dir):
    """Flows of the same two captures, or of their stand-ins."""
    return _capture_flows(ndpi_dir)


def _facts(f, **kw):
    return text.flow_facts(f["sizes"], f["iat"], f["num_packets"], f["proto"], **kw)


def test_shipped_descriptions_cover_every_service_class(real_ndpi_dir):
    desc = text.load_class_descriptions()
    classes = text.load_class_descriptions(sections=("classes",))
    level1 = labels_lib.load_hierarchy().level1
    assert len(level1) == 18 and set(classes) == set(level1)
    for name in level1:
        assert 4 <= len(classes[name]) <= 6, name
    apps = set(desc) - set(classes)
    assert len(apps) >= 20
    assert all(1 <= len(desc[a]) <= 3 for a in apps)
    # Application names are the names nDPI reports (master or app part of `[proto: 91.126/TLS.Google]`).
    ndpi_names = set()
    for out in (real_ndpi_dir / "result").glob("*.out"):
        for m in re.finditer(r"\[proto: [\d.]+/([^\]]+)\]", out.read_text(errors="replace")):
            ndpi_names.update(text.normalize_name(x) for x in m.group(1).split("."))
    unknown = [a for a in apps if text.normalize_name(a) not in ndpi_names]
    assert len(ndpi_names) > 100 and not unknown, unknown
    all_phrasings = [p for v in desc.values() for p in v]
    assert len(all_phrasings) == len(set(all_phrasings))


def test_load_class_descriptions_errors(tmp_path):
    bad = tmp_path / "d.yaml"
    bad.write_text("classes:\n  Chat:\n    - small packets\n    - ''\n")
    with pytest.raises(ValueError, match=r"d.yaml: classes.Chat\[1\]: phrasing must be a non-empty"):
        text.load_class_descriptions(bad)
    bad.write_text("classes:\n  VPN/Tunnel: [a tunnel]\napplications:\n  vpn-tunnel: [again]\n")
    with pytest.raises(ValueError, match="applications.vpn-tunnel: name already defined in `classes`"):
        text.load_class_descriptions(bad)
    bad.write_text("applications:\n  DNS: [one query]\n")
    with pytest.raises(ValueError, match="missing the `classes:` section"):
        text.load_class_descriptions(bad)
    bad.write_text("classes:\n  Chat: just one string\n")
    with pytest.raises(ValueError, match="classes.Chat: expected a non-empty list"):
        text.load_class_descriptions(bad)
    bad.write_text("classes: [unclosed\n")
    with pytest.raises(ValueError, match="invalid YAML"):
        text.load_class_descriptions(bad)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        text.load_class_descriptions(tmp_path / "nope.yaml")
    good = tmp_path / "g.yaml"
    good.write_text("classes:\n  Chat:\n    - '  small   packets '\n")
    assert text.load_class_descriptions(good) == {"Chat": ["small packets"]}


def test_flow_facts_on_real_flows(real_flows):
    wa, ftp = real_flows["wa_voice.pcap"], real_flows["ftp.pcap"]
    # FTP data connection (nDPI: 5 pkts/342 bytes <-> 78 pkts/114596 bytes): a bulk download.
    data = _facts(ftp[(6, 50696, 24523)])
    assert data.startswith("A TCP flow, mostly download, large packets, bursty timing")
    # WhatsApp call media over UDP (nDPI: 87 pkts/14598 bytes <-> 77 pkts/17336 bytes).
    call = _facts(wa[(17, 32704, 56328)])
    assert call.startswith("A UDP flow, balanced both ways, small packets")
    # FTP control channel: small commands and replies both ways.
    assert "small packets" in _facts(ftp[(6, 50694, 21)])
    # mDNS announcements nobody answers; STUN probes at a fixed interval.
    assert "one-way, no reply" in _facts(wa[(17, 5353, 5353)])
    steady = [f for f in wa.values() if "steady timing" in _facts(f)]
    assert steady and all(f["num_packets"] >= 3 for f in steady)
    assert _facts(wa[(1, 0, 0)]).startswith("An ICMP flow")
    # The full duration from the capture overrides the span of the first K packets.
    ctl = wa[(6, 49355, 5222)]  # 263 packets over ~55 s; the first 32 span under a second
    assert ctl["total"] > K and "ms." in _facts(ctl)
    assert _facts(ctl, duration=ctl["duration"]).endswith("lasting 55 seconds.")

    # Invariants over every real flow of both captures.
    for flows in real_flows.values():
        for f in flows.values():
            facts = _facts(f)
            assert facts.startswith(("A ", "An ")) and facts.endswith(".")
            assert ("TCP" in facts) == (f["proto"] == 6) and ("UDP" in facts) == (f["proto"] == 17)
            # Padding beyond num_packets is never read.
            junk = dict(f, sizes=np.where(f["sizes"] == 0, 1500, f["sizes"]),
                        iat=np.where(np.arange(K) >= f["num_packets"], 9.0, f["iat"]))
            assert _facts(junk) == facts
            # Swapping the roles of client and server swaps download and upload.
            flipped = _facts(dict(f, sizes=-f["sizes"]))
            if "mostly download" in facts:
                assert "mostly upload" in flipped
            if "mostly upload" in facts:
                assert "mostly download" in flipped

    batch = [f for f in wa.values()][:5]
    got = text.flow_facts_batch(np.stack([f["sizes"] for f in batch]), np.stack([f["iat"] for f in batch]),
                                np.array([f["num_packets"] for f in batch]), np.array([f["proto"] for f in batch]))
    assert got == [_facts(f) for f in batch]


def test_flow_facts_batch_equals_flow_facts_on_every_ndpi_flow(ndpi_dir):
    """The vectorised batch gives, flow for flow, the sentence of `flow_facts` (its reference definition): every
    flow of the nDPI corpus, with the capture's durations and with the span of the first packets."""
    from pclip_jax.data.ingest import IngestConfig, ingest

    table = ingest([str(ndpi_dir / "pcap")], IngestConfig(packets=16, bytes=16), progress=False)
    t = table.tensors
    sizes, iat, n, proto = t["sizes"], t["iat"], t["num_packets"], table.meta["proto"]
    duration = table.meta["last_ts"] - table.meta["first_ts"]
    assert len(table) > on_corpus(5000, 300) and len(set(n.tolist())) == 16  # every packet count from 1 to K
    for dur in (None, duration):
        got = text.flow_facts_batch(sizes, iat, n, proto, duration=dur)
        want = [text.flow_facts(sizes[i], iat[i], int(n[i]), int(proto[i]), None if dur is None else float(dur[i]))
                for i in range(len(table))]
        assert got == want
        kinds = collections.Counter(p.split(", ")[3].rstrip(".") for p in got if p.count(", ") >= 3)
        assert {"steady timing", "interactive timing", "bursty timing", "irregular timing"} <= set(kinds)
    # A bad row fails with its index and flow_facts' reason.
    bad = iat[:50].copy()
    bad[7, 0] = np.nan
    with pytest.raises(ValueError, match="row 7: flow_facts: iat has non-finite values"):
        text.flow_facts_batch(sizes[:50], bad, n[:50], proto[:50])
    with pytest.raises(ValueError, match=r"row 3: flow_facts: duration must be finite"):
        text.flow_facts_batch(sizes[:50], iat[:50], n[:50], proto[:50], duration=np.where(np.arange(50) == 3, -1.0, 0.0))


def test_flow_facts_bad_input():
    with pytest.raises(ValueError, match="num_packets 5 outside"):
        text.flow_facts(np.zeros(4, np.int32), np.zeros(4, np.float32), 5, 6)
    with pytest.raises(ValueError, match=r"sizes \(4,\) and iat \(3,\)"):
        text.flow_facts(np.zeros(4, np.int32), np.zeros(3, np.float32), 2, 6)
    with pytest.raises(ValueError, match="row 1: flow_facts: iat has non-finite"):
        text.flow_facts_batch(np.ones((2, 3), np.int32), np.array([[0, 1, 1], [0, np.nan, 1]]),
                              np.array([3, 3]), np.array([6, 6]))


def test_prompts_and_sampling(capture_flows):
    desc = text.load_class_descriptions()
    chat = text.class_prompts("Chat", desc)
    assert len(chat) == len(desc["Chat"]) * len(text.CLASS_TEMPLATES)
    assert all(any(d in p for d in desc["Chat"]) and "Chat" in p for p in chat)
    assert text.class_prompts("vpn/tunnel", desc)[0].startswith("network traffic of vpn or tunnel:")
    assert text.class_prompts("FileTransfer", desc)[0].startswith("network traffic of File Transfer:")
    assert text.class_prompts("NoSuchApp", desc) == [t.format(name="No Such App")
                                                    for t in text.NAME_ONLY_TEMPLATES]

    classes = list(labels_lib.load_hierarchy().level1)
    texts, index = text.zero_shot_prompts(classes, desc)
    assert index.dtype == np.int32 and len(texts) == len(index)
    assert np.array_equal(np.bincount(index), [len(text.class_prompts(c, desc)) for c in classes])
    emb = np.eye(len(texts), 8, dtype=np.float32)[:, :8] + 0.1
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    avg = text.average_by_class(emb, index, len(classes) + 1)
    np.testing.assert_allclose(np.linalg.norm(avg[:-1], axis=1), 1.0, rtol=1e-5)
    assert not avg[-1].any()  # a class without prompts

    flows = list(capture_flows["wa_voice.pcap"].values()) + list(capture_flows["ftp.pcap"].values())
    facts = [_facts(f) for f in flows]
    names = [["Chat", "WhatsApp"], ["VoIP", "WhatsAppCall"], ["FileTransfer", "FTP_DATA"],
             ["Infrastructure", "MDNS"], ["", ""], "Chat"]
    names = (names * len(flows))[:len(flows)]
    a = text.sample_flow_texts(np.random.default_rng(0), names, facts, desc, p_facts=0.5)
    b = text.sample_flow_texts(np.random.default_rng(0), names, facts, desc, p_facts=0.5)
    c = text.sample_flow_texts(np.random.default_rng(1), names, facts, desc, p_facts=0.5)
    assert a == b and a != c  # seeded, and resampled per step
    for t, n, f in zip(a, names, facts):
        if n == ["", ""]:
            assert t == f  # unlabelled: facts only
    # Over many steps every flow sees several phrasings, with and without facts.
    many = [text.sample_flow_texts(np.random.default_rng(s), names[:4], facts[:4], desc) for s in range(60)]
    for i in range(4):
        seen = {m[i] for m in many}
        assert len(seen) > 5
        assert any(facts[i] in t for t in seen) and any(facts[i] not in t for t in seen)
    # MDNS has no phrasing of its own: it borrows Infrastructure's and names both.
    mdns = {m[3] for m in many}
    assert any("MDNS traffic, a kind of Infrastructure:" in t for t in mdns)
    assert all(facts[0] not in t for t in text.sample_flow_texts(np.random.default_rng(0), names, facts,
                                                                 desc, p_facts=0.0))
    with pytest.raises(ValueError, match="2 class names but 1 facts"):
        text.sample_flow_texts(np.random.default_rng(0), ["Chat", "VoIP"], ["x"], desc)


def test_texts_fit_the_default_token_budget(real_minilm_dir, real_flows):
    """The longest prompt plus the longest real facts sentence fits the 64-token default."""
    from pclip_jax.models.text_tower import TextTokenizer

    tok = TextTokenizer(real_minilm_dir / "tokenizer.json")
    desc = text.load_class_descriptions()
    prompts = [p for name in desc for p in text.class_prompts(name, desc)]
    facts = [_facts(f, duration=f["duration"]) for flows in real_flows.values() for f in flows.values()]
    longest_prompt = max(tok.num_tokens(prompts))
    longest_facts = max(tok.num_tokens(facts))
    assert longest_prompt + longest_facts - 2 <= 64, (longest_prompt, longest_facts)  # one [CLS]/[SEP] pair


def test_facts_from_project_ingest(ndpi_dir):
    """Facts straight from the flow table that ingest produces (the contract in docs/architecture.md)."""
    from pclip_jax.data import ingest as ingest_lib
    table = ingest_lib.ingest([str(ndpi_dir / "pcap" / "ftp.pcap")], ingest_lib.IngestConfig(), progress=False)
    t, meta = table.tensors, table.meta
    facts = text.flow_facts_batch(t["sizes"], t["iat"], t["num_packets"], meta["proto"],
                                  np.asarray(meta["last_ts"]) - np.asarray(meta["first_ts"]))
    assert len(facts) == len(meta["proto"]) >= 3
    big = int(np.argmax(np.asarray(meta["s2c_bytes"])))  # the FTP data connection
    assert "mostly download" in facts[big] and "large packets" in facts[big]
