"""What every routed-expert dispatch shares, and the two simplest dispatches.

A dispatch computes sum_k g_{t,k} FFN_{idx[t,k]}(x_t), the routed term of DeepSeek-V3 eq. 12
(Sec. 2.1.2), from the router's choices (`routing.route`): `(x_td, idx_tk, weight_tk,
experts) -> y_td`. All are exact (no token is dropped) and give the same numbers:
  dense_dispatch        every expert on every token (`dense`; the reference; tiny E only);
  gather_dispatch       one matvec per assignment (decoding-sized T*K);
  dropless.py           sort by expert into padded blocks, a loop over the used blocks;
  grouped.py            sort by expert, one grouped matmul (`jax.lax.ragged_dot`) per projection;
  expert_parallel.py    experts over the `expert` mesh axis, tokens sent by all-to-all.
`take_rows` is the row move (a gather both ways) that the sorting dispatches share; `combine`
sums each token's K expert outputs with its gates. Every dispatch here also takes a keyword
`out_dtype` (default: x's dtype), so that partial outputs can be summed across devices in float32.

Under a mesh, `token_local` runs a dispatch on each device's own tokens (`jax.shard_map` over
the batch axes): without it the partitioner cannot split the data-dependent sort, so every device
sorted and looped over the global rows, with a collective inside every loop iteration.

Precision: every matmul sums its products in `accum_dtype` (float32 by default, whatever the
compute dtype of x and the weights; `config.accum_dtype` through `layer.get_dispatch`) and rounds
the result to the compute dtype once (`dot`); the dropless backward sums each expert's weight
gradient across blocks in `accum_dtype` too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec

from r1jax import sharding
from r1jax.models import layers


class ExpertParams(NamedTuple):
    """Stacked routed-expert weights, already in the compute dtype."""

    gate_edf: jax.Array
    up_edf: jax.Array
    down_efd: jax.Array


def dot(subscripts: str, a: jax.Array, b: jax.Array, accum_dtype, out_dtype=None) -> jax.Array:
    """einsum accumulated in `accum_dtype` (`preferred_element_type`), returned in `out_dtype`
    (default a's dtype, the compute dtype)."""
    return layers.accumulating_einsum(subscripts, a, b, accum_dtype,
                                      a.dtype if out_dtype is None else out_dtype)


# Signature shared by every dispatch: (x_td, idx_tk, weight_tk, experts) -> y_td; each also
# takes keywords `accum_dtype` (default float32) and `out_dtype` (default x's dtype).
Dispatch = Callable[[jax.Array, jax.Array, jax.Array, ExpertParams], jax.Array]


def combine(y_nd: jax.Array, weight_tk: jax.Array, out_dtype) -> jax.Array:
    """sum_k g_{t,k} y_{t*K+k}: [T*K, d] expert outputs in assignment order -> [T, d], summed
    in float32 and returned in `out_dtype`."""
    t, k = weight_tk.shape
    y_tkd = y_nd.reshape(t, k, y_nd.shape[-1]).astype(jnp.float32)
    return jnp.einsum("tkd,tk->td", y_tkd, weight_tk).astype(out_dtype)


def dense_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                   experts: ExpertParams, *, accum_dtype=jnp.float32,
                   out_dtype=None) -> jax.Array:
    """Every expert on every token, weighted by a dense [T, E] gate matrix (exact; tiny E).

    Compute and memory grow with T * E; use it for small expert counts and as a reference.
    """
    num_experts = experts.gate_edf.shape[0]
    gate_te = jnp.einsum("tke,tk->te", jax.nn.one_hot(idx_tk, num_experts, dtype=jnp.float32),
                         weight_tk)
    h_tef = (nn.silu(dot("td,edf->tef", x_td, experts.gate_edf, accum_dtype))
             * dot("td,edf->tef", x_td, experts.up_edf, accum_dtype))
    h_tef = h_tef * gate_te[:, :, None].astype(h_tef.dtype)
    return dot("tef,efd->td", h_tef, experts.down_efd, accum_dtype, out_dtype or x_td.dtype)


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


def vary_alike(tree):
    """Marks every array of `tree` as varying over each shard_map axis that any of them varies
    over (a no-op outside shard_map). A custom VJP must return cotangents of its inputs'
    types, so `dropless.block_swiglu` takes inputs that already vary alike, and a loop's carry
    must vary like its body's results; the transpose of this cast sums the gradients over the
    added axes (once, outside any loop), as for JAX's implicit casts."""
    leaves, treedef = jax.tree.flatten(tree)
    varying = [jax.typeof(a).manual_axis_type.varying for a in leaves]
    axes = frozenset().union(*varying)
    return treedef.unflatten([
        jax.lax.pcast(a, tuple(sorted(axes - v)), to="varying") if axes - v else a
        for a, v in zip(leaves, varying)])


