"""The decoder: embedding, pre-norm layers (attention + MLP or DeepSeekMoE), head, and MTP.

DeepSeek-V3 (arXiv:2412.19437): layers are h = x + Attn(RMSNorm(x)); y = h + FFN(RMSNorm(h)),
FFN a dense SwiGLU for the first `first_k_dense_replace` layers and DeepSeekMoE (Sec. 2.1.2)
after; multi-token prediction (Sec. 2.2) adds D sequential modules
  h^k_i = TRM_k(M_k [RMSNorm(Emb(t_{i+k})); RMSNorm(h^{k-1}_i)]),  P^k_{i+k+1} = OutHead(h^k_i),
sharing the embedding and output head with the main model. Dense Qwen2 / Llama models are the
same stack with GQA and no MoE.

Entry points (shapes: B batch, T new tokens, S cache slots, V vocab):
  `Transformer(config).apply({'params': p}, tokens_bt, positions_bt=None, mask_bt=None,
      segment_ids_bt=None)` -> float32 logits [B, T, V]. With `mutable=['intermediates']`, MoE
      statistics (`expert_load`, `aux_loss`) and, when num_nextn_predict_layers > 0,
      `mtp_logits` [D, B, T, V] are sown; `mtp_loss` turns the latter into L_MTP.
  `...apply(..., method=Transformer.hidden)`: the same forward stopped before the output head,
      the final-norm output [B, T, d] (for log-probs formed in chunks, `r1jax.rl.logprobs`).
  `init_cache(config, batch_size, max_length)` -> `Cache`; then
  `Transformer(config).apply({'params': p}, tokens_bt, positions_bt, cache, mask_bt,
      method=Transformer.decode)` -> (logits [B, T, V], new cache): writes the T tokens at
      slots [cache.index, cache.index + T) and attends to every valid earlier slot. The same
      call does prefill (T = prompt length) and decoding (T = 1); unless attention_impl is
      "naive" it reads only slots < cache.index + T (`flash.bounded`), so a prefill attends over
      the prompt, not the whole cache.

Parameter tree (scan_layers=False): embed_tokens/embedding [V, d]; layers_{i}/{input_layernorm,
self_attn, post_attention_layernorm, mlp}; norm/weight [d]; lm_head/kernel [d, V] (absent when
tied); mtp_{k}/{enorm, hnorm, eh_proj/kernel [2d, d], block/..., norm}. With scan_layers=True
the layers become `dense_layers` and `moe_layers`, each holding one layer's tree with every
leaf stacked on a leading layer axis (logical name 'layers'), and the cache's per-layer entries
are stacked the same way.

Deviations: MTP concatenates [emb; h] (the order of the released checkpoint and of vLLM's
DeepSeek MTP; the paper writes [h; emb]) and has its own final RMSNorm (the checkpoint's
`shared_head.norm`); its block is a MoE layer when the model is MoE (as layer 61 of V3).
"""

from __future__ import annotations

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from r1jax import sharding
from r1jax.models import attention, layers, moe
from r1jax.models import config as config_lib

_BTD = ("act_batch", "act_length", "act_embed")
MTP_LOGITS = "mtp_logits"


# ---------------------------------------------------------------------------------------------
# Masks and caches.


def attention_mask(mask_bt: jax.Array, segment_ids_bt: jax.Array,
                   plain_causal: bool = False) -> attention.flash.Mask:
    """Causal, same-segment, valid-key mask of a full (uncached) forward, as per-token vectors
    (`flash.Mask`; `.dense()` gives the [B, T, T] array). plain_causal: no padding, one segment."""
    return attention.flash.Mask.full(mask_bt, segment_ids_bt, plain_causal)


def cache_attention_mask(valid_bs: jax.Array, index: jax.Array,
                         num_new: int) -> attention.flash.Mask:
    """Mask of T tokens written at slots index..index+T-1: valid slots up to the query's own slot
    (slots are causal in write order; positions need not be); slots >= index + T are empty."""
    return attention.flash.Mask.cached(valid_bs, index, num_new)


@flax.struct.dataclass
class Cache:
    """Decoding state: per-block attention caches, which slots hold real tokens, next slot.

    layers: one `attention.MLACache` / `attention.KVCache` per layer (per stack, with a leading
      layer axis, when scan_layers). valid_bs: bool [B, S]. index: int32 scalar.
    """

    layers: tuple
    valid_bs: jax.Array
    index: jax.Array


