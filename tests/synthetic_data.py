"""Test data built at test time, for a clone without ../shared: small captures in nDPI's layout and a tiny
randomly initialised sentence encoder in Hugging Face layout.

`build_ndpi_corpus(root)` writes `root/pcap/NAME` and `root/result/NAME.out`: stand-ins for the nDPI captures the
tests name (same file names, the same kinds of traffic and the labels nDPI gives the real ones), each a few real-
shaped flows (TCP handshakes, a TLS ClientHello with its SNI, HTTP with a Host header, DNS questions, QUIC Initial
packets, WireGuard/OpenVPN/STUN-like UDP, BitTorrent, cleartext banners, bulk transfers), in classic pcap over
Ethernet. The `.out` files are in ndpiReader's per-flow line format (pclip_jax/data/labels.py parses them), with
the packet counts each way that the flows really have. Everything is derived from the capture's name through a
seeded generator: two builds are byte-identical.

`build_text_encoder(root)` writes a one-layer BERT (width 384, MiniLM's: configs size `model.name_dim` by it) with a WordPiece vocabulary of the words the project's
texts use: `config.json`, `model.safetensors`, `tokenizer.json`, `vocab.txt`, `sentence_bert_config.json`, ...
(the layout of all-MiniLM-L6-v2, which pclip_jax/models/text_tower.py and pclip_jax/plumbing/model_files.py read).

What these cannot stand in for: anything about the real corpus (its counts, nDPI agreement on it, malformed real
captures). Tests of that take the `real_ndpi_dir` / `real_minilm_dir` fixtures and are skipped without ../shared.
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import re
import struct

import numpy as np

from tests.pcap_tools import write_pcap

REPO = pathlib.Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------- packets


def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def _ipv4(src: str, dst: str, proto: int, payload: bytes, ident: int, ttl: int) -> bytes:
    a = bytes(int(x) for x in src.split("."))
    b = bytes(int(x) for x in dst.split("."))
    head = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0x4000, ttl, proto, 0, a, b)
    head = head[:10] + struct.pack("!H", _checksum(head)) + head[12:]
    return head + payload


def _ethernet(ip: bytes, client_side: bool, vlan: int = 0) -> bytes:
    mac_c, mac_s = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    dst, src = (mac_s, mac_c) if client_side else (mac_c, mac_s)
    tag = struct.pack("!HH", 0x8100, vlan) if vlan else b""
    return dst + src + tag + b"\x08\x00" + ip


TCP_FLAGS = {"S": 0x02, "SA": 0x12, "A": 0x10, "PA": 0x18, "FA": 0x11, "R": 0x04}


class _Conversation:
    """Packets of one flow between a client and a server endpoint, with TCP sequence numbers kept."""

    def __init__(self, rng, proto: int, client: tuple, server: tuple, t0: float, vlan: int = 0):
        self.rng, self.proto, self.client, self.server, self.t, self.vlan = rng, proto, client, server, t0, vlan
        self.seq = {True: int(rng.integers(1, 2**31)), False: int(rng.integers(1, 2**31))}
        self.ident = {True: int(rng.integers(0, 60000)), False: int(rng.integers(0, 60000))}
        self.frames: list = []
        self.count = {True: 0, False: 0}
        self.bytes = {True: 0, False: 0}

    def send(self, from_client: bool, payload: bytes = b"", flags: str = "PA", gap: float = 0.01):
        self.t += gap * (0.5 + self.rng.random())
        (sip, sport), (dip, dport) = (self.client, self.server) if from_client else (self.server, self.client)
        if self.proto == 6:
            ack = self.seq[not from_client] if flags != "S" else 0
            seg = struct.pack("!HHIIBBHHH", sport, dport, self.seq[from_client] & 0xFFFFFFFF, ack & 0xFFFFFFFF,
                              5 << 4, TCP_FLAGS[flags], 64240, 0, 0) + payload
            self.seq[from_client] += len(payload) + (1 if flags in ("S", "SA", "FA") else 0)
        else:
            seg = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
        self.ident[from_client] += 1
        ip = _ipv4(sip, dip, self.proto, seg, self.ident[from_client], 64 if from_client else 52)
        frame = _ethernet(ip, from_client, self.vlan)
        self.frames.append((int(round(self.t * 1e9)), len(frame), 1, frame))
        self.count[from_client] += 1
        self.bytes[from_client] += len(frame)

    def handshake(self):
        self.send(True, flags="S", gap=0.001)
        self.send(False, flags="SA", gap=0.02)
        self.send(True, flags="A", gap=0.001)

    def close(self):
        self.send(True, flags="FA")
        self.send(False, flags="FA", gap=0.02)
        self.send(True, flags="A", gap=0.001)


def _client_hello(sni: str, rng) -> bytes:
    name = sni.encode()
    ext_sni = struct.pack("!HHHBH", 0, len(name) + 5, len(name) + 3, 0, len(name)) + name
    ext_alpn = struct.pack("!HHH", 16, 5, 3) + b"\x02h2"
    exts = ext_sni + ext_alpn + struct.pack("!HH", 0x0015, 64) + bytes(64)  # padding extension
    ciphers = struct.pack("!H", 8) + bytes.fromhex("130113021303c02f")
    body = b"\x03\x03" + bytes(rng.integers(0, 256, 32, dtype=np.uint8)) + b"\x20" + \
        bytes(rng.integers(0, 256, 32, dtype=np.uint8)) + ciphers + b"\x01\x00" + struct.pack("!H", len(exts)) + exts
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def _dns_query(qname: str, ident: int, answer: bool = False) -> bytes:
    q = b"".join(bytes([len(p)]) + p.encode() for p in qname.split(".")) + b"\0" + struct.pack("!HH", 1, 1)
    head = struct.pack("!HHHHHH", ident, 0x8180 if answer else 0x0100, 1, 1 if answer else 0, 0, 0)
    return head + q + (b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + b"\x5d\xb8\xd8\x22" if answer else b"")


def _random(rng, n: int) -> bytes:
    return bytes(rng.integers(0, 256, int(n), dtype=np.uint8))


# ---------------------------------------------------------------------------------------------- flow kinds
# Each kind writes one conversation; sizes and rates differ by kind so the classes have distinct shapes.

def _tls(c, rng, host, rounds=4, down=1200, up=90):
    c.handshake()
    c.send(True, _client_hello(host, rng))
    for size in (1360, 1360, int(rng.integers(300, 900))):
        c.send(False, b"\x16\x03\x03" + _random(rng, size - 3), gap=0.002)
    c.send(True, b"\x14\x03\x03\x00\x01\x01\x17\x03\x03" + _random(rng, 60))
    for _ in range(rounds):
        c.send(True, b"\x17\x03\x03" + _random(rng, up + rng.integers(0, 40)))
        for _ in range(int(rng.integers(1, 4))):
            c.send(False, b"\x17\x03\x03" + _random(rng, down + rng.integers(-200, 100)), gap=0.003)
        c.send(True, flags="A", gap=0.001)
    c.close()


def _http(c, rng, host, rounds=2, down=1400):
    c.handshake()
    for i in range(rounds):
        c.send(True, f"GET /item/{i}?v={int(rng.integers(1000))} HTTP/1.1\r\nHost: {host}\r\n"
                     f"User-Agent: Mozilla/5.0\r\nAccept: */*\r\n\r\n".encode())
        c.send(False, b"HTTP/1.1 200 OK\r\nContent-Type: video/mp4\r\nContent-Length: 40000\r\n\r\n"
               + _random(rng, down - 80), gap=0.03)
        for _ in range(int(rng.integers(2, 5))):
            c.send(False, _random(rng, down), gap=0.002)
        c.send(True, flags="A", gap=0.001)
    c.close()


def _dns(c, rng, host, **_):
    ident = int(rng.integers(0, 65536))
    c.send(True, _dns_query(host, ident))
    c.send(False, _dns_query(host, ident, answer=True), gap=0.015)


def _quic(c, rng, host, rounds=5, **_):
    c.send(True, b"\xc3\x00\x00\x00\x01\x08" + _random(rng, 1194))
    c.send(False, b"\xc1\x00\x00\x00\x01\x08" + _random(rng, 1194), gap=0.02)
    c.send(False, b"\xe1\x00\x00\x00\x01\x08" + _random(rng, 900), gap=0.001)
    for _ in range(rounds):
        c.send(True, b"\x41" + _random(rng, 40 + rng.integers(0, 20)))
        for _ in range(int(rng.integers(2, 5))):
            c.send(False, b"\x41" + _random(rng, 1250), gap=0.002)


def _tunnel(c, rng, host, first=b"\x01\x00\x00\x00", size=148, rounds=12, period=0.05, **_):
    c.send(True, first + _random(rng, size - len(first)))
    c.send(False, b"\x02\x00\x00\x00" + _random(rng, 88), gap=0.03)
    for _ in range(rounds):
        c.send(True, b"\x04\x00\x00\x00" + _random(rng, 100 + rng.integers(0, 300)), gap=period)
        c.send(False, b"\x04\x00\x00\x00" + _random(rng, 200 + rng.integers(0, 1000)), gap=0.004)


def _voice(c, rng, host, rounds=25, **_):
    c.send(True, b"\x00\x01\x00\x08\x21\x12\xa4\x42" + _random(rng, 12) + b"\x00\x06\x00\x04abcd")  # STUN binding
    c.send(False, b"\x01\x01\x00\x0c\x21\x12\xa4\x42" + _random(rng, 24), gap=0.03)
    for _ in range(rounds):
        c.send(True, b"\x80\x78" + _random(rng, 158), gap=0.02)
        c.send(False, b"\x80\x78" + _random(rng, 158), gap=0.001)


def _p2p(c, rng, host, rounds=3, **_):
    if c.proto == 17:
        c.send(True, b"d1:ad2:id20:" + _random(rng, 20) + b"e1:q4:ping1:t2:aa1:y1:qe")
        c.send(False, b"d1:rd2:id20:" + _random(rng, 20) + b"e1:t2:aa1:y1:re", gap=0.08)
        return
    c.handshake()
    c.send(True, b"\x13BitTorrent protocol" + bytes(8) + _random(rng, 40))
    c.send(False, b"\x13BitTorrent protocol" + bytes(8) + _random(rng, 40), gap=0.05)
    for _ in range(rounds):
        c.send(True, struct.pack("!IB", 13, 6) + _random(rng, 12))
        for _ in range(3):
            c.send(False, struct.pack("!IB", 16393, 7) + _random(rng, 1391), gap=0.002)
    c.close()


def _banner(c, rng, host, banner=b"+OK POP3 ready\r\n", command=b"USER alice\r\n", rounds=3, down=300, **_):
    c.handshake()
    c.send(False, banner, gap=0.03)
    for i in range(rounds):
        c.send(True, command)
        c.send(False, b"+OK " + _random(rng, down + rng.integers(0, 200)).hex().encode()[:down] + b"\r\n",
               gap=0.02)
    c.close()


def _bulk(c, rng, host, rounds=12, **_):
    c.handshake()
    c.send(True, b"RETR archive.tar\r\n")
    for i in range(rounds):
        c.send(False, _random(rng, 1448), gap=0.001)
        if i % 2:
            c.send(True, flags="A", gap=0.0005)
    c.close()


KINDS = {  # kind: (writer, IP protocol, server port)
    "tls": (_tls, 6, 443), "http": (_http, 6, 80), "dns": (_dns, 17, 53), "quic": (_quic, 17, 443),
    "wireguard": (_tunnel, 17, 51820), "openvpn": (_tunnel, 17, 1194), "voice": (_voice, 17, 3478),
    "p2p_udp": (_p2p, 17, 6881), "p2p_tcp": (_p2p, 6, 6881), "pop3": (_banner, 6, 110), "smtp": (_banner, 6, 25),
    "ssh": (_banner, 6, 22), "ftp": (_banner, 6, 21), "ftp_data": (_bulk, 6, 20), "rdp": (_bulk, 6, 3389),
}
KIND_ARGS = {
    "smtp": {"banner": b"220 mail.example.org ESMTP\r\n", "command": b"MAIL FROM:<a@example.org>\r\n"},
    "ssh": {"banner": b"SSH-2.0-OpenSSH_8.9\r\n", "command": b"SSH-2.0-OpenSSH_9.0\r\n", "down": 600},
    "ftp": {"banner": b"220 FTP server ready\r\n", "command": b"PASV\r\n", "down": 60},
    "openvpn": {"first": b"\x38", "size": 54},
}

# Flows of a stand-in capture: (kind, nDPI label, nDPI category, encrypted, server name, how many flows).
_ENC, _CLEAR = "Encrypted", "ClearText"
CORPUS = {
    "signal.pcap": [("tls", "TLS.Signal", "Chat", _ENC, "chat.signal.org", 4), ("dns", "DNS.Signal", "Network",
                    _CLEAR, "chat.signal.org", 2)],
    "whatsapp_login_chat.pcap": [("tls", "WhatsApp", "Chat", _ENC, "g.whatsapp.net", 3),
                                 ("dns", "DNS.WhatsApp", "Network", _CLEAR, "g.whatsapp.net", 2)],
    "telegram.pcap": [("tls", "Telegram", "Chat", _ENC, "web.telegram.org", 4)],
    "KakaoTalk_chat.pcap": [("tls", "TLS.KakaoTalk", "Chat", _ENC, "talk.kakao.com", 3),
                            ("dns", "DNS.KakaoTalk", "Network", _CLEAR, "talk.kakao.com", 3)],
    "quic.pcap": [("quic", "QUIC.YouTube", "Media", _ENC, "", 4), ("dns", "DNS.Google", "Network", _CLEAR,
                  "www.youtube.com", 2)],
    "netflix.pcap": [("tls", "TLS.NetFlix", "Video", _ENC, "www.netflix.com", 3),
                     ("http", "HTTP", "Download", _CLEAR, "ipv4-c001.nflxvideo.net", 2),
                     ("dns", "DNS.NetFlix", "Network", _CLEAR, "www.netflix.com", 2)],
    "1kxun.pcap": [("http", "HTTP.1kxun", "Streaming", _CLEAR, "mangaweb.1kxun.mobi", 4),
                   ("dns", "DNS", "Network", _CLEAR, "1kxun.mobi", 2)],
    # Like the real zoom.pcap: over 20 flows, some VLAN-tagged (the media), some of 1-2 packets (DNS).
    "zoom.pcap": [("tls", "TLS.Zoom", "Video", _ENC, "zoom.us", 8), ("voice", "Zoom", "Video", _ENC, "", 6),
                  ("dns", "DNS.Zoom", "Network", _CLEAR, "zoom.us", 8)],
    "teams.pcap": [("tls", "TLS.Teams", "Collaborative", _ENC, "teams.microsoft.com", 4),
                   ("dns", "DNS.Teams", "Network", _CLEAR, "teams.microsoft.com", 2)],
    "skype.pcap": [("voice", "Skype_Teams", "VoIP", _ENC, "", 3), ("tls", "TLS.Skype_Teams", "VoIP", _ENC,
                   "api.skype.com", 1)],
    "whatsapp_login_call.pcap": [("voice", "STUN.WhatsAppCall", "VoIP", _CLEAR, "", 3),
                                 ("tls", "TLS", "Web", _ENC, "e1.whatsapp.net", 1)],
    "openvpn.pcap": [("openvpn", "OpenVPN", "VPN", _ENC, "", 4)],
    "wireguard.pcap": [("wireguard", "WireGuard", "VPN", _ENC, "", 4)],
    "tor.pcap": [("tls", "TLS.Tor", "VPN", _ENC, "www.fd5hcsl4pmsb.com", 3)],
    "bittorrent.pcap": [("p2p_udp", "BitTorrent", "Download", _CLEAR, "", 4),
                        ("p2p_tcp", "BitTorrent", "Download", _CLEAR, "", 2)],
    "ookla.pcap": [("http", "HTTP.Ookla", "Network", _CLEAR, "speedtest.ookla.com", 2),
                   ("tls", "TLS.Ookla", "Network", _ENC, "www.speedtest.net", 2)],
    "443-chrome.pcap": [("tls", "TLS", "Web", _ENC, "www.example.com", 3)],
    "443-firefox.pcap": [("tls", "TLS.ntop", "Network", _ENC, "www.ntop.org", 3)],
    "google_ssl.pcap": [("tls", "TLS.Google", "Web", _ENC, "www.google.com", 3)],
    "dnscrypt.pcap": [("tls", "DNSCrypt", "Network", _ENC, "2.dnscrypt-cert.example", 3)],
    "dns_long_domainname.pcap": [("dns", "DNS", "Network", _CLEAR,
                                  "a-very-long-label-of-many-words.subdomain.example.com", 3)],
    "dns-exf.pcap": [("dns", "DNS", "Network", _CLEAR, "x1f3a9.tunnel.example.net", 4)],
    "ssh.pcap": [("ssh", "SSH", "RemoteAccess", _ENC, "", 4)],
    "rdp.pcap": [("rdp", "RDP", "RemoteAccess", _CLEAR, "", 4)],
    "ftp.pcap": [("ftp", "FTP_CONTROL", "Download", _CLEAR, "", 1), ("ftp_data", "FTP_DATA", "Download", _CLEAR,
                 "", 2)],
    "pop3.pcap": [("pop3", "POP3", "Email", _CLEAR, "", 3)],
    "smtp.pcap": [("smtp", "SMTP", "Email", _CLEAR, "", 3)],
    "nintendo.pcap": [("tls", "Nintendo", "Game", _ENC, "nncs1.app.nintendowifi.net", 3),
                      ("dns", "DNS.Nintendo", "Network", _CLEAR, "conntest.nintendowifi.net", 2)],
    "tls_verylong_certificate.pcap": [("tls", "TLS.Cybersec", "Cybersecurity", _ENC, "www.cybersec.example", 2)],
}


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def _ndpi_line(i: int, proto: int, client, server, label, category, enc, conv, host) -> str:
    pname = {6: "TCP", 17: "UDP"}[proto]
    vlan = f"[VLAN: {conv.vlan}]" if conv.vlan else ""
    text = (f"\t{i}\t{pname} {client[0]}:{client[1]} <-> {server[0]}:{server[1]} {vlan}[proto: 0.0/{label}]"
            f"[IP: 0/Unknown][{enc}][Confidence: DPI][cat: {category}/0]"
            f"[{conv.count[True]} pkts/{conv.bytes[True]} bytes <-> {conv.count[False]} pkts/"
            f"{conv.bytes[False]} bytes]")
    return text + (f"[Hostname/SNI: {host}]" if host else "")


def build_capture(name: str, flows) -> tuple[list, list[str]]:
    """(frames ordered by time, ndpiReader-format lines) of one stand-in capture."""
    rng = _rng(name)
    net = int(rng.integers(1, 250))
    frames, lines = [], []
    t0 = 1_600_000_000.0 + float(rng.integers(0, 10**6))
    n = 0
    for kind, label, category, enc, host, count in flows:
        writer, proto, port = KINDS[kind]
        for j in range(count):
            n += 1
            client = (f"192.168.{net}.{10 + n % 3}", int(rng.integers(32768, 61000)))
            server = (f"{int(rng.integers(11, 220))}.{int(rng.integers(0, 255))}.{int(rng.integers(0, 255))}."
                      f"{int(rng.integers(1, 254))}", port)
            conv = _Conversation(rng, proto, client, server, t0 + float(rng.uniform(0, 20)),
                                 vlan=20 if kind == "voice" and name == "zoom.pcap" else 0)
            writer(conv, rng, host, **KIND_ARGS.get(kind, {}))
            frames += conv.frames
            lines.append(_ndpi_line(n, proto, client, server, label, category, enc, conv, host))
    frames.sort(key=lambda f: f[0])
    return frames, lines


def build_ndpi_corpus(root: pathlib.Path, names=None) -> pathlib.Path:
    """Writes the stand-in captures (all of CORPUS, or `names`) and their nDPI results under root; returns root."""
    root = pathlib.Path(root)
    (root / "pcap").mkdir(parents=True, exist_ok=True)
    (root / "result").mkdir(parents=True, exist_ok=True)
    for name in (names or CORPUS):
        frames, lines = build_capture(name, CORPUS[name])
        write_pcap(root / "pcap" / name, frames, linktype=1)
        (root / "result" / f"{name}.out").write_text(
            "Stand-in for nDPI's result file, written by tests/synthetic_data.py\n\n" + "\n".join(lines) + "\n\n")
    return root


# ---------------------------------------------------------------------------------------------- text encoder

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _project_words() -> list[str]:
    """Lower-case words of the texts the project writes (prompts, class descriptions, graph, label names)."""
    sources = [REPO / "pclip_jax" / "text" / "prompts.py", REPO / "pclip_jax" / "data" / "class_descriptions.yaml",
               REPO / "pclip_jax" / "data" / "label_hierarchy.yaml", *sorted((REPO / "pclip_jax" / "graph").rglob("*.yaml"))]
    words = set()
    for path in sources:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{2,}", path.read_text()))
    return sorted(words)[:3000]


def build_text_encoder(root: pathlib.Path, hidden: int = 384, layers: int = 1, heads: int = 4,
                       max_positions: int = 128) -> pathlib.Path:
    """A tiny BERT sentence encoder, randomly initialised (seed 0), in Hugging Face layout under root."""
    import jax
    import jax.numpy as jnp
    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    from pclip_jax.models.bert import BertConfig, BertEncoder
    from pclip_jax.models.text_tower import _hf_to_flax_names

    root = pathlib.Path(root)
    root.mkdir(parents=True, exist_ok=True)
    chars = [chr(c) for c in range(33, 127)]
    vocab = SPECIAL + chars + ["##" + c for c in chars if c.isalnum()] + [w for w in _project_words() if len(w) > 1]
    vocab = list(dict.fromkeys(vocab))
    ids = {w: i for i, w in enumerate(vocab)}
    tok = Tokenizer(models.WordPiece(vocab=ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None,
                                                lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.save(str(root / "tokenizer.json"))
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")

    hf = {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": len(vocab), "hidden_size": hidden,
          "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": hidden,
          "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
          "max_position_embeddings": max_positions, "type_vocab_size": 2, "layer_norm_eps": 1e-12,
          "initializer_range": 0.02, "pad_token_id": 0, "position_embedding_type": "absolute"}
    (root / "config.json").write_text(json.dumps(hf, indent=2))
    config = BertConfig.from_dict(hf)
    x = jnp.zeros((1, 4), jnp.int32)
    params = BertEncoder(config).init(jax.random.PRNGKey(0), x, jnp.ones_like(x))["params"]
    tensors = {}
    for key, (path, transpose) in _hf_to_flax_names(config).items():
        value = params
        for part in path:
            value = value[part]
        value = np.asarray(value, np.float32)
        tensors[key] = np.ascontiguousarray(value.T if transpose else value)
    save_file(tensors, str(root / "model.safetensors"))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_positions,
                                                                "do_lower_case": False}))
    (root / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "tokenizer_class": "BertTokenizer",
                                                            "model_max_length": max_positions}))
    (root / "special_tokens_map.json").write_text(json.dumps({t.strip("[]").lower() + "_token": t
                                                              for t in SPECIAL if t != "[UNK]"} | {"unk_token": "[UNK]"}))
    (root / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (root / "1_Pooling").mkdir(exist_ok=True)
    (root / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": hidden,
                                                                "pooling_mode_mean_tokens": True}))
    return root
