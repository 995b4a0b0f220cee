"""DeepSeekMoE: router, dropless and dense expert dispatch, auxiliary-loss-free balancing.

DeepSeek-V3 report (arXiv:2412.19437):
  Sec. 2.1.2  h'_t = u_t + sum_i FFN^(s)_i(u_t) + sum_i g_{i,t} FFN^(r)_i(u_t), with affinities
              s_{i,t} = Sigmoid(u_t^T e_i) (eq. 15), experts chosen by top-K_r of s_{i,t} + b_i
              (eq. 16, the bias b_i enters selection only), gate values g_{i,t} from the unbiased
              s_{i,t}, normalised over the selected experts (eq. 13); b_i moves by gamma after
              each step towards balance (`update_bias`). Node-limited routing is the group
              restriction (`n_group`, `topk_group`) of HF `DeepseekV3TopkRouter`.
  Sec. 2.1.3  the complementary sequence-wise balance loss L_Bal (eqs. 17-20), sown as
              'aux_loss' and scaled by alpha = `aux_loss_alpha`.

Where this departs from the paper, and why:
  * Selection follows HF transformers `DeepseekV3TopkRouter` exactly (checkpoint parity):
    a group's score is the sum of its top-2 biased scores, and experts of dropped groups get a
    biased score of -inf, as in transformers 5.x and the official inference code (transformers
    4.x filled 0.0, which lets a dropped group's expert win when kept biased scores are
    negative). Gate values are multiplied by
    `routed_scaling_factor`, and normalisation adds 1e-20 to the denominator.
  * `scoring_func="softmax"` (DeepSeek-V2) uses the same path; with n_group == 1 and
    norm_topk_prob False it is V2's greedy top-k.
  * L_Bal's f_i counts the experts actually chosen (biased, group-limited selection) rather
    than the unbiased top-K of eq. 18: the loss balances the load the experts really receive.
  * Expert parallelism (`expert_parallel_dispatch`, V3 report Sec. 3.2.2: tokens are sent to
    the devices that hold their experts with all-to-all and the outputs come back the same
    way) keeps XLA's static shapes, so to stay dropless (exact) each device's exchange buffer
    holds the worst case: all T*K of its assignments bound for one device. The receiving
    device therefore runs its experts on n_ep times the balanced load (n_ep = the `expert`
    axis size). V3 trains with that exchange bounded by node-limited routing and balanced
    loads; a capacity-bounded buffer (dropping overflow) or a ragged all-to-all on GPU/TPU is
    what removes the factor, at the price of exactness.

Parameters (per MoE layer), kernels stored [in, out] as in `layers.Dense`:
  gate/kernel [d, E] ('embed', 'expert'); gate/e_score_correction_bias [E] float32 (state: the
  trainer updates it with `update_all_biases` and keeps it out of the optimizer);
  experts/{gate_proj, up_proj} [E, d, f], experts/down_proj [E, f, d]; shared_experts/... (a
  `layers.MLP` of width n_shared_experts * moe_intermediate_size).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from flax.core import frozen_dict
from jax.sharding import PartitionSpec

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import layers

BIAS = "e_score_correction_bias"
ROUTER = "gate"
EXPERT_LOAD = "expert_load"
AUX_LOSS = "aux_loss"
_BTD = ("act_batch", "act_length", "act_embed")

_SCORING: dict[str, Callable[[jax.Array], jax.Array]] = {
    "sigmoid": jax.nn.sigmoid,
    "softmax": functools.partial(jax.nn.softmax, axis=-1),
}


# ---------------------------------------------------------------------------- routing (pure)
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


def route(logits_te: jax.Array, bias_e: jax.Array, config: config_lib.ModelConfig):
    """Router logits [T, E] -> (scores_te float32, idx_tk int32, weight_tk float32)."""
    scores_te = _SCORING[config.scoring_func](logits_te.astype(jnp.float32))
    idx_tk = select_experts(scores_te, jax.lax.stop_gradient(bias_e),
                            top_k=config.num_experts_per_tok, n_group=config.n_group,
                            topk_group=config.topk_group)
    weight_tk = gate_values(scores_te, idx_tk, norm_topk_prob=config.norm_topk_prob,
                            routed_scaling_factor=config.routed_scaling_factor)
    return scores_te, idx_tk, weight_tk


# ---------------------------------------------------------------------------- statistics
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


# ---------------------------------------------------------------------------- dispatch (pure)
class ExpertParams(NamedTuple):
    """Stacked routed-expert weights, already in the compute dtype."""

    gate_edf: jax.Array
    up_edf: jax.Array
    down_efd: jax.Array


# Signature shared by every dispatch: (x_td, idx_tk, weight_tk, experts) -> y_td.
Dispatch = Callable[[jax.Array, jax.Array, jax.Array, ExpertParams], jax.Array]


def dense_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                   experts: ExpertParams) -> jax.Array:
    """Every expert on every token, weighted by a dense [T, E] gate matrix (exact; tiny E).

    Compute and memory grow with T * E; use it for small expert counts and as a reference.
    """
    num_experts = experts.gate_edf.shape[0]
    gate_te = jnp.einsum("tke,tk->te", jax.nn.one_hot(idx_tk, num_experts, dtype=jnp.float32),
                         weight_tk)
    h_tef = (nn.silu(jnp.einsum("td,edf->tef", x_td, experts.gate_edf))
             * jnp.einsum("td,edf->tef", x_td, experts.up_edf))
    h_tef = h_tef * gate_te[:, :, None].astype(h_tef.dtype)
    return jnp.einsum("tef,efd->td", h_tef, experts.down_efd)


def padded_rows(num_assignments: int, num_experts: int, block_size: int) -> int:
    """Static upper bound on rows after padding each expert's rows to a block multiple."""
    rows = num_assignments + min(num_experts, num_assignments) * (block_size - 1)
    return -(-rows // block_size) * block_size


class BlockLayout(NamedTuple):
    """Where each assignment lives in the expert-sorted, block-padded row layout.

    Assignment n = t * K + k (token t's k-th expert). The two maps are inverse on the
    T*K used rows, so every row move is a gather, forward and backward (`take_rows`).
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


def _with_zero_row(x_sd: jax.Array) -> jax.Array:
    return jnp.concatenate([x_sd, jnp.zeros((1, x_sd.shape[1]), x_sd.dtype)])


@jax.custom_vjp
def take_rows(src_sd: jax.Array, index_r: jax.Array, inverse_sk: jax.Array) -> jax.Array:
    """out[r] = src[index[r]], a zero row where index[r] == S.

    `inverse_sk` lists, for each source row, the output rows that read it (R where none), so
    the transpose is a gather + sum too (XLA's scatter-add is slow on CPU and serialises on
    accelerators). The caller guarantees the two maps are inverse.
    """
    return _with_zero_row(src_sd)[index_r]


def _take_rows_fwd(src_sd, index_r, inverse_sk):
    return take_rows(src_sd, index_r, inverse_sk), (index_r, inverse_sk)


def _take_rows_bwd(residuals, grad_rd):
    index_r, inverse_sk = residuals
    grad_sd = _with_zero_row(grad_rd)[inverse_sk].sum(axis=1)
    return grad_sd, None, None


take_rows.defvjp(_take_rows_fwd, _take_rows_bwd)


def _silu_grad(a):
    """d silu(a) / da = sigmoid(a) (1 + a (1 - sigmoid(a)))."""
    sig = jax.nn.sigmoid(a)
    return sig * (1.0 + a * (1.0 - sig))


def _expert(experts: ExpertParams, e: jax.Array) -> ExpertParams:
    """Expert e's [d, f], [d, f], [f, d] weights: dynamic slices, no copy of the stack."""
    return ExpertParams(*(jax.lax.dynamic_index_in_dim(w, e, 0, keepdims=False)
                          for w in experts))


def _vary_alike(tree):
    """Marks every array of `tree` as varying over each shard_map axis that any of them varies
    over (a no-op outside shard_map). A custom VJP must return cotangents of its inputs'
    types, so `block_swiglu` takes inputs that already vary alike; the transpose of this cast
    sums their gradients over the added axes, as for JAX's implicit casts."""
    leaves, treedef = jax.tree.flatten(tree)
    varying = [jax.typeof(a).manual_axis_type.varying for a in leaves]
    axes = frozenset().union(*varying)
    return treedef.unflatten([
        jax.lax.pcast(a, tuple(sorted(axes - v)), to="varying") if axes - v else a
        for a, v in zip(leaves, varying)])


def _blocks_forward(x_rd, block_expert_g, num_blocks, experts: ExpertParams, block_size: int,
                    constrain: bool, keep_preactivations: bool):
    """(y [R, d],) or, with `keep_preactivations`, (y, x W_gate [R, f], x W_up [R, f]) for the
    backward; rows of unused blocks stay zero."""
    rows, d = x_rd.shape
    f = experts.gate_edf.shape[2]

    def one_block(g, carry):
        start = g * block_size
        x_bd = jax.lax.dynamic_slice_in_dim(x_rd, start, block_size)
        w = _expert(experts, block_expert_g[g])
        gate_bf, up_bf = x_bd @ w.gate_edf, x_bd @ w.up_edf
        h_bf = nn.silu(gate_bf) * up_bf
        if constrain:
            h_bf = sharding.constrain(h_bf, (None, "act_mlp"))
        outs = (h_bf @ w.down_efd, gate_bf, up_bf)[:len(carry)]  # the kept buffers only
        return tuple(jax.lax.dynamic_update_slice_in_dim(buf, out, start, 0)
                     for buf, out in zip(carry, outs))

    init = (jnp.zeros_like(x_rd),)
    if keep_preactivations:
        init += (jnp.zeros_like(x_rd, shape=(rows, f)),) * 2
    return jax.lax.fori_loop(0, num_blocks, one_block, init)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def block_swiglu(x_rd: jax.Array, block_expert_g: jax.Array, num_blocks: jax.Array,
                 experts: ExpertParams, block_size: int, constrain: bool = True) -> jax.Array:
    """SwiGLU of each block of `block_size` rows with its own expert's weights, over the first
    `num_blocks` blocks only (the rest are padding: zero output and gradient). [R, d] -> [R, d].

    A loop of dynamic weight slices, not one batched matmul over gathered weights: the gather
    copies a [d, f] slice per block (R / block of them, fixed by the worst-case padding) and
    its transpose scatter-adds as many [d, f] gradients into zeroed [E, d, f] stacks, so its
    cost grew with E even where most blocks were empty. Here the forward and the backward
    (custom VJP) run only the used blocks, and the backward accumulates each block's weight
    gradient into its expert's slice in place. On this CPU (T*K = 2048, d = f = 128, cap 64,
    8 -> 64 experts, forward + backward of the routed experts, load ~6): batched gather
    13 -> 50 ms, this loop 10 -> 18 ms.
    """
    return _blocks_forward(x_rd, block_expert_g, num_blocks, experts, block_size, constrain,
                           keep_preactivations=False)[0]


def _block_swiglu_fwd(x_rd, block_expert_g, num_blocks, experts, block_size, constrain):
    y_rd, gate_rf, up_rf = _blocks_forward(x_rd, block_expert_g, num_blocks, experts,
                                           block_size, constrain, keep_preactivations=True)
    return y_rd, (x_rd, block_expert_g, num_blocks, experts, gate_rf, up_rf)


def _block_swiglu_bwd(block_size, constrain, residuals, grad_rd):
    del constrain
    x_rd, block_expert_g, num_blocks, experts, gate_rf, up_rf = residuals

    def one_block(g, carry):
        dx_rd, dgate_edf, dup_edf, ddown_efd = carry
        start, e = g * block_size, block_expert_g[g]
        x_bd, gate_bf, up_bf, dy_bd = (jax.lax.dynamic_slice_in_dim(a, start, block_size)
                                       for a in (x_rd, gate_rf, up_rf, grad_rd))
        w = _expert(experts, e)
        silu_bf = nn.silu(gate_bf)
        dh_bf = dy_bd @ w.down_efd.T
        dgate_bf = dh_bf * up_bf * _silu_grad(gate_bf)
        dup_bf = dh_bf * silu_bf

        def accumulate(dw_exy, update_xy):
            old_xy = jax.lax.dynamic_index_in_dim(dw_exy, e, 0, keepdims=False)
            return jax.lax.dynamic_update_index_in_dim(dw_exy, old_xy + update_xy, e, 0)

        dx_bd = dgate_bf @ w.gate_edf.T + dup_bf @ w.up_edf.T
        return (jax.lax.dynamic_update_slice_in_dim(dx_rd, dx_bd, start, 0),
                accumulate(dgate_edf, x_bd.T @ dgate_bf), accumulate(dup_edf, x_bd.T @ dup_bf),
                accumulate(ddown_efd, (silu_bf * up_bf).T @ dy_bd))

    init = tuple(jnp.zeros_like(a) for a in (x_rd, *experts))
    dx_rd, *dw = jax.lax.fori_loop(0, num_blocks, one_block, init)
    return dx_rd, None, None, ExpertParams(*dw)


block_swiglu.defvjp(_block_swiglu_fwd, _block_swiglu_bwd)


def blocked_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                     experts: ExpertParams, *, block_size: int,
                     constrain: bool = True) -> jax.Array:
    """Sort by expert, pad each expert to whole blocks, run the used blocks, unsort, combine.

    Exact (no token is dropped) with static shapes: the row buffers hold the worst case,
    T*K + E*(block - 1) rows, but `block_swiglu` computes only the blocks that hold an
    assignment (T*K + E*(block - 1) rows at most, about T*K + E*block/2 when loads are
    balanced), never T*E. Padding rows read a zero row and are never read back; every row
    move is a gather in both directions (`take_rows`). Cost per call on CPU: the loop's
    per-block overhead dominates for small blocks, the padding rows for large ones;
    `dropless_dispatch` picks the block from the shapes. `block_size` is used as given
    (capped at T*K). `constrain=False` drops the hidden activation's sharding constraint
    (inside shard_map, whose axes are manual).
    """
    t, d = x_td.shape
    k = idx_tk.shape[1]
    num_experts = experts.gate_edf.shape[0]
    block_size = min(block_size, idx_tk.size)
    layout = block_layout(idx_tk, num_experts, block_size)
    # Row r reads token row_assign_r // K (T for padding: T*K // K == T, the zero row).
    x_rd = take_rows(x_td, layout.row_assign_r // k, layout.dest_nk)
    y_rd = block_swiglu(*_vary_alike((x_rd, layout.block_expert_g, layout.num_blocks, experts)),
                        block_size, constrain)
    y_nd = take_rows(y_rd, layout.dest_nk.reshape(-1), layout.row_assign_r[:, None])
    y_td = jnp.einsum("tkd,tk->td", y_nd.reshape(t, k, d).astype(jnp.float32), weight_tk)
    return y_td.astype(x_td.dtype)


def gather_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                    experts: ExpertParams) -> jax.Array:
    """One SwiGLU matvec per assignment with its own expert's [d, f] weight slices (exact).

    No sort and no padding: compute and weight reads are T*K slices, the cheapest dropless
    path when T*K is about E or less (decoding; see `uses_gather`). A loop of dynamic slices
    rather than one [T*K, d, f] gather: on this CPU (T=8, K=2, E=12, d=512, f=384, forward)
    the gather took 26 ms, this loop 2.4 ms, every-expert `dense_dispatch` 4.4 ms.
    """
    t, d = x_td.shape
    k = idx_tk.shape[1]
    expert_n = idx_tk.reshape(t * k)

    def one_assignment(n, y_nd):
        x_1d = jax.lax.dynamic_slice_in_dim(x_td, n // k, 1)
        gate_df, up_df, down_fd = (jax.lax.dynamic_index_in_dim(w, expert_n[n], 0, False)
                                   for w in experts)
        h_1f = nn.silu(x_1d @ gate_df) * (x_1d @ up_df)
        return jax.lax.dynamic_update_slice_in_dim(y_nd, h_1f @ down_fd, n, 0)

    y_nd = jax.lax.fori_loop(0, t * k, one_assignment, jnp.zeros((t * k, d), x_td.dtype))
    y_td = jnp.einsum("tkd,tk->td", y_nd.reshape(t, k, d).astype(jnp.float32), weight_tk)
    return y_td.astype(x_td.dtype)


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
    """Whether `dropless_dispatch` runs `gather_dispatch`: when T*K <= 2 * E.

    There the block of `choose_block_size` is 1 or 2 rows, so the blocks are matvecs too, but
    they add the sort and the layout (small_50m decoding shapes T=8, K=2, E=12, d=512, f=384,
    forward on this CPU at load ~5: this loop 2.8 ms, blocks of 2 3.1 ms; at T*K = 24 = 2E,
    blocks 2.8, loop 3.3 ms). Above 2E the blocks win: at T*K=128, E=12, forward 3.9 vs 30 ms,
    and this loop's backward (a reverse loop carrying [E, d, f] cotangents) is several times
    slower at any T*K (T*K=16: 32 vs 13 ms), which only training on tiny batches meets.
    """
    return num_assignments <= 2 * num_experts


def dropless_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                      experts: ExpertParams, *, block_size: int,
                      constrain: bool = True) -> jax.Array:
    """Exact routed experts whose cost follows T*K: `gather_dispatch` for small T*K
    (`uses_gather`), else `blocked_dispatch` with the block of `choose_block_size` (at most
    `block_size`, config.moe_block_size).

    The choice reads static shapes only, so it is made once per traced shape (prefill and
    training take the blocks, decoding the gather), and both give the same numbers.
    `constrain=False` drops the hidden activation's sharding constraint (inside shard_map).
    """
    num_assignments, num_experts = idx_tk.size, experts.gate_edf.shape[0]
    if uses_gather(num_assignments, num_experts):
        return gather_dispatch(x_td, idx_tk, weight_tk, experts)
    block = choose_block_size(num_assignments, num_experts, block_size)
    return blocked_dispatch(x_td, idx_tk, weight_tk, experts, block_size=block,
                            constrain=constrain)


