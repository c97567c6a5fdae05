"""The nDPI corpus download: the archive layout is unpacked into pcap/ + result/, offline fails fast and clearly."""
import tarfile

import pytest

from pclip_jax.data import download
from pclip_jax.data.ingest import IngestConfig, ingest

NAMES = ["443-chrome.pcap", "dns_long_domainname.pcap"]


def test_archive_members_land_in_the_flat_layout(ndpi_dir, tmp_path):
    archive = tmp_path / "ndpi.tar.gz"
    top = f"nDPI-{download.NDPI_COMMIT}/{download.NDPI_SUBDIR}"
    with tarfile.open(archive, "w:gz") as tar:
        for name in NAMES:
            tar.add(ndpi_dir / "pcap" / name, arcname=f"{top}/pcap/{name}")
            tar.add(ndpi_dir / "result" / f"{name}.out", arcname=f"{top}/result/{name}.out")
        tar.add(ndpi_dir / "result" / f"{NAMES[0]}.out", arcname=f"nDPI-{download.NDPI_COMMIT}/README.md")
    dest = download.download_ndpi(tmp_path / "corpus", url=archive.as_uri())
    assert sorted(p.name for p in (dest / "pcap").iterdir()) == sorted(NAMES)
    assert sorted(p.name for p in (dest / "result").iterdir()) == sorted(f"{n}.out" for n in NAMES)
    assert (dest / "pcap" / NAMES[0]).read_bytes() == (ndpi_dir / "pcap" / NAMES[0]).read_bytes()
    assert len(ingest([dest / "pcap"], IngestConfig(), progress=False)) > 0
    # A second call uses the unpacked copy.
    archive.unlink()
    assert download.download_ndpi(tmp_path / "corpus", url=archive.as_uri()) == dest


def test_unreachable_source_names_the_alternative(tmp_path):
    with pytest.raises(ConnectionError, match="manual_dir"):
        download.download_ndpi(tmp_path / "x", url=(tmp_path / "missing.tar.gz").as_uri())
