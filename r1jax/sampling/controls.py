"""Sampling controls: small pure functions over next-token logits [B, V].

Order, as in HF `generate` and vLLM: temperature, then top-k, top-p (nucleus) and min-p, each
truncation acting on the distribution the previous one left (renormalised); a token survives
only if every enabled control keeps it. Ties at a top-k / top-p boundary are all kept (the
thresholds are values, so the result never depends on the order of equal logits).

Randomness: the key of batch row i at decoding step t is fold_in(fold_in(rng, i), t), and each
row draws from its own key, so a completion depends only on (rng, its row index, its logits):
not on the batch size, on how the batch is sharded, or on the other rows.

Draws invert the CDF of the truncated distribution with one uniform per row (`categorical`)
instead of jax.random.categorical's Gumbel-max over [B, V] noise: B random numbers per step
instead of B * V, and XLA:CPU compiles [B, V] threefry noise very slowly (seconds).

Log-probabilities (what GRPO's importance ratio pi_theta / pi_theta_old needs, DeepSeekMath
eq. 3): log_softmax(logits / temperature) of the policy at the sampled token, in float32, taken
*before* top-k / top-p / min-p truncation, because the trainer recomputes the same quantity with
a full forward at the same temperature and cannot reproduce the truncation. (The truncated
distribution is the one actually sampled from; the small bias this leaves in the ratio is the
usual one in GRPO implementations.) Greedy decoding (temperature 0) reports log_softmax(logits).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def scale(logits_bv: jax.Array, temperature: float) -> jax.Array:
    """logits / temperature in float32; temperature 0 (greedy) leaves them unscaled."""
    logits_bv = logits_bv.astype(jnp.float32)
    return logits_bv if temperature == 0 else logits_bv / temperature


def top_k_filter(logits_bv: jax.Array, k: int) -> jax.Array:
    """Keeps the k largest logits of each row (and any tied with the k-th); others -> -inf."""
    if k >= logits_bv.shape[-1]:
        return logits_bv
    kth_b1 = jax.lax.top_k(logits_bv, k)[0][:, -1:]
    return jnp.where(logits_bv >= kth_b1, logits_bv, -jnp.inf)


def top_p_filter(logits_bv: jax.Array, p: float) -> jax.Array:
    """Nucleus: keeps the smallest set of most likely tokens whose probability mass reaches p.

    A token is kept when the mass of the strictly more likely tokens is below p, so the most
    likely token is always kept."""
    probs_bv = jax.nn.softmax(logits_bv, axis=-1)
    sorted_bv = -jnp.sort(-probs_bv, axis=-1)
    mass_before_bv = jnp.cumsum(sorted_bv, axis=-1) - sorted_bv
    kept_sorted_bv = jnp.where(mass_before_bv < p, sorted_bv, jnp.inf)
    threshold_b1 = jnp.min(kept_sorted_bv, axis=-1, keepdims=True)
    return jnp.where(probs_bv >= threshold_b1, logits_bv, -jnp.inf)


def min_p_filter(logits_bv: jax.Array, min_p: float) -> jax.Array:
    """Keeps tokens whose probability is at least min_p times the row's largest probability."""
    max_b1 = jnp.max(logits_bv, axis=-1, keepdims=True)
    probs_ratio_bv = jnp.exp(logits_bv - max_b1)  # p_i / p_max
    return jnp.where(probs_ratio_bv >= min_p, logits_bv, -jnp.inf)


def truncate(logits_bv: jax.Array, top_k: int | None = None, top_p: float | None = None,
             min_p: float | None = None) -> jax.Array:
    """Applies the enabled truncations in order (top-k, top-p, min-p) to scaled logits."""
    if top_k is not None:
        logits_bv = top_k_filter(logits_bv, top_k)
    if top_p is not None and top_p < 1.0:
        logits_bv = top_p_filter(logits_bv, top_p)
    if min_p is not None and min_p > 0.0:
        logits_bv = min_p_filter(logits_bv, min_p)
    return logits_bv


def row_step_keys(rng: jax.Array, rows_b: jax.Array, step: jax.Array) -> jax.Array:
    """Per-row keys fold_in(fold_in(rng, row), step) [B] (typed or raw keys both work)."""
    return jax.vmap(lambda row: jax.random.fold_in(jax.random.fold_in(rng, row), step))(rows_b)


def policy_logps(logits_bv: jax.Array, tokens_b: jax.Array, temperature: float) -> jax.Array:
    """log_softmax(logits / temperature)[token] in float32 (temperature 0: unscaled).

    The one formula for token log-probs: the sampler's old log-probs, and the trainer's
    (`r1jax.rl.logprobs`, which forms the same z[token] - logsumexp(z) in chunks). Any leading
    shape: logits [..., V], tokens [...] -> [...]. Computed as the gathered logit minus
    logsumexp, so no log-softmax over V is kept.
    """
    z_bv = scale(logits_bv, temperature)
    picked_b = jnp.take_along_axis(z_bv, tokens_b[..., None], axis=-1)[..., 0]
    return picked_b - jax.nn.logsumexp(z_bv, axis=-1)


def entropy(logits_bv: jax.Array, temperature: float) -> jax.Array:
    """Entropy of softmax(logits / temperature) in float32: [..., V] -> [...]."""
    logp_bv = jax.nn.log_softmax(scale(logits_bv, temperature), axis=-1)
    return -jnp.sum(jnp.exp(logp_bv) * logp_bv, axis=-1)


def categorical(keys_b: jax.Array, logits_bv: jax.Array) -> jax.Array:
    """One draw per row from softmax(logits) by inverting the CDF with one uniform per row.

    Zero-probability (-inf) tokens are never drawn: the drawn index i is the one with
    cdf[i-1] < u * cdf[-1] <= cdf[i], u in (0, 1]. Unlike Gumbel-max it needs B random numbers
    instead of B * V (cheaper per step for big vocabularies, and much faster to compile on CPU).
    Returns int32 [B]."""
    cdf_bv = jnp.cumsum(jax.nn.softmax(logits_bv, axis=-1), axis=-1)
    u_b = 1.0 - jax.vmap(jax.random.uniform)(keys_b)
    return jnp.sum(cdf_bv < u_b[:, None] * cdf_bv[:, -1:], axis=-1).astype(jnp.int32)


def sample(logits_bv: jax.Array, keys_b: jax.Array, temperature: float,
           top_k: int | None = None, top_p: float | None = None,
           min_p: float | None = None) -> tuple[jax.Array, jax.Array]:
    """Draws one token per row. Returns (tokens int32 [B], policy log-probs float32 [B]).

    temperature 0 is greedy (argmax; ties to the lowest id) and ignores the truncations."""
    if temperature == 0:
        tokens_b = jnp.argmax(logits_bv, axis=-1).astype(jnp.int32)
    else:
        scaled_bv = scale(logits_bv, temperature)
        kept_bv = truncate(scaled_bv, top_k, top_p, min_p)
        tokens_b = categorical(keys_b, kept_bv)
    return tokens_b, policy_logps(logits_bv, tokens_b, temperature)
