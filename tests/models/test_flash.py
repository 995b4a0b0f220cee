"""Memory-linear attention (r1jax.models.flash) against the naive form: blockwise and fused
forwards and gradients with padding, packed segments and odd lengths; cached attention that reads
only the filled slots; prefill + decode on a long prompt against teacher forcing; and the
compiled GRPO step's temporary memory growing linearly with T."""

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import sharding
from r1jax.models import attention, flash, splash, transformer
from r1jax.models import config as config_lib
from r1jax.rl import plan_check
from r1jax.sampling import sampler

# Block 4 with T = 11: three query blocks and three key blocks, the last ones padded.
MLA = config_lib.ModelConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=6, n_routed_experts=0, max_position_embeddings=64,
    attention_block_size=4)
GQA = MLA.replace(attention_type="gqa", num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, q_lora_rank=None)
B, T = 2, 11


def _rand(rng, *shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.float32)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def _mask(packed: bool) -> flash.Mask:
    """Padding inside the rows (as GRPO's [prompt ; completion] has); three packed segments."""
    valid = np.ones((B, T), bool)
    valid[0, [3, 4, 10]] = False
    valid[1, [0, 6]] = False  # row 1, query 0 sees no key at all
    segments = np.array([[0] * 4 + [1] * 4 + [2] * 3, [0] * 2 + [1] * 9]) if packed \
        else np.zeros((B, T), int)
    return flash.Mask.full(jnp.asarray(valid), jnp.asarray(segments, jnp.int32))


def _inputs(config, seed):
    rng = np.random.default_rng(seed)
    h = config.num_attention_heads
    if config.attention_type == "mla":
        n, r, k, v = (config.qk_nope_head_dim, config.qk_rope_head_dim, config.kv_lora_rank,
                      config.v_head_dim)
        return (_rand(rng, B, T, h, n), _rand(rng, B, T, h, r), _rand(rng, B, T, k),
                _rand(rng, B, T, r), _rand(rng, k, h * (n + v)))
    g, d = config.num_key_value_heads, config.head_dim
    return _rand(rng, B, T, h, d), _rand(rng, B, T, g, d), _rand(rng, B, T, g, d)


def _core(config):
    return attention.mla_attention if config.attention_type == "mla" else attention.gqa_attention


@functools.cache
def _value_and_grad(config):
    """jit(value_and_grad) of sum(out * weight) over the rows that see at least one key (a row
    that sees none is 0 in flash and uniform in the naive form; nothing real reads it)."""
    core = _core(config)

    def loss(inputs, mask, weight):
        out = core(*inputs, mask, config)
        seen = mask.dense().any(-1)[:, :, None, None]
        return jnp.sum(jnp.where(seen, out * weight, 0.0)), out

    return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize("base", [MLA, GQA], ids=["mla", "gqa"])
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
def test_blockwise_equals_naive_forward_and_gradients(base, packed):
    inputs, mask = _inputs(base, seed=3), _mask(packed)
    dv = base.v_head_dim if base.attention_type == "mla" else base.head_dim
    weight = _rand(np.random.default_rng(4), B, T, base.num_attention_heads, dv)
    (want, want_out), want_grads = _value_and_grad(base.replace(attention_impl="naive"))(
        inputs, mask, weight)
    (got, got_out), got_grads = _value_and_grad(base.replace(attention_impl="blockwise"))(
        inputs, mask, weight)
    seen = np.asarray(mask.dense().any(-1))
    assert seen.sum() < B * T  # a fully masked row exists and is excluded
    _close(np.asarray(got_out)[seen], np.asarray(want_out)[seen])
    _close(got, want, 1e-4)
    for g, w in zip(got_grads, want_grads):
        _close(g, w)


