"""Test data built at test time, for a clone without ../shared: small captures in nDPI's layout and a tiny
randomly initialised sentence encoder in Hugging Face layout.

`build_ndpi_corpus(root)` writes `root/pcap/NAME` and `root/result/NAME.out`: stand-ins for the nDPI captures the
tests name (same file names, the same kinds of traffic and the labels nDPI gives the real ones), each a few real-
shaped flows (TCP handshakes, a TLS ClientHello with its SNI, HTTP with a Host header, DNS questions, QUIC Initial
packets, WireGuard/OpenVPN/STUN-like UDP, BitTorrent, SIP, cleartext banners, bulk transfers, one-way
announcements, conversations quiet for minutes, a refused then reopened connection), IPv4 and IPv6 (also 6in4),
in classic pcap over Ethernet (PPP for dlt_ppp.pcap), pcapng where the real name says so. Some flows are left out
of the result file (unlabelled) or listed as nDPI's undetected ones (Unknown), as in the real corpus. The `.out`
files are in ndpiReader's per-flow line format (pclip_jax/data/labels.py parses them), with the packet counts each
way that the flows really have. Everything is derived from the capture's name through a seeded generator: two
builds are byte-identical.

`build_iot_corpus(root)` writes IoT Sentinel stand-ins: root/DEVICE/Setup-A-N-STA.pcap for five devices.

`build_text_encoder(root)` writes a one-layer BERT (width 384, MiniLM's: configs size `model.name_dim` by it) with a WordPiece vocabulary of the words the project's
texts use: `config.json`, `model.safetensors`, `tokenizer.json`, `vocab.txt`, `sentence_bert_config.json`, ...
(the layout of all-MiniLM-L6-v2, which pclip_jax/models/text_tower.py and pclip_jax/plumbing/model_files.py read).

What these cannot stand in for: anything about the real corpus (its counts, nDPI agreement on it, malformed real
captures). Tests of that take the `real_ndpi_dir` / `real_minilm_dir` fixtures and are skipped without ../shared.
"""
from __future__ import annotations

import hashlib
import ipaddress
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


def _ipv6(src: str, dst: str, proto: int, payload: bytes, hop: int, flow_label: int) -> bytes:
    return (struct.pack("!IHBB", (6 << 28) | flow_label, len(payload), proto, hop) + ipaddress.ip_address(src).packed
            + ipaddress.ip_address(dst).packed + payload)


def _link(ip: bytes, client_side: bool, linktype: int, vlan: int = 0) -> bytes:
    """The frame of an IP packet: Ethernet (802.1Q-tagged when vlan) or PPP (link type 9)."""
    v6 = ip[0] >> 4 == 6
    if linktype == 9:
        return b"\xff\x03" + (b"\x00\x57" if v6 else b"\x00\x21") + ip
    mac_c, mac_s = b"\x02\x00\x00\x00\x00\x01", b"\x02\x00\x00\x00\x00\x02"
    dst, src = (mac_s, mac_c) if client_side else (mac_c, mac_s)
    tag = struct.pack("!HH", 0x8100, vlan) if vlan else b""
    return dst + src + tag + (b"\x86\xdd" if v6 else b"\x08\x00") + ip


TCP_FLAGS = {"S": 0x02, "SA": 0x12, "A": 0x10, "PA": 0x18, "FA": 0x11, "R": 0x04, "RA": 0x14}


