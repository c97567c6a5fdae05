"""Paths in the settings are made absolute for the workdir's config.json: absolute paths are kept as the user wrote
them, also through a symbolic link (../shared may be one: the stored path must be the one given, not its target),
relative ones are anchored at the base directory."""
import os

from configs import test as test_config
from pclip_jax.plumbing.settings import from_config, with_absolute_paths


def test_absolute_paths_through_a_symlink_are_kept_and_relative_ones_anchored(tmp_path):
    real = tmp_path / "real" / "data" / "ndpi"
    (real / "pcap").mkdir(parents=True)
    (real / "result").mkdir()
    link = tmp_path / "shared"
    link.symlink_to(tmp_path / "real")
    via_link = link / "data" / "ndpi"
    config = test_config.get_config()
    config.unlock()
    config.data.inputs = (f"{via_link / 'pcap'}=ndpi:{via_link / 'result'}", "captures")
    config.data.labels = "ndpi:shared/data/ndpi/result"
    s = with_absolute_paths(from_config(config), base=tmp_path)
    assert s.data.inputs[0] == f"{via_link / 'pcap'}=ndpi:{via_link / 'result'}"  # not resolved to real/
    assert s.data.inputs[1] == str(tmp_path / "captures")
    kind, _, target = s.data.labels.partition(":")
    assert kind == "ndpi" and os.path.isabs(target) and os.path.samefile(target, real / "result")
    # Made absolute once, the same again (a workdir's stored settings read back).
    assert with_absolute_paths(s, base=tmp_path / "elsewhere") == s
