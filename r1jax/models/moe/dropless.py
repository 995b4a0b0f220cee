"""Dropless dispatch: tokens sorted by expert into padded blocks, one SwiGLU per used block.

The routed term of DeepSeek-V3 eq. 12 (Sec. 2.1.2) for prefill and training: the T*K
assignments are sorted by expert (`block_layout`), each expert's rows padded to a multiple of
the block, and every used block runs its own expert's SwiGLU (`block_swiglu`, a loop with a
custom VJP); the outputs are unsorted and combined with the gates g. No token is dropped and
the shapes are static (the buffers hold the worst-case padding). `dropless_dispatch` is the
entry point: it picks the block size from the shapes (`choose_block_size`) and hands
decoding-sized batches to `dispatch.gather_dispatch` (`uses_gather`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.models.moe import dispatch


def padded_rows(num_assignments: int, num_experts: int, block_size: int) -> int:
    """Static upper bound on rows after padding each expert's rows to a block multiple."""
    rows = num_assignments + min(num_experts, num_assignments) * (block_size - 1)
    return -(-rows // block_size) * block_size


class BlockLayout(NamedTuple):
    """Where each assignment lives in the expert-sorted, block-padded row layout.

    Assignment n = t * K + k (token t's k-th expert). The two maps are inverse on the
    T*K used rows, so every row move is a gather, forward and backward (`dispatch.take_rows`).
    """

    dest_nk: jax.Array         # [T, K] row of each assignment
    row_assign_r: jax.Array    # [R] assignment read by each row; T*K marks a padding row
    block_expert_g: jax.Array  # [R / block] expert that owns each block
    num_blocks: jax.Array      # [] int32 blocks that hold an assignment (the first ones)


def block_layout(idx_tk: jax.Array, num_experts: int, block_size: int) -> BlockLayout:
    """Sorts assignments by expert and pads each expert's rows to a multiple of `block_size`."""
    n = idx_tk.size
    expert_n = idx_tk.reshape(n)
    order_p = jnp.argsort(expert_n, stable=True)  # p-th assignment in expert order
    expert_p = expert_n[order_p]
    experts_e = jnp.arange(num_experts)
    start_e = jnp.searchsorted(expert_p, experts_e, side="left")
    count_e = jnp.searchsorted(expert_p, experts_e, side="right") - start_e
    padded_e = -(-count_e // block_size) * block_size
    padded_end_e = jnp.cumsum(padded_e)
    padded_start_e = padded_end_e - padded_e
    dest_p = padded_start_e[expert_p] + jnp.arange(n) - start_e[expert_p]
    dest_n = dest_p[jnp.argsort(order_p)]
    rows = padded_rows(n, num_experts, block_size)
    # Blocks past the last used row hold only padding; any valid expert id will do.
    block_expert_g = jnp.minimum(
        jnp.searchsorted(padded_end_e, jnp.arange(0, rows, block_size), side="right"),
        num_experts - 1)
    expert_r = jnp.repeat(block_expert_g, block_size)
    rank_r = jnp.arange(rows) - padded_start_e[expert_r]
    used_r = rank_r < count_e[expert_r]
    sorted_pos_r = jnp.where(used_r, start_e[expert_r] + rank_r, 0)
    row_assign_r = jnp.where(used_r, order_p[sorted_pos_r], n)
    return BlockLayout(dest_n.reshape(idx_tk.shape).astype(jnp.int32),
                       row_assign_r.astype(jnp.int32), block_expert_g.astype(jnp.int32),
                       (padded_end_e[-1] // block_size).astype(jnp.int32))


def _silu_grad(a):
    """d silu(a) / da = sigmoid(a) (1 + a (1 - sigmoid(a)))."""
    sig = jax.nn.sigmoid(a)
    return sig * (1.0 + a * (1.0 - sig))


def _expert(experts: dispatch.ExpertParams, e: jax.Array) -> dispatch.ExpertParams:
    """Expert e's [d, f], [d, f], [f, d] weights: dynamic slices, no copy of the stack."""
    return dispatch.ExpertParams(*(jax.lax.dynamic_index_in_dim(w, e, 0, keepdims=False)
                                   for w in experts))


def _blocks_forward(x_rd, block_expert_g, num_blocks, experts: dispatch.ExpertParams,
                    block_size: int, constrain: bool, accum_dtype, keep_preactivations: bool):
    """(y [R, d],) or, with `keep_preactivations`, (y, x W_gate [R, f], x W_up [R, f]) for the
    backward; rows of unused blocks stay zero."""
    rows, d = x_rd.shape
    f = experts.gate_edf.shape[2]

    def one_block(g, carry):
        start = g * block_size
        x_bd = jax.lax.dynamic_slice_in_dim(x_rd, start, block_size)
        w = _expert(experts, block_expert_g[g])
        gate_bf = dispatch.dot("bd,df->bf", x_bd, w.gate_edf, accum_dtype)
        up_bf = dispatch.dot("bd,df->bf", x_bd, w.up_edf, accum_dtype)
        h_bf = nn.silu(gate_bf) * up_bf
        if constrain:
            h_bf = sharding.constrain(h_bf, (None, "act_mlp"))
        down_bd = dispatch.dot("bf,fd->bd", h_bf, w.down_efd, accum_dtype)
        outs = (down_bd, gate_bf, up_bf)[:len(carry)]  # the kept buffers only
        return tuple(jax.lax.dynamic_update_slice_in_dim(buf, out, start, 0)
                     for buf, out in zip(carry, outs))

    init = (jnp.zeros_like(x_rd),)
    if keep_preactivations:
        init += (jnp.zeros_like(x_rd, shape=(rows, f)),) * 2
    return jax.lax.fori_loop(0, num_blocks, one_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5, 6))
def block_swiglu(x_rd: jax.Array, block_expert_g: jax.Array, num_blocks: jax.Array,
                 experts: dispatch.ExpertParams, block_size: int,
                 constrain: bool = True, accum_dtype=jnp.float32) -> jax.Array:
    """SwiGLU of each block of `block_size` rows with its own expert's weights, over the first
    `num_blocks` blocks only (the rest are padding: zero output and gradient). [R, d] -> [R, d].

    A loop of dynamic weight slices, not one batched matmul over gathered weights: the gather
    copies a [d, f] slice per block (R / block of them, fixed by the worst-case padding) and
    its transpose scatter-adds as many [d, f] gradients into zeroed [E, d, f] stacks, so its
    cost grew with E even where most blocks were empty. Here the forward and the backward
    (custom VJP) run only the used blocks, and the backward accumulates each block's weight
    gradient into its expert's slice in place, summed across blocks in `accum_dtype` and rounded
    to the weights' dtype once at the end. On this CPU (T*K = 2048, d = f = 128, cap 64,
    8 -> 64 experts, forward + backward of the routed experts, load ~6): batched gather
    13 -> 50 ms, this loop 10 -> 18 ms.
    """
    return _blocks_forward(x_rd, block_expert_g, num_blocks, experts, block_size, constrain,
                           accum_dtype, keep_preactivations=False)[0]


def _block_swiglu_fwd(x_rd, block_expert_g, num_blocks, experts, block_size, constrain,
                      accum_dtype):
    y_rd, gate_rf, up_rf = _blocks_forward(x_rd, block_expert_g, num_blocks, experts,
                                           block_size, constrain, accum_dtype,
                                           keep_preactivations=True)
    return y_rd, (x_rd, block_expert_g, num_blocks, experts, gate_rf, up_rf)


def _block_swiglu_bwd(block_size, constrain, accum_dtype, residuals, grad_rd):
    del constrain
    x_rd, block_expert_g, num_blocks, experts, gate_rf, up_rf = residuals

    def one_block(g, carry):
        dx_rd, dgate_edf, dup_edf, ddown_efd = carry
        start, e = g * block_size, block_expert_g[g]
        x_bd, gate_bf, up_bf, dy_bd = (jax.lax.dynamic_slice_in_dim(a, start, block_size)
                                       for a in (x_rd, gate_rf, up_rf, grad_rd))
        w = _expert(experts, e)
        silu_bf = nn.silu(gate_bf)
        dh_bf = dispatch.dot("bd,fd->bf", dy_bd, w.down_efd, accum_dtype)
        dgate_bf = dh_bf * up_bf * _silu_grad(gate_bf)
        dup_bf = dh_bf * silu_bf

        def accumulate(dw_exy, a_bx, b_by):
            # a^T b of this block, added to expert e's running sum, all in accum_dtype.
            update_xy = dispatch.dot("bx,by->xy", a_bx, b_by, accum_dtype, accum_dtype)
            old_xy = jax.lax.dynamic_index_in_dim(dw_exy, e, 0, keepdims=False)
            return jax.lax.dynamic_update_index_in_dim(dw_exy, old_xy + update_xy, e, 0)

        dx_bd = dispatch.dot("bf,df->bd", dgate_bf, w.gate_edf, accum_dtype, accum_dtype) \
            + dispatch.dot("bf,df->bd", dup_bf, w.up_edf, accum_dtype, accum_dtype)
        return (jax.lax.dynamic_update_slice_in_dim(dx_rd, dx_bd.astype(dx_rd.dtype), start, 0),
                accumulate(dgate_edf, x_bd, dgate_bf), accumulate(dup_edf, x_bd, dup_bf),
                accumulate(ddown_efd, silu_bf * up_bf, dy_bd))

    init = (jnp.zeros_like(x_rd),) + tuple(jnp.zeros_like(w, dtype=accum_dtype) for w in experts)
    dx_rd, *dw = jax.lax.fori_loop(0, num_blocks, one_block, init)
    dw = [g.astype(w.dtype) for g, w in zip(dw, experts)]
    return dx_rd, None, None, dispatch.ExpertParams(*dw)


block_swiglu.defvjp(_block_swiglu_fwd, _block_swiglu_bwd)


def blocked_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                     experts: dispatch.ExpertParams, *, block_size: int,
                     constrain: bool = True, accum_dtype=jnp.float32,
                     out_dtype=None) -> jax.Array:
    """Sort by expert, pad each expert to whole blocks, run the used blocks, unsort, combine.

    Exact (no token is dropped) with static shapes: the row buffers hold the worst case,
    T*K + E*(block - 1) rows, but `block_swiglu` computes only the blocks that hold an
    assignment (T*K + E*(block - 1) rows at most, about T*K + E*block/2 when loads are
    balanced), never T*E. Padding rows read a zero row and are never read back; every row
    move is a gather in both directions (`dispatch.take_rows`). Cost per call on CPU: the loop's
    per-block overhead dominates for small blocks, the padding rows for large ones;
    `dropless_dispatch` picks the block from the shapes. `block_size` is used as given
    (capped at T*K). `constrain=False` drops the hidden activation's sharding constraint
    (inside shard_map, whose axes are manual).
    """
    k = idx_tk.shape[1]
    num_experts = experts.gate_edf.shape[0]
    block_size = min(block_size, idx_tk.size)
    layout = block_layout(idx_tk, num_experts, block_size)
    # Row r reads token row_assign_r // K (T for padding: T*K // K == T, the zero row).
    x_rd = dispatch.take_rows(x_td, layout.row_assign_r // k, layout.dest_nk)
    y_rd = block_swiglu(*dispatch.vary_alike((x_rd, layout.block_expert_g, layout.num_blocks,
                                              experts)),
                        block_size, constrain, jnp.dtype(accum_dtype))
    y_nd = dispatch.take_rows(y_rd, layout.dest_nk.reshape(-1), layout.row_assign_r[:, None])
    return dispatch.combine(y_nd, weight_tk, out_dtype or x_td.dtype)


def choose_block_size(num_assignments: int, num_experts: int, max_block_size: int) -> int:
    """Dropless block size from static shapes: the smallest power of two >= T*K / E (the
    balanced load per expert), at most `max_block_size` and T*K.

    As block < 2 * ceil(T*K / E), the padding (`padded_rows` - T*K <= E * (block - 1) plus
    the last block's rounding) stays below 2 * (T*K + E) + block rows whatever the routing:
    the rows grow with T*K, not with E * max_block_size, and a balanced load fills its blocks.
    """
    per_expert = -(-num_assignments // num_experts)
    block = 1 << (per_expert - 1).bit_length()
    return max(1, min(block, max_block_size, num_assignments))


def uses_gather(num_assignments: int, num_experts: int) -> bool:
    """Whether `dropless_dispatch` runs `dispatch.gather_dispatch`: when T*K <= 2 * E.

    There the block of `choose_block_size` is 1 or 2 rows, so the blocks are matvecs too, but
    they add the sort and the layout (small_50m decoding shapes T=8, K=2, E=12, d=512, f=384,
    forward on this CPU at load ~5: this loop 2.8 ms, blocks of 2 3.1 ms; at T*K = 24 = 2E,
    blocks 2.8, loop 3.3 ms). Above 2E the blocks win: at T*K=128, E=12, forward 3.9 vs 30 ms,
    and this loop's backward (a reverse loop carrying [E, d, f] cotangents) is several times
    slower at any T*K (T*K=16: 32 vs 13 ms), which only training on tiny batches meets.
    """
    return num_assignments <= 2 * num_experts


def dropless_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                      experts: dispatch.ExpertParams, *, block_size: int,
                      constrain: bool = True, accum_dtype=jnp.float32,
                      out_dtype=None) -> jax.Array:
    """Exact routed experts whose cost follows T*K: `dispatch.gather_dispatch` for small T*K
    (`uses_gather`), else `blocked_dispatch` with the block of `choose_block_size` (at most
    `block_size`, config.moe_block_size).

    The choice reads static shapes only, so it is made once per traced shape (prefill and
    training take the blocks, decoding the gather), and both give the same numbers.
    `constrain=False` drops the hidden activation's sharding constraint (inside shard_map).
    Under a mesh the layer runs it on each device's own tokens (`dispatch.token_local`).
    """
    num_assignments, num_experts = idx_tk.size, experts.gate_edf.shape[0]
    if uses_gather(num_assignments, num_experts):
        return dispatch.gather_dispatch(x_td, idx_tk, weight_tk, experts,
                                        accum_dtype=accum_dtype, out_dtype=out_dtype)
    block = choose_block_size(num_assignments, num_experts, block_size)
    return blocked_dispatch(x_td, idx_tk, weight_tk, experts, block_size=block,
                            constrain=constrain, accum_dtype=accum_dtype, out_dtype=out_dtype)
