"""Attention: multi-head latent attention (MLA) and grouped-query attention (GQA), with caches.

MLA follows DeepSeek-V2 (arXiv:2405.04434, Sec. 2.1) / DeepSeek-V3 (arXiv:2412.19437,
Sec. 2.1.1): queries pass through a low-rank bottleneck c^Q = RMSNorm(x W^DQ) (`q_a_proj`,
`q_a_layernorm`; or one `q_proj` when `q_lora_rank` is None); keys and values come from the
compressed latent c^KV = RMSNorm(x W^DKV) (`kv_a_proj_with_mqa`, `kv_a_layernorm`), up-projected
per head by W^UK, W^UV (`kv_b_proj`); a decoupled RoPE key k^R = RoPE(x W^KR) is shared by all
heads; each query head is [q^C ; RoPE(q^R)].

Caches. The MLA cache holds only c^KV and k^R per token (d_c + d_h^R values per layer, eq. 9's
"only the blue boxes need to be cached"). Cached attention is one of two functions chosen once by
`config.mla_decode`:
  "naive": up-project the cached latent to per-head K and V, then standard attention;
  "absorbed": fold W^UK into the query (q^C W^UK^T lives in latent space) and W^UV into the
    output, so attention runs over the latent cache directly (less memory traffic when decoding).
The two are equal up to float reassociation (tested). Training (no cache) uses the naive form.
The GQA cache holds the roped K and V of each K/V head.

Both modules are called as `module(x_btd, positions_bt, mask, cache=None, cache_index=None)`
and return `(y_btd, new_cache)`; `mask` is a `flash.Mask` (per-token segment ids and key
validity, causal by slot; keys are the sequence itself without a cache, the cache slots with
one; `r1jax.models.transformer` builds it). With a cache, the T new tokens are written at slots
[cache_index, cache_index + T) before attending, with `jax.lax.dynamic_update_slice`.

Which attention runs is `config.attention_impl` (`r1jax.models.flash`): the naive forms below
(full scores and a dense mask: the reference), blockwise online softmax (memory linear in T),
or the fused cuDNN kernel. Blockwise MLA training runs the naive (up-projected) form with the
shared RoPE key broadcast to every head; cached attention reads only the filled slots, chunk
by chunk, in the `mla_decode` form (a latent chunk is up-projected per head for "naive"; for
"absorbed" it is one key/value head of width d_c + d_h^R / d_c).

Deviations from the reference: the interleaved RoPE part is stored de-interleaved in the cache
(as HF does after `apply_rotary_pos_emb_interleave`); no attention dropout.
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import flash, layers

_Q_AXES = ("act_batch", "act_length", "act_heads", "act_kv")
_LOGIT_AXES = ("act_batch", "act_heads", "act_length", None)
# Large negative, finite: a fully masked row (a padding query) softmaxes to uniform, not NaN.
_MASKED = -1e30


# ---------------------------------------------------------------------------------------------
# Caches.


@flax.struct.dataclass
class MLACache:
    """Per-layer MLA cache: latent_bsk = c^KV [B, S, d_c]; k_rope_bsr = RoPE'd k^R [B, S, d_h^R]."""

    latent_bsk: jax.Array
    k_rope_bsr: jax.Array

    def write(self, latent_btk: jax.Array, k_rope_btr: jax.Array, index: jax.Array) -> MLACache:
        return MLACache(_write(self.latent_bsk, latent_btk, index),
                        _write(self.k_rope_bsr, k_rope_btr, index))


@flax.struct.dataclass
class KVCache:
    """Per-layer GQA cache: RoPE'd keys and values [B, S, n_kv_heads, head_dim]."""

    k_bsgd: jax.Array
    v_bsgd: jax.Array

    def write(self, k_btgd: jax.Array, v_btgd: jax.Array, index: jax.Array) -> KVCache:
        return KVCache(_write(self.k_bsgd, k_btgd, index), _write(self.v_bsgd, v_btgd, index))


def _write(cache_bs: jax.Array, new_bt: jax.Array, index: jax.Array) -> jax.Array:
    start = (0, index) + (0,) * (cache_bs.ndim - 2)
    return jax.lax.dynamic_update_slice(cache_bs, new_bt.astype(cache_bs.dtype), start)


