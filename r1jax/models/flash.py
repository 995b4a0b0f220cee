"""Attention whose memory grows linearly with the sequence: blockwise online softmax for training
and prefill, cached attention bounded by the filled slots, and the fused cuDNN kernel.

`ModelConfig.attention_impl` picks one, once per call site (`resolve`):
  "naive": the full [B, H, T, S] score matrix and a dense [B, T, S] mask (`attention.mla_naive`,
    `attention.gqa_core`): the reference every other path is tested against.
  "blockwise": queries in blocks of `attention_block_size` (an outer `lax.scan`), keys/values in
    blocks of the same size (an inner `lax.scan`) with the online softmax of Milakov &
    Gimelshein (arXiv:1805.02867) as in FlashAttention-2 (arXiv:2307.08691). A key block that no
    query of the query block may see is skipped (`lax.cond`), so causal attention does about
    half the work of the full matrix. Its custom VJP is FlashAttention-2's backward: it saves
    the output and one logsumexp per query and recomputes each score block, so forward and
    backward keep one [B, H, block, block] score block at a time: memory linear in T.
  "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")` on GPU. The kernel takes a
    causal mask but no per-token mask without a dense [T, S] array, so it serves only forwards
    with no padding and no packed segments (`Mask.plain_causal`), in bfloat16/float16. MLA's
    value head (128 in V3) is zero-padded to the query/key width (192) and cut after.
  "splash": Pallas splash attention on TPU (`r1jax.models.splash`; padding and packing as
    segment ids).
  "auto": splash on TPU; cuDNN on GPU where it applies, else blockwise; on the CPU naive
    while T * S <= `NAIVE_MAX_SCORES` (a few MB of scores per head, faster to compile and
    run), else blockwise.

Cached attention (prefill and decoding, `bounded`) with any impl but "naive" reads only the
filled slots: queries in blocks of `attention_block_size`, each a `fori_loop` over cache chunks
of that size whose trip count stops at the block's own last slot (and at the filled length), so
a prefill of P tokens attends over the P prompt slots only (not the P + N of the cache) and a
decoding step costs what the cache holds so far.

Masks are never materialised at [T, S] outside the naive path: `Mask` holds per-token vectors
(segment ids, key validity, the slot of the first query) and each block's mask is formed from
them. A query that may see no key at all (a padding row) gets output 0 here and the uniform
average of the values in the naive path; no real token reads such a row.
"""

from __future__ import annotations

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models import config as config_lib
from r1jax.models import layers, splash

# Large negative, finite: exp(_MASKED - m) underflows to 0 and never makes inf - inf.
_MASKED = -1e30
#: "auto" keeps the naive form on the CPU up to this many scores per head (1024 x 1024).
NAIVE_MAX_SCORES = 1 << 20
_FUSED_DTYPES = ("bfloat16", "float16")


@flax.struct.dataclass
class Mask:
    """Who attends to whom, from per-token vectors: query t (at slot q_offset + t) may see key
    s iff s <= q_offset + t, q_segment_bt[b, t] == kv_segment_bs[b, s] and kv_valid_bs[b, s].

    kv_length: None, or an int32 scalar: slots >= kv_length are empty (cached attention stops
    there). plain_causal (static): every key valid, one segment, T == S (what cuDNN takes).
    """

    q_segment_bt: jax.Array
    kv_segment_bs: jax.Array
    kv_valid_bs: jax.Array
    q_offset: jax.Array
    kv_length: jax.Array | None = None
    plain_causal: bool = flax.struct.field(pytree_node=False, default=False)

    @classmethod
    def full(cls, mask_bt: jax.Array, segment_ids_bt: jax.Array,
             plain_causal: bool = False) -> Mask:
        """The uncached forward: keys are the T tokens themselves (mask_bt: 1 = real token)."""
        return cls(segment_ids_bt, segment_ids_bt, mask_bt.astype(jnp.bool_),
                   jnp.zeros((), jnp.int32), None, plain_causal)

    @classmethod
    def cached(cls, valid_bs: jax.Array, index: jax.Array, num_new: int) -> Mask:
        """T = num_new tokens written at slots index.. of a cache whose valid slots are valid_bs."""
        b, s = valid_bs.shape
        return cls(jnp.zeros((b, num_new), jnp.int32), jnp.zeros((b, s), jnp.int32), valid_bs,
                   jnp.asarray(index, jnp.int32), jnp.asarray(index + num_new, jnp.int32))

    def dense(self) -> jax.Array:
        """The bool [B, T, S] mask (the naive path only)."""
        t, s = self.q_segment_bt.shape[1], self.kv_segment_bs.shape[1]
        return block_mask(self.q_offset + jnp.arange(t), self.q_segment_bt, jnp.arange(s),
                          self.kv_segment_bs, self.kv_valid_bs)


