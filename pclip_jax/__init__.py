"""PacketCLIP in JAX/Flax."""
__version__ = "0.2.0"
