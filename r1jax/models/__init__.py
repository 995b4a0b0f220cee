"""DeepSeek-V3 / V2 (MLA + DeepSeekMoE) and dense Qwen2 / Llama decoders in Flax linen.

DeepSeek-V3 (arXiv:2412.19437) Sec. 2.1-2.2: MLA, DeepSeekMoE, MTP; see docs/architecture.md.
"""

from r1jax.models.config import ModelConfig

__all__ = ["ModelConfig", "Transformer"]


def __getattr__(name):
    # Lazy, so that `r1jax.models.config` imports without pulling in the layers.
    if name == "Transformer":
        from r1jax.models.transformer import Transformer

        return Transformer
    raise AttributeError(name)