def init_layer_cache(config: config_lib.ModelConfig, batch_size: int, max_length: int,
                     dtype=None) -> MLACache | KVCache:
    """An all-zero cache for one attention layer, `max_length` slots (S) per sequence."""
    dtype = dtype or layers.dtype_of(config.dtype)
    b, s = batch_size, max_length
    if config.attention_type == "mla":
        return MLACache(jnp.zeros((b, s, config.kv_lora_rank), dtype),
                        jnp.zeros((b, s, config.qk_rope_head_dim), dtype))
    shape = (b, s, config.num_key_value_heads, config.head_dim)
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


# ---------------------------------------------------------------------------------------------
# Attention cores: pure functions of projected queries, keys/latents and a boolean mask.


def masked_softmax(logits_bhts: jax.Array, mask_bts: jax.Array, scale: float) -> jax.Array:
    """softmax(scale * logits) over s where mask is True, in float32."""
    logits_bhts = logits_bhts.astype(jnp.float32) * scale
    logits_bhts = jnp.where(mask_bts[:, None, :, :], logits_bhts, _MASKED)
    return jax.nn.softmax(logits_bhts, axis=-1)


def _scores(subscripts: str, q: jax.Array, k: jax.Array,
            config: config_lib.ModelConfig) -> jax.Array:
    """Attention logits q . k, summed in accum_dtype and kept in float32 for the softmax (with
    accum_dtype bfloat16 they are rounded to bf16 first, the pre-policy numerics)."""
    return layers.matmul(subscripts, q, k, config, jnp.float32)


def _split_kv_b(w_kv_b: jax.Array, config: config_lib.ModelConfig) -> tuple[jax.Array, jax.Array]:
    """kv_b_proj kernel [d_c, H * (d_h + d_v)] -> W^UK [d_c, H, d_h], W^UV [d_c, H, d_v]."""
    w_khx = w_kv_b.reshape(config.kv_lora_rank, config.num_attention_heads, -1)
    return w_khx[..., :config.qk_nope_head_dim], w_khx[..., config.qk_nope_head_dim:]


def mla_naive(q_nope_bthn, q_rope_bthr, latent_bsk, k_rope_bsr, w_kv_b, mask_bts,
              config: config_lib.ModelConfig) -> jax.Array:
    """MLA by up-projection: k^C = c^KV W^UK, v = c^KV W^UV per head (eq. 2-3 of V3 Sec. 2.1.1).

    Returns the per-head outputs o_bthv [B, T, H, d_v]."""
    w_uk_khn, w_uv_khv = _split_kv_b(w_kv_b, config)
    k_nope_bshn = layers.matmul("bsk,khn->bshn", latent_bsk, w_uk_khn, config)
    v_bshv = layers.matmul("bsk,khv->bshv", latent_bsk, w_uv_khv, config)
    logits_bhts = (_scores("bthn,bshn->bhts", q_nope_bthn, k_nope_bshn, config)
                   + _scores("bthr,bsr->bhts", q_rope_bthr, k_rope_bsr, config))
    logits_bhts = sharding.constrain(logits_bhts, _LOGIT_AXES)
    probs_bhts = masked_softmax(logits_bhts, mask_bts, layers.softmax_scale(config))
    return layers.matmul("bhts,bshv->bthv", probs_bhts.astype(v_bshv.dtype), v_bshv, config)


def mla_absorbed(q_nope_bthn, q_rope_bthr, latent_bsk, k_rope_bsr, w_kv_b, mask_bts,
                 config: config_lib.ModelConfig) -> jax.Array:
    """MLA in latent space: q^C . (c W^UK) = (q^C W^UK^T) . c, and sum_s p_s (c_s W^UV)
    = (sum_s p_s c_s) W^UV, so keys and values are never materialised per head.

    Same signature and result as `mla_naive`."""
    w_uk_khn, w_uv_khv = _split_kv_b(w_kv_b, config)
    q_latent_bthk = layers.matmul("bthn,khn->bthk", q_nope_bthn, w_uk_khn, config)
    logits_bhts = (_scores("bthk,bsk->bhts", q_latent_bthk, latent_bsk, config)
                   + _scores("bthr,bsr->bhts", q_rope_bthr, k_rope_bsr, config))
    logits_bhts = sharding.constrain(logits_bhts, _LOGIT_AXES)
    probs_bhts = masked_softmax(logits_bhts, mask_bts, layers.softmax_scale(config))
    o_latent_bthk = layers.matmul("bhts,bsk->bthk", probs_bhts.astype(latent_bsk.dtype),
                                  latent_bsk, config)
    return layers.matmul("bthk,khv->bthv", o_latent_bthk, w_uv_khv, config)


