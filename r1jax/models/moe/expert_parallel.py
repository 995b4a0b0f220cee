"""Expert-parallel dispatch: experts over the `expert` mesh axis; only real rows are exchanged
and computed.

DeepSeek-V3 report (arXiv:2412.19437) Sec. 3.2.2: tokens are sent to the devices that hold
their experts with all-to-all, and the outputs come back the same way. Here, per device:
  1. sort its T*K assignments by expert (so by destination device, then local expert);
  2. all-gather the per-(destination, local expert) counts over the `expert` axis (n_ep * E
     integers): every device then knows where every slice goes (`exchange_plan`);
  3. a ragged all-to-all writes each slice straight into its expert's group on the receiver,
     so the received rows are grouped by local expert with no second sort;
  4. grouped matmul over the local experts whose group sizes are the real rows received:
     padding rows join no group, so no expert computes them. On GPU/TPU one grouped GEMM per
     projection (`grouped.grouped_swiglu`, `jax.lax.ragged_dot`); on the CPU, which expands
     ragged_dot into a masked product over every local expert, the block loop of `dropless`
     over the same groups (`grouped_blocks`);
  5. the reverse ragged all-to-all returns each output to its assignment's sorted slot; the
     outputs are unsorted and combined with the gates g.
No capacity factor, no dropped token: exact.

The exchange (`ragged_exchange`): `jax.lax.ragged_all_to_all` on GPU/TPU, which moves only the
real rows. XLA:CPU cannot compile it (jax 0.10.2: "HLO opcode `ragged-all-to-all` is not
supported by XLA:CPU ThunkEmitter"), so on the CPU `emulated_ragged_all_to_all` gives the same
result from the same arguments with a dense all-to-all of per-peer blocks sized for the worst
case (row gathers on both sides, gathers in the backward too). What is checked on the CPU
(tests/models/test_moe_ep.py): the emulation against the primitive's documented semantics; the
"ragged" path itself, forward and gradients (JAX's transpose of the primitive), with the
primitive lowered through the emulation by a test-only rule; its lowering for CUDA (ragged
all-to-all custom calls and ragged_dot). Not checked: a GPU/TPU running it.

Where this departs from the paper, and why: XLA's shapes are static, so the receive buffer
holds the worst case, n_ep * T * min(K, E / n_ep) rows (every peer's tokens routed to this
device: each token sends at most min(K, local experts) rows to one device). Only its first
sum(group sizes) rows are real and computed; the rest is memory, not work, but that memory
grows with n_ep for a fixed per-device batch. Bounding it without dropping would take several
exchange rounds when a device's rows overflow a smaller buffer (not done).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from r1jax import sharding
from r1jax.models.moe import dispatch, dropless, grouped

EP_AXIS = "expert"
EXCHANGES = ("auto", "ragged", "emulated")


def _exclusive_cumsum(x: jax.Array, axis: int = -1) -> jax.Array:
    return jnp.cumsum(x, axis=axis) - x


def _packed_slot(sizes_i: jax.Array, rows: int):
    """Slices packed back to back in index order: for each position q < rows, (slice, rank
    within it, whether q is inside a slice). sizes_i [S] -> three [rows] arrays."""
    end_i = jnp.cumsum(sizes_i)
    q = jnp.arange(rows)
    slice_q = jnp.searchsorted(end_i, q, side="right")
    inside_q = slice_q < sizes_i.shape[0]
    slice_q = jnp.minimum(slice_q, sizes_i.shape[0] - 1)
    return slice_q, q - (end_i - sizes_i)[slice_q], inside_q


def _placed_slot(offsets_i: jax.Array, sizes_i: jax.Array, rows: int):
    """Non-overlapping slices at any offsets: for each position g < rows, (the slice that
    covers it, rank within it, whether one does). Empty slices are moved past the end, so an
    empty slice at the same offset as a real one never hides it."""
    start_i = jnp.where(sizes_i > 0, offsets_i, rows)
    order_i = jnp.argsort(start_i)
    g = jnp.arange(rows)
    candidate = jnp.searchsorted(start_i[order_i], g, side="right") - 1
    slice_g = order_i[jnp.maximum(candidate, 0)]
    rank_g = g - start_i[slice_g]
    return slice_g, rank_g, (candidate >= 0) & (rank_g < sizes_i[slice_g])


def _block_maps(offsets_i, sizes_i, rows: int, *, num_devices: int, block_rows: int):
    """Row maps between a buffer of `rows` rows whose slices i sit at `offsets_i` and per-peer
    blocks [n_ep * block_rows] holding the same slices packed back to back (peer j's S slices,
    entries j*S .. j*S + S - 1, in block j). Inverse on the slices' rows, as
    `dispatch.take_rows` wants.

    Returns:
      (buffer row of each block row, `rows` for padding: [n_ep * block_rows];
       block row of each buffer row, n_ep * block_rows where no slice covers it: [rows];
       whether a slice covers each buffer row: [rows] bool).
    """
    per_peer = offsets_i.shape[0] // num_devices
    sizes_ji = sizes_i.reshape(num_devices, per_peer)
    slice_jq, rank_jq, inside_jq = jax.vmap(lambda s: _packed_slot(s, block_rows))(sizes_ji)
    placed_jq = jnp.take_along_axis(offsets_i.reshape(num_devices, per_peer), slice_jq,
                                    axis=1) + rank_jq
    placed_r = jnp.where(inside_jq, placed_jq, rows).reshape(-1)
    slice_g, rank_g, inside_g = _placed_slot(offsets_i, sizes_i, rows)
    packed_start_i = _exclusive_cumsum(sizes_ji).reshape(-1)
    block_g = (slice_g // per_peer) * block_rows + packed_start_i[slice_g] + rank_g
    return placed_r, jnp.where(inside_g, block_g, num_devices * block_rows), inside_g


def emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes, output_offsets,
                               recv_sizes, *, axis_name: str, num_devices: int,
                               block_rows: int):
    """`jax.lax.ragged_all_to_all`'s result from its arguments, with a dense all-to-all.

    Each device packs the slices bound for peer j back to back into block j of `block_rows`
    rows (the caller guarantees that no device sends more to one peer), exchanges the blocks
    with `jax.lax.all_to_all`, and writes each received slice at the offset its sender chose
    (`output_offsets` as seen by the receiver, one tiny all-to-all). Every row move is
    `dispatch.take_rows`, so the backward is gathers too. Exact; it moves n_ep * block_rows
    rows per device whatever the counts (the XLA:CPU stand-in, see the module docstring).

    Args:
      operand: [N, ...] rows to send; output: [M, ...] the buffer the received rows update.
      input_offsets, send_sizes, output_offsets, recv_sizes: [n_ep * S] int32, S slices per
        peer, with `jax.lax.ragged_all_to_all`'s meanings.
    Returns:
      [M, ...]: `output` with the received slices written in.
    """
    n, m = operand.shape[0], output.shape[0]
    maps = functools.partial(_block_maps, num_devices=num_devices, block_rows=block_rows)
    src_r, block_p, _ = maps(input_offsets, send_sizes, n)
    blocks = dispatch.take_rows(operand, src_r, block_p[:, None])
    blocks = jax.lax.all_to_all(blocks.reshape((num_devices, block_rows) + operand.shape[1:]),
                                axis_name, 0, 0).reshape((-1,) + operand.shape[1:])
    # Block s now holds source s's slices for this device, packed in slice order.
    landing_i = jax.lax.all_to_all(output_offsets, axis_name, 0, 0, tiled=True)
    out_r, block_g, inside_g = maps(landing_i, recv_sizes, m)
    received = dispatch.take_rows(blocks, block_g, out_r[:, None])
    return jnp.where(inside_g.reshape((m,) + (1,) * (output.ndim - 1)), received, output)


def ragged_exchange(operand, output, input_offsets, send_sizes, output_offsets, recv_sizes, *,
                    exchange: str, num_devices: int, block_rows: int):
    """Ragged all-to-all over the `expert` axis: the real primitive (`exchange="ragged"`, for
    GPU/TPU) or its CPU emulation (`"emulated"`); same arguments, same result."""
    if exchange == "ragged":
        # The primitive types its result like `output` (jax 0.10.2): a zero buffer that does not
        # vary over the axis would make the exchanged rows look replicated, and the transpose
        # of that implicit cast would sum the rows' gradients over the devices.
        missing = tuple(sorted(jax.typeof(operand).manual_axis_type.varying
                               - jax.typeof(output).manual_axis_type.varying))
        if missing:
            output = jax.lax.pcast(output, missing, to="varying")
        return jax.lax.ragged_all_to_all(operand, output, input_offsets, send_sizes,
                                         output_offsets, recv_sizes, axis_name=EP_AXIS)
    return emulated_ragged_all_to_all(operand, output, input_offsets, send_sizes,
                                      output_offsets, recv_sizes, axis_name=EP_AXIS,
                                      num_devices=num_devices, block_rows=block_rows)


class ExchangePlan(NamedTuple):
    """One device's offsets and sizes for both exchanges, from the counts C[s, j, e] (rows that
    device s sends to local expert e of device j). Slice (j, e) of the forward exchange is
    entry j * E_local + e; slice (s, e) of the reverse one is entry s * E_local + e.

    On the receiver, expert e's group starts at the sum of the earlier groups, and within it
    the senders' slices follow in device order: so the received rows are grouped by expert.
    """

    send_offsets: jax.Array    # [n_ep * E_l] where slice (j, e) starts in my sorted rows
    send_sizes: jax.Array      # [n_ep * E_l] C[me, j, e]
    remote_offsets: jax.Array  # [n_ep * E_l] where slice (j, e) lands in j's grouped rows
    recv_offsets: jax.Array    # [n_ep * E_l] where slice (s, e) from s lands in my grouped rows
    recv_sizes: jax.Array      # [n_ep * E_l] C[s, me, e]
    return_offsets: jax.Array  # [n_ep * E_l] where slice (s, e) starts in s's sorted rows
    group_sizes: jax.Array     # [E_l] my grouped rows per local expert (sum = real rows)


def exchange_plan(counts_sje: jax.Array, me: jax.Array) -> ExchangePlan:
    """`ExchangePlan` of device `me` from the all-gathered counts [n_ep, n_ep, E_l] int32."""
    groups_je = counts_sje.sum(axis=0)
    group_start_je = _exclusive_cumsum(groups_je, axis=1)
    earlier_sje = _exclusive_cumsum(counts_sje, axis=0)  # rows of devices before s
    landing_sje = group_start_je[None] + earlier_sje
    n_ep = counts_sje.shape[0]
    sorted_start_sje = _exclusive_cumsum(counts_sje.reshape(n_ep, -1)).reshape(counts_sje.shape)
    flat = functools.partial(jnp.reshape, shape=(-1,))
    return ExchangePlan(
        send_offsets=flat(sorted_start_sje[me]), send_sizes=flat(counts_sje[me]),
        remote_offsets=flat(landing_sje[me]), recv_offsets=flat(landing_sje[:, me]),
        recv_sizes=flat(counts_sje[:, me]), return_offsets=flat(sorted_start_sje[:, me]),
        group_sizes=groups_je[me])


def grouped_blocks(x_gd, group_sizes_e, experts: dispatch.ExpertParams, *, block_size: int,
                   accum_dtype):
    """The CPU's local expert compute: `dropless.block_swiglu` over rows already grouped by
    expert (group e: `group_sizes_e[e]` rows, after the earlier groups; rows past their sum are
    padding). Each group is padded to whole blocks of `block_size` and only blocks that hold a
    real row run, so padding rows join no block. XLA:CPU expands `ragged_dot` into a masked
    product over every local expert (E_l times the work); the block loop is the CPU's
    grouped matmul, as in `dropless`. [R, d] -> [R, d], padding rows zero.
    """
    rows = x_gd.shape[0]
    local_experts = group_sizes_e.shape[0]
    group_end_e = jnp.cumsum(group_sizes_e)
    padded_e = -(-group_sizes_e // block_size) * block_size
    padded_end_e = jnp.cumsum(padded_e)
    padded_rows = dropless.padded_rows(rows, local_experts, block_size)
    block_expert_b = jnp.minimum(jnp.searchsorted(
        padded_end_e, jnp.arange(0, padded_rows, block_size), side="right"), local_experts - 1)
    expert_r = jnp.repeat(block_expert_b, block_size)
    rank_r = jnp.arange(padded_rows) - (padded_end_e - padded_e)[expert_r]
    used_r = rank_r < group_sizes_e[expert_r]
    grouped_r = jnp.where(used_r, group_end_e[expert_r] - group_sizes_e[expert_r] + rank_r, rows)
    expert_g = jnp.minimum(jnp.searchsorted(group_end_e, jnp.arange(rows), side="right"),
                           local_experts - 1)
    padded_g = (padded_end_e - padded_e)[expert_g] + jnp.arange(rows) - (
        group_end_e - group_sizes_e)[expert_g]
    padded_g = jnp.where(jnp.arange(rows) < group_end_e[-1], padded_g, padded_rows)
    x_rd = dispatch.take_rows(x_gd, grouped_r, padded_g[:, None])
    y_rd = dropless.block_swiglu(*dispatch.vary_alike((
        x_rd, block_expert_b, (padded_end_e[-1] // block_size).astype(jnp.int32), experts)),
        block_size, False, jnp.dtype(accum_dtype))
    return dispatch.take_rows(y_rd, padded_g, grouped_r[:, None])


def _ep_local(x_td, idx_tk, weight_tk, experts: dispatch.ExpertParams, *, num_devices: int,
              exchange: str, block_size: int, accum_dtype, out_dtype):
    """One device's share of `expert_parallel_dispatch` (inside shard_map): sort, exchange the
    real rows, grouped SwiGLU, exchange back, unsort, combine. Returns (y_td, group_sizes [1,
    E_l])."""
    t, d = x_td.shape
    k = idx_tk.shape[1]
    local_experts = experts.gate_edf.shape[0]
    layout = grouped.sort_by_expert(idx_tk, num_devices * local_experts)
    x_pd = dispatch.take_rows(x_td, layout.order_p // k, layout.rank_tk)
    counts_sje = jax.lax.all_gather(layout.group_sizes_e.reshape(num_devices, local_experts),
                                    EP_AXIS)
    plan = exchange_plan(counts_sje, jax.lax.axis_index(EP_AXIS))
    # A token sends at most min(K, E_l) rows to one device: the per-peer and receive bounds.
    block_rows = t * min(k, local_experts)
    move = functools.partial(ragged_exchange, exchange=exchange, num_devices=num_devices,
                             block_rows=block_rows)
    x_gd = move(x_pd, jnp.zeros((num_devices * block_rows, d), x_pd.dtype), plan.send_offsets,
                plan.send_sizes, plan.remote_offsets, plan.recv_sizes)
    if exchange == "ragged":  # GPU/TPU: one grouped GEMM per projection
        y_gd = grouped.grouped_swiglu(x_gd, plan.group_sizes, experts, accum_dtype)
    else:
        y_gd = grouped_blocks(x_gd, plan.group_sizes, experts, accum_dtype=accum_dtype,
                              block_size=dropless.choose_block_size(t * k, local_experts,
                                                                    block_size))
    y_pd = move(y_gd, jnp.zeros_like(x_pd), plan.recv_offsets, plan.recv_sizes,
                plan.return_offsets, plan.send_sizes)
    y_nd = dispatch.take_rows(y_pd, layout.rank_tk.reshape(-1), layout.order_p[:, None])
    # The f slices over `tensor` give partial outputs: summed in float32, rounded once.
    y_td = jax.lax.psum(dispatch.combine(y_nd, weight_tk, jnp.float32), "tensor")
    return y_td.astype(out_dtype), plan.group_sizes[None]


def _axes_size(mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))


def resolve_exchange(exchange: str) -> str:
    """"auto" -> "ragged" on GPU/TPU, "emulated" elsewhere (XLA:CPU cannot compile the
    ragged all-to-all); anything else is returned after a check."""
    if exchange not in EXCHANGES:
        raise ValueError(f"expert_parallel_dispatch: exchange={exchange!r}, expected one of "
                         f"{EXCHANGES}")
    if exchange == "auto":
        return "ragged" if jax.default_backend() in ("gpu", "tpu") else "emulated"
    return exchange


def expert_parallel_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                             experts: dispatch.ExpertParams, *, block_size: int,
                             accum_dtype=jnp.float32, out_dtype=None, exchange: str = "auto",
                             return_group_sizes: bool = False):
    """Routed experts sharded over the `expert` mesh axis; only real rows exchanged and computed.

    DeepSeek-V3 report Sec. 3.2.2 (expert parallelism, all-to-all dispatch and combine).
    Inside `jax.shard_map` over the mesh set with `jax.set_mesh`, each device holds T / (data
    * fsdp * expert) tokens and E / n_ep experts (their f split over `tensor`, whose partial
    outputs are summed); the steps are in the module docstring. Exact: the same result as
    `dispatch.dense_dispatch`. Without a mesh, with n_ep == 1, or when the T tokens do not
    split evenly over the token shards (a [1, 1] `init` under a mesh), it is
    `dropless.dropless_dispatch` (with `block_size`): the same numbers without the exchange.

    Args:
      x_td: [T, d] tokens; idx_tk: [T, K] int32 experts; weight_tk: [T, K] float32 gates g.
      experts: the [E, d, f], [E, d, f], [E, f, d] stacks (sharded over `expert` by the rules).
      block_size: the block cap (config.moe_block_size) of the CPU's block loop and of the
        dropless dispatch used without the exchange.
      accum_dtype: matmul accumulation dtype.
      out_dtype: the result's dtype (default x's).
      exchange: "ragged" (`jax.lax.ragged_all_to_all`, GPU/TPU), "emulated" (CPU stand-in,
        `emulated_ragged_all_to_all`) or "auto" (by backend, `resolve_exchange`).
      return_group_sizes: also return the group sizes fed to the grouped matmul, [token shards,
        E / n_ep] int32 (row i: the i-th token shard's device, in mesh order); for tests.
    Returns:
      y_td [T, d], or (y_td, group sizes) with `return_group_sizes` (None without exchange).
    """
    exchange = resolve_exchange(exchange)
    mesh = jax.sharding.get_abstract_mesh()
    tokens = sharding.logical_to_spec(("act_batch", None))
    if (mesh.empty or mesh.shape.get(EP_AXIS, 1) == 1
            or x_td.shape[0] % _axes_size(mesh, tokens[0])):
        y_td = dropless.dropless_dispatch(x_td, idx_tk, weight_tk, experts,
                                          block_size=block_size, accum_dtype=accum_dtype,
                                          out_dtype=out_dtype)
        return (y_td, None) if return_group_sizes else y_td
    num_devices = mesh.shape[EP_AXIS]
    if experts.gate_edf.shape[0] % num_devices:
        raise ValueError(f"expert_parallel_dispatch: {experts.gate_edf.shape[0]} experts do "
                         f"not divide over the {num_devices} devices of the '{EP_AXIS}' axis")
    ffn_in, ffn_out = PartitionSpec(EP_AXIS, None, "tensor"), PartitionSpec(EP_AXIS, "tensor")
    experts_spec = dispatch.ExpertParams(ffn_in, ffn_in, ffn_out)
    local = jax.shard_map(
        functools.partial(_ep_local, num_devices=num_devices, exchange=exchange,
                          block_size=block_size, accum_dtype=accum_dtype,
                          out_dtype=out_dtype or x_td.dtype),
        mesh=mesh, in_specs=(tokens, tokens, tokens, experts_spec),
        out_specs=(tokens, PartitionSpec(tokens[0], None)))
    y_td, group_sizes = local(x_td, idx_tk, weight_tk, experts)
    return (y_td, group_sizes) if return_group_sizes else y_td