class _Conversation:
    """Packets of one flow between a client and a server endpoint, with TCP sequence numbers kept. IPv6 when the
    addresses are; `outer` (two IPv4 addresses) carries the packets in IPv4 (protocol 41, a 6in4 tunnel)."""

    def __init__(self, rng, proto: int, client: tuple, server: tuple, t0: float, vlan: int = 0, linktype: int = 1,
                 outer: tuple | None = None):
        self.rng, self.proto, self.client, self.server, self.t, self.vlan = rng, proto, client, server, t0, vlan
        self.linktype, self.outer, self.v6 = linktype, outer, ":" in client[0]
        self.seq = {True: int(rng.integers(1, 2**31)), False: int(rng.integers(1, 2**31))}
        self.ident = {True: int(rng.integers(0, 60000)), False: int(rng.integers(0, 60000))}
        self.label = {True: int(rng.integers(1, 1 << 20)), False: int(rng.integers(1, 1 << 20))}
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
        ttl = 64 if from_client else 52
        if self.v6:
            ip = _ipv6(sip, dip, self.proto, seg, ttl, self.label[from_client])
        else:
            ip = _ipv4(sip, dip, self.proto, seg, self.ident[from_client], ttl)
        if self.outer:
            a, b = self.outer if from_client else self.outer[::-1]
            ip = _ipv4(a, b, 41, ip, self.ident[from_client], ttl)
        frame = _link(ip, from_client, self.linktype, self.vlan)
        self.frames.append((int(round(self.t * 1e9)), len(frame), self.linktype, frame))
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


def _dns(c, rng, host, queries=(1, 2), **_):
    """Questions and answers on one socket: between queries[0] and queries[1] - 1 of them, the last one maybe
    unanswered when there are several (a DNS tunnel's steady stream: the first asks for `host`, the next ones for
    names under it)."""
    n = int(rng.integers(*queries))
    for q in range(n):
        ident = int(rng.integers(0, 65536))
        name = host if q == 0 else f"{_random(rng, 6).hex()}.{host}"
        c.send(True, _dns_query(name, ident), gap=0.2)
        if q < n - 1 or n == 1 or rng.random() < 0.5:
            c.send(False, _dns_query(name, ident, answer=True), gap=0.015)


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


def _sip(c, rng, host, **_):
    call = _random(rng, 8).hex()
    for request, answers in (("INVITE", ("100 Trying", "180 Ringing", "200 OK")), ("ACK", ()), ("BYE", ("200 OK",))):
        c.send(True, f"{request} sip:bob@{host} SIP/2.0\r\nCall-ID: {call}\r\nCSeq: 1 {request}\r\n\r\n".encode()
               + (b"v=0\r\no=- 0 0 IN IP4 0.0.0.0\r\nm=audio 40392 RTP/AVP 0\r\n" if request == "INVITE" else b""),
               gap=0.3)
        for a in answers:
            c.send(False, f"SIP/2.0 {a}\r\nCall-ID: {call}\r\nCSeq: 1 {request}\r\n\r\n".encode(), gap=0.05)


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


def _oneway(c, rng, host, rounds=3, size=48, period=1.0, prefix=b"BJNP\x01\x01", **_):
    """Announcements or probes nobody answers (mDNS questions, printer discovery, broadcasts)."""
    for i in range(rounds):
        body = _dns_query(host, 0) if host else prefix + struct.pack("!H", i) + _random(rng, size)
        c.send(True, body, gap=period if i else 0.001)


def _bursts(c, rng, host, bursts=12, pause=(150.0, 400.0), **_):
    """A UDP conversation quiet for minutes between bursts (gnutella's peers): the idle timeout splits it."""
    for b in range(bursts):
        if b:
            c.t += float(rng.uniform(*pause))
        for _ in range(int(rng.integers(1, 3))):
            c.send(True, b"GND\x02" + _random(rng, 20 + rng.integers(0, 60)), gap=0.05)
            c.send(False, b"GND\x02" + _random(rng, 20 + rng.integers(0, 200)), gap=0.03)


def _refused_then_open(c, rng, host, **_):
    """A connection refused with an RST, then the same ports again with a new SYN (rtsp.pcap's 52478 -> 8554)."""
    c.send(True, flags="S", gap=0.001)
    c.send(False, flags="RA", gap=0.002)
    c.t += 1.0
    c.handshake()
    for cseq, method in enumerate(("OPTIONS", "DESCRIBE", "SETUP"), 1):
        c.send(True, f"{method} rtsp://{host}/stream RTSP/1.0\r\nCSeq: {cseq}\r\n\r\n".encode())
        c.send(False, f"RTSP/1.0 200 OK\r\nCSeq: {cseq}\r\n\r\n".encode() + _random(rng, 200), gap=0.02)
    c.close()


