"""Pallas splash attention (TPU) behind `ModelConfig.attention_impl = "splash"`.

`jax.experimental.pallas.ops.tpu.splash_attention`: a causal mask per head, and segment ids
for everything else: a padding key gets a segment id no query has (`_PAD_SEGMENT`), so
padding inside rows and packed sequences need no [T, S] array. Each group of H / G query heads
runs the multi-query kernel on its key/value head (vmapped over batch and groups). Lengths are
zero-padded to a multiple of the kernel block (128 at least) and head widths to a multiple of
128 (MLA's 192-wide query/key and 128-wide value heads), which adds nothing to q . k and is cut
from the output. On other backends the kernel runs in Pallas interpret mode (how the CPU tests
check it against the blockwise path); `flash.resolve` picks it by default on TPU only.
Under a mesh the kernel runs per device in `jax.shard_map` (batch over the data axes, heads
over `tensor`, as the logical rules place the attention's activations): XLA cannot partition
a Pallas call itself.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as kernel_lib
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as mask_lib

from r1jax import sharding
from r1jax.models import config as config_lib

_LANES = 128
_PAD_SEGMENT = jnp.iinfo(jnp.int32).min


def _pad_to(x: jax.Array, axis: int, multiple: int, value=0) -> jax.Array:
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, -x.shape[axis] % multiple)
    return jnp.pad(x, pad, constant_values=value)


def _kernel(heads: int, length: int, block: int, interpret: bool):
    """The multi-query splash kernel: causal for each of `heads` query heads, [length]^2."""
    masks = mask_lib.MultiHeadMask([mask_lib.CausalMask((length, length))] * heads)
    sizes = kernel_lib.BlockSizes(
        block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
    return kernel_lib.make_splash_mqa_single_device(masks, block_sizes=sizes,
                                                    interpret=interpret)


def attention(q_bthd, k_bsgd, v_bsgv, mask, scale: float, config: config_lib.ModelConfig,
              interpret: bool | None = None) -> jax.Array:
    """Splash attention of an uncached forward (keys = the T tokens, `flash.Mask.full`).

    Args:
      q_bthd, k_bsgd, v_bsgv: [B, T, H, D], [B, T, G, D], [B, T, G, Dv]; head h reads
        key/value head h // (H / G).
      mask: a `flash.Mask` with q_offset 0 and S == T.
      scale: softmax scale. interpret: None = on any backend but TPU.
    Returns:
      [B, T, H, Dv].
    """
    if interpret is None:
        interpret = jax.default_backend() != "tpu"
    kv_segment_bs = jnp.where(mask.kv_valid_bs, mask.kv_segment_bs, _PAD_SEGMENT)
    args = (q_bthd, k_bsgd, v_bsgv, mask.q_segment_bt, kv_segment_bs)

    def local(*args):
        return _attention(*args, scale=scale, config=config, interpret=interpret)

    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty:
        return local(*args)
    heads = sharding.logical_to_spec(("act_batch", None, "act_heads", None))
    rows = sharding.logical_to_spec(("act_batch", None))
    return jax.shard_map(local, mesh=mesh, in_specs=(heads, heads, heads, rows, rows),
                         out_specs=heads, check_vma=False)(*args)


def _attention(q_bthd, k_bsgd, v_bsgv, q_segment_bt, kv_segment_bs, *, scale, config,
               interpret):
    b, t, h, _ = q_bthd.shape
    g, dv = k_bsgd.shape[2], v_bsgv.shape[-1]
    block = max(_LANES, -(-config.attention_block_size // _LANES) * _LANES)
    width = -(-max(q_bthd.shape[-1], dv) // _LANES) * _LANES

    def prepare(x):
        return _pad_to(_pad_to(x, x.ndim - 1, width), 1, block)

    q_btgqd = prepare(q_bthd * scale).reshape(b, -1, g, h // g, width)
    k_bsgd, v_bsgv = prepare(k_bsgd), prepare(v_bsgv)
    q_segment_bt = _pad_to(q_segment_bt, 1, block)
    kv_segment_bs = _pad_to(kv_segment_bs, 1, block, _PAD_SEGMENT)
    kernel = _kernel(h // g, q_btgqd.shape[1], block, interpret)

    def group(q_qtd, k_sd, v_sv, q_segment_t, kv_segment_s):
        return kernel(q_qtd, k_sd, v_sv,
                      segment_ids=kernel_lib.SegmentIds(q_segment_t, kv_segment_s))

    per_group = jax.vmap(group, in_axes=(0, 0, 0, None, None))
    out_bgqtv = jax.vmap(per_group)(q_btgqd.transpose(0, 2, 3, 1, 4), k_bsgd.transpose(0, 2, 1, 3),
                                    v_bsgv.transpose(0, 2, 1, 3), q_segment_bt, kv_segment_bs)
    out_btgqv = out_bgqtv.transpose(0, 3, 1, 2, 4)[:, :t, :, :, :dv]
    return out_btgqv.reshape(b, t, h, dv)
