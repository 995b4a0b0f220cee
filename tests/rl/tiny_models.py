"""A tiny dense GQA model config shared by the GRPO-step tests that compile it (no MoE, so
nothing but the code under test depends on padding or layout)."""

from r1jax.models import config as model_config_lib


def dense(vocab_size: int, num_layers: int, max_positions: int = 256):
    """d=32, 2 query heads over 1 K/V head of 16, SwiGLU width 64."""
    return model_config_lib.ModelConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=num_layers,
        intermediate_size=64, attention_type="gqa", num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, n_routed_experts=0, n_shared_experts=0,
        max_position_embeddings=max_positions, original_max_position_embeddings=max_positions)
