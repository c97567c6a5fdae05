"""Fetching the nDPI regression corpus when no local copy is given (no TensorFlow, no TFDS needed).

The archive of the nDPI source tree at a pinned commit is streamed once and only its
`tests/cfgs/default/{pcap,result}` members are unpacked, into the flat `pcap/` + `result/` layout that the rest of
the project reads. Offline, this fails within seconds with a message that names the alternative (a local copy).
"""
from __future__ import annotations

import pathlib
import socket
import sys
import tarfile
import urllib.parse
import urllib.request

NDPI_COMMIT = "3b1286ab03b0c9223ac208a01868d8c1f6c0ae00"
NDPI_ARCHIVE_URL = f"https://github.com/ntop/nDPI/archive/{NDPI_COMMIT}.tar.gz"
NDPI_SUBDIR = "tests/cfgs/default"


def reachable(url: str, timeout: float = 5.0) -> bool:
    """Whether the host of `url` accepts a connection: fail fast offline instead of minutes of retries."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        return pathlib.Path(parsed.path).is_file()
    host = parsed.hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def default_cache_dir() -> pathlib.Path:
    return pathlib.Path.home() / ".cache" / "pclip_jax"


def download_ndpi(dest: pathlib.Path | None = None, url: str = NDPI_ARCHIVE_URL) -> pathlib.Path:
    """The nDPI corpus as `dest/pcap` + `dest/result` (downloaded once; later calls return the folder)."""
    dest = pathlib.Path(dest or default_cache_dir() / f"ndpi-{NDPI_COMMIT[:12]}")
    if (dest / "pcap").is_dir() and (dest / "result").is_dir() and (dest / ".complete").is_file():
        return dest
    if not reachable(url):
        raise ConnectionError(f"cannot reach {urllib.parse.urlparse(url).hostname} to download the nDPI corpus "
                              f"({url}); offline, pass a local copy: --config.data.manual_dir=DIR with pcap/ and "
                              f"result/ (e.g. ../shared/data/ndpi) or an unpacked nDPI source tree")
    print(f"[data] downloading {url} → {dest}", file=sys.stderr)
    (dest / "pcap").mkdir(parents=True, exist_ok=True)
    (dest / "result").mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as response, tarfile.open(fileobj=response, mode="r|gz") as tar:
        for member in tar:
            parts = pathlib.PurePosixPath(member.name).parts
            # nDPI-<commit>/tests/cfgs/default/{pcap,result}/NAME
            if len(parts) != 6 or "/".join(parts[1:4]) != NDPI_SUBDIR or parts[4] not in ("pcap", "result"):
                continue
            if not member.isfile():
                continue
            source = tar.extractfile(member)
            (dest / parts[4] / parts[5]).write_bytes(source.read())
    (dest / ".complete").write_text(url + "\n")
    return dest
