"""Building blocks: RMSNorm, SwiGLU MLP, embedding, and rotary embeddings (RoPE / YaRN).

Parameter naming follows the HF checkpoints (`gate_proj`, `up_proj`, `down_proj`, `weight`),
with kernels stored `[in, out]` (HF stores `[out, in]`; `r1jax.models.hf` transposes).
Every parameter is created with logical axis names (see `r1jax.sharding`).

RoPE (Su et al., arXiv:2104.09864) with YaRN (Peng et al., arXiv:2309.00071) as configured by
DeepSeek-V2 (arXiv:2405.04434, Appendix B) / V3 (arXiv:2412.19437, Sec. 4.3), and the Llama 3.1
frequency scaling. Numerics follow HF transformers' `_compute_yarn_parameters` (v5: the
correction range is floored/ceiled, measured on `original_max_position_embeddings`) and
`DeepseekV3Attention` (softmax scale times mscale(s, mscale_all_dim)^2). Deviation: frequencies
are computed in float64 NumPy and cast to float32 once (HF computes them in float32), a
difference of at most 1 ulp of float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.models import config as config_lib


def dtype_of(name: str):
    return jnp.dtype(name)


def accumulating_einsum(subscripts: str, a: jax.Array, b: jax.Array, accum_dtype,
                        out_dtype) -> jax.Array:
    """`jnp.einsum` whose products are summed in `accum_dtype`, rounded once to `out_dtype`.

    On GPU/TPU this is one matmul with `preferred_element_type=accum_dtype` (bf16 inputs,
    float32 accumulators in the MXU / tensor cores). XLA:CPU implements that mix for some dot
    layouts only (a batched bf16 x bf16 -> f32 dot fails with "Unsupported element type for
    DotThunk"), so on the CPU the operands are widened first: a bf16 x bf16 product is exact in
    float32, so the result is the same sum, formed in the same dtype.
    """
    accum_dtype = jnp.dtype(accum_dtype)
    if jax.default_backend() == "cpu" and jnp.result_type(a, b) != accum_dtype:
        a, b = a.astype(accum_dtype), b.astype(accum_dtype)
    y = jnp.einsum(subscripts, a, b, preferred_element_type=accum_dtype)
    return y.astype(out_dtype)


def matmul(subscripts: str, a: jax.Array, b: jax.Array, config: config_lib.ModelConfig,
           out_dtype=None) -> jax.Array:
    """`jnp.einsum` of two compute-dtype operands whose sums are formed in `config.accum_dtype`.

    With bf16 compute the products are accumulated in float32 (`accumulating_einsum`) and the
    result is rounded once, to `out_dtype` (default: the compute dtype; pass jnp.float32 where
    the result feeds a softmax or the loss). The backward pass inherits the accumulation dtype,
    so the weight gradient's sum over tokens is float32 too. With float32 compute this is a
    plain einsum.

    Args:
      subscripts: the einsum equation.
      a, b: operands, already in the compute dtype.
      out_dtype: dtype of the returned array (None = `config.dtype`).
    """
    return accumulating_einsum(subscripts, a, b, dtype_of(config.accum_dtype),
                               dtype_of(config.dtype) if out_dtype is None else out_dtype)


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str | None],
          config: config_lib.ModelConfig, init=None) -> jax.Array:
    """Creates a parameter with logical axis names; default init N(0, initializer_range)."""
    init = init or nn.initializers.normal(stddev=config.initializer_range)
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                        dtype_of(config.param_dtype))


class Dense(nn.Module):
    """y = x @ kernel (+ bias); kernel `[in, out]` with the given logical axes.

    The product is accumulated in `config.accum_dtype` (`matmul`) and returned in `out_dtype`
    (None: the compute dtype; the output head asks for "float32", so logits are never rounded to
    bf16)."""

    features: int
    axes: tuple[str | None, str | None]
    config: config_lib.ModelConfig
    use_bias: bool = False
    out_dtype: str | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = param(self, "kernel", (x.shape[-1], self.features), self.axes, self.config)
        dtype = dtype_of(self.config.dtype)
        out_dtype = dtype if self.out_dtype is None else dtype_of(self.out_dtype)
        y = matmul("...i,io->...o", x.astype(dtype), kernel.astype(dtype), self.config, out_dtype)
        if self.use_bias:
            bias = param(self, "bias", (self.features,), (self.axes[1],), self.config,
                         init=nn.initializers.zeros)
            y = y + bias.astype(out_dtype)
        return y


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32."""

    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        weight = param(self, "weight", (x.shape[-1],), ("norm",), self.config,
                       init=nn.initializers.ones)
        x32 = x.astype(jnp.float32)
        x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True)
                                  + self.config.rms_norm_eps)
        return (x32 * weight.astype(jnp.float32)).astype(dtype_of(self.config.dtype))


