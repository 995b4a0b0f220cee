"""HF config.json <-> `ModelConfig` for the architectures `r1jax.models.hf` reads and writes.

Files are untrusted: every field is checked as it is read (unsupported architectures, RoPE types,
options and quantisation schemes raise a ValueError naming the file and field; numbers must be
finite, `rms_norm_eps`, `rope_theta` and the RoPE factor positive, `vocab_size` at most
`MAX_VOCAB`). The mscale fallbacks and defaults follow transformers 5.x (`rope_parameters`, or
the legacy `rope_scaling` + `rope_theta`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp

from r1jax.models import config as config_lib

CONFIG_FILE = "config.json"
DEEPSEEK_V3, QWEN2, LLAMA = "DeepseekV3ForCausalLM", "Qwen2ForCausalLM", "LlamaForCausalLM"
ARCHITECTURES = (DEEPSEEK_V3, QWEN2, LLAMA)
_MODEL_TYPES = {DEEPSEEK_V3: "deepseek_v3", QWEN2: "qwen2", LLAMA: "llama"}
_REQUIRED = object()
# The largest released vocabularies are ~260k; far above that is a corrupt or hostile config.
MAX_VOCAB = 1 << 24


# ---------------------------------------------------------------------------------------------
# config.json -> ModelConfig.


class _Fields:
    """Typed access to a config.json dict; every error names the file and the field."""

    def __init__(self, values: Mapping[str, Any], file: str, prefix: str = ""):
        if not isinstance(values, Mapping):
            raise ValueError(f"{file}: {prefix or 'the top level'} must be a JSON object")
        self.values, self.file, self.prefix = values, file, prefix

    def fail(self, key: str, msg: str):
        raise ValueError(f"{self.file}: field {self.prefix}{key!r} {msg}")

    def get(self, key: str, kind: type, default: Any = _REQUIRED, allow_none: bool = False):
        if key not in self.values:
            if default is _REQUIRED:
                self.fail(key, "is missing")
            return default
        value = self.values[key]
        if value is None and allow_none:
            return None
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if kind is float \
            else isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
        if not ok:
            self.fail(key, f"must be {kind.__name__}{' or null' if allow_none else ''}, "
                      f"got {value!r}")
        if kind is float and not math.isfinite(value):  # json.load accepts NaN and Infinity
            self.fail(key, f"must be a finite number, got {value!r}")
        return float(value) if kind is float else value

    def positive(self, key: str, kind: type, default: Any = _REQUIRED, allow_none: bool = False):
        """`get` for a number that must be > 0 (a NaN or negative eps/theta gives NaN logits)."""
        value = self.get(key, kind, default, allow_none)
        if value is not None and value <= 0:
            self.fail(key, f"must be positive, got {value!r}")
        return value

    def expect(self, key: str, allowed: tuple, default: Any = None):
        value = self.values.get(key, default)
        if value not in allowed:
            self.fail(key, f"= {value!r} is not supported (supported: "
                      f"{', '.join(map(repr, allowed))})")


def fp8_block(values: Mapping[str, Any], file: str = CONFIG_FILE) -> tuple[int, int] | None:
    """The (bm, bn) weight block of an FP8 block-quantised checkpoint (DeepSeek-V3's
    `quantization_config`: quant_method "fp8", fmt "e4m3", weight_block_size [128, 128]);
    None when the checkpoint is not quantised. Other quantisation schemes are refused."""
    f = _Fields(values, file)
    if f.values.get("quantization_config") is None:
        return None
    q = _Fields(f.get("quantization_config", dict), f.file, "quantization_config.")
    q.expect("quant_method", ("fp8",))
    q.expect("fmt", ("e4m3",), "e4m3")
    block = q.get("weight_block_size", list)
    if len(block) != 2 or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0
                                  for b in block):
        q.fail("weight_block_size", f"must be two positive integers, got {block!r}")
    return block[0], block[1]


def _architecture(fields: _Fields) -> str:
    archs = fields.get("architectures", list)
    if len(archs) != 1 or archs[0] not in ARCHITECTURES:
        fields.fail("architectures", f"= {archs!r} is not supported (supported: one of "
                    f"{', '.join(ARCHITECTURES)})")
    return archs[0]


def _common_fields(f: _Fields) -> dict[str, Any]:
    f.expect("hidden_act", ("silu",), "silu")
    f.expect("partial_rotary_factor", (1, 1.0), 1.0)
    fp8_block(f.values, f.file)  # validated here, used by the reader
    heads = f.get("num_attention_heads", int)
    hidden = f.get("hidden_size", int)
    vocab = f.get("vocab_size", int)
    if not 0 < vocab <= MAX_VOCAB:  # checked before any array of that size is described
        f.fail("vocab_size", f"= {vocab} is outside [1, {MAX_VOCAB}]")
    return dict(
        vocab_size=vocab, hidden_size=hidden,
        num_hidden_layers=f.get("num_hidden_layers", int),
        intermediate_size=f.get("intermediate_size", int), num_attention_heads=heads,
        num_key_value_heads=f.get("num_key_value_heads", int, heads, allow_none=True) or heads,
        rms_norm_eps=f.positive("rms_norm_eps", float, 1e-6),
        tie_word_embeddings=f.get("tie_word_embeddings", bool, False),
        max_position_embeddings=f.get("max_position_embeddings", int),
        initializer_range=f.get("initializer_range", float, 0.02))


def _rope_dict(f: _Fields) -> tuple[_Fields, float]:
    """The RoPE parameters as transformers 5.x resolves them: `rope_scaling` (legacy) if set,
    else `rope_parameters`; rope_theta from that dict, else the top-level field."""
    key = "rope_scaling" if f.values.get("rope_scaling") else "rope_parameters"
    rope = f.get(key, dict, {}, allow_none=True) or {}
    rope_f = _Fields(rope, f.file, f"{key}.")
    # Both places are checked even when the dict's value wins: a bad one is a corrupt file.
    top = f.positive("rope_theta", float, None, allow_none=True)
    if rope_f.values.get("rope_theta") is not None:
        return rope_f, rope_f.positive("rope_theta", float)
    return rope_f, 10000.0 if top is None else top


def _rope_fields(f: _Fields, arch: str) -> dict[str, Any]:
    rope, theta = _rope_dict(f)
    rope_type = rope.values.get("rope_type", rope.values.get("type", "default"))
    rope.expect("rope_type", config_lib.ROPE_TYPES, rope_type)
    rope.expect("truncate", (True,), True)
    rope.expect("partial_rotary_factor", (1, 1.0), 1.0)
    rope.expect("attention_factor", (None,))
    out = dict(rope_theta=theta, rope_type=rope_type)
    if rope_type == "default":
        return out
    max_pos = f.get("max_position_embeddings", int)
    # As transformers: a top-level original_max_position_embeddings wins over the dict's.
    old = f.get("original_max_position_embeddings", int, None) or rope.get(
        "original_max_position_embeddings", int, max_pos)
    factor = rope.get("factor", float, None, allow_none=True)
    if factor is not None and factor <= 0:
        rope.fail("factor", f"must be positive, got {factor!r}")
    out.update(original_max_position_embeddings=old,
               rope_factor=max_pos / old if factor is None else factor)
    if rope_type == "llama3":
        out.update(low_freq_factor=rope.get("low_freq_factor", float),
                   high_freq_factor=rope.get("high_freq_factor", float))
        return out
    if arch != DEEPSEEK_V3:  # Only DeepSeek's attention applies mscale_all_dim to the softmax.
        rope.expect("mscale_all_dim", (None, 0, 0.0))
    out.update(beta_fast=rope.get("beta_fast", float, None, allow_none=True) or 32.0,
               beta_slow=rope.get("beta_slow", float, None, allow_none=True) or 1.0,
               mscale=rope.get("mscale", float, None, allow_none=True) or 0.0,
               mscale_all_dim=rope.get("mscale_all_dim", float, None, allow_none=True) or 0.0)
    return out


def _deepseek_fields(f: _Fields) -> dict[str, Any]:
    f.expect("scoring_func", ("sigmoid",), "sigmoid")
    f.expect("topk_method", ("noaux_tc",), "noaux_tc")
    f.expect("moe_layer_freq", (1,), 1)
    return dict(
        attention_type="mla", attention_bias=f.get("attention_bias", bool, False),
        q_lora_rank=f.get("q_lora_rank", int, allow_none=True),
        kv_lora_rank=f.get("kv_lora_rank", int), qk_nope_head_dim=f.get("qk_nope_head_dim", int),
        qk_rope_head_dim=f.get("qk_rope_head_dim", int), v_head_dim=f.get("v_head_dim", int),
        rope_interleave=f.get("rope_interleave", bool, True),
        n_routed_experts=f.get("n_routed_experts", int),
        n_shared_experts=f.get("n_shared_experts", int),
        num_experts_per_tok=f.get("num_experts_per_tok", int),
        moe_intermediate_size=f.get("moe_intermediate_size", int),
        n_group=f.get("n_group", int), topk_group=f.get("topk_group", int),
        routed_scaling_factor=f.positive("routed_scaling_factor", float),
        norm_topk_prob=f.get("norm_topk_prob", bool), scoring_func="sigmoid",
        first_k_dense_replace=f.get("first_k_dense_replace", int),
        num_nextn_predict_layers=f.get("num_nextn_predict_layers", int, 0))


def _gqa_fields(f: _Fields, arch: str) -> dict[str, Any]:
    if arch == QWEN2:
        f.expect("use_sliding_window", (False,), False)
    else:  # Llama's attention_bias also biases o_proj, which our GQA does not have.
        f.expect("attention_bias", (False,), False)
        f.expect("mlp_bias", (False,), False)
    heads, hidden = f.get("num_attention_heads", int), f.get("hidden_size", int)
    head_dim = f.get("head_dim", int, None, allow_none=True) or hidden // heads
    return dict(attention_type="gqa", head_dim=head_dim, attention_bias=arch == QWEN2,
                rope_interleave=False, q_lora_rank=None, n_routed_experts=0,
                n_shared_experts=0)


def config_from_hf(values: Mapping[str, Any], file: str = CONFIG_FILE,
                   dtype: Any = jnp.float32) -> config_lib.ModelConfig:
    """Maps a parsed HF config.json onto a ModelConfig (params and compute in `dtype`)."""
    f = _Fields(values, file)
    arch = _architecture(f)
    fields = _common_fields(f)
    fields.update(_rope_fields(f, arch))
    fields.update(_deepseek_fields(f) if arch == DEEPSEEK_V3 else _gqa_fields(f, arch))
    name = jnp.dtype(dtype).name
    if name not in config_lib.DTYPES:
        raise ValueError(f"load_hf: dtype {name!r} is not one of {config_lib.DTYPES}")
    try:
        return config_lib.ModelConfig(**fields, dtype=name, param_dtype=name)
    except ValueError as e:
        raise ValueError(f"{file}: {e}") from None


# ---------------------------------------------------------------------------------------------
# ModelConfig -> config.json.


def architecture_of(config: config_lib.ModelConfig) -> str:
    """The HF architecture that represents `config` exactly; ValueError if there is none."""
    if config.attention_type == "mla":
        if not config.is_moe or config.scoring_func != "sigmoid":
            raise ValueError("save_hf: an MLA model is saved as DeepseekV3ForCausalLM, which needs "
                             "n_routed_experts > 0 and scoring_func='sigmoid'")
        return DEEPSEEK_V3
    if config.is_moe or config.rope_interleave:
        raise ValueError("save_hf: a GQA model must be dense with rope_interleave=False")
    if config.rope_type == "yarn" and config.mscale_all_dim:
        raise ValueError("save_hf: mscale_all_dim is only representable for DeepSeek models")
    return QWEN2 if config.attention_bias else LLAMA


def _rope_to_hf(config: config_lib.ModelConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": config.rope_type}
    if config.rope_type != "default":
        rope.update(factor=config.rope_factor,
                    original_max_position_embeddings=config.original_max_position_embeddings)
    if config.rope_type == "llama3":
        rope.update(low_freq_factor=config.low_freq_factor,
                    high_freq_factor=config.high_freq_factor)
    if config.rope_type == "yarn":
        rope.update(beta_fast=config.beta_fast, beta_slow=config.beta_slow,
                    mscale=config.mscale, mscale_all_dim=config.mscale_all_dim)
    return rope


def config_to_hf(config: config_lib.ModelConfig) -> dict[str, Any]:
    """The config.json dict for `config` (read by transformers 5.x and by 4.x-era tools)."""
    arch = architecture_of(config)
    rope = _rope_to_hf(config)
    out = dict(
        architectures=[arch], model_type=_MODEL_TYPES[arch], vocab_size=config.vocab_size,
        hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads, hidden_act="silu",
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=config.tie_word_embeddings,
        initializer_range=config.initializer_range, dtype=config.param_dtype,
        rope_theta=config.rope_theta, rope_scaling=None if config.rope_type == "default" else rope,
        rope_parameters={**rope, "rope_theta": config.rope_theta})
    if arch == DEEPSEEK_V3:
        out.update({k: getattr(config, k) for k in (
            "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
            "n_routed_experts", "n_shared_experts", "num_experts_per_tok",
            "moe_intermediate_size", "n_group", "topk_group", "routed_scaling_factor",
            "norm_topk_prob", "scoring_func", "first_k_dense_replace", "rope_interleave",
            "attention_bias", "num_nextn_predict_layers")})
        out.update(num_key_value_heads=config.num_attention_heads,
                   head_dim=config.qk_rope_head_dim, topk_method="noaux_tc", moe_layer_freq=1)
    else:
        out.update(num_key_value_heads=config.num_key_value_heads, head_dim=config.head_dim)
        if arch == LLAMA:
            out.update(attention_bias=False, mlp_bias=False)
        else:
            out.update(use_sliding_window=False)
    return out