def _keepalive(c, rng, host, seconds=40.0, period=2.0, **_):
    """A long quiet session kept open by a small exchange every couple of seconds (active timeouts cut it)."""
    c.handshake()
    end = c.t + seconds
    while c.t < end:
        c.send(True, b"GET_PARAMETER * RTSP/1.0\r\n" + _random(rng, 16), gap=period)
        c.send(False, b"RTSP/1.0 200 OK\r\n" + _random(rng, 12), gap=0.01)
    c.close()


KINDS = {  # kind: (writer, IP protocol, server port)
    "tls": (_tls, 6, 443), "http": (_http, 6, 80), "dns": (_dns, 17, 53), "quic": (_quic, 17, 443),
    "wireguard": (_tunnel, 17, 51820), "openvpn": (_tunnel, 17, 1194), "voice": (_voice, 17, 3478),
    "p2p_udp": (_p2p, 17, 6881), "p2p_tcp": (_p2p, 6, 6881), "pop3": (_banner, 6, 110), "smtp": (_banner, 6, 25),
    "ssh": (_banner, 6, 22), "ftp": (_banner, 6, 21), "ftp_data": (_bulk, 6, 20), "rdp": (_bulk, 6, 3389),
    "banner": (_banner, 6, 0), "sip": (_sip, 17, 5060), "mdns": (_oneway, 17, 5353), "oneway": (_oneway, 17, 0),
    "bursts": (_bursts, 17, 6346), "refused": (_refused_then_open, 6, 8554), "keepalive": (_keepalive, 6, 554),
}
KIND_ARGS = {
    "smtp": {"banner": b"220 mail.example.org ESMTP\r\n", "command": b"MAIL FROM:<a@example.org>\r\n"},
    "ssh": {"banner": b"SSH-2.0-OpenSSH_8.9\r\n", "command": b"SSH-2.0-OpenSSH_9.0\r\n", "down": 600},
    "ftp": {"banner": b"220 FTP server ready\r\n", "command": b"PASV\r\n", "down": 60},
    "openvpn": {"first": b"\x38", "size": 54},
}

