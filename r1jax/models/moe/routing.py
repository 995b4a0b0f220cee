"""DeepSeekMoE routing: affinities, expert selection with the balancing bias, gate values.

DeepSeek-V3 report (arXiv:2412.19437) Sec. 2.1.2: affinities s_{i,t} = Sigmoid(u_t^T e_i)
(eq. 15); experts chosen by top-K_r of s_{i,t} + b_i (eq. 16: the bias b_i enters selection
only); gate values g_{i,t} from the unbiased s_{i,t}, normalised over the chosen experts (eq. 13).
Node-limited routing is the group restriction (`n_group`, `topk_group`) of HF
`DeepseekV3TopkRouter`. Where selection departs from the paper (HF parity) is listed in the
package docstring (`r1jax.models.moe`). The bias b_i is moved by `balancing.update_bias`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.models import config as config_lib
from r1jax.models import layers

BIAS = "e_score_correction_bias"  # the bias b_i [E] inside the router's params
ROUTER = "gate"  # the router's module name inside an MoE layer
# Routing replay (R3, issue 24): each router sows its selection idx_tk under SELECTED in
# 'intermediates' (when that collection is mutable), and selects from a recorded int [T, K]
# under SELECTED in the REPLAY collection when one is given (rows < 0: its own selection).
SELECTED = "selected_experts"
REPLAY = "replay"
OWN_CHOICE = "own_choice"  # sown too while replaying: what the router itself selects


_SCORING: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "softmax": functools.partial(jax.nn.softmax, axis=-1),
}


def _mask_groups(biased_te: jax.Array, n_group: int, topk_group: int) -> jax.Array:
    """Keeps the `topk_group` groups with the largest sum of top-2 biased scores; the others'
    experts get -inf, so they are never chosen."""
    t, e = biased_te.shape
    grouped_tgm = biased_te.reshape(t, n_group, e // n_group)
    group_score_tg = jax.lax.top_k(grouped_tgm, 2)[0].sum(-1)
    _, keep_tk = jax.lax.top_k(group_score_tg, topk_group)
    keep_tg = jax.nn.one_hot(keep_tk, n_group, dtype=jnp.bool_).any(axis=1)
    return jnp.where(keep_tg[:, :, None], grouped_tgm, -jnp.inf).reshape(t, e)


def select_experts(scores_te: jax.Array, bias_e: jax.Array, *, top_k: int, n_group: int,
                   topk_group: int) -> jax.Array:
    """Chosen experts per token: top-K_r of s_{i,t} + b_i within the kept groups (eq. 16).

    Args:
      scores_te: [T, E] float32 affinities s.
      bias_e: [E] balancing bias b (selection only).
    Returns:
      [T, K] int32 expert indices, in decreasing biased score.
    """
    biased_te = scores_te + bias_e
    if n_group > 1:
        biased_te = _mask_groups(biased_te, n_group, topk_group)
    return jax.lax.top_k(biased_te, top_k)[1]


def gate_values(scores_te: jax.Array, idx_tk: jax.Array, *, norm_topk_prob: bool,
                routed_scaling_factor: float) -> jax.Array:
    """g_{i,t}: unbiased affinities of the chosen experts, normalised (eq. 13), scaled. [T, K]."""
    weight_tk = jnp.take_along_axis(scores_te, idx_tk, axis=-1)
    if norm_topk_prob:
        weight_tk = weight_tk / (weight_tk.sum(-1, keepdims=True) + 1e-20)
    return weight_tk * routed_scaling_factor


def route(logits_te: jax.Array, bias_e: jax.Array, config: config_lib.ModelConfig,
          replay_tk: jax.Array | None = None):
    """Router logits [T, E] -> (scores_te float32, idx_tk int32, weight_tk float32).

    replay_tk: optional recorded selection [T, K] (a row < 0: not recorded); recorded rows keep
    it, and their gate values still come from these logits (the router keeps its gradient)."""
    scores_te = _SCORING[config.scoring_func](logits_te.astype(jnp.float32))
    idx_tk = select_experts(scores_te, jax.lax.stop_gradient(bias_e),
                            top_k=config.num_experts_per_tok, n_group=config.n_group,
                            topk_group=config.topk_group)
    if replay_tk is not None:
        idx_tk = jnp.where(replay_tk[:, :1] >= 0, replay_tk.astype(idx_tk.dtype), idx_tk)
    weight_tk = gate_values(scores_te, idx_tk, norm_topk_prob=config.norm_topk_prob,
                            routed_scaling_factor=config.routed_scaling_factor)
    return scores_te, idx_tk, weight_tk


class Router(nn.Module):
    """Affinities, selection and gate values; holds `kernel` [d, E] and the bias b [E]."""

    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x_td: jax.Array):
        num_experts = self.config.n_routed_experts
        kernel_de = layers.param(self, "kernel", (x_td.shape[-1], num_experts),
                                 ("embed", "expert"), self.config)
        # float32 whatever param_dtype is: updates of size gamma ~ 1e-3 vanish in bfloat16.
        bias_e = self.param(BIAS, nn.with_logical_partitioning(nn.initializers.zeros,
                                                               ("expert",)),
                            (num_experts,), jnp.float32)
        logits_te = jnp.einsum("td,de->te", x_td.astype(jnp.float32),
                               kernel_de.astype(jnp.float32))
        replay_tk = (self.get_variable(REPLAY, SELECTED) if self.has_variable(REPLAY, SELECTED)
                     else None)
        scores_te, idx_tk, weight_tk = route(logits_te, bias_e, self.config, replay_tk)
        self.sow("intermediates", SELECTED, idx_tk)
        if replay_tk is not None:  # the router's own choice, for the routing-flip-rate metric
            self.sow("intermediates", OWN_CHOICE, route(logits_te, bias_e, self.config)[1])
        return scores_te, idx_tk, weight_tk
