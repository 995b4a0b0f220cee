"""DeepSeekMoE load balancing: expert loads, the bias update and the balance loss.

DeepSeek-V3 report (arXiv:2412.19437):
  Sec. 2.1.2  auxiliary-loss-free balancing: after each step b_i moves by gamma towards balance
              (`update_bias`; applied to every layer of a params tree by `update_all_biases`,
              from the loads each `layer.MoE` sows as 'expert_load').
  Sec. 2.1.3  the complementary sequence-wise balance loss L_Bal (eqs. 17-20), sown as
              'aux_loss' and scaled by alpha = `aux_loss_alpha` (`sequence_balance_loss`).

L_Bal's f_i counts the experts actually chosen (biased, group-limited selection) rather than
the unbiased top-K of eq. 18: the loss balances the load the experts really receive.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import traverse_util
from flax.core import frozen_dict

from r1jax.models.moe import routing

EXPERT_LOAD = "expert_load"  # sown per layer: [E] fraction of assignments per expert
AUX_LOSS = "aux_loss"  # sown per layer: L_Bal (0 when aux_loss_alpha == 0)


def expert_load(idx_tk: jax.Array, num_experts: int) -> jax.Array:
    """Fraction of the T*K assignments that each expert receives: [E] float32, sums to 1."""
    count_e = jnp.bincount(idx_tk.reshape(-1), length=num_experts)
    return count_e.astype(jnp.float32) / idx_tk.size


def sequence_balance_loss(scores_bte: jax.Array, idx_btk: jax.Array, alpha: float) -> jax.Array:
    """L_Bal = alpha * sum_i f_i P_i per sequence (eqs. 17-20), averaged over sequences.

    f_i = N_r / (K_r T) * (tokens of the sequence routed to i); P_i = mean_t s'_{i,t} with
    s'_{i,t} = s_{i,t} / sum_j s_{j,t}. Gradients flow through P only.
    """
    _, t, e = scores_bte.shape
    k = idx_btk.shape[-1]
    count_be = jax.nn.one_hot(idx_btk, e, dtype=jnp.float32).sum(axis=(1, 2))
    f_be = count_be * (e / (k * t))
    p_be = (scores_bte / scores_bte.sum(-1, keepdims=True)).mean(axis=1)
    return alpha * jnp.mean(jnp.sum(f_be * p_be, axis=-1))


def update_bias(bias_e: jax.Array, load_e: jax.Array, gamma: float) -> jax.Array:
    """Auxiliary-loss-free balancing (Sec. 2.1.2): b_i += gamma * sign(mean_j load_j - load_i).

    Overloaded experts lose gamma, underloaded ones gain it. Works on stacked layers ([..., E]).
    """
    error_e = jnp.mean(load_e, axis=-1, keepdims=True) - load_e
    return (bias_e + gamma * jnp.sign(error_e)).astype(bias_e.dtype)


def _join(path: tuple[str, ...]) -> str:
    return "/".join(str(p) for p in path)


def collect_expert_loads(intermediates: Mapping) -> dict[str, jax.Array]:
    """Per-MoE-layer loads from the 'intermediates' collection, keyed by the layer's path.

    A layer applied several times in one forward sows several loads; they are averaged.
    """
    flat = traverse_util.flatten_dict(frozen_dict.unfreeze(intermediates))
    return {_join(path[:-1]): jnp.mean(jnp.stack(list(value)), axis=0)
            for path, value in flat.items() if path[-1] == EXPERT_LOAD}


def total_aux_loss(intermediates: Mapping) -> jax.Array:
    """Sum of every sown `aux_loss` (the L_Bal term to add to the training loss)."""
    flat = traverse_util.flatten_dict(frozen_dict.unfreeze(intermediates))
    terms = [jnp.sum(jnp.stack(list(v))) for p, v in flat.items() if p[-1] == AUX_LOSS]
    return sum(terms, jnp.zeros((), jnp.float32))


def update_all_biases(params: Mapping, intermediates: Mapping, gamma: float):
    """Applies `update_bias` to every MoE layer's bias in an (unboxed) 'params' tree.

    Args:
      params: the 'params' collection; each `.../<moe>/gate/e_score_correction_bias` is updated.
      intermediates: the 'intermediates' collection of the same forward pass.
      gamma: bias update speed (config.bias_update_speed).
    Returns:
      A params tree of the same structure with new biases.
    Raises:
      KeyError naming a layer whose bias has no sown `expert_load`.
    """
    loads = collect_expert_loads(intermediates)
    flat = traverse_util.flatten_dict(frozen_dict.unfreeze(params))
    for path, bias in flat.items():
        if path[-1] == routing.BIAS and path[-2] == routing.ROUTER:
            layer = _join(path[:-2])
            if layer not in loads:
                raise KeyError(f"update_all_biases: no '{EXPERT_LOAD}' sown for MoE layer "
                               f"'{layer}'; apply the model with mutable=['intermediates']")
            flat[path] = update_bias(bias, loads[layer], gamma)
    new_params = traverse_util.unflatten_dict(flat)
    return frozen_dict.freeze(new_params) if isinstance(params, frozen_dict.FrozenDict) else new_params
