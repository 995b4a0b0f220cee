"""Named model presets, as ConfigDicts (overridable from the command line).

The numbers of the public presets are those of the models' HF `config.json` files.
`configs/model.py` exposes them to `--config=configs/model.py:<name>`.
DeepSeek-V3's numbers are the hyper-parameters of its report (arXiv:2412.19437, Sec. 4.2).
"""

from __future__ import annotations

import ml_collections

from r1jax import config_utils
from r1jax.models import config as config_lib

#: The public models' precision (`config.PRECISION_POLICIES["accelerator"]`): float32 master
#: weights and Adam moments, bf16 compute, float32 accumulation. The toy presets keep the
#: float32 default (they run on the CPU, where bf16 buys nothing).
_ACCELERATOR = config_lib.precision("accelerator")


def _preset(**overrides) -> ml_collections.ConfigDict:
    """Every ModelConfig field, typed (so a None field such as `q_lora_rank` stays
    overridable on the command line), with `overrides` applied and validated."""
    values = config_lib.ModelConfig().to_dict()
    values.update(overrides)
    config_lib.ModelConfig(**values)  # Validate eagerly: a bad preset fails at import.
    return config_utils.from_dataclass(config_lib.ModelConfig, **values)


def tiny():
    """A few million parameters: MLA, 1 dense + 3 MoE layers, 8 routed experts top-2 + 1 shared."""
    return _preset(
        vocab_size=1024, hidden_size=128, num_hidden_layers=4, intermediate_size=384,
        num_attention_heads=4, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=32,
        qk_rope_head_dim=16, v_head_dim=32, n_routed_experts=8, n_shared_experts=1,
        num_experts_per_tok=2, moe_intermediate_size=128, n_group=2, topk_group=2,
        first_k_dense_replace=1, max_position_embeddings=512,
        original_max_position_embeddings=512)


def small_50m():
    """About 50M parameters (MoE + MLA): the mid-size benchmark preset."""
    return _preset(
        vocab_size=8192, hidden_size=512, num_hidden_layers=6, intermediate_size=1536,
        num_attention_heads=8, q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64,
        qk_rope_head_dim=32, v_head_dim=64, n_routed_experts=12, n_shared_experts=1,
        num_experts_per_tok=2, moe_intermediate_size=384, n_group=1, topk_group=1,
        first_k_dense_replace=1, max_position_embeddings=2048,
        original_max_position_embeddings=2048)


def deepseek_v3_671b():
    """DeepSeek-V3 (arXiv:2412.19437): 671B total, 37B activated per token, MTP depth 1."""
    return _preset(
        vocab_size=129280, hidden_size=7168, num_hidden_layers=61, intermediate_size=18432,
        num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256, n_shared_experts=1,
        num_experts_per_tok=8, moe_intermediate_size=2048, n_group=8, topk_group=4,
        routed_scaling_factor=2.5, norm_topk_prob=True, scoring_func="sigmoid",
        first_k_dense_replace=3, rope_theta=10000.0, rope_type="yarn", rope_factor=40.0,
        original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0, mscale=1.0,
        mscale_all_dim=1.0, max_position_embeddings=163840, num_nextn_predict_layers=1,
        rms_norm_eps=1e-6, **_ACCELERATOR)


def deepseek_v2_lite():
    """DeepSeek-V2-Lite: 15.7B total, 2.4B activated; no query compression, softmax routing."""
    return _preset(
        vocab_size=102400, hidden_size=2048, num_hidden_layers=27, intermediate_size=10944,
        num_attention_heads=16, q_lora_rank=None, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=64, n_shared_experts=2,
        num_experts_per_tok=6, moe_intermediate_size=1408, n_group=1, topk_group=1,
        routed_scaling_factor=1.0, norm_topk_prob=False, scoring_func="softmax",
        first_k_dense_replace=1, aux_loss_alpha=0.001, rope_type="yarn", rope_factor=40.0,
        original_max_position_embeddings=4096, beta_fast=32.0, beta_slow=1.0, mscale=0.707,
        mscale_all_dim=0.707, max_position_embeddings=163840, **_ACCELERATOR)