def block_mask(q_slot_t, q_segment_bt, kv_slot_s, kv_segment_bs, kv_valid_bs) -> jax.Array:
    """bool [B, t, s]: causal by slot, same segment, valid key."""
    return ((kv_slot_s[None, None, :] <= q_slot_t[None, :, None])
            & (q_segment_bt[:, :, None] == kv_segment_bs[:, None, :]) & kv_valid_bs[:, None, :])


# ---------------------------------------------------------------------------------------------
# Choosing the implementation.


def _why_not_fused(config: config_lib.ModelConfig, mask: Mask) -> str | None:
    if config.dtype not in _FUSED_DTYPES:
        return f"the cuDNN kernel takes bfloat16/float16 compute, got dtype={config.dtype!r}"
    if not mask.plain_causal:
        return ("the forward has padding or packed segments, which the cuDNN kernel could only "
                "take as a dense [T, S] mask")
    return None


def resolve(config: config_lib.ModelConfig, mask: Mask) -> str:
    """The implementation an uncached forward uses: "naive", "blockwise", "cudnn" or "splash".

    Raises ValueError naming `ModelConfig.attention_impl` when "cudnn" is asked for where it
    cannot run (no GPU, float32 compute, padding or packed segments), or "splash" off TPU.
    """
    impl, backend = config.attention_impl, jax.default_backend()
    if impl == "splash" and backend != "tpu":
        raise ValueError(f"ModelConfig.attention_impl='splash': the Pallas splash kernel needs a "
                         f"TPU, this process runs on {backend!r}; use 'blockwise' or 'auto'")
    if impl == "cudnn":
        why = (f"the cuDNN kernel needs a GPU, this process runs on {backend!r}"
               if backend != "gpu" else _why_not_fused(config, mask))
        if why:
            raise ValueError(f"ModelConfig.attention_impl='cudnn': {why}; use 'blockwise' (every "
                             "backend) or 'auto'")
    if impl != "auto":
        return impl
    if backend == "gpu" and _why_not_fused(config, mask) is None:
        return "cudnn"
    if backend == "tpu":
        return "splash"
    t, s = mask.q_segment_bt.shape[1], mask.kv_segment_bs.shape[1]
    return "naive" if backend == "cpu" and t * s <= NAIVE_MAX_SCORES else "blockwise"


# ---------------------------------------------------------------------------------------------
# Online softmax.


def _init_state(b, g, qh, t, dv):
    """(running max m, running sum l, unnormalised output acc), float32."""
    return (jnp.full((b, g, qh, t), _MASKED, jnp.float32), jnp.zeros((b, g, qh, t), jnp.float32),
            jnp.zeros((b, g, qh, t, dv), jnp.float32))


def _update(state, q_btgqd, k_bsgd, v_bsgv, mask_bts, scale, config):
    """Folds one key block into the running softmax (FlashAttention-2's inner step)."""
    m_bgqt, l_bgqt, acc_bgqtv = state
    s_bgqts = layers.matmul("btgqd,bsgd->bgqts", q_btgqd, k_bsgd, config, jnp.float32) * scale
    visible = mask_bts[:, None, None]
    s_bgqts = jnp.where(visible, s_bgqts, _MASKED)
    m_new = jnp.maximum(m_bgqt, s_bgqts.max(-1))
    p_bgqts = jnp.where(visible, jnp.exp(s_bgqts - m_new[..., None]), 0.0)
    correction = jnp.exp(m_bgqt - m_new)
    pv_bgqtv = layers.matmul("bgqts,bsgv->bgqtv", p_bgqts.astype(v_bsgv.dtype), v_bsgv, config,
                             jnp.float32)
    return (m_new, l_bgqt * correction + p_bgqts.sum(-1),
            acc_bgqtv * correction[..., None] + pv_bgqtv)


def _finish(state, dtype) -> jax.Array:
    """acc / l as [B, T, G, Q, Dv]; 0 for a query that saw no key."""
    _, l_bgqt, acc_bgqtv = state
    out = acc_bgqtv / jnp.where(l_bgqt > 0, l_bgqt, 1.0)[..., None]
    return out.transpose(0, 3, 1, 2, 4).astype(dtype)


