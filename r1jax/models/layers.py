"""Building blocks: RMSNorm, SwiGLU MLP, embedding, and rotary embeddings (RoPE / YaRN).

Parameter naming follows the HF checkpoints (`gate_proj`, `up_proj`, `down_proj`, `weight`),
with kernels stored `[in, out]` (HF stores `[out, in]`; `r1jax.models.hf` transposes).
Every parameter is created with logical axis names (see `r1jax.sharding`).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.models import config as config_lib


def dtype_of(name: str):
    return jnp.dtype(name)


def param(module: nn.Module, name: str, shape: Sequence[int], axes: Sequence[str | None],
          config: config_lib.ModelConfig, init=None) -> jax.Array:
    """Creates a parameter with logical axis names; default init N(0, initializer_range)."""
    init = init or nn.initializers.normal(stddev=config.initializer_range)
    return module.param(name, nn.with_logical_partitioning(init, tuple(axes)), tuple(shape),
                        dtype_of(config.param_dtype))


class Dense(nn.Module):
    """y = x @ kernel (+ bias); kernel `[in, out]` with the given logical axes."""

    features: int
    axes: tuple[str | None, str | None]
    config: config_lib.ModelConfig
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = param(self, "kernel", (x.shape[-1], self.features), self.axes, self.config)
        dtype = dtype_of(self.config.dtype)
        y = jnp.einsum("...i,io->...o", x.astype(dtype), kernel.astype(dtype))
        if self.use_bias:
            bias = param(self, "bias", (self.features,), (self.axes[1],), self.config,
                         init=nn.initializers.zeros)
            y = y + bias.astype(dtype)
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