def _dense(**overrides):
    return _preset(attention_type="gqa", n_routed_experts=0, n_shared_experts=0,
                   rope_interleave=False, q_lora_rank=None, **overrides)


def qwen2_5_0_5b():
    return _dense(vocab_size=151936, hidden_size=896, num_hidden_layers=24,
                  intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                  head_dim=64, attention_bias=True, tie_word_embeddings=True,
                  rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  **_ACCELERATOR)


def qwen2_5_3b():
    return _dense(vocab_size=151936, hidden_size=2048, num_hidden_layers=36,
                  intermediate_size=11008, num_attention_heads=16, num_key_value_heads=2,
                  head_dim=128, attention_bias=True, tie_word_embeddings=True,
                  rope_theta=1000000.0, max_position_embeddings=32768, rms_norm_eps=1e-6,
                  **_ACCELERATOR)


def llama3_2_1b():
    return _dense(vocab_size=128256, hidden_size=2048, num_hidden_layers=16,
                  intermediate_size=8192, num_attention_heads=32, num_key_value_heads=8,
                  head_dim=64, tie_word_embeddings=True, rope_theta=500000.0,
                  rope_type="llama3", rope_factor=32.0, low_freq_factor=1.0,
                  high_freq_factor=4.0, original_max_position_embeddings=8192,
                  max_position_embeddings=131072, rms_norm_eps=1e-5, **_ACCELERATOR)


PRESETS = {
    "tiny": tiny,
    "small_50m": small_50m,
    "deepseek_v3_671b": deepseek_v3_671b,
    "deepseek_v2_lite": deepseek_v2_lite,
    "qwen2_5_0_5b": qwen2_5_0_5b,
    "qwen2_5_3b": qwen2_5_3b,
    "llama3_2_1b": llama3_2_1b,
}


def get(name: str) -> ml_collections.ConfigDict:
    """Returns the named preset; an unknown name lists the known ones."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]()


# ---------------------------------------------------------------------------------------------
# The preset table of docs/architecture.md (python -m r1jax.models.presets --markdown)
# ---------------------------------------------------------------------------------------------

#: Fields an architecture does not read: GQA's for MLA, MLA's for GQA, MoE's for dense models.
_GQA_ONLY = ("num_key_value_heads", "head_dim", "attention_bias")
_MLA_ONLY = ("q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
             "v_head_dim")
_MOE_ONLY = ("n_shared_experts", "num_experts_per_tok", "moe_intermediate_size", "n_group",
             "topk_group", "routed_scaling_factor", "norm_topk_prob", "scoring_func",
             "first_k_dense_replace", "aux_loss_alpha")
#: Column order of the table: the toy presets, then the public models by family.
TABLE_ORDER = ("tiny", "small_50m", "deepseek_v2_lite", "deepseek_v3_671b", "qwen2_5_0_5b",
               "qwen2_5_3b", "llama3_2_1b")


def _unused(config: config_lib.ModelConfig) -> set[str]:
    unused = set(_GQA_ONLY if config.attention_type == "mla" else _MLA_ONLY)
    return unused | (set() if config.is_moe else set(_MOE_ONLY))


def markdown_table() -> str:
    """The Markdown table of every preset's values: `default` is `ModelConfig()`, `·` marks a
    field the architecture does not read, fields that no preset changes are left out."""
    default = config_lib.ModelConfig()
    configs = {name: config_lib.ModelConfig.from_dict(get(name)) for name in TABLE_ORDER}
    assert set(configs) == set(PRESETS), "TABLE_ORDER must list every preset"
    fields = [f for f in default.to_dict()
              if any(getattr(c, f) != getattr(default, f) for c in configs.values())]
    lines = ["| field | default | " + " | ".join(configs) + " |",
             "|---|---|" + "---|" * len(configs)]
    for field in fields:
        cells = ["·" if field in _unused(c) else str(getattr(c, field))
                 for c in configs.values()]
        lines.append(f"| `{field}` | {getattr(default, field)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--markdown"]:
        sys.exit("usage: python -m r1jax.models.presets --markdown")
    print(markdown_table())