def _blocks(x, axis: int, size: int, fill=0):
    """x padded along `axis` to a multiple of `size`, split as [n, ...] with that axis -> size."""
    n = -(-x.shape[axis] // size)
    pad = [(0, 0)] * x.ndim
    pad[axis] = (0, n * size - x.shape[axis])
    x = jnp.pad(x, pad, constant_values=fill)
    x = x.reshape(x.shape[:axis] + (n, size) + x.shape[axis + 1:])
    return jnp.moveaxis(x, axis, 0)


# ---------------------------------------------------------------------------------------------
# Implementations: (q [B, T, H, D], k [B, S, G, D], v [B, S, G, Dv], mask, scale, config)
# -> [B, T, H, Dv]; query head h reads key/value head h // (H / G).


def _layout(q_bthd, k_bsgd, v_bsgv, mask: Mask, config: config_lib.ModelConfig):
    """Query-side and key-side blocks, each a tuple of arrays with the block index leading:
    (q [n, B, bq, G, Q, D], slot [n, bq], segment [n, B, bq]) and (k [m, B, bk, G, D],
    v [m, B, bk, G, Dv], slot [m, bk], segment [m, B, bk], valid [m, B, bk])."""
    b, t, h, d = q_bthd.shape
    s, g = k_bsgd.shape[1], k_bsgd.shape[2]
    bq, bk = min(config.attention_block_size, t), min(config.attention_block_size, s)
    q_xs = (_blocks(q_bthd.reshape(b, t, g, h // g, d), 1, bq),
            _blocks(mask.q_offset + jnp.arange(t), 0, bq), _blocks(mask.q_segment_bt, 1, bq))
    kv_xs = (_blocks(k_bsgd, 1, bk), _blocks(v_bsgv, 1, bk), _blocks(jnp.arange(s), 0, bk),
             _blocks(mask.kv_segment_bs, 1, bk), _blocks(mask.kv_valid_bs, 1, bk, False))
    return q_xs, kv_xs


def _unblock(x_n, length: int) -> jax.Array:
    """[n, B, block, ...] -> [B, length, ...] (padding cut)."""
    x = jnp.moveaxis(x_n, 0, 1)
    return x.reshape(x.shape[0], -1, *x.shape[3:])[:, :length]


def _forward(q_bthd, k_bsgd, v_bsgv, mask: Mask, scale: float, config):
    """Blockwise forward: (out [B, T, H, Dv], logsumexp per query [n, B, G, Q, bq] (0 for a
    query that sees no key))."""
    b, t, h, _ = q_bthd.shape
    g, dv = k_bsgd.shape[2], v_bsgv.shape[-1]
    q_xs, kv_xs = _layout(q_bthd, k_bsgd, v_bsgv, mask, config)

    def query_block(_, xs):
        q_btgqd, q_slot_t, q_segment_bt = xs

        def key_block(state, xs):
            k_bsgd, v_bsgv, kv_slot_s, kv_segment_bs, kv_valid_bs = xs
            visible_bts = block_mask(q_slot_t, q_segment_bt, kv_slot_s, kv_segment_bs,
                                     kv_valid_bs)
            state = jax.lax.cond(
                jnp.any(visible_bts),
                lambda st: _update(st, q_btgqd, k_bsgd, v_bsgv, visible_bts, scale, config),
                lambda st: st, state)
            return state, None

        state, _ = jax.lax.scan(key_block, _init_state(b, g, h // g, q_btgqd.shape[1], dv),
                                kv_xs)
        m_bgqt, l_bgqt, _ = state
        lse_bgqt = jnp.where(l_bgqt > 0, m_bgqt + jnp.log(jnp.where(l_bgqt > 0, l_bgqt, 1.0)),
                             0.0)
        return None, (_finish(state, q_bthd.dtype), lse_bgqt)

    _, (out_nbtgqv, lse_nbgqt) = jax.lax.scan(query_block, None, q_xs)
    return _unblock(out_nbtgqv, t).reshape(b, t, h, dv), lse_nbgqt


def _backward_block(q_btgqd, do_btgqv, lse_bgqt, delta_bgqt, q_slot_t, q_segment_bt, kv,
                    scale, config):
    """FlashAttention-2's backward for one query block and one key block: (dq, dk, dv)."""
    k_bsgd, v_bsgv, kv_slot_s, kv_segment_bs, kv_valid_bs = kv
    visible = block_mask(q_slot_t, q_segment_bt, kv_slot_s, kv_segment_bs,
                         kv_valid_bs)[:, None, None]
    s_bgqts = layers.matmul("btgqd,bsgd->bgqts", q_btgqd, k_bsgd, config, jnp.float32) * scale
    p_bgqts = jnp.where(visible, jnp.exp(s_bgqts - lse_bgqt[..., None]), 0.0)
    dv_bsgv = layers.matmul("bgqts,btgqv->bsgv", p_bgqts.astype(do_btgqv.dtype), do_btgqv,
                            config, jnp.float32)
    dp_bgqts = layers.matmul("btgqv,bsgv->bgqts", do_btgqv, v_bsgv, config, jnp.float32)
    ds_bgqts = (p_bgqts * (dp_bgqts - delta_bgqt[..., None]) * scale).astype(q_btgqd.dtype)
    dq_btgqd = layers.matmul("bgqts,bsgd->btgqd", ds_bgqts, k_bsgd, config, jnp.float32)
    dk_bsgd = layers.matmul("bgqts,btgqd->bsgd", ds_bgqts, q_btgqd, config, jnp.float32)
    return dq_btgqd, dk_bsgd, dv_bsgv


def _backward(scale, config, residuals, dout_bthv):
    """Gradients block by block: an outer scan over query blocks carries dK and dV [B, S, ...];
    an inner scan over key blocks carries the block's dQ. Nothing [T, S]-sized is kept."""
    q_bthd, k_bsgd, v_bsgv, mask, out_bthv, lse_nbgqt = residuals
    b, t, h, _ = q_bthd.shape
    g = k_bsgd.shape[2]
    q_xs, kv_xs = _layout(q_bthd, k_bsgd, v_bsgv, mask, config)
    bq = q_xs[0].shape[2]
    delta_bth = jnp.sum(dout_bthv.astype(jnp.float32) * out_bthv.astype(jnp.float32), -1)
    delta_nbgqt = jnp.moveaxis(_blocks(delta_bth.reshape(b, t, g, h // g), 1, bq), 2, -1)
    do_nbtgqv = _blocks(dout_bthv.reshape(b, t, g, h // g, -1).astype(q_bthd.dtype), 1, bq)

    def query_block(dkv, xs):
        q_btgqd, q_slot_t, q_segment_bt, do_btgqv, lse_bgqt, delta_bgqt = xs

        def key_block(dq_btgqd, kv):
            def compute(dq):
                dq_j, dk_j, dv_j = _backward_block(q_btgqd, do_btgqv, lse_bgqt, delta_bgqt,
                                                   q_slot_t, q_segment_bt, kv, scale, config)
                return dq + dq_j, dk_j, dv_j

            def skip(dq):
                return (dq, jnp.zeros(kv[0].shape, jnp.float32),
                        jnp.zeros(kv[1].shape, jnp.float32))

            visible = block_mask(q_slot_t, q_segment_bt, *kv[2:])
            dq_btgqd, dk_j, dv_j = jax.lax.cond(jnp.any(visible), compute, skip, dq_btgqd)
            return dq_btgqd, (dk_j, dv_j)

        dq, (dk_m, dv_m) = jax.lax.scan(key_block, jnp.zeros(q_btgqd.shape, jnp.float32), kv_xs)
        return (dkv[0] + dk_m, dkv[1] + dv_m), dq

    zeros = (jnp.zeros(kv_xs[0].shape, jnp.float32), jnp.zeros(kv_xs[1].shape, jnp.float32))
    (dk_m, dv_m), dq_n = jax.lax.scan(query_block, zeros,
                                      (*q_xs, do_nbtgqv, lse_nbgqt, delta_nbgqt))
    s = k_bsgd.shape[1]
    no_grad = jax.tree.map(lambda x: np.zeros(np.shape(x), jax.dtypes.float0), mask)
    return (_unblock(dq_n, t).reshape(q_bthd.shape).astype(q_bthd.dtype),
            _unblock(dk_m, s).astype(k_bsgd.dtype), _unblock(dv_m, s).astype(v_bsgv.dtype),
            no_grad)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4, 5))
def blockwise(q_bthd, k_bsgd, v_bsgv, mask: Mask, scale: float,
              config: config_lib.ModelConfig) -> jax.Array:
    """Blockwise attention (module docstring); equals the naive form up to float rounding.

    A custom VJP (FlashAttention-2's backward, recomputing each score block from the saved
    per-query logsumexp) keeps the backward linear in T whatever remat policy surrounds it: a
    `jax.checkpoint` inside the layer was measured to let the "dots" policy save every score
    block (T^2 memory)."""
    return _forward(q_bthd, k_bsgd, v_bsgv, mask, scale, config)[0]


def _blockwise_fwd(q_bthd, k_bsgd, v_bsgv, mask, scale, config):
    out_bthv, lse_nbgqt = _forward(q_bthd, k_bsgd, v_bsgv, mask, scale, config)
    return out_bthv, (q_bthd, k_bsgd, v_bsgv, mask, out_bthv, lse_nbgqt)


blockwise.defvjp(_blockwise_fwd, _backward)


def fused(q_bthd, k_bsgd, v_bsgv, mask: Mask, scale: float, config: config_lib.ModelConfig,
          implementation: str = "cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention`, causal, heads zero-padded to one width (MLA's 128-wide
    values next to 192-wide queries/keys; zeros add nothing to q . k and are cut from the output).

    `implementation="xla"` runs the same call on any backend (how the CPU tests check the
    layout and padding)."""
    del config
    if not mask.plain_causal:
        raise ValueError("flash.fused: the mask has padding or packed segments; the fused kernel "
                         "takes plain causal attention only")
    dv = v_bsgv.shape[-1]
    width = max(q_bthd.shape[-1], dv)

    def pad(x):
        return jnp.pad(x, [(0, 0)] * 3 + [(0, width - x.shape[-1])])

    out = jax.nn.dot_product_attention(pad(q_bthd), pad(k_bsgd), pad(v_bsgv), scale=scale,
                                       is_causal=True, implementation=implementation)
    return out[..., :dv]


IMPLS = {"blockwise": blockwise, "cudnn": fused, "splash": splash.attention}


def bounded(q_bthd, kv_chunk, groups: int, value_dim: int, num_slots: int, mask: Mask,
            scale: float, config: config_lib.ModelConfig) -> jax.Array:
    """Cached attention over the filled slots only, in chunks of C = `attention_block_size`.

    Queries go in blocks of C too (a prefill of P tokens holds one [B, H, C, C] score block at
    a time); query block j reads the ceil(last slot of j + 1 / C) chunks up to its own slots,
    at most ceil(mask.kv_length / C), so one decoding step costs what the cache holds so far.

    Args:
      q_bthd: [B, T, H, D] queries (T new tokens at slots mask.q_offset..).
      kv_chunk: (start, C) -> (k [B, C, G, D], v [B, C, G, Dv]) for slots start..start+C-1 (read
        from the cache, up-projected there for naive MLA).
      groups, value_dim: G and Dv. num_slots: S, the cache length.
      mask: `Mask.cached` (kv_length = index + T).
    Returns:
      [B, T, H, Dv].
    """
    b, t, h, d = q_bthd.shape
    c = min(config.attention_block_size, num_slots)
    bq = min(c, t)
    filled = jnp.minimum(mask.kv_length, num_slots)

    def query_block(xs):
        q_btgqd, q_slot_t, q_segment_bt = xs

        def chunk(i, state):
            # The last chunk may start before i * C (it must fit in the cache); slots it
            # shares with the previous chunk are masked, so none is counted twice.
            start = jnp.minimum(i * c, num_slots - c)
            k_bcgd, v_bcgv = kv_chunk(start, c)
            slot_c = start + jnp.arange(c)
            visible_btc = block_mask(
                q_slot_t, q_segment_bt, slot_c,
                jax.lax.dynamic_slice_in_dim(mask.kv_segment_bs, start, c, 1),
                jax.lax.dynamic_slice_in_dim(mask.kv_valid_bs, start, c, 1))
            visible_btc &= (slot_c >= i * c)[None, None, :]
            return _update(state, q_btgqd, k_bcgd, v_bcgv, visible_btc, scale, config)

        # Causal: no query of this block sees a slot past its own.
        seen = jnp.minimum(filled, q_slot_t.max() + 1)  # padded rows have slot 0
        state = jax.lax.fori_loop(0, (seen + c - 1) // c, chunk,
                                  _init_state(b, groups, h // groups, bq, value_dim))
        return _finish(state, q_bthd.dtype)

    q_xs = (_blocks(q_bthd.reshape(b, t, groups, h // groups, d), 1, bq),
            _blocks(mask.q_offset + jnp.arange(t), 0, bq), _blocks(mask.q_segment_bt, 1, bq))
    out_nbtgqv = jax.lax.map(query_block, q_xs)
    return _unblock(out_nbtgqv, t).reshape(b, t, h, value_dim)