def _stacks(config: config_lib.ModelConfig) -> list[tuple[str, int, bool]]:
    """(name, number of layers, is MoE) of the dense prefix and the MoE stack, non-empty ones."""
    n_dense = config.first_k_dense_replace if config.is_moe else config.num_hidden_layers
    stacks = [("dense_layers", n_dense, False),
              ("moe_layers", config.num_hidden_layers - n_dense, True)]
    return [s for s in stacks if s[1] > 0]


def init_cache(config: config_lib.ModelConfig, batch_size: int, max_length: int,
               dtype=None) -> Cache:
    """An empty cache of `max_length` slots per sequence (prompt + generated tokens).

    Per token and layer it holds `config.kv_cache_values_per_token` values: the MLA latent c^KV
    and roped k^R, or GQA K and V."""
    one = attention.init_layer_cache(config, batch_size, max_length, dtype)
    if config.scan_layers:
        caches = tuple(jax.tree.map(lambda a, n=n: jnp.zeros((n,) + a.shape, a.dtype), one)
                       for _, n, _ in _stacks(config))
    else:
        caches = (one,) * config.num_hidden_layers
    return Cache(caches, jnp.zeros((batch_size, max_length), jnp.bool_),
                 jnp.zeros((), jnp.int32))


# ---------------------------------------------------------------------------------------------
# Layers.