EP_AXIS = "expert"


class ExchangeLayout(NamedTuple):
    """Where each assignment sits in the per-destination send buffer [n_ep * C, d].

    Assignment n = t * K + k. Destination device s = expert // experts per device; its rows
    are s * C .. s * C + count_s - 1 in assignment order; the rest of the block is padding.
    """

    slot_nk: jax.Array         # [T, K] send-buffer row of each assignment
    row_assign_r: jax.Array    # [n_ep * C] assignment held by each row; T*K marks padding


def exchange_layout(idx_tk: jax.Array, experts_per_device: int, num_devices: int,
                    capacity: int) -> ExchangeLayout:
    """Groups assignments by destination device into blocks of `capacity` rows."""
    n = idx_tk.size
    dest_n = idx_tk.reshape(n) // experts_per_device
    order_p = jnp.argsort(dest_n, stable=True)
    dest_p = dest_n[order_p]
    devices_s = jnp.arange(num_devices)
    start_s = jnp.searchsorted(dest_p, devices_s, side="left")
    count_s = jnp.searchsorted(dest_p, devices_s, side="right") - start_s
    slot_p = dest_p * capacity + jnp.arange(n) - start_s[dest_p]
    slot_n = slot_p[jnp.argsort(order_p)]
    device_r = jnp.repeat(devices_s, capacity)
    rank_r = jnp.tile(jnp.arange(capacity), num_devices)
    used_r = rank_r < count_s[device_r]
    row_assign_r = jnp.where(used_r, order_p[jnp.where(used_r, start_s[device_r] + rank_r, 0)], n)
    return ExchangeLayout(slot_n.reshape(idx_tk.shape).astype(jnp.int32),
                          row_assign_r.astype(jnp.int32))


