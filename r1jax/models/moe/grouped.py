"""Grouped-matmul dispatch: assignments sorted by expert, one `jax.lax.ragged_dot` per projection.

The routed term of DeepSeek-V3 eq. 12 (Sec. 2.1.2), sum_k g_{t,k} FFN_{idx[t,k]}(x_t), as GPUs
and TPUs want it: the T*K assignments are sorted by expert (`sort_by_expert`), so expert e's rows
are one contiguous group of `group_sizes[e]` rows; each SwiGLU projection is one grouped matmul
over those groups (`grouped_swiglu`), with float32 accumulation (`preferred_element_type`); the
outputs are unsorted and combined with the gates g (`grouped_dispatch`). Exact (no token is
dropped, no padding row exists: the group sizes sum to T*K) and with static shapes.

The default dispatch on GPU and TPU (`layer.resolve_dispatch`); the CPU keeps the block loop of
`dropless.py`, because XLA's CPU backend expands `ragged_dot` into a masked dense product over
every group ([E, T*K, d] operands: E times the work; see the design notes).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax.models.moe import dispatch


class SortedLayout(NamedTuple):
    """The expert-sorted order of the T*K assignments (assignment n = t * K + k).

    `order_p` and `rank_tk` are inverse permutations, so both row moves are gathers, forward
    and backward (`dispatch.take_rows`).
    """

    order_p: jax.Array        # [T*K] assignment at sorted position p
    rank_tk: jax.Array        # [T, K] sorted position of each assignment
    group_sizes_e: jax.Array  # [E] int32 rows of each expert (sums to T*K)


def sort_by_expert(idx_tk: jax.Array, num_experts: int) -> SortedLayout:
    """Sorts the assignments by expert (stable: a token's rows keep their order within an expert).

    Args:
      idx_tk: [T, K] int32 chosen experts.
      num_experts: E.
    Returns:
      The `SortedLayout`.
    """
    expert_n = idx_tk.reshape(-1)
    order_p = jnp.argsort(expert_n, stable=True)
    rank_n = jnp.argsort(order_p)
    group_sizes_e = jnp.bincount(expert_n, length=num_experts)
    return SortedLayout(order_p.astype(jnp.int32), rank_n.reshape(idx_tk.shape).astype(jnp.int32),
                        group_sizes_e.astype(jnp.int32))


def _ragged(x_md: jax.Array, w_edf: jax.Array, group_sizes_e: jax.Array, accum_dtype):
    """Rows m of group e times w[e]: [M, d] x [E, d, f] -> [M, f], summed in `accum_dtype` and
    rounded to x's dtype (the compute dtype) once."""
    y_mf = jax.lax.ragged_dot(x_md, w_edf, group_sizes_e, preferred_element_type=accum_dtype)
    return y_mf.astype(x_md.dtype)


def grouped_swiglu(x_md: jax.Array, group_sizes_e: jax.Array, experts: dispatch.ExpertParams,
                   accum_dtype=jnp.float32) -> jax.Array:
    """SwiGLU of each group of rows with its own expert's weights: [M, d] -> [M, d].

    Rows past sum(group_sizes) (none in `grouped_dispatch`) come out zero.

    No custom VJP: JAX's transpose of `ragged_dot` is again a grouped matmul, for the input
    (ragged rows, the weights transposed) and for the weights (ragged contracting dimension,
    one [d, f] product per group). In the forward + backward lowered for TPU and for GPU
    (`.lower(lowering_platforms=("tpu",))`, `("cuda",)`; jax 0.10.2) the forward and both
    backward products of each projection are `chlo.ragged_dot` ops, which those backends
    compile to grouped GEMMs, with no dense [E, M, .] operand, so a hand-written backward
    would have nothing to remove. (XLA's CPU backend expands every one of them into a masked
    [E, M, d] product, as its compiled HLO shows: why the CPU keeps the block loop.) The row
    moves around it keep `dispatch.take_rows`'s custom VJP (gathers, no scatter-add).

    Args:
      x_md: [M, d] rows sorted by expert.
      group_sizes_e: [E] int32 rows per expert, in order.
      experts: the stacked weights, in the compute dtype.
      accum_dtype: the matmuls' accumulation dtype.
    Returns:
      [M, d] in x's dtype.
    """
    gate_mf = _ragged(x_md, experts.gate_edf, group_sizes_e, accum_dtype)
    up_mf = _ragged(x_md, experts.up_edf, group_sizes_e, accum_dtype)
    return _ragged(nn.silu(gate_mf) * up_mf, experts.down_efd, group_sizes_e, accum_dtype)


def grouped_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                     experts: dispatch.ExpertParams, *, accum_dtype=jnp.float32,
                     out_dtype=None) -> jax.Array:
    """Sort by expert, one grouped matmul per projection, unsort, combine with the gates.

    Args:
      x_td: [T, d] tokens in the compute dtype.
      idx_tk: [T, K] int32 chosen experts.
      weight_tk: [T, K] float32 gate values g.
      experts: stacked weights [E, d, f], [E, d, f], [E, f, d].
      accum_dtype: the matmuls' accumulation dtype (float32 by default).
      out_dtype: the result's dtype (default x's).
    Returns:
      [T, d] routed output sum_k g_{t,k} FFN_{idx[t,k]}(x_t).
    """
    k = idx_tk.shape[1]
    layout = sort_by_expert(idx_tk, experts.gate_edf.shape[0])
    # Sorted row p reads token order_p[p] // K; token t is read by rows rank_tk[t].
    x_pd = dispatch.take_rows(x_td, layout.order_p // k, layout.rank_tk)
    y_pd = grouped_swiglu(x_pd, layout.group_sizes_e, experts, accum_dtype)
    y_nd = dispatch.take_rows(y_pd, layout.rank_tk.reshape(-1), layout.order_p[:, None])
    return dispatch.combine(y_nd, weight_tk, out_dtype or x_td.dtype)