MLA_CORES = {"naive": mla_naive, "absorbed": mla_absorbed}


def gqa_core(q_bthd, k_bsgd, v_bsgd, mask_bts, config: config_lib.ModelConfig) -> jax.Array:
    """Grouped-query attention: query head h reads K/V head h // (H / G). Returns [B, T, H, D]."""
    b, t, h, d = q_bthd.shape
    g = k_bsgd.shape[2]
    q_btgqd = q_bthd.reshape(b, t, g, h // g, d)
    logits_bgqts = _scores("btgqd,bsgd->bgqts", q_btgqd, k_bsgd, config)
    logits_bhts = sharding.constrain(logits_bgqts.reshape(b, h, t, -1), _LOGIT_AXES)
    probs_bhts = masked_softmax(logits_bhts, mask_bts, layers.softmax_scale(config))
    probs_bgqts = probs_bhts.reshape(b, g, h // g, t, -1).astype(v_bsgd.dtype)
    return layers.matmul("bgqts,bsgd->btgqd", probs_bgqts, v_bsgd, config).reshape(b, t, h, d)


# ---------------------------------------------------------------------------------------------
# Dispatch over `config.attention_impl` (r1jax.models.flash), uncached and cached.


def _mla_kv(latent_bsk, k_rope_bsr, w_kv_b, config: config_lib.ModelConfig):
    """Per-head keys [B, S, H, d_h + d_h^R] (k^R shared by every head) and values [B, S, H, d_v]
    of the naive form."""
    w_uk_khn, w_uv_khv = _split_kv_b(w_kv_b, config)
    k_nope_bshn = layers.matmul("bsk,khn->bshn", latent_bsk, w_uk_khn, config)
    v_bshv = layers.matmul("bsk,khv->bshv", latent_bsk, w_uv_khv, config)
    k_rope_bshr = jnp.broadcast_to(k_rope_bsr[:, :, None, :],
                                   k_nope_bshn.shape[:3] + k_rope_bsr.shape[-1:])
    return jnp.concatenate([k_nope_bshn, k_rope_bshr], -1), v_bshv


def mla_attention(q_nope_bthn, q_rope_bthr, latent_bsk, k_rope_bsr, w_kv_b, mask: flash.Mask,
                  config: config_lib.ModelConfig) -> jax.Array:
    """Uncached MLA (training, scoring) by `flash.resolve`. Returns o_bthv [B, T, H, d_v]."""
    impl = flash.resolve(config, mask)
    if impl == "naive":
        return mla_naive(q_nope_bthn, q_rope_bthr, latent_bsk, k_rope_bsr, w_kv_b, mask.dense(),
                         config)
    k_bshx, v_bshv = _mla_kv(latent_bsk, k_rope_bsr, w_kv_b, config)
    q_bthx = jnp.concatenate([q_nope_bthn, q_rope_bthr], -1)
    return flash.IMPLS[impl](q_bthx, k_bshx, v_bshv, mask, layers.softmax_scale(config), config)


def gqa_attention(q_bthd, k_bsgd, v_bsgd, mask: flash.Mask,
                  config: config_lib.ModelConfig) -> jax.Array:
    """Uncached GQA by `flash.resolve`. Returns [B, T, H, D]."""
    impl = flash.resolve(config, mask)
    if impl == "naive":
        return gqa_core(q_bthd, k_bsgd, v_bsgd, mask.dense(), config)
    return flash.IMPLS[impl](q_bthd, k_bsgd, v_bsgd, mask, layers.softmax_scale(config), config)


def _chunk(cache_bs: jax.Array, start: jax.Array, size: int, dtype) -> jax.Array:
    return jax.lax.dynamic_slice_in_dim(cache_bs, start, size, 1).astype(dtype)


def _mla_bounded_naive(q_nope_bthn, q_rope_bthr, cache: MLACache, w_kv_b, mask, config):
    def kv_chunk(start, size):
        return _mla_kv(_chunk(cache.latent_bsk, start, size, q_nope_bthn.dtype),
                       _chunk(cache.k_rope_bsr, start, size, q_nope_bthn.dtype), w_kv_b, config)

    q_bthx = jnp.concatenate([q_nope_bthn, q_rope_bthr], -1)
    return flash.bounded(q_bthx, kv_chunk, config.num_attention_heads, config.v_head_dim,
                         cache.latent_bsk.shape[1], mask, layers.softmax_scale(config), config)


def _mla_bounded_absorbed(q_nope_bthn, q_rope_bthr, cache: MLACache, w_kv_b, mask, config):
    """`mla_absorbed` chunk by chunk: one key head [c^KV ; k^R], one value head c^KV."""
    w_uk_khn, w_uv_khv = _split_kv_b(w_kv_b, config)
    q_latent_bthk = layers.matmul("bthn,khn->bthk", q_nope_bthn, w_uk_khn, config)

    def kv_chunk(start, size):
        latent_bck = _chunk(cache.latent_bsk, start, size, q_nope_bthn.dtype)
        k_rope_bcr = _chunk(cache.k_rope_bsr, start, size, q_nope_bthn.dtype)
        return jnp.concatenate([latent_bck, k_rope_bcr], -1)[:, :, None], latent_bck[:, :, None]

    o_latent_bthk = flash.bounded(
        jnp.concatenate([q_latent_bthk, q_rope_bthr], -1), kv_chunk, 1, config.kv_lora_rank,
        cache.latent_bsk.shape[1], mask, layers.softmax_scale(config), config)
    return layers.matmul("bthk,khv->bthv", o_latent_bthk, w_uv_khv, config)


_MLA_BOUNDED = {"naive": _mla_bounded_naive, "absorbed": _mla_bounded_absorbed}


def mla_cached(q_nope_bthn, q_rope_bthr, cache: MLACache, w_kv_b, mask: flash.Mask,
               config: config_lib.ModelConfig) -> jax.Array:
    """Cached MLA in the `mla_decode` form: over every slot with a dense mask when
    attention_impl is "naive", else over the filled slots only (`flash.bounded`)."""
    if config.attention_impl == "naive":
        dtype = q_nope_bthn.dtype
        return MLA_CORES[config.mla_decode](
            q_nope_bthn, q_rope_bthr, cache.latent_bsk.astype(dtype),
            cache.k_rope_bsr.astype(dtype), w_kv_b, mask.dense(), config)
    return _MLA_BOUNDED[config.mla_decode](q_nope_bthn, q_rope_bthr, cache, w_kv_b, mask, config)


def gqa_cached(q_bthd, cache: KVCache, mask: flash.Mask,
               config: config_lib.ModelConfig) -> jax.Array:
    """Cached GQA: every slot (naive) or the filled slots only (`flash.bounded`)."""
    dtype = q_bthd.dtype
    if config.attention_impl == "naive":
        return gqa_core(q_bthd, cache.k_bsgd.astype(dtype), cache.v_bsgd.astype(dtype),
                        mask.dense(), config)

    def kv_chunk(start, size):
        return _chunk(cache.k_bsgd, start, size, dtype), _chunk(cache.v_bsgd, start, size, dtype)

    return flash.bounded(q_bthd, kv_chunk, config.num_key_value_heads, config.head_dim,
                         cache.k_bsgd.shape[1], mask, layers.softmax_scale(config), config)


# ---------------------------------------------------------------------------------------------
# Modules.


class MLA(nn.Module):
    """Multi-head latent attention (DeepSeek-V3 Sec. 2.1.1). See the module docstring."""

    config: config_lib.ModelConfig

    def _queries(self, x_btd, cos_btr, sin_btr):
        cfg, h = self.config, self.config.num_attention_heads
        if cfg.q_lora_rank is None:
            q_btx = layers.Dense(h * cfg.qk_head_dim, ("embed", "heads"), cfg, name="q_proj")(x_btd)
        else:
            c_q = layers.Dense(cfg.q_lora_rank, ("embed", "q_lora"), cfg,
                               use_bias=cfg.attention_bias, name="q_a_proj")(x_btd)
            c_q = layers.RMSNorm(cfg, name="q_a_layernorm")(c_q)
            q_btx = layers.Dense(h * cfg.qk_head_dim, ("q_lora", "heads"), cfg, name="q_b_proj")(c_q)
        q_bthx = sharding.constrain(q_btx.reshape(*x_btd.shape[:2], h, cfg.qk_head_dim), _Q_AXES)
        q_nope_bthn, q_rope_bthr = jnp.split(q_bthx, [cfg.qk_nope_head_dim], axis=-1)
        return q_nope_bthn, layers.apply_rope(q_rope_bthr, cos_btr, sin_btr, cfg.rope_interleave)

    def _latent(self, x_btd, cos_btr, sin_btr):
        cfg = self.config
        ckv_btx = layers.Dense(cfg.kv_lora_rank + cfg.qk_rope_head_dim, ("embed", "kv_lora"), cfg,
                               use_bias=cfg.attention_bias, name="kv_a_proj_with_mqa")(x_btd)
        latent_btk, k_rope_btr = jnp.split(ckv_btx, [cfg.kv_lora_rank], axis=-1)
        latent_btk = layers.RMSNorm(cfg, name="kv_a_layernorm")(latent_btk)
        k_rope_btr = layers.apply_rope(k_rope_btr[:, :, None, :], cos_btr, sin_btr,
                                       cfg.rope_interleave)[:, :, 0, :]
        return latent_btk, k_rope_btr

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask: flash.Mask, cache: MLACache | None = None,
                 cache_index: jax.Array | None = None):
        cfg = self.config
        cos_btr, sin_btr = layers.rope_cos_sin(cfg, positions_bt)
        q_nope_bthn, q_rope_bthr = self._queries(x_btd, cos_btr, sin_btr)
        latent_btk, k_rope_btr = self._latent(x_btd, cos_btr, sin_btr)
        w_kv_b = layers.Weight(
            (cfg.kv_lora_rank, cfg.num_attention_heads * (cfg.qk_nope_head_dim + cfg.v_head_dim)),
            ("kv_lora", "heads"), cfg, name="kv_b_proj")()
        if cache is None:
            o_bthv = mla_attention(q_nope_bthn, q_rope_bthr, latent_btk, k_rope_btr, w_kv_b, mask,
                                   cfg)
        else:
            cache = cache.write(latent_btk, k_rope_btr, cache_index)
            o_bthv = mla_cached(q_nope_bthn, q_rope_bthr, cache, w_kv_b, mask, cfg)
        o_bthv = sharding.constrain(o_bthv, _Q_AXES)
        y_btd = layers.Dense(cfg.hidden_size, ("heads", "embed"), cfg, use_bias=cfg.attention_bias,
                             name="o_proj")(o_bthv.reshape(*o_bthv.shape[:2], -1))
        return y_btd, cache


class GQA(nn.Module):
    """Grouped-query attention with optional q/k/v bias (Qwen2, Llama)."""

    config: config_lib.ModelConfig

    def _project(self, x_btd, heads: int, axis: str, name: str):
        cfg = self.config
        y = layers.Dense(heads * cfg.head_dim, ("embed", axis), cfg, use_bias=cfg.attention_bias,
                         name=name)(x_btd)
        return sharding.constrain(y.reshape(*x_btd.shape[:2], heads, cfg.head_dim), _Q_AXES)

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask: flash.Mask, cache: KVCache | None = None,
                 cache_index: jax.Array | None = None):
        cfg = self.config
        cos_btr, sin_btr = layers.rope_cos_sin(cfg, positions_bt)
        q_bthd = self._project(x_btd, cfg.num_attention_heads, "heads", "q_proj")
        k_btgd = self._project(x_btd, cfg.num_key_value_heads, "kv_heads", "k_proj")
        v_btgd = self._project(x_btd, cfg.num_key_value_heads, "kv_heads", "v_proj")
        q_bthd = layers.apply_rope(q_bthd, cos_btr, sin_btr, cfg.rope_interleave)
        k_btgd = layers.apply_rope(k_btgd, cos_btr, sin_btr, cfg.rope_interleave)
        if cache is None:
            o_bthd = gqa_attention(q_bthd, k_btgd, v_btgd, mask, cfg)
        else:
            cache = cache.write(k_btgd, v_btgd, cache_index)
            o_bthd = gqa_cached(q_bthd, cache, mask, cfg)
        o_bthd = sharding.constrain(o_bthd, _Q_AXES)
        y_btd = layers.Dense(cfg.hidden_size, ("heads", "embed"), cfg, name="o_proj")(
            o_bthd.reshape(*o_bthd.shape[:2], -1))
        return y_btd, cache


ATTENTION = {"mla": MLA, "gqa": GQA}


def make_attention(config: config_lib.ModelConfig, name: str) -> nn.Module:
    """The attention module for `config.attention_type`."""
    return ATTENTION[config.attention_type](config, name=name)