def test_fused_layout_equals_blockwise_on_cpu_xla():
    """The cuDNN call's plumbing (values 6 wide padded to the 12-wide query/key heads as MLA's
    128 -> 192; 4 query heads on 2 key/value heads), checked with the same
    `jax.nn.dot_product_attention` call on its XLA implementation against blockwise (itself
    checked against naive above), forward and gradients."""
    rng = np.random.default_rng(5)
    mask = flash.Mask.full(jnp.ones((B, T), bool), jnp.zeros((B, T), jnp.int32), True)
    q, k, v = _rand(rng, B, T, 4, 12), _rand(rng, B, T, 2, 12), _rand(rng, B, T, 2, 6)
    weight = _rand(rng, B, T, 4, 6)

    def loss(attend, q, k, v):
        return jnp.sum(attend(q, k, v, mask, 0.3, MLA) * weight)

    fused = functools.partial(flash.fused, implementation="xla")
    got = jax.jit(jax.value_and_grad(functools.partial(loss, fused), (0, 1, 2)))(q, k, v)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, flash.blockwise), (0, 1, 2)))(
        q, k, v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _close(a, b)


@pytest.mark.slow
@pytest.mark.parametrize("base", [MLA, GQA], ids=["mla", "gqa"])
def test_splash_in_interpret_mode_equals_blockwise(base):
    """Pallas splash attention (the TPU default) in interpret mode, padding and packed segments
    as segment ids, lengths padded 11 -> 128, heads 12 -> 128 wide: forward and gradients. GQA
    runs under a 2 x 2 (fsdp, tensor) mesh, so through the kernel's shard_map."""
    mask = _mask(packed=True)
    seen = mask.dense().any(-1)[:, :, None, None]
    if base.attention_type == "mla":
        rng = np.random.default_rng(8)  # MLA's per-head form: 12-wide q/k, 6-wide values
        q, k, v = _rand(rng, B, T, 2, 12), _rand(rng, B, T, 2, 12), _rand(rng, B, T, 2, 6)
    else:
        q, k, v = _inputs(base, seed=8)
    weight = _rand(np.random.default_rng(11), *q.shape[:3], v.shape[-1])

    def loss(attend, q, k, v):
        return jnp.sum(jnp.where(seen, attend(q, k, v, mask, 0.3, base) * weight, 0.0))

    mesh = sharding.make_mesh({"fsdp": 2, "tensor": 2}, jax.devices()[:4])
    with jax.set_mesh(mesh) if base.attention_type == "gqa" else contextlib.nullcontext():
        got = jax.jit(jax.value_and_grad(functools.partial(loss, splash.attention), (0, 1, 2)))(
            q, k, v)
    want = jax.jit(jax.value_and_grad(functools.partial(loss, flash.blockwise), (0, 1, 2)))(
        q, k, v)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        _close(a, b)
    assert np.isfinite(np.asarray(splash.attention(q, k, v, mask, 0.3, base))).all()


def test_cudnn_off_gpu_or_with_padding_is_a_clear_error():
    mask = _mask(packed=False)
    with pytest.raises(ValueError, match="attention_impl='cudnn'"):
        flash.resolve(MLA.replace(attention_impl="cudnn", dtype="bfloat16"), mask)
    with pytest.raises(ValueError, match="attention_impl='splash'"):
        flash.resolve(MLA.replace(attention_impl="splash"), mask)
    with pytest.raises(ValueError, match="padding or packed segments"):
        flash.fused(*_inputs(GQA, 0), mask, 1.0, GQA, implementation="xla")


def test_auto_is_naive_for_short_cpu_forwards_and_blockwise_for_long_ones():
    def mask(t):
        return flash.Mask.full(jnp.ones((1, t), bool), jnp.zeros((1, t), jnp.int32))

    assert flash.resolve(MLA, mask(1024)) == "naive"
    assert flash.resolve(MLA, mask(1025)) == "blockwise"


# ------------------------------------------------------------------------------- cached


def test_cached_attention_reads_only_filled_chunks():
    """Prefill of 6 tokens into a 16-slot cache (chunk 4): slots 8.. are never read (NaN there
    would poison the naive form), and the result equals the naive full-cache form. (Every
    decode form against the full forward over several chunks: tests/models/test_attention.py.)"""
    config = MLA.replace(mla_decode="absorbed")
    params = transformer.random_params(config)
    model = transformer.Transformer(config)
    tokens = jnp.asarray(np.random.default_rng(6).integers(0, 64, (B, 6)), jnp.int32)
    positions = jnp.broadcast_to(jnp.arange(6), (B, 6))
    cache = transformer.init_cache(config, B, 16)
    poisoned = cache.replace(layers=jax.tree.map(lambda a: a.at[:, 8:].set(jnp.nan),
                                                 cache.layers))
    decode = functools.partial(model.apply, method=transformer.Transformer.decode)
    got, _ = jax.jit(decode)({"params": params}, tokens, positions, poisoned)
    naive = transformer.Transformer(config.replace(attention_impl="naive"))
    want, _ = jax.jit(functools.partial(naive.apply, method=transformer.Transformer.decode))(
        {"params": params}, tokens, positions, cache)
    assert np.isfinite(np.asarray(got)).all()
    _close(got, want)


def test_sampler_on_a_long_prompt_matches_teacher_forcing():
    """Greedy sampling after prompts of 40 and 29 tokens (10 prefill chunks of 4): each of the 6
    tokens is the argmax of the full forward over [prompt ; completion] (teacher forcing) and its
    log-prob equals that forward's log_softmax there."""
    config = MLA.replace(mla_decode="absorbed")
    params = transformer.random_params(config, seed=1)
    rng = np.random.default_rng(7)
    lengths = np.array([40, 29])
    prompts = np.where(np.arange(40) < lengths[:, None], rng.integers(1, 64, (B, 40)), 0)
    out = sampler.generate(config, params, prompts, lengths, jax.random.key(0), max_new_tokens=6,
                           temperature=0.0)
    seqs = np.zeros((B, 46), np.int32)  # right-padded; causal, so padding changes nothing
    for b in range(B):
        seqs[b, :lengths[b] + 6] = np.concatenate([prompts[b, :lengths[b]], out.tokens[b]])
    logits = jax.jit(transformer.Transformer(config).apply)({"params": params}, seqs)
    for b in range(B):
        logp = np.asarray(jax.nn.log_softmax(logits[b, lengths[b] - 1:lengths[b] + 5]))
        np.testing.assert_array_equal(out.tokens[b], np.argmax(logp, -1))
        _close(out.logps[b], logp[np.arange(6), np.asarray(out.tokens[b])])


# ------------------------------------------------------------------------------- memory


def grpo_step_temp_bytes(model: config_lib.ModelConfig, length: int, prompt: int = 16) -> int:
    """Per-device temporary bytes of the compiled GRPO update (rl.step.jit_train_step via
    rl.plan_check) of 8 sequences of `length` tokens on the 8 simulated devices (fsdp=8: one
    sequence per device; nothing runs)."""
    n = length - prompt
    config = plan_check.step_config(model, 8, n, group_size=2)
    return plan_check.compiled_memory(config, {"fsdp": 8}, 8, prompt, n).temporaries


LONG_MLA = MLA.replace(max_position_embeddings=1 << 14, attention_block_size=512,
                       remat_policy="full")
LONG_GQA = GQA.replace(max_position_embeddings=1 << 14, attention_block_size=512,
                       remat_policy="dots", num_key_value_heads=1)


@pytest.mark.slow
@pytest.mark.parametrize("model", [LONG_MLA, LONG_GQA], ids=["mla", "gqa"])
def test_grpo_step_temp_memory_grows_linearly_with_length(model):
    """2-layer models, default attention_impl ("auto": blockwise at these lengths), full remat
    (MLA) and "dots" remat (GQA), T = 2k..16k: each doubling of T at most 2.3x the temporary
    bytes (the naive form's [H, T, T] scores grow 4x; issue 23 measured about 3.4x)."""
    temp = [grpo_step_temp_bytes(model, t) for t in (2048, 4096, 8192, 16384)]
    ratios = [b / a for a, b in zip(temp, temp[1:])]
    assert max(ratios) <= 2.3, (temp, ratios)