# Flows of a stand-in capture: (kind, nDPI label, nDPI category, encrypted, server name, how many flows[, extras]).
# Extras: port (server port), client / server (addresses), client_port, v6 (IPv6 addresses), tunnel (IPv6 in
# IPv4, protocol 41), args (the kind's arguments), unlisted (no line in the result file: an unlabelled flow),
# undetected (listed under "Undetected flows:" as nDPI's Unknown).
_ENC, _CLEAR = "Encrypted", "ClearText"
CORPUS = {
    "signal.pcap": [("tls", "TLS.Signal", "Chat", _ENC, "chat.signal.org", 4), ("dns", "DNS.Signal", "Network",
                    _CLEAR, "chat.signal.org", 2)],
    "whatsapp_login_chat.pcap": [("tls", "WhatsApp", "Chat", _ENC, "g.whatsapp.net", 3),
                                 ("dns", "DNS.WhatsApp", "Network", _CLEAR, "g.whatsapp.net", 2)],
    "telegram.pcap": [("tls", "Telegram", "Chat", _ENC, "web.telegram.org", 6)],
    "KakaoTalk_chat.pcap": [("tls", "TLS.KakaoTalk", "Chat", _ENC, "talk.kakao.com", 3),
                            ("dns", "DNS.KakaoTalk", "Network", _CLEAR, "talk.kakao.com", 3)],
    "quic.pcap": [("quic", "QUIC.YouTube", "Media", _ENC, "", 8), ("dns", "DNS.Google", "Network", _CLEAR,
                  "www.youtube.com", 2)],
    "netflix.pcap": [("tls", "TLS.NetFlix", "Video", _ENC, "www.netflix.com", 3),
                     ("http", "HTTP", "Download", _CLEAR, "ipv4-c001.nflxvideo.net", 2),
                     ("dns", "DNS.NetFlix", "Network", _CLEAR, "www.netflix.com", 2)],
    "1kxun.pcap": [("http", "HTTP.1kxun", "Streaming", _CLEAR, "mangaweb.1kxun.mobi", 14),
                   ("dns", "DNS", "Network", _CLEAR, "1kxun.mobi", 6)],
    # Like the real zoom.pcap: over 20 flows, some VLAN-tagged (the media), some of 1-2 packets (DNS).
    "zoom.pcap": [("tls", "TLS.Zoom", "Video", _ENC, "zoom.us", 8), ("voice", "Zoom", "Video", _ENC, "", 6,
                  {"vlan": 20}), ("dns", "DNS.Zoom", "Network", _CLEAR, "zoom.us", 8)],
    "teams.pcap": [("tls", "TLS.Teams", "Collaborative", _ENC, "teams.microsoft.com", 4),
                   ("dns", "DNS.Teams", "Network", _CLEAR, "teams.microsoft.com", 2)],
    "skype.pcap": [("voice", "Skype_Teams", "VoIP", _ENC, "", 3), ("tls", "TLS.Skype_Teams", "VoIP", _ENC,
                   "api.skype.com", 1)],
    "whatsapp_login_call.pcap": [("voice", "STUN.WhatsAppCall", "VoIP", _CLEAR, "", 3),
                                 ("tls", "TLS", "Web", _ENC, "e1.whatsapp.net", 1)],
    "openvpn.pcap": [("openvpn", "OpenVPN", "VPN", _ENC, "", 8)],
    "wireguard.pcap": [("wireguard", "WireGuard", "VPN", _ENC, "", 8)],
    "tor.pcap": [("tls", "TLS.Tor", "VPN", _ENC, "www.fd5hcsl4pmsb.com", 3)],
    "bittorrent.pcap": [("p2p_udp", "BitTorrent", "Download", _CLEAR, "", 4),
                        ("p2p_tcp", "BitTorrent", "Download", _CLEAR, "", 4)],
    "ookla.pcap": [("http", "HTTP.Ookla", "Network", _CLEAR, "speedtest.ookla.com", 2),
                   ("tls", "TLS.Ookla", "Network", _ENC, "www.speedtest.net", 2)],
    "443-chrome.pcap": [("tls", "TLS", "Web", _ENC, "www.example.com", 8)],
    "443-firefox.pcap": [("tls", "TLS.ntop", "Network", _ENC, "www.ntop.org", 3)],
    "google_ssl.pcap": [("tls", "TLS.Google", "Web", _ENC, "www.google.com", 3)],
    "dnscrypt.pcap": [("tls", "DNSCrypt", "Network", _ENC, "2.dnscrypt-cert.example", 3)],
    "dns_long_domainname.pcap": [("dns", "DNS", "Network", _CLEAR,
                                  "a-very-long-label-of-many-words.subdomain.example.com", 10)],
    "dns-exf.pcap": [("dns", "DNS", "Network", _CLEAR, "tunnel.example.net", 100, {"args": {"queries": (1, 10)}})],
    "ssh.pcap": [("ssh", "SSH", "RemoteAccess", _ENC, "", 8)],
    "rdp.pcap": [("rdp", "RDP", "RemoteAccess", _CLEAR, "", 6)],
    "ftp.pcap": [("ftp", "FTP_CONTROL", "Download", _CLEAR, "", 1), ("ftp_data", "FTP_DATA", "Download", _CLEAR,
                 "", 6)],
    "pop3.pcap": [("pop3", "POP3", "Email", _CLEAR, "", 3)],
    "smtp.pcap": [("smtp", "SMTP", "Email", _CLEAR, "", 3)],
    "nintendo.pcap": [("tls", "Nintendo", "Game", _ENC, "nncs1.app.nintendowifi.net", 3),
                      ("dns", "DNS.Nintendo", "Network", _CLEAR, "conntest.nintendowifi.net", 2),
                      ("tls", "TLS", "Web", _ENC, "e0d67c509fb203858ebcb2fe3f88c2aa.baas.nintendo.com", 2)],
    "tls_verylong_certificate.pcap": [("tls", "TLS.Cybersec", "Cybersecurity", _ENC, "www.cybersec.example", 2)],
    # Captures of the data-set tests (two or more per class for Game, Database, Email, IoT/Industrial and Chat).
    "wow.pcap": [("banner", "WorldOfWarcraft", "Game", _CLEAR, "", 3, {"port": 3724, "args": {
                 "banner": b"\x00\x03\x00\x00WoW", "command": b"\x00\x25\x00WoW\x00\x03\x03\x05", "down": 120}}),
                 ("http", "HTTP.WorldOfWarcraft", "Game", _CLEAR, "launcher.worldofwarcraft.com", 2)],
    "steam.pcapng": [("tls", "TLS.Steam", "Game", _ENC, "store.steampowered.com", 3),
                     ("http", "HTTP.Steam", "Game", _CLEAR, "media.steampowered.com", 1)],
    "crynet.pcap": [("openvpn", "CryNetwork", "Game", _ENC, "", 4, {"port": 28343, "args": {"first": b"\xc7",
                    "size": 40, "rounds": 20, "period": 0.03}})],
    "pgsql.pcap": [("banner", "PostgreSQL", "Database", _CLEAR, "", 4, {"port": 5432, "args": {
                   "banner": b"R\x00\x00\x00\x08\x00\x00\x00\x00", "command": b"Q\x00\x00\x00\x1aSELECT * FROM t;\x00",
                   "down": 400}})],
    "mongodb.pcap": [("banner", "MongoDB", "Database", _CLEAR, "", 4, {"port": 27017, "args": {
                     "banner": b"\x3a\x00\x00\x00\x01\x00\x00\x00", "command": b"\x3f\x00\x00\x00\xdd\x07\x00\x00find",
                     "down": 500}})],
    "imaps.pcap": [("tls", "IMAPS", "Email", _ENC, "imap.example.org", 3, {"port": 993})],
    "iec60780-5-104.pcap": [("banner", "IEC60870", "IoT-Scada", _CLEAR, "", 4, {"port": 2404, "args": {
                            "banner": b"\x68\x04\x0b\x00\x00\x00", "command": b"\x68\x04\x43\x00\x00\x00",
                            "rounds": 6, "down": 24}})],
    "hislip.pcap": [("banner", "HiSLIP", "IoT-Scada", _CLEAR, "", 4, {"port": 4880, "args": {
                    "banner": b"HS\x01\x00\x01\x00", "command": b"HS\x06\x00*IDN?\n", "down": 40}})],
    "threema.pcap": [("banner", "Threema", "Chat", _ENC, "", 4, {"port": 5222, "args": {
                     "banner": bytes(range(16, 96)), "command": bytes(range(96, 176)), "rounds": 5, "down": 180}})],
    "jabber.pcap": [("banner", "Jabber", "Web", _CLEAR, "", 4, {"port": 5222, "args": {
                    "banner": b"<?xml version='1.0'?><stream:stream xmlns='jabber:client' from='example.org'>",
                    "command": b"<message to='bob@example.org'><body>hello</body></message>", "down": 150}}),
                    ("dns", "DNS", "Network", _CLEAR, "jabber.example.org", 1)],
    # Captures of the capture-reading, ingest and flow tests: their link types, IP versions and kinds of flows.
    "tls_certificate_too_long.pcap": [("tls", "TLS", "Web", _ENC, "www.example.net", 8),
                                      ("tls", "TLS.Google", "Web", _ENC, "www.google.com", 3, {"v6": True}),
                                      ("dns", "DNS", "Network", _CLEAR, "www.example.net", 4),
                                      ("mdns", "MDNS", "Network", _CLEAR, "printer.local", 1,
                                       {"args": {"rounds": 1}})],
    "quic_interop_V.pcapng": [("quic", "QUIC", "Web", _ENC, "", 6), ("quic", "QUIC", "Web", _ENC, "", 2,
                              {"v6": True})],
    "quic-33.pcapng": [("quic", "QUIC.Google", "Web", _ENC, "", 3)],
    "nats.pcap": [("banner", "Nats", "RPC", _ENC, "", 2, {"port": 4222, "args": {
                  "banner": b'INFO {"server_id":"x","version":"2.1"}\r\n', "command": b"PUB foo 5\r\nhello\r\n"}})],
    "dlt_ppp.pcap": [("quic", "QUIC", "Web", _ENC, "", 2)],
    "6in4tunnel.pcap": [("http", "HTTP", "Web", _CLEAR, "ipv6.example.org", 2, {"v6": True, "tunnel": True}),
                        ("tls", "TLS.Facebook", "SocialNetwork", _ENC, "www.facebook.com", 2,
                         {"v6": True, "tunnel": True})],
    "http_ipv6.pcap": [("http", "HTTP.Google", "Web", _CLEAR, "ipv6.google.com", 4, {"v6": True})],
    "malware.pcap": [("tls", "TLS", "Malware", _ENC, "update.example.biz", 3),
                     ("http", "HTTP", "Malware", _CLEAR, "cdn.example.biz", 2)],
    "bjnp.pcap": [("oneway", "BJNP", "System", _CLEAR, "", 6, {"port": 8612})],
    "anyconnect-vpn.pcap": [("tls", "TLS.CiscoVPN", "VPN", _ENC, "vpn.example.com", 3),
                            ("openvpn", "CiscoVPN", "VPN", _ENC, "", 2, {"port": 443})],
    "wechat.pcap": [("tls", "TLS.WeChat", "Chat", _ENC, "short.weixin.qq.com", 4),
                    ("http", "HTTP.WeChat", "Chat", _CLEAR, "szextshort.weixin.qq.com", 2),
                    ("tls", "TLS", "Web", _ENC, "cdn.example.cn", 2, {"unlisted": True})],
    "wa_voice.pcap": [("voice", "STUN.WhatsAppCall", "VoIP", _CLEAR, "", 2),
                      ("tls", "WhatsApp", "Chat", _ENC, "g.whatsapp.net", 2, {"port": 5222}),
                      ("mdns", "MDNS", "Network", _CLEAR, "iphone.local", 1)],
    "sip.pcap": [("sip", "SIP", "VoIP", _CLEAR, "sip.example.org", 2),
                 ("voice", "RTP", "Media", _CLEAR, "", 1, {"port": 40392})],
    "skype-conference-call.pcap": [("voice", "STUN.Skype_TeamsCall", "VoIP", _CLEAR, "", 6)],
    "googledns_android10.pcap": [("tls", "TLS.DoH_DoT", "Network", _ENC, "dns.google", 4, {"port": 853}),
                                 ("dns", "DNS.Google", "Network", _CLEAR, "dns.google", 8)],
    "reddit.pcap": [("tls", "TLS.Reddit", "SocialNetwork", _ENC, "www.reddit.com", 4)],
    # Like the real one: peers quiet for minutes between bursts, most of them undetected by nDPI.
    "gnutella.pcap": [("bursts", "Gnutella", "Download", _CLEAR, "", 5),
                      ("bursts", "Unknown", "", _CLEAR, "", 8, {"port": 59596, "undetected": True})],
    # UDP broadcasts about once a minute for half an hour, as the real one.
    "tplink_shp.pcap": [("oneway", "TPLINK_SHP", "IoT-Scada", _CLEAR, "", 2, {"port": 9999, "server": "255.255.255.255",
                        "args": {"prefix": b"\xd0\xf2\x81\xf8", "rounds": 32, "period": 60.0}})],
    "rtsp.pcap": [("refused", "RTSP", "Media", _CLEAR, "10.2.2.2", 1, {"client": "10.1.1.10", "client_port": 52478,
                   "server": "10.2.2.2"}), ("keepalive", "RTSP", "Media", _CLEAR, "", 2)],
}
LINKTYPES = {"dlt_ppp.pcap": 9}  # else Ethernet