def gather_dispatch(x_td: jax.Array, idx_tk: jax.Array, weight_tk: jax.Array,
                    experts: ExpertParams, *, accum_dtype=jnp.float32,
                    out_dtype=None) -> jax.Array:
    """One SwiGLU matvec per assignment with its own expert's [d, f] weight slices (exact).

    No sort and no padding: compute and weight reads are T*K slices, the cheapest dropless
    path when T*K is about E or less (decoding; see `dropless.uses_gather`). A loop of dynamic
    slices rather than one [T*K, d, f] gather: on this CPU (T=8, K=2, E=12, d=512, f=384, forward)
    the gather took 26 ms, this loop 2.4 ms, every-expert `dense_dispatch` 4.4 ms.
    """
    t, d = x_td.shape
    k = idx_tk.shape[1]
    expert_n = idx_tk.reshape(t * k)

    def one_assignment(n, y_nd):
        x_1d = jax.lax.dynamic_slice_in_dim(x_td, n // k, 1)
        gate_df, up_df, down_fd = (jax.lax.dynamic_index_in_dim(w, expert_n[n], 0, False)
                                   for w in experts)
        h_1f = (nn.silu(dot("td,df->tf", x_1d, gate_df, accum_dtype))
                * dot("td,df->tf", x_1d, up_df, accum_dtype))
        return jax.lax.dynamic_update_slice_in_dim(
            y_nd, dot("tf,fd->td", h_1f, down_fd, accum_dtype), n, 0)

    x_td, experts, y_nd = vary_alike((x_td, experts, jnp.zeros((t * k, d), x_td.dtype)))
    y_nd = jax.lax.fori_loop(0, t * k, one_assignment, y_nd)
    return combine(y_nd, weight_tk, out_dtype or x_td.dtype)


def _token_axes(mesh) -> tuple[str, ...]:
    """The mesh axes that split the tokens (`act_batch` under the rules), present in `mesh`."""
    axes = sharding.logical_to_spec(("act_batch",))[0] or ()
    axes = (axes,) if isinstance(axes, str) else tuple(axes)
    return tuple(a for a in axes if a in mesh.shape)


def token_local(local: Dispatch) -> Dispatch:
    """`local` run by every device on its own tokens under the mesh set by `jax.set_mesh`.

    A `jax.shard_map` over the batch axes (`act_batch`: data, fsdp, expert): each device sorts,
    loops over and computes only its T / shards rows, so its buffers follow the per-device batch,
    not the global one, and no collective runs inside the dispatch. The expert weights enter
    whole along E and d (the partitioner all-gathers their FSDP/expert shards once per layer, at
    the shard_map boundary; the backward reduces their gradients once, there too) and split
    along f over `tensor`, whose partial outputs are summed in float32 (`out_dtype`).

    Without a mesh, inside a manual (shard_map) context, or when T does not split evenly over
    the token shards (a [1, 1] `init` under a mesh) it is `local` itself: the same numbers.

    Args:
      local: a dispatch (signature `Dispatch`) that takes `out_dtype`, with no sharding
        constraints inside (shard_map's axes are manual).
    Returns:
      A dispatch with the same signature and numbers.
    """
    def run(x_td, idx_tk, weight_tk, experts: ExpertParams):
        mesh = jax.sharding.get_abstract_mesh()
        if mesh.empty or mesh.manual_axes:
            return local(x_td, idx_tk, weight_tk, experts)
        token_axes = _token_axes(mesh)
        ffn = "tensor" if "tensor" in mesh.shape else None
        shards = math.prod(mesh.shape[a] for a in token_axes)
        if x_td.shape[0] % shards or shards * (mesh.shape[ffn] if ffn else 1) == 1:
            return local(x_td, idx_tk, weight_tk, experts)
        tokens = PartitionSpec(token_axes or None, None)
        ffn_in, ffn_out = PartitionSpec(None, None, ffn), PartitionSpec(None, ffn, None)

        def body(x, idx, weight, local_experts):
            y_td = local(x, idx, weight, local_experts, out_dtype=jnp.float32)
            return (jax.lax.psum(y_td, ffn) if ffn else y_td).astype(x.dtype)

        return jax.shard_map(body, mesh=mesh, in_specs=(tokens, tokens, tokens,
                                                        ExpertParams(ffn_in, ffn_in, ffn_out)),
                             out_specs=tokens)(x_td, idx_tk, weight_tk, experts)

    return run
