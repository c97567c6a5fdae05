"""`python -m pclip_jax.kg.generate`: draft a knowledge graph for a mission with an LLM.

The command users call; the work is `pclip_jax.graph.generate` (this module only keeps the path).
"""
import sys

from pclip_jax.graph.generate import main

if __name__ == "__main__":
    sys.exit(main())
