"""Chunked log-probs and entropies (r1jax.rl.logprobs) against the full-logits formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models import config as config_lib
from r1jax.rl import logprobs
from r1jax.sampling import controls

B, T, D, V = 2, 13, 16, 37  # odd T and V: both chunkings pad


@pytest.fixture(scope="module")
def inputs():
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.standard_normal((B, T, D)), jnp.float32)
    w_dv = jnp.asarray(rng.standard_normal((D, V)) / np.sqrt(D) * 3, jnp.float32)
    tokens = jnp.asarray(rng.integers(0, V, (B, T)), jnp.int32)
    cotangents = (jnp.asarray(rng.standard_normal((B, T)), jnp.float32),
                  jnp.asarray(rng.standard_normal((B, T)), jnp.float32))
    return hidden, w_dv, tokens, cotangents


def _config(tied: bool = False) -> config_lib.ModelConfig:
    return config_lib.ModelConfig(vocab_size=V, hidden_size=D, tie_word_embeddings=tied)


def _weighted(fn, cotangents):
    """A scalar sum(g1 * logps + g2 * entropy), so one gradient checks both outputs."""
    def f(hidden, w):
        logps, entropy = fn(hidden, w)
        return jnp.sum(cotangents[0] * logps) + jnp.sum(cotangents[1] * entropy)
    return f


@pytest.mark.parametrize("chunk,vocab_chunk,tied", [(4, None, False), (5, 8, True)])
def test_chunked_equals_full_logits(inputs, chunk, vocab_chunk, tied):
    """Values and gradients (hidden and head weight) of both outputs, float32, 1e-5."""
    hidden, w_dv, tokens, cotangents = inputs
    config, temperature = _config(tied), 0.7
    w, axis = (w_dv.T, 0) if tied else (w_dv, 1)

    def full(h, w_):
        logits = logprobs.head_logits(h, w_, axis, config)
        return logprobs.full_logps(logits, tokens, temperature, with_entropy=True)

    def chunked(h, w_):
        return logprobs.chunked_logps(h, tokens, w_, axis, config, temperature=temperature,
                                      chunk_size=chunk, vocab_chunk_size=vocab_chunk,
                                      with_entropy=True)

    want, got = jax.jit(full)(hidden, w), jax.jit(chunked)(hidden, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    grads = [jax.jit(jax.grad(_weighted(f, cotangents), argnums=(0, 1)))(hidden, w)
             for f in (chunked, full)]
    for a, b in zip(*grads):
        assert np.abs(np.asarray(b)).max() > 1e-3  # a gradient that is there to compare
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_reference_formula_against_numpy():
    """policy_logps and entropy (the one formula) against float64 NumPy, at temperature 0.5."""
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((3, 4, 11)) * 4
    tokens = rng.integers(0, 11, (3, 4))
    z = logits / 0.5
    logp = z - z.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    want = np.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    got, got_entropy = jax.jit(lambda x, tok: (controls.policy_logps(x, tok, 0.5),
                                               controls.entropy(x, 0.5)))(
        jnp.asarray(logits, jnp.float32), jnp.asarray(tokens))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    entropy = -(np.exp(logp) * logp).sum(-1)
    np.testing.assert_allclose(got_entropy, entropy, rtol=1e-5, atol=1e-5)


def _temp_mib(t: int, vocab: int, chunk: int | None, vocab_chunk: int | None = None) -> float:
    """Temporary MiB of the compiled forward + backward (hidden and head weight) of the
    log-prob pass at d=16, one sequence: full logits (chunk None) or chunked."""
    config = _config().replace(vocab_size=vocab, hidden_size=16)
    tokens = jnp.zeros((1, t), jnp.int32)

    def loss(h, w):
        if chunk is None:
            logits = logprobs.head_logits(h, w, 1, config)
            return logprobs.full_logps(logits, tokens, 1.0)[0].sum()
        return logprobs.chunked_logps(h, tokens, w, 1, config, temperature=1.0,
                                      chunk_size=chunk, vocab_chunk_size=vocab_chunk)[0].sum()

    args = (jax.ShapeDtypeStruct((1, t, 16), jnp.float32),
            jax.ShapeDtypeStruct((16, vocab), jnp.float32))
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(*args).compile()
    return compiled.memory_analysis().temp_size_in_bytes / 2**20


def test_log_prob_pass_memory_does_not_scale_with_vocab_times_length():
    """Compiled memory of the log-prob pass. Full logits: temporaries grow ~8x with V (4k ->
    32k) at T=1024 (and likewise with T). Chunked over T (64 positions): flat in T (512 ->
    4096). Chunked over T and V (1024 columns): the growth with V is one float32 [d, V] buffer
    (the head weight's gradient accumulator, which any backward needs), nothing of size T * V."""
    chunked_t = _temp_mib(4096, 8192, 64) / _temp_mib(512, 8192, 64)
    full_v = _temp_mib(1024, 32768, None) / _temp_mib(1024, 4096, None)
    small, large = _temp_mib(1024, 4096, 64, 1024), _temp_mib(1024, 32768, 64, 1024)
    grad_mib = 16 * (32768 - 4096) * 4 / 2**20
    print(f"temp growth T 512 -> 4096: chunked {chunked_t:.2f}x; "
          f"V 4k -> 32k: full {full_v:.2f}x, chunked {large / small:.2f}x "
          f"({small:.2f} -> {large:.2f} MiB, weight gradient {grad_mib:.2f} MiB)")
    assert full_v > 6.0
    assert chunked_t < 1.2
    assert large - small < 1.2 * grad_mib
