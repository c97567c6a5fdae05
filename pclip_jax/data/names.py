"""Cleartext server names in a flow's first payloads: TLS/DTLS SNI, HTTP Host, DNS/mDNS/LLMNR question names.

These names are what an observer of encrypted traffic still sees in the clear (until Encrypted Client Hello),
and they describe the *service*, not the capture host, so they are a feature, not a shortcut: a model can only
profit from a name across captures when the same service appears in both. They are kept in the flow table's
``server_name`` column and can be switched off as model input (``data.use_names``, docs/masking.md).

Each parser takes the transport payload of one packet (possibly truncated by the capture's snap length) and
returns the name in lower case, or "" when the packet is not of that kind or the name is not complete.
``_capture_c.server_names`` (compiled, used by the flow tracker where it was built) follows these step for step;
tests/test_names.py checks both on every packet of the captures in ../shared and on mutated payloads.
"""
from __future__ import annotations

import re

_HOST_CHARS = re.compile(rb"^[A-Za-z0-9._-]{1,253}$")
_IPV4_LITERAL = re.compile(rb"^[0-9.]+$")  # an address, not a name: a shortcut (docs/masking.md), dropped
_HTTP_METHODS = (b"GET ", b"POST ", b"HEAD ", b"PUT ", b"OPTIONS ", b"CONNECT ", b"DELETE ", b"PATCH ",
                 b"NOTIFY ", b"M-SEARCH ", b"SUBSCRIBE ")
_HOST_HEADER = re.compile(rb"\r\nhost:[ \t]*([^\r\n:]{1,253})", re.IGNORECASE)
# First 4 bytes of the request methods above as big-endian words (the flow tracker's vectorised pre-filter: every
# request http_host can read starts with one of them; SSH banners, SMTP/FTP/IRC commands do not).
HTTP_PREFIX_WORDS = sorted(set(int.from_bytes(m[:4], "big") for m in _HTTP_METHODS))


def _clean(name: bytes) -> str:
    name = name.strip().rstrip(b".")
    if not _HOST_CHARS.fullmatch(name) or _IPV4_LITERAL.fullmatch(name):  # fullmatch: no trailing newline either
        return ""
    return name.decode("ascii").lower()


def tls_server_name(p: bytes) -> str:
    """SNI of a TLS ClientHello (record type 22, handshake type 1), or of a DTLS one (record version 0xfeXX)."""
    if len(p) < 48 or p[0] != 0x16:
        return ""
    if p[1] == 0x03:  # TLS: 5-byte record header, 4-byte handshake header
        if p[5] != 0x01:
            return ""
        i = 9 + 2 + 32  # client version, random
        dtls = False
    elif p[1] == 0xFE:  # DTLS: 13-byte record header, 12-byte handshake header
        if len(p) < 60 or p[13] != 0x01:
            return ""
        i = 25 + 2 + 32
        dtls = True
    else:
        return ""
    n = len(p)
    try:
        i += 1 + p[i]  # session id
        if dtls:
            i += 1 + p[i]  # cookie
        i += 2 + int.from_bytes(p[i:i + 2], "big")  # cipher suites
        i += 1 + p[i]  # compression methods
        end = min(n, i + 2 + int.from_bytes(p[i:i + 2], "big"))
        i += 2
        while i + 4 <= end:
            etype = int.from_bytes(p[i:i + 2], "big")
            elen = int.from_bytes(p[i + 2:i + 4], "big")
            if etype == 0:  # server_name: list length(2), name type(1), name length(2), name
                j = i + 4 + 2
                if j + 3 <= n and p[j] == 0:
                    ln = int.from_bytes(p[j + 1:j + 3], "big")
                    if j + 3 + ln <= n:
                        return _clean(p[j + 3:j + 3 + ln])
                return ""
            i += 4 + elen
    except IndexError:
        return ""
    return ""


def http_host(p: bytes) -> str:
    """Host header of an HTTP/1.x (or SSDP) request."""
    if not p.startswith(_HTTP_METHODS):
        return ""
    m = _HOST_HEADER.search(p, 0, 2048)
    return _clean(m.group(1)) if m else ""


def dns_question(p: bytes) -> str:
    """First question name of a DNS-format message (DNS, mDNS, LLMNR), query or response, when well formed."""
    if len(p) < 17:
        return ""
    if (p[2] >> 3) & 0x0F != 0 or int.from_bytes(p[4:6], "big") < 1:  # opcode QUERY, at least one question
        return ""
    labels, i = [], 12
    while True:
        if i >= len(p):
            return ""
        ln = p[i]
        if ln == 0:
            break
        if ln > 63 or i + 1 + ln > len(p):
            return ""
        labels.append(p[i + 1:i + 1 + ln])
        i += 1 + ln
    if not labels or i + 5 > len(p):
        return ""
    qclass = int.from_bytes(p[i + 3:i + 5], "big") & 0x7FFF  # top bit: mDNS unicast-response flag
    if qclass not in (1, 255):
        return ""
    if len(labels[0]) == 32 and _NETBIOS.match(labels[0]):
        labels[0] = _netbios_decode(labels[0])
    return _clean(b".".join(labels))


_NETBIOS = re.compile(rb"^[A-Pa-p]{32}$")


def _netbios_decode(label: bytes) -> bytes:
    """NetBIOS first-level encoding (RFC 1001: each byte as two letters 'A' + nibble), padding and suffix dropped;
    '*' (the wildcard name) stays undecodable and is returned as "" by the caller's clean-up."""
    raw = bytes(((a - 65) << 4) | (b - 65) for a, b in zip(label.upper()[0::2], label.upper()[1::2]))
    return raw[:15].rstrip(b" \x00")


def server_name(payload: bytes, proto: int) -> str:
    """The name a packet's transport payload announces, or "" (``proto``: IP protocol number)."""
    if not payload:
        return ""
    if proto == 6:
        if payload[0] == 0x16:
            return tls_server_name(payload)
        return http_host(payload)
    if proto == 17:
        if payload[0] == 0x16:
            return tls_server_name(payload)
        return dns_question(payload) or http_host(payload)
    return ""


def name_words(name: str) -> str:
    """A server name as words for a text tokenizer: 'r3---sn-4g5e.googlevideo.com' -> 'r3 sn 4g5e googlevideo com'."""
    return " ".join(w for w in re.split(r"[.\-_]+", name) if w)