def _rng(name: str) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little"))


def _endpoint(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def _ndpi_line(i: int, proto: int, client, server, label, category, enc, conv, host) -> str:
    pname = {6: "TCP", 17: "UDP"}[proto]
    vlan = f"[VLAN: {conv.vlan}]" if conv.vlan else ""
    arrow = "<->" if conv.count[False] else "->"
    cat = f"[cat: {category}/0]" if category else ""
    text = (f"\t{i}\t{pname} {_endpoint(*client)} {arrow} {_endpoint(*server)} {vlan}[proto: 0.0/{label}]"
            f"[IP: 0/Unknown][{enc}][Confidence: DPI]{cat}"
            f"[{conv.count[True]} pkts/{conv.bytes[True]} bytes {arrow} {conv.count[False]} pkts/"
            f"{conv.bytes[False]} bytes]")
    return text + (f"[Hostname/SNI: {host}]" if host else "")


def build_capture(name: str, flows) -> tuple[list, list[str], list[str]]:
    """(frames ordered by time, ndpiReader-format lines, lines of its undetected flows) of one stand-in capture."""
    rng = _rng(name)
    net = int(rng.integers(1, 250))
    linktype = LINKTYPES.get(name, 1)
    frames, lines, undetected = [], [], []
    t0 = 1_600_000_000.0 + float(rng.integers(0, 10**6))
    n = 0
    for kind, label, category, enc, host, count, *more in flows:
        extra = more[0] if more else {}
        writer, proto, port = KINDS[kind]
        for j in range(count):
            n += 1
            if extra.get("v6"):
                client = (f"2001:db8:{net:x}::{10 + n % 3:x}", int(rng.integers(32768, 61000)))
                server = (f"2a00:{int(rng.integers(0x1000, 0xffff)):x}:{int(rng.integers(1, 0xffff)):x}::"
                          f"{int(rng.integers(1, 0xffff)):x}", extra.get("port", port))
            else:
                client = (extra.get("client", f"192.168.{net}.{10 + n % 3}"),
                          extra.get("client_port", int(rng.integers(32768, 61000))))
                server = (extra.get("server", f"{int(rng.integers(11, 220))}.{int(rng.integers(0, 255))}."
                                              f"{int(rng.integers(0, 255))}.{int(rng.integers(1, 254))}"),
                          extra.get("port", port) or int(rng.integers(1024, 32768)))
            outer = (f"192.168.{net}.2", f"216.66.{int(rng.integers(0, 255))}.{int(rng.integers(1, 254))}") \
                if extra.get("tunnel") else None
            conv = _Conversation(rng, proto, client, server, t0 + float(rng.uniform(0, 20)),
                                 vlan=extra.get("vlan", 0), linktype=linktype, outer=outer)
            writer(conv, rng, host, **{**KIND_ARGS.get(kind, {}), **extra.get("args", {})})
            frames += conv.frames
            line = _ndpi_line(n, proto, client, server, label, category, enc, conv, host)
            if extra.get("undetected"):
                undetected.append(line)
            elif not extra.get("unlisted"):
                lines.append(line)
    frames.sort(key=lambda f: f[0])
    return frames, lines, undetected


def _write_pcapng(path: pathlib.Path, frames, linktype: int) -> None:
    import dpkt

    with open(path, "wb") as fh:
        w = dpkt.pcapng.Writer(fh, snaplen=65535, linktype=linktype)
        for t, _, _, f in frames:
            us = t // 1000
            w.writepkt(dpkt.pcapng.EnhancedPacketBlockLE(iface_id=0, ts_high=us >> 32, ts_low=us & 0xFFFFFFFF,
                                                         pkt_data=f, pkt_len=len(f)))


def build_ndpi_corpus(root: pathlib.Path, names=None) -> pathlib.Path:
    """Writes the stand-in captures (all of CORPUS, or `names`) and their nDPI results under root; returns root."""
    root = pathlib.Path(root)
    (root / "pcap").mkdir(parents=True, exist_ok=True)
    (root / "result").mkdir(parents=True, exist_ok=True)
    for name in (names or CORPUS):
        frames, lines, undetected = build_capture(name, CORPUS[name])
        linktype = LINKTYPES.get(name, 1)
        if name.endswith(".pcapng"):
            _write_pcapng(root / "pcap" / name, frames, linktype)
        else:
            write_pcap(root / "pcap" / name, frames, linktype=linktype)
        text = "Stand-in for nDPI's result file, written by tests/synthetic_data.py\n\n" + "\n".join(lines) + "\n\n"
        if undetected:
            text += "\nUndetected flows:\n" + "\n".join(undetected) + "\n\n"
        (root / "result" / f"{name}.out").write_text(text)
    return root


# IoT Sentinel stand-ins: one folder per device of setup captures (Setup-A-N-STA.pcap), the device's own mix of
# DHCP, DNS, NTP, discovery and cloud traffic. Folder names are the labels, so no result files.
_DHCP = {"port": 67, "server": "255.255.255.255", "client_port": 68, "args": {"prefix": b"\x01\x01\x06\x00",
                                                                                 "rounds": 2}}
IOT_DEVICES = {
    "HueBridge": [("oneway", "", "", "", "", 1, _DHCP),
                  ("dns", "", "", "", "bridge.meethue.com", 3), ("http", "", "", "", "www.meethue.com", 4),
                  ("oneway", "", "", "", "", 2, {"port": 1900, "server": "239.255.255.250", "args": {
                      "prefix": b"NOTIFY * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\n", "rounds": 6, "period": 2.0}})],
    "D-LinkSiren": [("oneway", "", "", "", "", 1, _DHCP),
                    ("dns", "", "", "", "signal.mydlink.com", 2), ("tls", "", "", "", "mp-us-dcdda.mydlink.com", 2),
                    ("mdns", "", "", "", "dcs-siren.local", 1, {"server": "224.0.0.251", "client_port": 5353})],
    "EdimaxPlug1101W": [("dns", "", "", "", "www.myedimax.com", 2),
                        ("openvpn", "", "", "", "", 3, {"port": 8765, "args": {"first": b"\x0e", "size": 60,
                                                                               "rounds": 3, "period": 1.0}})],
    "Aria": [("oneway", "", "", "", "", 1, _DHCP),
             ("dns", "", "", "", "www.fitbit.com", 2), ("http", "", "", "", "client.fitbit.com", 2,
                                                         {"args": {"rounds": 1, "down": 300}})],
    "TP-LinkPlugHS110": [("dns", "", "", "", "devs.tplinkcloud.com", 2),
                         ("banner", "", "", "", "", 4, {"port": 50443, "args": {"banner": b"\x00\x00\x00\x2a",
                                                                                 "command": b"\xd0\xf2\x81\xf8",
                                                                                 "rounds": 4, "down": 80}}),
                         ("oneway", "", "", "", "", 1, {"port": 123, "args": {"prefix": b"\xe3\x00\x06\xec",
                                                                         "rounds": 2, "period": 5.0}})],
}


def build_iot_corpus(root: pathlib.Path, setups: int = 8) -> pathlib.Path:
    """Writes root/DEVICE/Setup-A-N-STA.pcap (N = 1..setups) for every device of IOT_DEVICES; returns root."""
    root = pathlib.Path(root)
    for device, flows in IOT_DEVICES.items():
        (root / device).mkdir(parents=True, exist_ok=True)
        for i in range(1, setups + 1):
            name = f"Setup-A-{i}-STA.pcap"
            frames, _, _ = build_capture(f"{device}/{name}", flows)
            write_pcap(root / device / name, frames, linktype=1)
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
        if key == "embeddings.word_embeddings.weight":
            value = value * 50  # std 1: a token's identity, not the shared position and type rows, makes its vector
        elif key == "embeddings.token_type_embeddings.weight":
            value = np.zeros_like(value)  # one row shared by every token would make every text's mean the same
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
