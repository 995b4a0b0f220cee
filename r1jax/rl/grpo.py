"""GRPO: group-relative advantages and the clipped, KL-regularised policy loss (pure functions).

DeepSeek-R1 (arXiv:2501.12948), Sec. 2.2.1. For each question q, G completions o_1..o_G are
sampled from the old policy pi_old and scored with rewards r_1..r_G. The objective (eq. 1) is

    J(theta) = E[ 1/G sum_i ( min(rho_i A_i, clip(rho_i, 1 - eps, 1 + eps) A_i)
                              - beta D_KL(pi_theta || pi_ref) ) ],

with the KL estimator of eq. 2,

    D_KL(pi_theta || pi_ref) = pi_ref / pi_theta - log(pi_ref / pi_theta) - 1,

and the group-relative advantage of eq. 3, A_i = (r_i - mean(r_1..r_G)) / std(r_1..r_G).

Where this code departs from the paper, and why:
  * Token level. Eq. 1 of the R1 paper writes the ratio rho_i for the whole completion; like
    DeepSeekMath (arXiv:2402.03300, eq. 3) and every open reproduction, we apply ratio, clip and
    KL per token, rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t}).
  * Aggregation over tokens is a config value (`aggregation`): "seq_mean" is the paper's
    1/G sum_i 1/|o_i| sum_t; "token_mean" is DAPO's token-level mean (arXiv:2503.14476, eq. 8);
    "fixed_length" is Dr. GRPO's sum / (G * L_max) (arXiv:2503.20783, Sec. 3.2), which removes
    the length bias of 1/|o_i|.
  * Advantage scale is a config value (`scale`): "group" is eq. 3; "batch" divides by the
    batch-wide std; "none" drops the std (Dr. GRPO, which removes the question-difficulty bias).
  * Clipping may be asymmetric, clip(rho, 1 - eps_low, 1 + eps_high) (DAPO "clip-higher").
  * Besides the paper's k3 estimator (eq. 2), k1 and k2 (Schulman, "Approximating KL
    divergence", 2020) are available.

All functions take arrays and Python options and are jit-compatible; `jax.jit` is applied by
the caller (the trainer) with the string options static.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ADVANTAGE_SCALES = ("group", "batch", "none")
KL_ESTIMATORS = ("k1", "k2", "k3")
AGGREGATIONS = ("seq_mean", "token_mean", "fixed_length")


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {allowed}")


# ---------------------------------------------------------------------------------------------
# Advantages (eq. 3)
# ---------------------------------------------------------------------------------------------


def group_advantages(
    rewards: jax.Array, group_size: int, scale: str = "group", eps: float = 1e-6
) -> jax.Array:
    """Group-relative advantages A_i (R1 paper, eq. 3).

    A_i = (r_i - mean_group(r)) / (std + eps), where std is the group's ("group"), the whole
    batch's ("batch") or 1 ("none", Dr. GRPO). The std is the population std (ddof=0) of the
    rewards it is taken over: eq. 3 writes std({r_1..r_G}), the spread of the G observed rewards,
    and ddof=0 is defined for every G. (TRL uses the sample std, ddof=1; the two differ by a
    constant factor sqrt(G / (G - 1)), i.e. a rescaled learning rate.) A group whose rewards are
    all equal gets zero advantages under every scale.

    Args:
      rewards: [N] float rewards, N = num_prompts * G, the G completions of a prompt consecutive.
      group_size: G, completions per prompt.
      scale: "group" | "batch" | "none".
      eps: added to the std (not used by "none").

    Returns:
      [N] float32 advantages.
    """
    _check_choice("scale", scale, ADVANTAGE_SCALES)
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {rewards.shape}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide len(rewards)={rewards.shape[0]}"
        )
    r_pg = rewards.astype(jnp.float32).reshape(-1, group_size)
    centered_pg = r_pg - r_pg.mean(axis=1, keepdims=True)
    if scale == "group":
        centered_pg = centered_pg / (r_pg.std(axis=1, keepdims=True) + eps)
    elif scale == "batch":
        centered_pg = centered_pg / (r_pg.std() + eps)
    return centered_pg.reshape(-1)


# ---------------------------------------------------------------------------------------------
# Per-token pieces of the loss
# ---------------------------------------------------------------------------------------------


def importance_ratio(logps: jax.Array, old_logps: jax.Array) -> jax.Array:
    """rho_{i,t} = pi_theta / pi_old = exp(log pi_theta - log pi_old), [N, T]."""
    return jnp.exp(logps - old_logps)


def clipped_surrogate(
    ratio: jax.Array, advantages: jax.Array, clip_eps_low: float, clip_eps_high: float
) -> jax.Array:
    """Per-token negated PPO surrogate, -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).

    Args:
      ratio: [N, T] rho.
      advantages: [N] A_i, broadcast over the completion's tokens.

    Returns:
      [N, T] loss terms (to be minimised).
    """
    adv_n1 = advantages[:, None]
    clipped = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    return -jnp.minimum(ratio * adv_n1, clipped * adv_n1)


def kl_penalty(logps: jax.Array, ref_logps: jax.Array, estimator: str = "k3") -> jax.Array:
    """Per-token estimate of D_KL(pi_theta || pi_ref) from samples of pi_theta, [N, T].

    "k3" (eq. 2): pi_ref/pi - log(pi_ref/pi) - 1 (unbiased, always >= 0);
    "k1": log(pi/pi_ref) (unbiased, can be negative); "k2": 0.5 * log(pi/pi_ref)^2 (biased, >= 0).
    """
    _check_choice("kl_estimator", estimator, KL_ESTIMATORS)
    log_ratio = logps - ref_logps  # log(pi / pi_ref)
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * jnp.square(log_ratio)
    return jnp.exp(-log_ratio) + log_ratio - 1.0


def aggregate(
    values: jax.Array, mask: jax.Array, aggregation: str, max_length: int | None = None
) -> jax.Array:
    """Reduces per-token values [N, T] under a {0, 1} mask [N, T] to a scalar.

    "seq_mean" (R1 paper): mean over each completion's tokens, then over completions; rows with
      no tokens are left out of the outer mean (they carry no signal; counting them as 0 would
      shrink the loss with the number of empty rows). An all-empty batch gives 0.
    "token_mean" (DAPO): sum over all tokens / number of tokens (0 when there are none).
    "fixed_length" (Dr. GRPO): sum over all tokens / (N * max_length), a constant denominator.
    """
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    mask = mask.astype(jnp.float32)
    masked = jnp.where(mask > 0, values, 0.0)
    if aggregation == "token_mean":
        return masked.sum() / jnp.maximum(mask.sum(), 1.0)
    if aggregation == "fixed_length":
        if max_length is None or max_length < values.shape[1]:
            raise ValueError(
                f"aggregation='fixed_length' needs max_length >= T={values.shape[1]} "
                f"(the generation budget L_max), got max_length={max_length}"
            )
        return masked.sum() / (values.shape[0] * max_length)
    lengths_n = mask.sum(axis=1)
    nonempty_n = (lengths_n > 0).astype(jnp.float32)
    seq_means_n = masked.sum(axis=1) / jnp.maximum(lengths_n, 1.0)
    return jnp.sum(seq_means_n * nonempty_n) / jnp.maximum(nonempty_n.sum(), 1.0)


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def _check_shapes(logps, old_logps, ref_logps, advantages, mask) -> None:
    shapes = {"logps": logps.shape, "old_logps": old_logps.shape, "mask": mask.shape}
    if ref_logps is not None:
        shapes["ref_logps"] = ref_logps.shape
    if len(logps.shape) != 2 or len(set(shapes.values())) != 1:
        raise ValueError(f"per-token inputs must share one [N, T] shape, got {shapes}")
    if advantages.shape != logps.shape[:1]:
        raise ValueError(f"advantages must be [N]={logps.shape[:1]}, got {advantages.shape}")


def _is_zero(beta) -> bool:
    try:
        return float(beta) == 0.0
    except (TypeError, jax.errors.ConcretizationTypeError):  # a traced beta
        return False


def _token_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    return jax.lax.stop_gradient(aggregate(values, mask, "token_mean"))


def _clip_metrics(ratio, advantages, mask, clip_eps_low, clip_eps_high) -> dict[str, jax.Array]:
    """Fractions of tokens whose surrogate is the clipped, zero-gradient branch.

    clip_frac_low: A < 0 and rho < 1 - eps_low; clip_frac_high: A > 0 and rho > 1 + eps_high.
    (With A < 0, min picks clip(rho) A exactly when clip(rho) > rho; with A > 0, when
    clip(rho) < rho.) Both are means over the unmasked tokens.
    """
    adv_n1 = advantages[:, None]
    low = (adv_n1 < 0) & (ratio < 1.0 - clip_eps_low)
    high = (adv_n1 > 0) & (ratio > 1.0 + clip_eps_high)
    return {
        "clip_frac_low": _token_mean(low.astype(jnp.float32), mask),
        "clip_frac_high": _token_mean(high.astype(jnp.float32), mask),
    }


def grpo_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    clip_eps_low: float,
    clip_eps_high: float,
    beta: float,
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean",
    max_length: int | None = None,
    entropy: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO loss, -J(theta) of eq. 1 at the token level (see the module docstring).

    Per token: -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A) + beta * KL, reduced by
    `aggregate`. Masked positions may hold any finite or infinite value: they are replaced
    before any arithmetic, so neither the loss nor its gradient sees them.

    Args:
      logps: [N, T] log pi_theta of the sampled tokens (differentiated).
      old_logps: [N, T] log pi_old (the sampling policy; equal to logps when mu = 1).
      ref_logps: [N, T] log pi_ref, or None when beta == 0.
      advantages: [N] A_i, see `group_advantages`.
      mask: [N, T] 1 for completion tokens, 0 for padding.
      clip_eps_low, clip_eps_high: eps of the clip band; equal for the paper, eps_high > eps_low
        for DAPO's clip-higher.
      beta: KL weight.
      kl_estimator: "k3" (eq. 2) | "k1" | "k2".
      aggregation: "seq_mean" | "token_mean" | "fixed_length".
      max_length: L_max, required by "fixed_length".
      entropy: optional [N, T] per-token entropies of pi_theta, only for the entropy metric
        (`r1jax.rl.logprobs.chunked_logps(..., with_entropy=True)`).

    Returns:
      (loss, metrics): scalar float32 loss; metrics clip_frac_low, clip_frac_high, kl (mean
      per-token KL estimate, 0 without ref_logps), ratio_mean, and entropy when `entropy` is given,
      all token means over the mask.
    """
    _check_choice("kl_estimator", kl_estimator, KL_ESTIMATORS)
    _check_choice("aggregation", aggregation, AGGREGATIONS)
    if ref_logps is None and not _is_zero(beta):
        raise ValueError(f"ref_logps is None but beta={beta}; pass ref_logps or set beta=0")
    _check_shapes(logps, old_logps, ref_logps, advantages, mask)

    valid = mask > 0
    # Zero padded positions first: exp(-inf - -inf) would put NaN into the gradient.
    logps = jnp.where(valid, logps.astype(jnp.float32), 0.0)
    old_logps = jnp.where(valid, old_logps.astype(jnp.float32), 0.0)
    advantages = advantages.astype(jnp.float32)

    ratio = importance_ratio(logps, old_logps)
    per_token = clipped_surrogate(ratio, advantages, clip_eps_low, clip_eps_high)
    kl = jnp.zeros_like(per_token)
    if ref_logps is not None:
        ref_logps = jnp.where(valid, ref_logps.astype(jnp.float32), 0.0)
        kl = kl_penalty(logps, ref_logps, kl_estimator)
        per_token = per_token + beta * kl
    loss = aggregate(per_token, mask, aggregation, max_length)

    metrics = _clip_metrics(ratio, advantages, mask, clip_eps_low, clip_eps_high)
    metrics["kl"] = _token_mean(kl, mask)
    metrics["ratio_mean"] = _token_mean(ratio, mask)
    if entropy is not None:
        metrics["entropy"] = _token_mean(entropy, mask)
    return loss, metrics
