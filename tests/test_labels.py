"""Labels on the nDPI corpus (the real one, or its stand-ins where a test is not about the real one): .out parsing,
the hierarchy, and attach_labels (ndpi, folder, csv, rules)."""
import collections
import csv
import pathlib
import re

import numpy as np
import pytest
import yaml

from pclip_jax.data import labels
from pclip_jax.data.ingest import IngestConfig, ingest
from tests.conftest import on_corpus


def _flow_lines(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line number, text) of every ndpiReader flow line, found independently of the parser."""
    out = []
    for i, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if raw.startswith(b"\t") and b"[proto:" in raw and re.match(rb"^\t\d+\t\S+ ", raw):
            out.append((i, raw.decode("utf-8", errors="replace")))
    return out


@pytest.fixture(scope="module")
def corpus(ndpi_dir):
    """Every .out file parsed: {file: (flows, errors)}."""
    parsed = {}
    for path in sorted((ndpi_dir / "result").glob("*.out")):
        errors = []
        parsed[path] = (labels.parse_ndpi_out(path, errors), errors)
    return parsed


@pytest.fixture(scope="module")
def tables(ndpi_dir):
    """The whole nDPI corpus ingested twice: default timeouts, and without idle/active splitting (as nDPI)."""
    default = ingest([ndpi_dir / "pcap"], IngestConfig(packets=4, bytes=32), progress=False)
    unsplit = ingest([ndpi_dir / "pcap"], IngestConfig(packets=4, bytes=32, idle_timeout=1e9, active_timeout=1e9),
                     progress=False)
    return default, unsplit


# ---------------------------------------------------------------------------------------------------- parsing

def test_every_flow_line_parsed_or_reported(corpus):
    n_lines = n_flows = 0
    for path, (flows, errors) in corpus.items():
        lines = _flow_lines(path)
        n_lines += len(lines)
        n_flows += len(flows)
        # Each flow line becomes a flow or a reported error naming the file and the line.
        assert len(flows) + len(errors) == len(lines), path
        assert {f.line for f in flows} | {e["line"] for e in errors} == {i for i, _ in lines}, path
        for e in errors:
            assert e["file"] == str(path) and e["reason"]
    assert n_flows > on_corpus(5000, 300)
    assert n_flows >= 0.995 * n_lines


def test_fields_agree_with_the_raw_line(corpus):
    seen = collections.Counter()
    for path, (flows, _) in corpus.items():
        text = path.read_bytes().split(b"\n")
        for f in flows:
            line = text[f.line - 1].decode("utf-8", errors="replace")
            arrow = "<->" if f.dst_packets else "->"
            assert f"[{f.src_packets} pkts/{f.src_bytes} bytes {arrow} {f.dst_packets} pkts/{f.dst_bytes} bytes]" in line
            proto = re.search(r"\[proto: (?:[\w-]+:)?[\d.]+/([^\]]+)\]", line).group(1)
            assert f.label == (labels.UNKNOWN if proto.startswith("Unknown") else proto)
            assert f.master + ("." + f.app if f.app else "") == f.label
            assert (f.vlan > 0) == ("[VLAN: " in line)
            assert f.encrypted == (1 if "[Encrypted]" in line else 0 if "[ClearText]" in line else -1)
            if f.category:
                assert f"[cat: {f.category}/" in line
            if ":" in f.src_ip:  # IPv6: printed in brackets, parsed without
                assert line.split("\t")[2].split(" ")[1].startswith("[")
                seen["ipv6"] += 1
            seen["vlan"] += f.vlan > 0
            seen["app"] += bool(f.app)
            seen["one_way"] += f.dst_packets == 0
            seen["tunnel"] += bool(f.tunnel)
    # The corpus exercises every variant the parser handles (the stand-ins have no tunnel nDPI decoded).
    assert all(seen[k] > 0 for k in ("ipv6", "vlan", "app", "one_way") + on_corpus(("tunnel",), ())), seen


def test_master_app_split_and_ip_protocols(real_ndpi_dir):
    flows = labels.parse_ndpi_out(real_ndpi_dir / "result" / "1kxun.pcap.out")
    http = [f for f in flows if f.label == "HTTP.1kxun"]
    assert http and all(f.master == "HTTP" and f.app == "1kxun" for f in http)
    assert {f.proto for f in flows} <= {6, 17}
    ah = labels.parse_ndpi_out(real_ndpi_dir / "result" / "ah.pcapng.out")
    assert any(f.proto == 51 and f.src_port == 0 and f.master == "IPSec" for f in ah)


def test_undetected_section_is_unknown(corpus):
    n = 0
    for path, (flows, _) in corpus.items():
        lines = path.read_bytes().split(b"\n")
        start = next((i for i, l in enumerate(lines, 1) if l.startswith(b"Undetected flows:")), None)
        if start is None:
            continue
        after = [f for f in flows if f.line > start]
        assert all(f.undetected and f.label == labels.UNKNOWN and not f.app for f in after), path
        n += len(after)
    assert n > on_corpus(100, 3)


def test_malformed_lines_reported_never_raised(real_ndpi_dir, tmp_path, capsys):
    # A real file with binary junk, then real lines damaged in the ways a broken file is damaged.
    junk = real_ndpi_dir / "result" / "http_invalid_server.pcap.out"
    assert labels.parse_ndpi_out(junk, [])
    real = _flow_lines(real_ndpi_dir / "result" / "1kxun.pcap.out")
    good = real[0][1]
    broken = [good[: good.index("[proto:") + 12],                         # cut inside [proto:
              good.replace(" pkts/", " pkts;"),                            # counts unreadable
              good.replace("192.168.2.126:", "192.168.2:"),                # bad address
              good.replace("\tTCP ", "\tXYZ ")]                            # unknown IP protocol name
    bad = tmp_path / "damaged.pcap.out"
    bad.write_bytes(("\n".join([good] + broken + [good]) + "\n").encode() + b"\xff\xfe\x00garbage\n")
    errors = []
    flows = labels.parse_ndpi_out(bad, errors)
    assert len(flows) == 2
    assert [e["line"] for e in errors] == [2, 3, 4, 5]
    assert all(e["file"] == str(bad) for e in errors)
    labels.parse_ndpi_out(bad)  # without a list: reported on stderr
    err = capsys.readouterr().err
    assert f"{bad}:2:" in err and f"{bad}:5:" in err


# ---------------------------------------------------------------------------------------------------- hierarchy

def test_hierarchy_maps_every_category_and_label_in_the_corpus(corpus):
    h = labels.load_hierarchy()
    assert h.level1 == labels.LEVEL1_CLASSES
    unmapped = collections.Counter()
    for flows, _ in corpus.values():
        for f in flows:
            if f.category:
                assert labels._norm(f.category) in h.categories, f.category
            level1, level2 = labels.map_label(f.label, f.category, h)
            if f.label == labels.UNKNOWN:
                assert (level1, level2) == ("", "")
            elif not level1:
                unmapped[f.label] += 1
            else:
                assert level1 in labels.LEVEL1_CLASSES and level2
    # Only nDPI's test-only custom protocols (no category) stay unmapped.
    assert all(name.startswith("CustomProtocol") for name in unmapped), unmapped


def test_applications_sit_under_one_service_class(corpus):
    # A named application (the app part of MASTER.APP) has one level-1 parent across the corpus: a tree.
    h = labels.load_hierarchy()
    parents = collections.defaultdict(set)
    for flows, _ in corpus.values():
        for f in flows:
            level1, level2 = labels.map_label(f.label, f.category, h)
            if f.app and level1 and labels._norm(f.master) not in h.carriers:
                parents[level2].add(level1)
    assert len(parents) > on_corpus(100, 15)
    assert {k: v for k, v in parents.items() if len(v) > 1} == {}


@pytest.mark.parametrize("label,category,expected", [
    ("BitTorrent", "Download", ("P2P", "BitTorrent")),
    ("HTTP.BitTorrent", "Download", ("P2P", "BitTorrent")),
    ("OpenVPN", "VPN", ("VPN/Tunnel", "OpenVPN")),
    ("WireGuard.Mullvad", "VPN", ("VPN/Tunnel", "Mullvad")),
    ("IPSec", "Malware", ("VPN/Tunnel", "IPSec")),
    ("TLS.Tor", "VPN", ("VPN/Tunnel", "Tor")),
    ("SSH", "RemoteAccess", ("RemoteAccess", "SSH")),
    ("TLS.RDP", "RemoteAccess", ("RemoteAccess", "RDP")),
    ("VNC", "RemoteAccess", ("RemoteAccess", "VNC")),
    ("SMTP", "Email", ("Email", "SMTP")),
    ("IMAPS.ntop", "Email", ("Email", "IMAPS")),
    ("SMTPS.Google", "Email", ("Email", "SMTPS")),
    ("FTPS.Huawei", "Web", ("FileTransfer", "FTPS")),
    ("POP3", "Email", ("Email", "POP3")),
    ("DNS.Google", "Network", ("Infrastructure", "DNS")),
    ("NTP", "System", ("Infrastructure", "NTP")),
    ("DHCP", "Network", ("Infrastructure", "DHCP")),
    ("TLS.Google", "Web", ("Web", "Google")),
    ("QUIC.YouTube", "Media", ("Streaming", "YouTube")),
    ("STUN.WhatsAppCall", "VoIP", ("VoIP", "WhatsAppCall")),
    ("TLS", "Malware", ("Malware", "TLS")),
    ("ETHEREUM", "Crypto_Currency", ("CryptoCurrency", "ETHEREUM")),
    ("Modbus", "IoT-Scada", ("IoT/Industrial", "Modbus")),
    ("Unknown", "", ("", "")),
    # Folder labels: a class or category named directly, any spelling.
    ("file_transfer", "", ("FileTransfer", "file_transfer")),
    ("vpn", "", ("VPN/Tunnel", "vpn")),
    ("skype", "", ("VoIP", "Skype")),
    ("benign", "", ("", "benign")),
])
def test_map_label_overrides(label, category, expected):
    assert labels.map_label(label, category) == expected


def test_hierarchy_validation_names_the_entry(tmp_path):
    doc = yaml.safe_load(labels.DEFAULT_HIERARCHY.read_text())
    doc["applications"]["Foo"] = "Webb"
    bad = tmp_path / "h.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"applications\.Foo.*'Webb'"):
        labels.load_hierarchy(bad)
    doc = yaml.safe_load(labels.DEFAULT_HIERARCHY.read_text())
    doc["level1"] = doc["level1"][:-1]
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match="level1"):
        labels.load_hierarchy(bad)
    doc = yaml.safe_load(labels.DEFAULT_HIERARCHY.read_text())
    doc["datasets"]["iscx_vpn2016"]["rules"][0]["pattern"] = "(unclosed"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"iscx_vpn2016\.rules\[0\].*bad regex"):
        labels.load_hierarchy(bad)


# Published file names (ISCX VPN-nonVPN 2016 PCAP archives; USTC-TFC2016 Benign/ and Malware/).
ISCX = {
    "aim_chat_3a.pcap": ("Chat", "AIM", "NonVPN"), "aimchat1.pcapng": ("Chat", "AIM", "NonVPN"),
    "facebook_chat_4a.pcap": ("Chat", "Facebook", "NonVPN"), "facebookchat1.pcapng": ("Chat", "Facebook", "NonVPN"),
    "hangout_chat_4b.pcap": ("Chat", "Hangouts", "NonVPN"), "icq_chat_3a.pcap": ("Chat", "ICQ", "NonVPN"),
    "gmailchat1.pcapng": ("Chat", "Gmail", "NonVPN"), "skype_chat1a.pcap": ("Chat", "Skype", "NonVPN"),
    "email1a.pcap": ("Email", "Email", "NonVPN"), "vpn_email2a.pcap": ("Email", "Email", "VPN"),
    "ftps_down_1a.pcap": ("FileTransfer", "FTPS", "NonVPN"), "sftpDown1.pcap": ("FileTransfer", "SFTP", "NonVPN"),
    "scpUp1.pcap": ("FileTransfer", "SCP", "NonVPN"), "skype_file1.pcap": ("FileTransfer", "Skype", "NonVPN"),
    "vpn_skype_files1a.pcap": ("FileTransfer", "Skype", "VPN"), "vpn_ftps_A.pcap": ("FileTransfer", "FTPS", "VPN"),
    "torrent01.pcap": ("P2P", "BitTorrent", "NonVPN"), "vpn_bittorrent.pcap": ("P2P", "BitTorrent", "VPN"),
    "netflix1.pcap": ("Streaming", "NetFlix", "NonVPN"), "vpn_youtube_A.pcap": ("Streaming", "YouTube", "VPN"),
    "spotify1.pcap": ("Streaming", "Spotify", "NonVPN"), "vimeo1.pcap": ("Streaming", "Vimeo", "NonVPN"),
    "skype_audio1a.pcap": ("VoIP", "Skype", "NonVPN"), "vpn_skype_audio1.pcap": ("VoIP", "Skype", "VPN"),
    "facebook_audio1a.pcap": ("VoIP", "Facebook", "NonVPN"), "hangouts_video1b.pcap": ("VoIP", "Hangouts", "NonVPN"),
    "voipbuster1b.pcap": ("VoIP", "VoipBuster", "NonVPN"), "vpn_voipbuster1a.pcap": ("VoIP", "VoipBuster", "VPN"),
}
USTC_BENIGN = {"BitTorrent.pcap": "P2P", "Facetime.pcap": "VoIP", "FTP.pcap": "FileTransfer", "Gmail.pcap": "Email",
               "MySQL.pcap": "Database", "Outlook.pcap": "Email", "Skype.pcap": "VoIP", "SMB-1.pcap": "FileTransfer",
               "Weibo-2.pcap": "SocialNetwork", "WorldOfWarcraft.pcap": "Game"}
USTC_MALWARE = ["Cridex.pcap", "Geodo.pcap", "Htbot.pcap", "Miuref.pcap", "Neris.pcap", "Nsis-ay.pcap",
                "Shifu.pcap", "Tinba.pcap", "Virut.pcap", "Zeus.pcap"]


def test_public_dataset_file_name_rules():
    for name, (level1, level2, vpn) in ISCX.items():
        m = labels.map_capture_name(f"NonVPN-PCAPs-01/{name}", "iscx_vpn2016")
        assert (m["level1"], m["level2"], m["category"]) == (level1, level2, vpn), name
    for name, level1 in USTC_BENIGN.items():
        m = labels.map_capture_name(name, "ustc_tfc2016")
        assert (m["level1"], m["category"]) == (level1, "Benign"), name
    families = {labels.map_capture_name(n, "ustc_tfc2016")["level2"] for n in USTC_MALWARE}
    assert len(families) == 10
    assert all(labels.map_capture_name(n, "ustc_tfc2016")["level1"] == "Malware" for n in USTC_MALWARE)
    assert labels.map_capture_name("random.pcap", "ustc_tfc2016") is None
    with pytest.raises(ValueError, match="no file-name rules"):
        labels.map_capture_name("x.pcap", "cicids")


# ---------------------------------------------------------------------------------------------------- attach_labels

def test_ndpi_match_rate_on_the_corpus(tables, ndpi_dir):
    default, unsplit = tables
    # Ingest split like nDPI (no idle/active timeout): >= 98% of the .out flows whose packets are in the capture
    # match one ingested flow with nDPI's packet count in each direction.
    s = labels.attach_labels(unsplit, f"ndpi:{ndpi_dir / 'result'}", progress=False).summary["labels"]
    assert s["out_flows_in_capture"] > on_corpus(5000, 300)
    assert s["match_rate"] >= 0.98, s
    # Default ingest (120 s idle timeout) splits some long conversations: their consecutive pieces add up.
    d = labels.attach_labels(default, f"ndpi:{ndpi_dir}", progress=False).summary["labels"]
    assert d["match_rate_with_splits"] >= 0.98, d
    assert d["out_flows_matched"] + d["out_flows_matched_split"] <= d["out_flows_in_capture"] <= d["out_flows"]
    assert d["captures_without_out"] == 0
    print(f"\nmatch rate: unsplit ingest {s['match_rate']:.4f} ({s['out_flows_matched']}/{s['out_flows_in_capture']});"
          f" default ingest exact {d['match_rate']:.4f}, with split pieces {d['match_rate_with_splits']:.4f}")


def test_ndpi_label_columns(tables, ndpi_dir):
    default, _ = tables
    table = labels.attach_labels(default, f"ndpi:{ndpi_dir}", progress=False)
    m = table.meta
    assert list(m)[-6:] == list(labels.LABEL_COLUMNS)
    assert len(table) == len(default) and np.array_equal(m["flow_id"], default.meta["flow_id"])
    assert set(np.unique(m["encrypted"])) <= {-1, 0, 1}
    assert set(np.unique(m["level1"])) - {""} <= set(labels.LEVEL1_CLASSES)
    assert len(set(np.unique(m["level1"])) - {""}) >= on_corpus(len(labels.LEVEL1_CLASSES), 12)
    labelled = m["label"] != ""
    assert labelled.mean() > 0.95
    # Unlabelled flows have no label at all; Unknown ones keep nDPI's verdict but no class.
    assert (m["level1"][~labelled] == "").all() and (m["encrypted"][~labelled] == -1).all()
    assert (m["level1"][m["label"] == labels.UNKNOWN] == "").all()
    # The label of every exactly-matched flow is consistent with the hierarchy.
    for lab, cat, l1, l2 in list(zip(m["label"], m["category"], m["level1"], m["level2"]))[:500]:
        assert labels.map_label(lab, cat) == (l1, l2)
    # Round trip through the contract's on-disk format keeps the label columns.
    assert table.summary["labels"]["flows"] == len(table)


def test_ndpi_missing_out_and_bad_spec(tables, tmp_path):
    default, _ = tables
    s = labels.attach_labels(default, f"ndpi:{tmp_path}", progress=False).summary["labels"]
    assert s["out_files"] == 0 and s["captures_without_out"] == len(set(default.meta["capture"]))
    assert s["flows_labelled"] == 0
    with pytest.raises(ValueError, match="unknown labels spec"):
        labels.attach_labels(default, "magic:x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        labels.attach_labels(default, f"ndpi:{tmp_path / 'nope'}")


def _class_folders(root: pathlib.Path, ndpi_dir: pathlib.Path, layout: dict) -> pathlib.Path:
    for folder, names in layout.items():
        (root / folder).mkdir(parents=True)
        for n in names:
            (root / folder / n).symlink_to(ndpi_dir / "pcap" / n)
    return root


def test_folder_labels(tmp_path, ndpi_dir):
    root = _class_folders(tmp_path / "data", ndpi_dir, {"Chat": ["jabber.pcap", "threema.pcap"],
                                                        "voip": ["sip.pcap"], "benign": ["pop3.pcap"]})
    table = labels.attach_labels(ingest([root], IngestConfig(packets=2, bytes=16), progress=False), "folder")
    m = table.meta
    folder = np.array([pathlib.PurePath(c).parent.name for c in m["capture"]])
    assert set(folder) == {"Chat", "voip", "benign"}
    assert (m["label"] == folder).all()
    assert (m["level1"][folder == "Chat"] == "Chat").all() and (m["level1"][folder == "voip"] == "VoIP").all()
    assert (m["level1"][folder == "benign"] == "").all()  # not a service class: raw label only
    assert table.summary["labels"]["unmapped_labels"] == {"benign": int((folder == "benign").sum())}


def test_csv_labels_either_direction(tmp_path, ndpi_dir):
    table = ingest([ndpi_dir / "pcap" / "jabber.pcap", ndpi_dir / "pcap" / "pop3.pcap"],
                   IngestConfig(packets=2, bytes=16), progress=False)
    m = table.meta
    path = tmp_path / "labels.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["capture", "proto", "ip_a", "port_a", "ip_b", "port_b", "label", "level1"])
        # Row 0 as client→server, row 1 reversed (server first), row 2 with only a raw label.
        w.writerow([m["capture"][0], m["proto"][0], m["client_ip"][0], m["client_port"][0], m["server_ip"][0],
                    m["server_port"][0], "mine", "Chat"])
        w.writerow([m["capture"][1], "TCP" if m["proto"][1] == 6 else m["proto"][1], m["server_ip"][1],
                    m["server_port"][1], m["client_ip"][1], m["client_port"][1], "theirs", ""])
        last = len(table) - 1
        w.writerow([m["capture"][last], m["proto"][last], m["client_ip"][last], m["client_port"][last],
                    m["server_ip"][last], m["server_port"][last], "POP3", ""])
    out = labels.attach_labels(table, f"csv:{path}")
    lm = out.meta
    key = lambda r: (lm["capture"][r], lm["proto"][r], frozenset([(lm["client_ip"][r], lm["client_port"][r]),
                                                                  (lm["server_ip"][r], lm["server_port"][r])]))
    for r in range(len(out)):
        if key(r) == key(0):
            assert (lm["label"][r], lm["level1"][r]) == ("mine", "Chat")
        elif key(r) == key(1):
            assert (lm["label"][r], lm["level1"][r]) == ("theirs", "")
        elif key(r) == key(last):
            assert (lm["label"][r], lm["level1"][r], lm["level2"][r]) == ("POP3", "Email", "POP3")
        else:
            assert lm["label"][r] == ""
    assert out.summary["labels"]["csv_rows_matched"] == 3
    bad = tmp_path / "bad.csv"
    bad.write_text("capture,proto,ip_a,port_a,ip_b,port_b,label\nx.pcap,TCP,1.2.3,80,1.2.3.4,90,Web\n")
    with pytest.raises(ValueError, match=r"bad\.csv:2"):
        labels.attach_labels(table, f"csv:{bad}")
    (tmp_path / "nohdr.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="header lacks"):
        labels.attach_labels(table, f"csv:{tmp_path / 'nohdr.csv'}")


def test_rules_labels(tmp_path, ndpi_dir):
    # Captures under ISCX file names: the class comes from the name alone.
    root = tmp_path / "iscx"
    root.mkdir()
    (root / "vpn_skype_audio1.pcap").symlink_to(ndpi_dir / "pcap" / "sip.pcap")
    (root / "facebook_chat_4a.pcap").symlink_to(ndpi_dir / "pcap" / "jabber.pcap")
    (root / "README.pcap").symlink_to(ndpi_dir / "pcap" / "pop3.pcap")
    table = labels.attach_labels(ingest([root], IngestConfig(packets=2, bytes=16), progress=False),
                                 "rules:iscx_vpn2016")
    m = table.meta
    skype = m["capture"] == "vpn_skype_audio1.pcap"
    chat = m["capture"] == "facebook_chat_4a.pcap"
    assert skype.any() and chat.any()
    assert (m["level1"][skype] == "VoIP").all() and (m["category"][skype] == "VPN").all()
    assert (m["level1"][chat] == "Chat").all() and (m["category"][chat] == "NonVPN").all()
    assert (m["label"][~(skype | chat)] == "").all()
    assert table.summary["labels"]["captures_without_rule"] == 1


def test_dpi_labels_agree_with_the_ndpi_result_files(real_ndpi_dir, tmp_path):
    """`ingest --labels dpi` runs nDPI (nfstream) on the captures: on every 4th capture of the nDPI corpus its
    service classes agree with those of nDPI's own result files on >= 85 % of the flows that have one. Run as the
    CLI in its own process, as a user runs it: nfstream forks, which a process with JAX loaded should not do."""
    import subprocess
    import sys

    from pclip_jax.data.flow_table import FlowTable

    captures = sorted(p for p in (real_ndpi_dir / "pcap").iterdir() if p.is_file())[::4]
    r = subprocess.run([sys.executable, "-m", "pclip_jax.ingest", *map(str, captures), "--labels", "dpi",
                        "--out", str(tmp_path / "dpi"), "--quiet"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    dpi = FlowTable.load(tmp_path / "dpi")
    ref = labels.attach_labels(dpi, f"ndpi:{real_ndpi_dir / 'result'}", progress=False)
    has_ref = ref.meta["level1"] != ""
    assert has_ref.sum() > 1000 and dpi.summary["labels"]["flows_matched"] > 0.9 * len(dpi)
    agree = (dpi.meta["level1"][has_ref] == ref.meta["level1"][has_ref]).mean()
    assert agree >= 0.85, agree
