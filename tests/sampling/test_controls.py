"""Sampling controls: empirical distributions (chi-square) against the intended truncated,
renormalised distribution computed independently in float64 NumPy; excluded tokens never drawn;
greedy; policy log-probs before truncation; per-row keys."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from r1jax.sampling import controls

PROBS = np.array([0.06, 0.3, 0.02, 0.15, 0.2, 0.01, 0.1, 0.08, 0.05, 0.03])
LOGITS = np.log(PROBS)
NUM_DRAWS = 20_000


def reference(temperature, top_k=None, top_p=None, min_p=None) -> np.ndarray:
    """The intended distribution: softmax(logits / T), then each truncation in turn on the
    renormalised result (one sort of obvious loops, float64)."""
    p = np.exp(LOGITS / temperature)
    p /= p.sum()
    if top_k is not None:
        kth = np.sort(p)[::-1][top_k - 1]
        p = np.where(p >= kth, p, 0.0)
        p /= p.sum()
    if top_p is not None:
        keep = np.zeros_like(p, bool)
        mass = 0.0
        for i in np.argsort(-p):
            if mass >= top_p:
                break
            keep[i], mass = True, mass + p[i]
        p = np.where(keep, p, 0.0)
        p /= p.sum()
    if min_p is not None:
        p = np.where(p >= min_p * p.max(), p, 0.0)
        p /= p.sum()
    return p


@functools.partial(jax.jit, static_argnames=("temperature", "top_k", "top_p", "min_p"))
def _draw(logits_v, temperature, top_k, top_p, min_p):
    # logits are an argument, not a constant: XLA would constant-fold the [N, V] work slowly.
    logits_bv = jnp.broadcast_to(logits_v, (NUM_DRAWS, LOGITS.size))
    keys_b = controls.row_step_keys(jax.random.key(1234), jnp.arange(NUM_DRAWS), 7)
    return controls.sample(logits_bv, keys_b, temperature, top_k, top_p, min_p)


def draw(temperature, top_k=None, top_p=None, min_p=None):
    return _draw(jnp.asarray(LOGITS, jnp.float32), temperature, top_k, top_p, min_p)


def counts_of(tokens) -> np.ndarray:
    return np.bincount(np.asarray(tokens), minlength=LOGITS.size)


@pytest.mark.parametrize("settings", [
    dict(temperature=1.0),
    dict(temperature=0.5),
    dict(temperature=2.0),
    dict(temperature=1.0, top_k=3),
    dict(temperature=0.7, top_p=0.6),
    dict(temperature=1.0, min_p=0.3),
    dict(temperature=1.5, top_k=6, top_p=0.8, min_p=0.2),
], ids=str)
def test_empirical_distribution_matches_truncated_renormalised(settings):
    want = reference(**settings)
    tokens, logps = draw(**settings)
    counts = counts_of(tokens)
    assert counts[want == 0].sum() == 0, "a truncated token was sampled"
    kept = want > 0
    result = scipy.stats.chisquare(counts[kept], NUM_DRAWS * want[kept])
    assert result.pvalue > 1e-3, (settings, counts, want)
    # The draws really are from the truncated distribution: the full one is rejected.
    if not kept.all():
        full = reference(settings["temperature"])
        assert scipy.stats.chisquare(counts, NUM_DRAWS * full).pvalue < 1e-6
    # Reported log-probs are those of the untruncated tempered policy.
    np.testing.assert_allclose(np.asarray(logps), np.log(reference(settings["temperature"]))[
        np.asarray(tokens)], rtol=1e-5, atol=1e-5)


def test_greedy_is_argmax_with_unscaled_logps():
    logits_bv = jnp.asarray(np.random.default_rng(0).standard_normal((5, 11)), jnp.float32)
    keys_b = controls.row_step_keys(jax.random.key(0), jnp.arange(5), 0)
    tokens, logps = controls.sample(logits_bv, keys_b, 0.0, top_k=1, top_p=0.1)
    np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits_bv), -1))
    want = jax.nn.log_softmax(logits_bv)[jnp.arange(5), tokens]
    np.testing.assert_allclose(logps, want, rtol=1e-6)


def test_filters_keep_ties_and_the_top_token():
    logits_bv = jnp.asarray([[1.0, 3.0, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(np.isfinite(controls.top_k_filter(logits_bv, 1)),
                                  [[0, 1, 1, 0], [1, 0, 0, 0]])
    # top_p smaller than the largest probability keeps exactly the top token(s).
    np.testing.assert_array_equal(np.isfinite(controls.top_p_filter(logits_bv, 0.01)),
                                  [[0, 1, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_array_equal(np.isfinite(controls.min_p_filter(logits_bv, 0.2)),
                                  [[0, 1, 1, 0], [1, 0, 0, 0]])
    assert np.isfinite(controls.truncate(logits_bv, top_k=4, top_p=1.0, min_p=0.0)).all()


def test_row_keys_depend_on_row_and_step_only():
    rng = jax.random.key(3)
    keys = controls.row_step_keys(rng, jnp.arange(4), 2)
    again = controls.row_step_keys(rng, jnp.asarray([2, 3]), 2)
    np.testing.assert_array_equal(jax.random.key_data(keys[2:]), jax.random.key_data(again))
    other_step = controls.row_step_keys(rng, jnp.arange(4), 3)
    assert not np.array_equal(jax.random.key_data(keys), jax.random.key_data(other_step))
    raw = controls.row_step_keys(jax.random.PRNGKey(3), jnp.arange(2), 2)  # raw uint32 keys
    assert raw.shape == (2, 2)