class DecoderLayer(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then + MLP or MoE (RMSNorm(.)). Returns (x, cache)."""

    config: config_lib.ModelConfig
    is_moe: bool = False

    @nn.compact
    def __call__(self, x_btd, positions_bt, mask, cache=None, cache_index=None):
        cfg = self.config
        h_btd = layers.RMSNorm(cfg, name="input_layernorm")(x_btd)
        h_btd, cache = attention.make_attention(cfg, "self_attn")(
            h_btd, positions_bt, mask, cache, cache_index)
        x_btd = sharding.constrain(x_btd + h_btd, _BTD)
        h_btd = layers.RMSNorm(cfg, name="post_attention_layernorm")(x_btd)
        ffn = (moe.MoE(cfg, name="mlp") if self.is_moe
               else layers.MLP(cfg.intermediate_size, cfg, name="mlp"))
        return sharding.constrain(x_btd + ffn(h_btd), _BTD), cache


# "dots" keeps the outputs of the weight matmuls (no batch dimension) and recomputes attention:
# saving the attention einsums too (checkpoint_dots) kept every [T, S] score block of the
# blockwise attention's forward scan, T^2 memory (measured: 88 -> 1,105 MiB from T = 2k to 8k).
_REMAT_POLICIES = {"full": None,
                   "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def _layer_class(config: config_lib.ModelConfig):
    if config.remat_policy == "none":
        return DecoderLayer
    return nn.remat(DecoderLayer, policy=_REMAT_POLICIES[config.remat_policy], prevent_cse=True)


def _scanned(config: config_lib.ModelConfig, length: int):
    """`length` identical layers under nn.scan: params (and sown values) stacked on axis 0;
    carry x; positions, mask, cache index broadcast; the cache scanned along axis 0."""
    return nn.scan(_layer_class(config),
                   variable_axes={"params": 0, "intermediates": 0, moe.routing.REPLAY: 0},
                   split_rngs={"params": True},
                   in_axes=(nn.broadcast, nn.broadcast, 0, nn.broadcast),
                   length=length,
                   metadata_params={nn.PARTITION_NAME: "layers"})


def _blocks(config: config_lib.ModelConfig) -> list[nn.Module]:
    """The layer modules, in order; each maps (x, positions, mask, cache, index) -> (x, cache)."""
    if config.scan_layers:
        return [_scanned(config, n)(config, is_moe, name=name) for name, n, is_moe in
                _stacks(config)]
    cls = _layer_class(config)
    return [cls(config, config.is_moe_layer(i), name=f"layers_{i}")
            for i in range(config.num_hidden_layers)]


class MTPModule(nn.Module):
    """One multi-token prediction depth (Sec. 2.2): h^k from h^{k-1} and Emb(t_{i+k})."""

    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, h_btd, emb_btd, positions_bt, mask):
        cfg = self.config
        merged = jnp.concatenate([layers.RMSNorm(cfg, name="enorm")(emb_btd),
                                  layers.RMSNorm(cfg, name="hnorm")(h_btd)], axis=-1)
        x_btd = layers.Dense(cfg.hidden_size, (None, "embed"), cfg, name="eh_proj")(merged)
        block = _layer_class(cfg)(cfg, cfg.is_moe_layer(cfg.num_hidden_layers), name="block")
        h_btd, _ = block(x_btd, positions_bt, mask)
        return h_btd, layers.RMSNorm(cfg, name="norm")(h_btd)


# ---------------------------------------------------------------------------------------------
# The model.


class Transformer(nn.Module):
    """Decoder-only language model. See the module docstring for the two entry points."""

    config: config_lib.ModelConfig

    def setup(self):
        cfg = self.config
        self.embed_tokens = layers.Embed(cfg)
        self.blocks = _blocks(cfg)
        self.norm = layers.RMSNorm(cfg)
        if not cfg.tie_word_embeddings:
            self.lm_head = layers.Dense(cfg.vocab_size, ("embed", "vocab"), cfg,
                                        out_dtype="float32")
        self.mtp = [MTPModule(cfg, name=f"mtp_{k}") for k in range(cfg.num_nextn_predict_layers)]

    def _head(self, x_btd: jax.Array) -> jax.Array:
        if self.config.tie_word_embeddings:
            logits_btv = self.embed_tokens.attend(x_btd)
        else:
            logits_btv = self.lm_head(x_btd)
        return sharding.constrain(logits_btv, ("act_batch", "act_length", "act_vocab"))

    def _backbone(self, x_btd, positions_bt, mask, caches, cache_index):
        new_caches = []
        for block, cache in zip(self.blocks, caches):
            x_btd, cache = block(x_btd, positions_bt, mask, cache, cache_index)
            new_caches.append(cache)
        return x_btd, tuple(new_caches)

    def __call__(self, tokens_bt, positions_bt=None, mask_bt=None, segment_ids_bt=None):
        """Full causal forward. Returns float32 logits [B, T, V].

        Args:
          tokens_bt: int [B, T].
          positions_bt: RoPE positions [B, T]; default 0..T-1.
          mask_bt: 1 for real tokens; padding keys are never attended to. Default all ones.
          segment_ids_bt: packed sequences attend within their own segment. Default one segment.
        """
        return self._head(self.hidden(tokens_bt, positions_bt, mask_bt, segment_ids_bt))

    def hidden(self, tokens_bt, positions_bt=None, mask_bt=None, segment_ids_bt=None):
        """The full forward up to the output head: the final RMSNorm's output [B, T, d].

        Same arguments as `__call__`, whose logits are this times the unembedding. For callers
        that form log-probs in chunks and never hold [B, T, V] (`r1jax.rl.logprobs`).
        """
        b, t = tokens_bt.shape
        positions_bt = jnp.broadcast_to(jnp.arange(t), (b, t)) if positions_bt is None \
            else positions_bt
        plain_causal = mask_bt is None and segment_ids_bt is None
        mask_bt = jnp.ones((b, t), jnp.bool_) if mask_bt is None else mask_bt
        segment_ids_bt = jnp.zeros((b, t), jnp.int32) if segment_ids_bt is None \
            else segment_ids_bt
        mask = attention_mask(mask_bt, segment_ids_bt, plain_causal)
        h_btd, _ = self._backbone(self.embed_tokens(tokens_bt), positions_bt, mask,
                                  (None,) * len(self.blocks), None)
        self._multi_token_prediction(h_btd, tokens_bt, positions_bt, mask)
        return self.norm(h_btd)

    def _multi_token_prediction(self, h_btd, tokens_bt, positions_bt, mask):
        """Sows `mtp_logits` [D, B, T, V]: entry [k-1, b, i] predicts token i + k + 1."""
        logits = []
        for k, module in enumerate(self.mtp, start=1):
            emb_btd = self.embed_tokens(jnp.roll(tokens_bt, -k, axis=1))
            h_btd, normed_btd = module(h_btd, emb_btd, positions_bt, mask)
            logits.append(self._head(normed_btd))
        if logits:
            self.sow("intermediates", MTP_LOGITS, jnp.stack(logits))

    def decode(self, tokens_bt, positions_bt, cache: Cache, mask_bt=None):
        """Cached forward of T new tokens (prefill or one decoding step).

        Args:
          tokens_bt: int [B, T], written at slots [cache.index, cache.index + T).
          positions_bt: their RoPE positions [B, T] (e.g. prompt_length + step when decoding
            right-padded prompts).
          cache: from `init_cache` or a previous call.
          mask_bt: 1 for real tokens (0 = padding, never attended to later). Default all ones.
        Returns:
          (float32 logits [B, T, V], the updated cache with index advanced by T).
        """
        b, t = tokens_bt.shape
        mask_bt = jnp.ones((b, t), jnp.bool_) if mask_bt is None else mask_bt
        valid_bs = jax.lax.dynamic_update_slice(cache.valid_bs, mask_bt.astype(jnp.bool_),
                                                (0, cache.index))
        mask = cache_attention_mask(valid_bs, cache.index, t)
        h_btd, caches = self._backbone(self.embed_tokens(tokens_bt), positions_bt, mask,
                                       cache.layers, cache.index)
        return self._head(self.norm(h_btd)), Cache(caches, valid_bs, cache.index + t)


def boxed_params(config: config_lib.ModelConfig) -> dict:
    """The parameter tree as ShapeDtypeStructs in their logical-axis boxes (no memory)."""
    def init():
        tokens_bt = jnp.zeros((1, 1), jnp.int32)
        return Transformer(config).init(jax.random.key(0), tokens_bt)["params"]

    return jax.eval_shape(init)


def abstract_params(config: config_lib.ModelConfig) -> dict:
    """The parameter tree as `jax.ShapeDtypeStruct`s, logical-axis boxes removed (no memory)."""
    return nn.unbox(boxed_params(config))


def param_shardings(config: config_lib.ModelConfig, mesh: jax.sharding.Mesh):
    """Where each parameter lives on `mesh`, from its logical axis names (`sharding.RULES`).

    Returns:
      (abstract, shardings): ShapeDtypeStructs carrying their NamedSharding, and the tree of
      NamedShardings (`sharding.boxed_shardings`). Optimizer states and other trees that follow
      the parameters get theirs from `sharding.like_params(tree, abstract, mesh)`.
    """
    return sharding.boxed_shardings(boxed_params(config), mesh)


def random_params(config: config_lib.ModelConfig, seed: int = 0) -> dict:
    """Random parameters with O(1) activations, made in NumPy (no `init` to compile).

    For tests and benchmarks: kernels N(0, 1/fan_in), embeddings N(0, 1), norm scales
    1 + N(0, 0.01), biases N(0, 0.01). (`init`'s N(0, 0.02) makes attention nearly uniform,
    which would hide masking and caching bugs.)
    """
    rng = np.random.default_rng(seed)
    flat = traverse_util.flatten_dict(abstract_params(config))
    out = {}
    for path, leaf in flat.items():
        noise = rng.standard_normal(leaf.shape)
        if path[-1] == "weight":
            noise = 1.0 + 0.1 * noise
        elif path[-1] in ("bias", moe.BIAS):
            noise = 0.1 * noise
        elif path[-1] != "embedding":
            noise = noise / np.sqrt(leaf.shape[-2])
        out[path] = jnp.asarray(noise, leaf.dtype)
    return traverse_util.unflatten_dict(out)


def mtp_loss(mtp_logits_dbtv: jax.Array, tokens_bt: jax.Array, mask_bt: jax.Array | None = None,
             weight: float = 0.3) -> jax.Array:
    """L_MTP = lambda / D * sum_k CE_k (eq. 24-25): CE_k is the mean over positions i whose
    target t_{i+k+1} and input are real tokens of -log P^k(t_{i+k+1}).

    Args:
      mtp_logits_dbtv: float [D, B, T, V] (the sown `mtp_logits`).
      tokens_bt: int [B, T], the model's input tokens.
      mask_bt: 1 for real tokens; default all ones.
      weight: lambda (`config.mtp_loss_weight`).
    """
    depth, _, t, _ = mtp_logits_dbtv.shape
    mask_bt = jnp.ones(tokens_bt.shape, jnp.bool_) if mask_bt is None else mask_bt.astype(bool)
    total = 0.0
    for k in range(1, depth + 1):
        shift = k + 1
        logp_btv = jax.nn.log_softmax(mtp_logits_dbtv[k - 1, :, :t - shift].astype(jnp.float32))
        target_logp_bt = jnp.take_along_axis(logp_btv, tokens_bt[:, shift:, None], -1)[..., 0]
        valid_bt = mask_bt[:, shift:] & mask_bt[:, :t - shift]
        total += -jnp.sum(target_logp_bt * valid_bt) / jnp.maximum(valid_bt.sum(), 1)
    return weight / depth * total