class MLP(nn.Module):
    """SwiGLU feed-forward: down_proj(silu(gate_proj(x)) * up_proj(x)), hidden width `features`."""

    features: int
    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        gate_btf = Dense(self.features, ("embed", "mlp"), self.config, name="gate_proj")(x_btd)
        up_btf = Dense(self.features, ("embed", "mlp"), self.config, name="up_proj")(x_btd)
        h_btf = sharding.constrain(nn.silu(gate_btf) * up_btf,
                                   ("act_batch", "act_length", "act_mlp"))
        return Dense(x_btd.shape[-1], ("mlp", "embed"), self.config, name="down_proj")(h_btf)


class Embed(nn.Module):
    """Token embedding table `embedding` [V, D] (HF `model.embed_tokens.weight`, same layout)."""

    config: config_lib.ModelConfig

    def setup(self):
        self.embedding = param(self, "embedding", (self.config.vocab_size, self.config.hidden_size),
                               ("vocab", "embed"), self.config)

    def __call__(self, tokens_bt: jax.Array) -> jax.Array:
        x_btd = jnp.take(self.embedding, tokens_bt, axis=0).astype(dtype_of(self.config.dtype))
        return sharding.constrain(x_btd, ("act_batch", "act_length", "act_embed"))

    def attend(self, x_btd: jax.Array) -> jax.Array:
        """Tied output head: logits = x @ embedding^T, summed in accum_dtype, float32 out."""
        dtype = dtype_of(self.config.dtype)
        return matmul("btd,vd->btv", x_btd.astype(dtype), self.embedding.astype(dtype),
                      self.config, jnp.float32)


class Weight(nn.Module):
    """A bare kernel (param `kernel`), for projections whose weight is folded into other math
    (the MLA up-projection `kv_b_proj`, which absorbed decoding splits and re-associates)."""

    shape: tuple[int, ...]
    axes: tuple[str | None, ...]
    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self) -> jax.Array:
        kernel = param(self, "kernel", self.shape, self.axes, self.config)
        return kernel.astype(dtype_of(self.config.dtype))


# ---------------------------------------------------------------------------------------------
# Rotary position embedding (RoPE, Su et al. 2021) with YaRN (Peng et al. 2023, as configured by
# DeepSeek-V2/V3) and Llama 3 frequency scaling. Frequencies are computed once in float64 NumPy
# (static, from the config) and cast to float32, so they do not depend on the device's precision.


