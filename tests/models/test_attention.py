"""Attention: MLA and GQA cores against slow references, absorbed == naive, and cached decoding
(prefill + one token at a time, the sampler's use) against the full forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models import attention, layers, transformer
from r1jax.models import config as config_lib

# One layer keeps compiles short; the two-layer MoE config covers per-layer cache threading.
# Cached attention reads the 9-slot cache in chunks of 4 (`flash.bounded`; the last chunk is
# clamped to slots 5..8 and masks the slots it shares with the previous one).
MLA = config_lib.ModelConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=1, intermediate_size=48,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=0, rope_type="yarn", rope_factor=4.0,
    original_max_position_embeddings=8, max_position_embeddings=32, mscale=1.0,
    mscale_all_dim=0.5, attention_block_size=4)
GQA = MLA.replace(attention_type="gqa", num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  attention_bias=True, rope_interleave=False, q_lora_rank=None,
                  rope_type="llama3", rope_factor=8.0, tie_word_embeddings=True)
MOE = MLA.replace(num_hidden_layers=2, n_routed_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1,
                  q_lora_rank=None, moe_dispatch="dense", mla_decode="absorbed")
B, T, PROMPT, MAX_LEN = 2, 7, 3, 9

params_of = functools.lru_cache(maxsize=None)(transformer.random_params)


def _rand(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


# ------------------------------------------------------------------------------- cores


def _mla_inputs(seed=0, t=3, s=5):
    rng = np.random.default_rng(seed)
    h, n, r, k, v = 2, MLA.qk_nope_head_dim, MLA.qk_rope_head_dim, MLA.kv_lora_rank, MLA.v_head_dim
    mask = jnp.asarray(rng.random((2, t, s)) < 0.7).at[:, :, 0].set(True)
    return (_rand(rng, 2, t, h, n), _rand(rng, 2, t, h, r), _rand(rng, 2, s, k),
            _rand(rng, 2, s, r), _rand(rng, k, h * (n + v)), mask)


def test_mla_naive_matches_explicit_per_head_reference():
    q_nope, q_rope, latent, k_rope, w_kv_b, mask = _mla_inputs()
    got = attention.mla_naive(q_nope, q_rope, latent, k_rope, w_kv_b, mask, MLA)
    n, h = MLA.qk_nope_head_dim, MLA.num_attention_heads
    kv = np.asarray(latent, np.float64) @ np.asarray(w_kv_b, np.float64)  # [B, S, H*(n+v)]
    kv = kv.reshape(*kv.shape[:2], h, -1)
    scale = layers.softmax_scale(MLA)
    for b in range(2):
        for head in range(h):
            q = np.concatenate([q_nope[b, :, head], q_rope[b, :, head]], -1)  # [T, n + r]
            k = np.concatenate([kv[b, :, head, :n], k_rope[b]], -1)  # [S, n + r]
            logits = np.where(mask[b], q @ k.T * scale, -np.inf)
            p = np.exp(logits - logits.max(-1, keepdims=True))
            p /= p.sum(-1, keepdims=True)
            _close(got[b, :, head], p @ kv[b, :, head, n:])


def test_absorbed_equals_naive():
    inputs = _mla_inputs(seed=1, t=4, s=6)
    _close(attention.mla_absorbed(*inputs, MLA), attention.mla_naive(*inputs, MLA))


def test_gqa_core_matches_repeated_kv_reference():
    rng = np.random.default_rng(2)
    q, k, v = _rand(rng, 2, 3, 4, 8), _rand(rng, 2, 5, 2, 8), _rand(rng, 2, 5, 2, 8)
    mask = jnp.asarray(rng.random((2, 3, 5)) < 0.6).at[:, :, 0].set(True)
    got = attention.gqa_core(q, k, v, mask, GQA)
    for head in range(4):
        group = head // 2  # 4 query heads share 2 K/V heads: 0,1 -> 0; 2,3 -> 1.
        logits = jnp.einsum("btd,bsd->bts", q[:, :, head], k[:, :, group]) * 8 ** -0.5
        p = jax.nn.softmax(jnp.where(mask, logits, -jnp.inf), -1)
        _close(got[:, :, head], jnp.einsum("bts,bsd->btd", p, v[:, :, group]))


def test_fully_masked_query_gives_finite_output():
    probs = attention.masked_softmax(jnp.ones((1, 2, 1, 3)), jnp.zeros((1, 1, 3), bool), 1.0)
    assert np.isfinite(np.asarray(probs)).all()


# ------------------------------------------------------------------------------- caches


@functools.cache
def _fns(config):
    model = transformer.Transformer(config)
    return jax.jit(model.apply), jax.jit(functools.partial(
        model.apply, method=transformer.Transformer.decode))


def _tokens(seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 64, (B, T)), jnp.int32)


def _prefill_then_decode(config, tokens):
    params, (_, decode) = params_of(config), _fns(config)
    cache = transformer.init_cache(config, B, MAX_LEN)
    positions = jnp.broadcast_to(jnp.arange(T), (B, T))
    logits, cache = decode({"params": params}, tokens[:, :PROMPT], positions[:, :PROMPT], cache)
    steps = [logits]
    for i in range(PROMPT, T):
        logits, cache = decode({"params": params}, tokens[:, i:i + 1], positions[:, i:i + 1],
                               cache)
        steps.append(logits)
    assert int(cache.index) == T
    return jnp.concatenate(steps, axis=1), cache


@pytest.mark.parametrize("config", [MLA.replace(mla_decode="naive"),
                                    MLA.replace(mla_decode="absorbed"), GQA, MOE],
                         ids=["mla_naive", "mla_absorbed", "gqa", "mla_moe"])
def test_prefill_and_decode_match_full_forward(config):
    tokens = _tokens()
    reference = config.replace(mla_decode=MLA.mla_decode)  # the full forward ignores mla_decode
    full = _fns(reference)[0]({"params": params_of(config)}, tokens)
    cached, _ = _prefill_then_decode(config, tokens)
    _close(cached, full)


def test_mla_cache_holds_normalised_latent_and_roped_key_only():
    tokens = _tokens()
    _, cache = _prefill_then_decode(MLA, tokens)
    layer = cache.layers[0]
    assert set(vars(layer)) == {"latent_bsk", "k_rope_bsr"}
    assert layer.latent_bsk.shape == (B, MAX_LEN, MLA.kv_lora_rank)
    assert layer.k_rope_bsr.shape == (B, MAX_LEN, MLA.qk_rope_head_dim)
    assert not np.asarray(layer.latent_bsk[:, T:]).any()  # unwritten slots
    # Recompute c^KV = RMSNorm(x W^DKV) and k^R = RoPE(x W^KR) of layer 0 by hand.
    p = params_of(MLA)
    x = p["embed_tokens"]["embedding"][tokens]

    def rms(x, w):
        return x / jnp.sqrt(jnp.mean(x * x, -1, keepdims=True) + MLA.rms_norm_eps) * w

    x = rms(x, p["layers_0"]["input_layernorm"]["weight"])
    attn = p["layers_0"]["self_attn"]
    ckv = x @ attn["kv_a_proj_with_mqa"]["kernel"]
    _close(layer.latent_bsk[:, :T],
           rms(ckv[..., :MLA.kv_lora_rank], attn["kv_a_layernorm"]["weight"]))
    cos, sin = layers.rope_cos_sin(MLA, jnp.broadcast_to(jnp.arange(T), (B, T)))
    k_rope = layers.apply_rope(ckv[:, :, None, MLA.kv_lora_rank:], cos, sin, True)[:, :, 0]
    _close(layer.k_rope_bsr[:, :T], k_rope)
    assert np.asarray(cache.valid_bs[:, :T]).all() and not np.asarray(cache.valid_bs[:, T:]).any()


def test_ragged_right_padded_prompts_decode_like_unpadded():
    """The sampler's use: prompts of lengths 2 and 3 right-padded to 3, then decode steps with
    positions length + step; each row must match the full forward of its unpadded sequence."""
    config = MLA.replace(mla_decode="absorbed")
    params, (apply, decode) = params_of(config), _fns(config)
    lengths = jnp.asarray([2, 3])
    tokens = _tokens(seed=5)  # row b: prompt tokens[b, :length_b], then generated tokens.
    prompt = jnp.where(jnp.arange(PROMPT) < lengths[:, None], tokens[:, :PROMPT], 0)
    cache = transformer.init_cache(config, B, MAX_LEN)
    _, cache = decode({"params": params}, prompt, jnp.broadcast_to(jnp.arange(PROMPT), (B, PROMPT)),
                      cache, jnp.arange(PROMPT) < lengths[:, None])
    got = []
    for i in range(T - PROMPT):
        step = tokens[jnp.arange(B), lengths + i][:, None]
        logits, cache = decode({"params": params}, step, (lengths + i)[:, None], cache)
        got.append(logits[:, 0])
    full = apply({"params": params}, tokens)  # causal: later tokens do not matter
    for b in range(B):
        want = full[b, lengths[b]:lengths[b] + T - PROMPT]
        _close(jnp.stack(got, 1)[b], want)


def test_scanned_layers_decode_with_stacked_cache():
    config = MOE.replace(scan_layers=True)
    cache = transformer.init_cache(config, B, MAX_LEN)
    assert [c.latent_bsk.shape for c in cache.layers] == [(1, B, MAX_LEN, 8), (1, B, MAX_LEN, 8)]
    unrolled = params_of(MOE)
    scanned = {k: v for k, v in unrolled.items() if not k.startswith("layers_")}
    scanned["dense_layers"] = jax.tree.map(lambda a: a[None], unrolled["layers_0"])
    scanned["moe_layers"] = jax.tree.map(lambda a: a[None], unrolled["layers_1"])
    tokens = _tokens()
    want = _fns(MOE)[0]({"params": unrolled}, tokens)
    decode = _fns(config)[1]
    logits, cache = decode({"params": scanned}, tokens[:, :PROMPT],
                           jnp.broadcast_to(jnp.arange(PROMPT), (B, PROMPT)), cache)
    _close(logits, want[:, :PROMPT])
    logits, cache = decode({"params": scanned}, tokens[:, PROMPT:PROMPT + 1],
                           jnp.full((B, 1), PROMPT), cache)
    _close(logits[:, 0], want[:, PROMPT])
