"""The DeepSeekMoE layer: router, routed experts through the configured dispatch, shared experts.

DeepSeek-V3 report (arXiv:2412.19437) Sec. 2.1.2, eq. 12:
h'_t = u_t + sum_i FFN^(s)_i(u_t) + sum_i g_{i,t} FFN^(r)_i(u_t) (the residual u_t is added by
the decoder block). The router is `routing.Router`; the routed sum is one dispatch, chosen once
from `config.moe_dispatch` (`get_dispatch`; "auto" by backend, `resolve_dispatch`); the balancing statistics are sown for
`balancing.update_all_biases` and `balancing.total_aux_loss`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import layers
from r1jax.models.moe import balancing, dispatch, dropless, expert_parallel, grouped, routing

_BTD = ("act_batch", "act_length", "act_embed")


def resolve_dispatch(name: str, backend: str | None = None) -> str:
    """The dispatch that `config.moe_dispatch` names: "auto" is the block loop ("dropless") on
    the CPU, where it measured fastest, and the grouped matmul ("grouped") on GPU and TPU.

    Args:
      name: a value of `config_lib.MOE_DISPATCH`.
      backend: `jax.default_backend()` when None.
    Returns:
      A concrete dispatch name.
    """
    if name not in config_lib.MOE_DISPATCH:
        raise ValueError(f"ModelConfig.moe_dispatch: got {name!r}; allowed values are "
                         f"{', '.join(map(repr, config_lib.MOE_DISPATCH))}")
    if name != "auto":
        return name
    return "dropless" if (backend or jax.default_backend()) == "cpu" else "grouped"


def get_dispatch(config: config_lib.ModelConfig) -> dispatch.Dispatch:
    """The dispatch function named by `config.moe_dispatch` (chosen once, at module build).

    The sorting dispatches ("dropless", "grouped") run on each device's own tokens under a
    mesh (`dispatch.token_local`); "expert_parallel" moves tokens to the experts' devices.
    """
    accum_dtype = layers.dtype_of(config.accum_dtype)
    name = resolve_dispatch(config.moe_dispatch)
    if name == "dense":
        return functools.partial(dispatch.dense_dispatch, accum_dtype=accum_dtype)
    if name == "expert_parallel":
        return functools.partial(expert_parallel.expert_parallel_dispatch,
                                 block_size=config.moe_block_size, accum_dtype=accum_dtype)
    if name == "grouped":
        return dispatch.token_local(functools.partial(grouped.grouped_dispatch,
                                                      accum_dtype=accum_dtype))
    return dispatch.token_local(functools.partial(
        dropless.dropless_dispatch, block_size=config.moe_block_size, constrain=False,
        accum_dtype=accum_dtype))


class Experts(nn.Module):
    """The N_r routed SwiGLU experts, stacked; applies the configured dispatch."""

    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array) -> jax.Array:
        cfg = self.config
        e, d, f = cfg.n_routed_experts, x_td.shape[-1], cfg.moe_intermediate_size
        dtype = layers.dtype_of(cfg.dtype)
        experts = dispatch.ExpertParams(
            layers.param(self, "gate_proj", (e, d, f), ("expert", "embed", "mlp"), cfg),
            layers.param(self, "up_proj", (e, d, f), ("expert", "embed", "mlp"), cfg),
            layers.param(self, "down_proj", (e, f, d), ("expert", "mlp", "embed"), cfg))
        experts = dispatch.ExpertParams(*(w.astype(dtype) for w in experts))
        return get_dispatch(cfg)(x_td.astype(dtype), idx_tk, weight_tk, experts)


class MoE(nn.Module):
    """DeepSeekMoE layer: shared experts + routed experts (Sec. 2.1.2). [B, T, d] -> [B, T, d].

    Sows into 'intermediates': `expert_load` [E] (fraction of the B*T*K assignments per
    expert) and `aux_loss` (L_Bal, Sec. 2.1.3; 0 when aux_loss_alpha == 0).
    """

    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x_btd: jax.Array) -> jax.Array:
        cfg = self.config
        b, t, d = x_btd.shape
        x_btd = sharding.constrain(x_btd, _BTD)
        x_td = x_btd.reshape(b * t, d)
        scores_te, idx_tk, weight_tk = routing.Router(cfg, name=routing.ROUTER)(x_td)
        self.sow("intermediates", balancing.EXPERT_LOAD,
                 balancing.expert_load(idx_tk, cfg.n_routed_experts))
        self.sow("intermediates", balancing.AUX_LOSS, balancing.sequence_balance_loss(
            scores_te.reshape(b, t, -1), idx_tk.reshape(b, t, -1), cfg.aux_loss_alpha))
        y_btd = Experts(cfg, name="experts")(x_td, idx_tk, weight_tk).reshape(b, t, d)
        if cfg.n_shared_experts > 0:
            shared = layers.MLP(cfg.n_shared_experts * cfg.moe_intermediate_size, cfg,
                                name="shared_experts")
            y_btd = y_btd + shared(x_btd)
        return sharding.constrain(y_btd.astype(x_btd.dtype), _BTD)