def _exchange(x, axis_name: str, num_devices: int):
    """[n_ep * C, ...] blocks by destination -> [n_ep * C, ...] blocks by source."""
    blocks = x.reshape((num_devices, -1) + x.shape[1:])
    return jax.lax.all_to_all(blocks, axis_name, 0, 0).reshape(x.shape)


def _ep_local(x_td, idx_tk, weight_tk, experts: ExpertParams, *, block_size: int,
              num_devices: int):
    """One device's share of `expert_parallel_dispatch` (inside shard_map): send rows to the
    experts' devices, run the local experts (dropless), send the outputs back, combine."""
    t, d = x_td.shape
    k = idx_tk.shape[1]
    local_experts = experts.gate_edf.shape[0]
    capacity = t * k  # worst case: every assignment bound for one device (exact, see above)
    layout = exchange_layout(idx_tk, local_experts, num_devices, capacity)
    x_rd = take_rows(x_td, layout.row_assign_r // k, layout.slot_nk)
    padding_r = layout.row_assign_r == t * k
    local_r = jnp.where(padding_r, 0, idx_tk.reshape(-1)[jnp.minimum(layout.row_assign_r,
                                                                     t * k - 1)] % local_experts)
    x_rd = _exchange(x_rd, EP_AXIS, num_devices)
    local_r = _exchange(local_r, EP_AXIS, num_devices)
    keep_r = _exchange(1.0 - padding_r.astype(jnp.float32), EP_AXIS, num_devices)
    # The received rows are tokens with one expert each; padding rows get gate 0.
    y_rd = dropless_dispatch(x_rd, local_r[:, None], keep_r[:, None], experts,
                             block_size=block_size, constrain=False)
    y_rd = _exchange(y_rd, EP_AXIS, num_devices)
    y_nd = take_rows(y_rd, layout.slot_nk.reshape(-1), layout.row_assign_r[:, None])
    y_td = jnp.einsum("tkd,tk->td", y_nd.reshape(t, k, d).astype(jnp.float32), weight_tk)
    return jax.lax.psum(y_td, "tensor").astype(x_td.dtype)


def _axes_size(mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))


