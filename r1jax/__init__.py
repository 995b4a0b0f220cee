"""r1jax: the DeepSeek-R1 training recipe (arXiv:2501.12948) in JAX/Flax."""

__version__ = "0.1.0"
