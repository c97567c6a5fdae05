"""Benchmarks of PacketCLIP, kept out of the core library: the peer models and their suite (`peers`) and the
parameter/FLOP counts of every stage and peer (`costs`). Scripts in `benchmarks/` call them. May import anything
in `pclip_jax`; nothing in `pclip_jax` imports this package. This is also where the README's generated blocks are
written (`peers.suite.replace_readme_block`): the library never edits the README.
"""
