"""The model configuration: one frozen, self-validating dataclass for every family.

`ModelConfig` covers DeepSeek-V3 / V2-Lite (MLA + DeepSeekMoE) and dense Qwen2 / Llama
(GQA + SwiGLU) models. Field names follow the HF `config.json` of those models wherever one
exists, so `r1jax.models.hf` maps them one to one. It is hashable (static under `jit`) and is
built once, at the boundary, from an `ml_collections.ConfigDict` with `ModelConfig.from_dict`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

ATTENTION_TYPES = ("mla", "gqa")
SCORING_FUNCS = ("sigmoid", "softmax")
ROPE_TYPES = ("default", "yarn", "llama3")
# "auto": the block loop ("dropless") on CPU, grouped matmul ("grouped") on GPU/TPU, resolved
# from jax.default_backend() when the layer is built (moe.layer.resolve_dispatch).
MOE_DISPATCH = ("auto", "dropless", "grouped", "dense", "expert_parallel")
MLA_DECODE = ("absorbed", "naive")
ATTENTION_IMPLS = ("auto", "naive", "blockwise", "cudnn", "splash")
REMAT_POLICIES = ("none", "full", "dots")
DTYPES = ("float32", "bfloat16", "float16")

#: Named precision policies: ModelConfig fields (param_dtype, dtype, accum_dtype) plus the
#: dtype of Adam's moments (`OptimConfig` follows the params). Bytes per parameter held by
#: training, for P parameters (activations not counted):
#:   "accelerator" (the default on GPU/TPU presets): float32 master params (4) + float32 Adam
#:       mu and nu (8) + a float32 gradient (4) = 16 bytes, plus a transient bf16 copy of each
#:       weight inside its matmul (2, one layer at a time). bf16 compute, float32 accumulation.
#:       An AdamW step at lr 3e-6 moves a float32 weight of size 0.02 by ~1,600 ulps, so every
#:       update lands (`tests/models/test_precision.py`).
#:   "float32" (CPU presets, tests): everything float32, 16 bytes; the same numbers as before
#:       the policy existed.
#:   "bfloat16_params" (what the presets used before; kept to measure against): bf16 params,
#:       moments and gradients, 2 + 4 + 2 = 8 bytes. A bf16 weight of size 0.02 has a spacing of
#:       ~1.2e-4, so a 3e-6 update rounds away for most weights: one AdamW step at lr 3e-6
#:       changed only 4-13% of them (issue 21). Not for training.
PRECISION_POLICIES = {
    "accelerator": {"param_dtype": "float32", "dtype": "bfloat16", "accum_dtype": "float32"},
    "float32": {"param_dtype": "float32", "dtype": "float32", "accum_dtype": "float32"},
    "bfloat16_params": {"param_dtype": "bfloat16", "dtype": "bfloat16",
                        "accum_dtype": "bfloat16"},
}


def _itemsize(name: str) -> int:
    return {"float32": 4, "bfloat16": 2, "float16": 2}[name]


def precision(name: str) -> dict[str, str]:
    """The ModelConfig dtype fields of the named policy (`PRECISION_POLICIES`)."""
    if name not in PRECISION_POLICIES:
        raise ValueError(f"unknown precision policy {name!r}; known: {sorted(PRECISION_POLICIES)}")
    return dict(PRECISION_POLICIES[name])


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters (DeepSeek-V3 report, arXiv:2412.19437, Sec. 2).

    Attention (`attention_type`):
      "mla": multi-head latent attention. Queries go through a low-rank bottleneck of rank
        `q_lora_rank` (d_c' in the report; None = a full projection, as in V2-Lite); keys and
        values through the compressed latent c^KV of rank `kv_lora_rank` (d_c). Each head has a
        `qk_nope_head_dim` content part and a `qk_rope_head_dim` (d_h^R) decoupled RoPE part
        shared across heads for the key; values have `v_head_dim`.
      "gqa": grouped-query attention with `num_key_value_heads` K/V heads of `head_dim`,
        optional q/k/v bias (`attention_bias`, Qwen2).
    MoE (DeepSeekMoE, Sec. 2.1.2): `n_routed_experts` fine-grained experts (N_r) of width
      `moe_intermediate_size`, `n_shared_experts` (N_s), top-`num_experts_per_tok` (K_r) routing
      restricted to `topk_group` of `n_group` groups; affinities s_i from `scoring_func`; the
      balancing bias b_i (updated with speed `bias_update_speed`, gamma) enters selection only;
      `aux_loss_alpha` is the sequence-wise balance loss weight (alpha). The first
      `first_k_dense_replace` layers are dense MLPs of width `intermediate_size`.
    MTP (Sec. 2.2): `num_nextn_predict_layers` modules (depth D) with loss weight lambda
      = `mtp_loss_weight`.
    RoPE: `rope_theta`; `rope_type` "yarn" uses `rope_factor` (s),
      `original_max_position_embeddings`, `beta_fast`, `beta_slow`, `mscale`, `mscale_all_dim`;
      "llama3" uses `rope_factor`, `low_freq_factor`, `high_freq_factor`. `rope_interleave`
      selects the interleaved (x0,x1),(x2,x3)... layout instead of the half-split one.
    Implementation choices (picked once, never branched on inside a layer's math):
      `moe_dispatch` "auto" (the default: "dropless" on CPU, "grouped" on GPU/TPU), "dropless"
      (sort into padded blocks, a loop over the used blocks), "grouped" (sort, grouped matmul
      `jax.lax.ragged_dot`), "dense" (every expert, every token) or "expert_parallel" (experts
      sharded over the `expert` mesh axis, all-to-all exchange);
      `mla_decode` "absorbed" or "naive" for cached decoding; `remat_policy`; `scan_layers`;
      `attention_impl` (`r1jax.models.flash`): "naive" (full [T, S] scores, the reference),
      "blockwise" (online softmax over key/value blocks of `attention_block_size`, memory
      linear in T; decoding reads only the filled cache slots), "cudnn" (the fused GPU
      kernel, causal unpacked unpadded bf16/fp16 forwards only), "splash" (Pallas, TPU) or
      "auto" (per backend and shape: splash on TPU; cuDNN where it applies on GPU, else
      blockwise; naive for short CPU forwards).
    Precision (`PRECISION_POLICIES`, documented there with their bytes per parameter):
      `param_dtype` stores the parameters (the optimizer's master weights; Adam's moments take
      the same dtype); `dtype` is the compute dtype of activations and of the weights' transient
      copy inside each matmul; `accum_dtype` is the result dtype of every matmul that sums many
      terms (`preferred_element_type`: attention scores and outputs, projections, expert
      down-projections and their weight gradients summed across blocks). Logits, log-probs,
      softmax, norms, the router and the loss are float32 whatever the policy.
    """

    vocab_size: int = 512
    hidden_size: int = 128
    num_hidden_layers: int = 4
    intermediate_size: int = 384
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 1024

    # Attention.
    attention_type: str = "mla"
    num_attention_heads: int = 4
    num_key_value_heads: int = 4
    head_dim: int = 32
    attention_bias: bool = False
    q_lora_rank: int | None = 64
    kv_lora_rank: int = 32
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32

    # RoPE.
    rope_theta: float = 10000.0
    rope_type: str = "default"
    rope_interleave: bool = True
    rope_factor: float = 1.0
    original_max_position_embeddings: int = 1024
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0

    # MoE (n_routed_experts == 0 means a dense model).
    n_routed_experts: int = 8
    n_shared_experts: int = 1
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 96
    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    norm_topk_prob: bool = True
    scoring_func: str = "sigmoid"
    first_k_dense_replace: int = 1
    aux_loss_alpha: float = 0.0
    bias_update_speed: float = 1e-3

    # Multi-token prediction.
    num_nextn_predict_layers: int = 0
    mtp_loss_weight: float = 0.3

    # Numerics and implementation choices.
    dtype: str = "float32"
    param_dtype: str = "float32"
    accum_dtype: str = "float32"
    initializer_range: float = 0.02
    moe_dispatch: str = "auto"
    moe_block_size: int = 64
    mla_decode: str = "absorbed"
    attention_impl: str = "auto"
    attention_block_size: int = 512
    remat_policy: str = "none"
    scan_layers: bool = False

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ derived quantities
    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0

    @property
    def qk_head_dim(self) -> int:
        """Per-head query/key width: d_h + d_h^R for MLA, head_dim for GQA."""
        if self.attention_type == "mla":
            return self.qk_nope_head_dim + self.qk_rope_head_dim
        return self.head_dim

    @property
    def rope_dim(self) -> int:
        """Width of the rotated part of each query/key head."""
        return self.qk_rope_head_dim if self.attention_type == "mla" else self.head_dim

    def is_moe_layer(self, layer: int) -> bool:
        return self.is_moe and layer >= self.first_k_dense_replace

    @property
    def kv_cache_values_per_token(self) -> int:
        """Cached values per token per layer: d_c + d_h^R for MLA, 2 * n_kv * d_h for GQA."""
        if self.attention_type == "mla":
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.num_key_value_heads * self.head_dim

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        def fail(field: str, msg: str):
            raise ValueError(f"ModelConfig.{field}: {msg}")

        def choice(field: str, allowed: tuple[str, ...]):
            value = getattr(self, field)
            if value not in allowed:
                fail(field, f"got {value!r}; allowed values are {', '.join(map(repr, allowed))}")

        choice("attention_type", ATTENTION_TYPES)
        choice("scoring_func", SCORING_FUNCS)
        choice("rope_type", ROPE_TYPES)
        choice("moe_dispatch", MOE_DISPATCH)
        choice("mla_decode", MLA_DECODE)
        choice("attention_impl", ATTENTION_IMPLS)
        choice("remat_policy", REMAT_POLICIES)
        choice("dtype", DTYPES)
        choice("param_dtype", DTYPES)
        choice("accum_dtype", DTYPES)
        if _itemsize(self.accum_dtype) < _itemsize(self.dtype):
            fail("accum_dtype", f"{self.accum_dtype!r} is narrower than the compute dtype "
                 f"{self.dtype!r}; matmul results would lose what their inputs hold")
        for field in ("vocab_size", "hidden_size", "num_hidden_layers", "intermediate_size",
                      "num_attention_heads", "max_position_embeddings", "moe_block_size",
                      "attention_block_size"):
            if getattr(self, field) <= 0:
                fail(field, f"must be a positive integer, got {getattr(self, field)}")
        if self.attention_type == "mla":
            for field in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
                if getattr(self, field) <= 0:
                    fail(field, f"must be positive for attention_type='mla', got {getattr(self, field)}")
            if self.q_lora_rank is not None and self.q_lora_rank <= 0:
                fail("q_lora_rank", f"must be None or positive, got {self.q_lora_rank}")
        else:
            if self.head_dim <= 0:
                fail("head_dim", f"must be positive, got {self.head_dim}")
            if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
                fail("num_key_value_heads",
                     f"must be positive and divide num_attention_heads={self.num_attention_heads}, "
                     f"got {self.num_key_value_heads}")
        if self.rope_dim % 2:
            field = "qk_rope_head_dim" if self.attention_type == "mla" else "head_dim"
            fail(field, f"the rotary dimension must be even, got {self.rope_dim}")
        if self.rope_type != "default" and self.rope_factor < 1.0:
            fail("rope_factor", f"must be >= 1 for rope_type={self.rope_type!r}, got {self.rope_factor}")
        if self.is_moe:
            if self.moe_intermediate_size <= 0:
                fail("moe_intermediate_size", f"must be positive, got {self.moe_intermediate_size}")
            if not 1 <= self.num_experts_per_tok <= self.n_routed_experts:
                fail("num_experts_per_tok",
                     f"must be in [1, n_routed_experts={self.n_routed_experts}], "
                     f"got {self.num_experts_per_tok}")
            if self.n_group <= 0 or self.n_routed_experts % self.n_group:
                fail("n_group", f"must be positive and divide n_routed_experts="
                     f"{self.n_routed_experts}, got {self.n_group}")
            if not 1 <= self.topk_group <= self.n_group:
                fail("topk_group", f"must be in [1, n_group={self.n_group}], got {self.topk_group}")
            per_group = self.n_routed_experts // self.n_group
            if self.n_group > 1 and per_group < 2:
                fail("n_group", "group-limited routing scores a group by its top-2 experts, so each "
                     f"group needs >= 2 experts; got {per_group}")
            if self.topk_group * per_group < self.num_experts_per_tok:
                fail("topk_group", f"topk_group * experts per group = {self.topk_group * per_group} "
                     f"< num_experts_per_tok={self.num_experts_per_tok}")
            if self.n_shared_experts < 0:
                fail("n_shared_experts", f"must be >= 0, got {self.n_shared_experts}")
            if not 0 <= self.first_k_dense_replace <= self.num_hidden_layers:
                fail("first_k_dense_replace",
                     f"must be in [0, num_hidden_layers={self.num_hidden_layers}], "
                     f"got {self.first_k_dense_replace}")
        if self.num_nextn_predict_layers < 0:
            fail("num_nextn_predict_layers", f"must be >= 0, got {self.num_nextn_predict_layers}")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ModelConfig:
        """Builds a config from a ConfigDict / dict; unknown keys are an error naming them."""
        if hasattr(values, "to_dict"):
            values = values.to_dict()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"ModelConfig: unknown field(s) {unknown}; known fields: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> ModelConfig:
        return dataclasses.replace(self, **changes)