def expert_parallel_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                             experts: ExpertParams, *, block_size: int) -> jax.Array:
    """Routed experts sharded over the `expert` mesh axis, tokens exchanged by all-to-all.

    DeepSeek-V3 report Sec. 3.2.2 (expert parallelism with all-to-all dispatch and combine).
    Inside `jax.shard_map` over the mesh set with `jax.set_mesh`, each device holds T / (data
    * fsdp * expert) tokens and E / n_ep experts (their f split over `tensor`, whose partial
    outputs are summed): it sends each token row to the devices owning its experts, runs its
    experts on what it receives (`dropless_dispatch`), and returns the outputs to their tokens,
    which it combines with the gates g. Exact: the same result as `dropless_dispatch` (see
    the module docstring for the buffer cost). Without a mesh, with n_ep == 1, or when the T
    tokens do not split evenly over the token shards (a [1, 1] `init` under a mesh), it is
    `dropless_dispatch`: the same numbers without the exchange.
    """
    mesh = jax.sharding.get_abstract_mesh()
    tokens = sharding.logical_to_spec(("act_batch", None))
    if (mesh.empty or mesh.shape.get(EP_AXIS, 1) == 1
            or x_td.shape[0] % _axes_size(mesh, tokens[0])):
        return dropless_dispatch(x_td, idx_tk, weight_tk, experts, block_size=block_size)
    num_devices = mesh.shape[EP_AXIS]
    if experts.gate_edf.shape[0] % num_devices:
        raise ValueError(f"expert_parallel_dispatch: {experts.gate_edf.shape[0]} experts do "
                         f"not divide over the {num_devices} devices of the '{EP_AXIS}' axis")
    ffn_in, ffn_out = PartitionSpec(EP_AXIS, None, "tensor"), PartitionSpec(EP_AXIS, "tensor")
    local = jax.shard_map(
        functools.partial(_ep_local, block_size=block_size, num_devices=num_devices),
        mesh=mesh, in_specs=(tokens, tokens, tokens, ExpertParams(ffn_in, ffn_in, ffn_out)),
        out_specs=tokens)
    return local(x_td, idx_tk, weight_tk, experts)


