"""Expert-parallel dispatch: experts over the `expert` mesh axis, tokens sent by all-to-all.

DeepSeek-V3 report (arXiv:2412.19437) Sec. 3.2.2: tokens are sent to the devices that hold
their experts with all-to-all, and the outputs come back the same way. Each device runs its own
experts with `dropless.dropless_dispatch`.

Where this departs from the paper, and why: XLA's shapes are static, so to stay dropless (exact)
each device's exchange buffer holds the worst case, all T*K of its assignments bound for one
device. The receiving device therefore runs its experts on n_ep times the balanced load (n_ep =
the `expert` axis size). V3 trains with that exchange bounded by node-limited routing and
balanced loads; a capacity-bounded buffer (dropping overflow) or a ragged all-to-all on GPU/TPU
is what removes the factor, at the price of exactness.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec

from r1jax import sharding
from r1jax.models.moe import dispatch, dropless

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


def _ep_local(x_td, idx_tk, weight_tk, experts: dispatch.ExpertParams, *, block_size: int,
              num_devices: int, accum_dtype):
    """One device's share of `expert_parallel_dispatch` (inside shard_map): send rows to the
    experts' devices, run the local experts (dropless), send the outputs back, combine."""
    t, d = x_td.shape
    k = idx_tk.shape[1]
    local_experts = experts.gate_edf.shape[0]
    capacity = t * k  # worst case: every assignment bound for one device (exact; module docstring)
    layout = exchange_layout(idx_tk, local_experts, num_devices, capacity)
    x_rd = dispatch.take_rows(x_td, layout.row_assign_r // k, layout.slot_nk)
    padding_r = layout.row_assign_r == t * k
    local_r = jnp.where(padding_r, 0, idx_tk.reshape(-1)[jnp.minimum(layout.row_assign_r,
                                                                     t * k - 1)] % local_experts)
    x_rd = _exchange(x_rd, EP_AXIS, num_devices)
    local_r = _exchange(local_r, EP_AXIS, num_devices)
    keep_r = _exchange(1.0 - padding_r.astype(jnp.float32), EP_AXIS, num_devices)
    # The received rows are tokens with one expert each; padding rows get gate 0.
    y_rd = dropless.dropless_dispatch(x_rd, local_r[:, None], keep_r[:, None], experts,
                                      block_size=block_size, constrain=False,
                                      accum_dtype=accum_dtype)
    y_rd = _exchange(y_rd, EP_AXIS, num_devices)
    y_nd = dispatch.take_rows(y_rd, layout.slot_nk.reshape(-1), layout.row_assign_r[:, None])
    y_td = jnp.einsum("tkd,tk->td", y_nd.reshape(t, k, d).astype(jnp.float32), weight_tk)
    return jax.lax.psum(y_td, "tensor").astype(x_td.dtype)


def _axes_size(mesh, axes) -> int:
    axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
    return int(np.prod([mesh.shape[a] for a in axes if a in mesh.shape]))


def expert_parallel_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                             experts: dispatch.ExpertParams, *, block_size: int,
                             accum_dtype=jnp.float32) -> jax.Array:
    """Routed experts sharded over the `expert` mesh axis, tokens exchanged by all-to-all.

    DeepSeek-V3 report Sec. 3.2.2 (expert parallelism with all-to-all dispatch and combine).
    Inside `jax.shard_map` over the mesh set with `jax.set_mesh`, each device holds T / (data
    * fsdp * expert) tokens and E / n_ep experts (their f split over `tensor`, whose partial
    outputs are summed): it sends each token row to the devices owning its experts, runs its
    experts on what it receives (`dropless.dropless_dispatch`), and returns the outputs to
    their tokens, which it combines with the gates g. Exact: the same result as
    `dropless.dropless_dispatch` (see the module docstring for the buffer cost). Without a
    mesh, with n_ep == 1, or when the T tokens do not split evenly over the token shards (a
    [1, 1] `init` under a mesh), it is `dropless.dropless_dispatch`: the same numbers without
    the exchange.
    """
    mesh = jax.sharding.get_abstract_mesh()
    tokens = sharding.logical_to_spec(("act_batch", None))
    if (mesh.empty or mesh.shape.get(EP_AXIS, 1) == 1
            or x_td.shape[0] % _axes_size(mesh, tokens[0])):
        return dropless.dropless_dispatch(x_td, idx_tk, weight_tk, experts, block_size=block_size,
                                          accum_dtype=accum_dtype)
    num_devices = mesh.shape[EP_AXIS]
    if experts.gate_edf.shape[0] % num_devices:
        raise ValueError(f"expert_parallel_dispatch: {experts.gate_edf.shape[0]} experts do "
                         f"not divide over the {num_devices} devices of the '{EP_AXIS}' axis")
    ffn_in, ffn_out = PartitionSpec(EP_AXIS, None, "tensor"), PartitionSpec(EP_AXIS, "tensor")
    experts_spec = dispatch.ExpertParams(ffn_in, ffn_in, ffn_out)
    local = jax.shard_map(
        functools.partial(_ep_local, block_size=block_size, num_devices=num_devices,
                          accum_dtype=accum_dtype),
        mesh=mesh, in_specs=(tokens, tokens, tokens, experts_spec), out_specs=tokens)
    return local(x_td, idx_tk, weight_tk, experts)