def yarn_get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN magnitude correction 0.1 * mscale * ln(s) + 1 (1 when s <= 1)."""
    if scale <= 1.0:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def _yarn_inv_freq(config: config_lib.ModelConfig, inv_freq: np.ndarray) -> np.ndarray:
    """Blends interpolated (theta / s) and extrapolated (theta) frequencies with a linear ramp
    over the dimensions whose wavelengths fall between beta_fast and beta_slow rotations of the
    original context."""
    dim, base = config.rope_dim, config.rope_theta

    def correction_dim(num_rotations: float) -> float:
        wavelengths = config.original_max_position_embeddings / (num_rotations * 2 * math.pi)
        return dim * math.log(wavelengths) / (2 * math.log(base))

    low = max(math.floor(correction_dim(config.beta_fast)), 0)
    high = min(math.ceil(correction_dim(config.beta_slow)), dim - 1)
    if low == high:
        high += 0.001  # Avoids a division by zero; matches the reference implementation.
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
    extrapolation_weight = 1.0 - ramp
    return (inv_freq / config.rope_factor) * (1.0 - extrapolation_weight) \
        + inv_freq * extrapolation_weight


def _llama3_inv_freq(config: config_lib.ModelConfig, inv_freq: np.ndarray) -> np.ndarray:
    """Llama 3.1 scaling: long wavelengths divided by `rope_factor`, short ones kept, a smooth
    interpolation in between (bounds original_max_position_embeddings / {low,high}_freq_factor)."""
    factor, old_len = config.rope_factor, config.original_max_position_embeddings
    low, high = config.low_freq_factor, config.high_freq_factor
    wavelength = 2 * math.pi / inv_freq
    smooth = (old_len / wavelength - low) / (high - low)
    blended = (1.0 - smooth) * inv_freq / factor + smooth * inv_freq
    scaled = np.where(wavelength > old_len / low, inv_freq / factor, blended)
    return np.where(wavelength < old_len / high, inv_freq, scaled)


_INV_FREQ_SCALING = {
    "default": lambda config, inv_freq: inv_freq,
    "yarn": _yarn_inv_freq,
    "llama3": _llama3_inv_freq,
}


def rope_frequencies(config: config_lib.ModelConfig) -> np.ndarray:
    """Inverse frequencies theta_i = base^(-2i/d), i < d/2, after `config.rope_type` scaling.

    Returns:
      float64 NumPy array [rope_dim // 2].
    """
    dim = config.rope_dim
    inv_freq = 1.0 / config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    return _INV_FREQ_SCALING[config.rope_type](config, inv_freq)


def rope_attention_factor(config: config_lib.ModelConfig) -> float:
    """Factor applied to cos/sin: YaRN's mscale(s, mscale) / mscale(s, mscale_all_dim), else 1.

    As in the DeepSeek / HF reference, a zero `mscale` or `mscale_all_dim` falls back to
    mscale(s, 1)."""
    if config.rope_type != "yarn":
        return 1.0
    if config.mscale and config.mscale_all_dim:
        return yarn_get_mscale(config.rope_factor, config.mscale) / yarn_get_mscale(
            config.rope_factor, config.mscale_all_dim)
    return yarn_get_mscale(config.rope_factor)


def softmax_scale(config: config_lib.ModelConfig) -> float:
    """Attention logit scale 1/sqrt(d_qk), times mscale(s, mscale_all_dim)^2 under YaRN."""
    scale = config.qk_head_dim ** -0.5
    if config.rope_type == "yarn" and config.mscale_all_dim:
        scale *= yarn_get_mscale(config.rope_factor, config.mscale_all_dim) ** 2
    return scale


def rope_cos_sin(config: config_lib.ModelConfig,
                 positions_bt: jax.Array) -> tuple[jax.Array, jax.Array]:
    """cos and sin of positions * theta_i, times the YaRN attention factor.

    Args:
      positions_bt: integer positions [B, T].
    Returns:
      (cos_btr, sin_btr), float32 [B, T, rope_dim // 2].
    """
    inv_freq_r = jnp.asarray(rope_frequencies(config), jnp.float32)
    angles_btr = positions_bt.astype(jnp.float32)[..., None] * inv_freq_r
    factor = rope_attention_factor(config)
    return jnp.cos(angles_btr) * factor, jnp.sin(angles_btr) * factor


def deinterleave(x: jax.Array) -> jax.Array:
    """(x0, x1, x2, x3, ...) -> (x0, x2, ..., x1, x3, ...) along the last axis."""
    return jnp.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)


def apply_rope(x_bthr: jax.Array, cos_btr: jax.Array, sin_btr: jax.Array,
               interleave: bool) -> jax.Array:
    """Rotates the last axis of x by the position angles (computed in float32).

    Pair i is (x_i, x_{i + r/2}) in the half-split layout (Qwen / Llama, `rotate_half`), and
    (x_{2i}, x_{2i+1}) in the interleaved layout (DeepSeek, `rope_interleave=True`). Interleaved
    inputs are returned de-interleaved, as in the reference implementation: queries and keys get
    the same permutation, so their dot products are those of an in-place pair rotation.

    Args:
      x_bthr: [B, T, H, R] (H may be 1 for the shared MLA key).
      cos_btr, sin_btr: [B, T, R // 2] from `rope_cos_sin`.
      interleave: the layout (static).
    Returns:
      [B, T, H, R] in x's dtype.
    """
    x32 = x_bthr.astype(jnp.float32)
    if interleave:
        x32 = deinterleave(x32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    cos, sin = cos_btr[:, :, None, :], sin_btr[:, :, None, :]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_bthr.dtype)