def get_dispatch(config: config_lib.ModelConfig) -> Dispatch:
    """The dispatch function named by `config.moe_dispatch` (chosen once, at module build)."""
    if config.moe_dispatch == "dense":
        return dense_dispatch
    if config.moe_dispatch == "expert_parallel":
        return functools.partial(expert_parallel_dispatch, block_size=config.moe_block_size)
    return functools.partial(dropless_dispatch, block_size=config.moe_block_size)


# ---------------------------------------------------------------------------- modules
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
        return route(logits_te, bias_e, self.config)


class Experts(nn.Module):
    """The N_r routed SwiGLU experts, stacked; applies the configured dispatch."""

    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array) -> jax.Array:
        cfg = self.config
        e, d, f = cfg.n_routed_experts, x_td.shape[-1], cfg.moe_intermediate_size
        dtype = layers.dtype_of(cfg.dtype)
        experts = ExpertParams(
            layers.param(self, "gate_proj", (e, d, f), ("expert", "embed", "mlp"), cfg),
            layers.param(self, "up_proj", (e, d, f), ("expert", "embed", "mlp"), cfg),
            layers.param(self, "down_proj", (e, f, d), ("expert", "mlp", "embed"), cfg))
        experts = ExpertParams(*(w.astype(dtype) for w in experts))
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
        scores_te, idx_tk, weight_tk = Router(cfg, name=ROUTER)(x_td)
        self.sow("intermediates", EXPERT_LOAD, expert_load(idx_tk, cfg.n_routed_experts))
        self.sow("intermediates", AUX_LOSS, sequence_balance_loss(
            scores_te.reshape(b, t, -1), idx_tk.reshape(b, t, -1), cfg.aux_loss_alpha))
        y_btd = Experts(cfg, name="experts")(x_td, idx_tk, weight_tk).reshape(b, t, d)
        if cfg.n_shared_experts > 0:
            shared = layers.MLP(cfg.n_shared_experts * cfg.moe_intermediate_size, cfg,
                                name="shared_experts")
            y_btd = y_btd + shared(x_btd)
        return sharding.constrain(y_btd.astype(x_btd.dtype), _BTD)


# ---------------------------------------------------------------------------- bias balancing
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
        if path[-1] == BIAS and path[-2] == ROUTER:
            layer = _join(path[:-2])
            if layer not in loads:
                raise KeyError(f"update_all_biases: no '{EXPERT_LOAD}' sown for MoE layer "
                               f"'{layer}'; apply the model with mutable=['intermediates']")
            flat[path] = update_bias(bias, loads[layer], gamma)
    new_params = traverse_util.unflatten_dict(flat)
    return frozen_dict.freeze(new_params) if isinstance(params, frozen_dict.FrozenDict) else new_params
