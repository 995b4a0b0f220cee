"""Policy objectives beside GRPO: GSPO, GSPO-token, CISPO, dual-clip PPO, and the rollout
(sampler-vs-trainer) importance-sampling corrections TIS and MIS. Pure functions.

Every objective is written per token as a loss term l_{i,t} (to be minimised), then reduced by
`grpo.aggregate` ("seq_mean" | "token_mean" | "fixed_length"), exactly like `grpo.grpo_loss`.
Symbols: rho_{i,t} = pi_theta(o_{i,t} | q, o_{i,<t}) / pi_old(o_{i,t} | q, o_{i,<t}) the token
ratio, A_{i,t} the advantage ([N] per completion, or [N, T] per token for the token-level
estimators of `advantages`), eps_low / eps_high the clip band, sg the stop-gradient.

  "grpo"       DeepSeekMath (arXiv:2402.03300) eq. 3, R1 (arXiv:2501.12948) eq. 1:
               l = -min(rho A, clip(rho, 1 - eps_low, 1 + eps_high) A).
  "gspo"       GSPO (Zheng et al., arXiv:2507.18071), the GSPO objective: one ratio per
               completion, s_i = (pi_theta(o_i | q) / pi_old(o_i | q))^(1 / |o_i|)
                   = exp(1/|o_i| sum_t log rho_{i,t}),
               l = -min(s_i A, clip(s_i, 1 - eps_low, 1 + eps_high) A); clipping drops whole
               completions. With "seq_mean" this is the paper's 1/G sum_i exactly.
  "gspo_token" GSPO-token (same paper): s_{i,t} = sg[s_i] * pi_theta(o_{i,t}) /
               sg[pi_theta(o_{i,t})], equal to s_i in value, with a per-token gradient so that
               token-level advantages are possible; same clipped form as "gspo".
  "cispo"      CISPO (MiniMax-M1, arXiv:2506.13585), its J_CISPO: REINFORCE with a
               clipped, stop-gradient importance weight; no token is dropped:
               l = -sg(clip(rho, 1 - eps_low, 1 + eps_high)) A log pi_theta(o_{i,t}).
               (Its value depends on log pi itself, not only on rho; its gradient is
               -clip(rho) A grad log pi.)
  "dual_clip"  Dual-clip PPO (Ye et al., "Mastering Complex Control in MOBA Games with Deep
               Reinforcement Learning", arXiv:1912.09729): for A < 0 the PPO
               surrogate is bounded below by c A (c > 1), so a huge rho cannot make one token's
               loss unbounded: l = -max(min(rho A, clip(rho) A), c A) for A < 0, the PPO term
               for A >= 0.

Rollout correction (issue 24; the sampler's pi_sampler and the trainer's pi_old disagree in
low precision, see `rollout_is_weights`): weights w_{i,t} = sg(...) multiply every loss term.

KL and entropy: beta * KL(pi_theta || pi_ref) per token (`grpo.kl_penalty`) is added when the
KL is in the loss (`kl_in="reward"` puts it into the advantages instead, `advantages`), and
`entropy_coef * H` is subtracted (an entropy bonus, as in PPO, Schulman et al. 2017 eq. 9).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1jax.rl import grpo

LOSSES = ("grpo", "gspo", "gspo_token", "cispo", "dual_clip")
IS_CORRECTIONS = ("none", "token_truncate", "sequence_truncate", "token_mask", "sequence_mask")


# The option checks of the GRPO loss, shared so that every loss names a bad option one way.
_check_choice = grpo._check_choice
_is_zero = grpo._is_zero


# ---------------------------------------------------------------------------------------------
# Ratios
# ---------------------------------------------------------------------------------------------


def sequence_log_ratio(logps: jax.Array, old_logps: jax.Array, mask: jax.Array) -> jax.Array:
    """1/|o_i| sum_t log rho_{i,t}, the log of GSPO's s_i: [N, T] x3 -> [N].

    Rows without tokens get 0 (s_i = 1), so they stay finite; the loss leaves them out anyway.
    Masked positions must already be finite (the callers zero them).
    """
    mask = mask.astype(jnp.float32)
    lengths_n = mask.sum(axis=1)
    return jnp.sum((logps - old_logps) * mask, axis=1) / jnp.maximum(lengths_n, 1.0)


def gspo_token_ratio(logps: jax.Array, old_logps: jax.Array, mask: jax.Array) -> jax.Array:
    """GSPO-token's s_{i,t} = sg[s_i] * pi_theta(o_{i,t}) / sg[pi_theta(o_{i,t})], [N, T].

    Its value is s_i on every token; d s_{i,t} / d log pi_theta(o_{i,t}) = s_i (one token only).
    """
    s_n = jnp.exp(sequence_log_ratio(logps, old_logps, mask))
    return jax.lax.stop_gradient(s_n)[:, None] * jnp.exp(logps - jax.lax.stop_gradient(logps))


def _ratio(loss: str, logps, old_logps, mask) -> jax.Array:
    """The ratio each objective clips, [N, T] (GSPO's s_i broadcast over the row)."""
    if loss == "gspo":
        return jnp.broadcast_to(
            jnp.exp(sequence_log_ratio(logps, old_logps, mask))[:, None], logps.shape)
    if loss == "gspo_token":
        return gspo_token_ratio(logps, old_logps, mask)
    return grpo.importance_ratio(logps, old_logps)


# ---------------------------------------------------------------------------------------------
# Per-token loss terms
# ---------------------------------------------------------------------------------------------


def clipped_surrogate(ratio, adv_nt, clip_eps_low: float, clip_eps_high: float) -> jax.Array:
    """-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with A broadcast to [N, T].

    The PPO form shared by "grpo" (r = rho), "gspo" (r = s_i) and "gspo_token" (r = s_{i,t}).
    """
    clipped = jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high)
    return -jnp.minimum(ratio * adv_nt, clipped * adv_nt)


def dual_clip_surrogate(ratio, adv_nt, clip_eps_low: float, clip_eps_high: float,
                        dual_clip_c: float) -> jax.Array:
    """Dual-clip PPO loss terms [N, T]: -max(min(rho A, clip(rho) A), c A) where A < 0.

    Args:
      ratio: [N, T] rho. adv_nt: A broadcastable to [N, T].
      dual_clip_c: c > 1, the lower bound c A of the objective for negative advantages
        (3 in Ye et al.).
    """
    ppo = clipped_surrogate(ratio, adv_nt, clip_eps_low, clip_eps_high)
    # The loss is -objective: bounding the objective below by c A bounds the loss above by -c A.
    return jnp.where(adv_nt < 0, jnp.minimum(ppo, -dual_clip_c * adv_nt), ppo)


def cispo_terms(logps, ratio, adv_nt, clip_eps_low: float, clip_eps_high: float) -> jax.Array:
    """CISPO loss terms [N, T]: -sg(clip(rho, 1 - eps_low, 1 + eps_high)) A log pi_theta."""
    weight = jax.lax.stop_gradient(jnp.clip(ratio, 1.0 - clip_eps_low, 1.0 + clip_eps_high))
    return -weight * adv_nt * logps


# ---------------------------------------------------------------------------------------------
# Rollout (sampler vs trainer) importance-sampling correction
# ---------------------------------------------------------------------------------------------


def rollout_is_weights(old_logps: jax.Array, sampler_logps: jax.Array, mask: jax.Array, *,
                       correction: str, cap: float) -> jax.Array:
    """Stop-gradient weights w [N, T] that correct for sampling from pi_sampler, not pi_old.

    The sampler (decode kernels, bf16, other MoE routing) and the trainer compute different
    probabilities for the same tokens, so the batch is off-policy even at mu = 1. With the
    token ratio delta_{i,t} = pi_old(o_{i,t}) / pi_sampler(o_{i,t}) (pi_old recomputed by the
    trainer) and a cap C > 1:

      "token_truncate"    w_{i,t} = min(delta_{i,t}, C): truncated IS, TIS (Yao et al., "Your
                          Efficient RL Framework Secretly Brings You Off-Policy RL Training",
                          2025; C = 2 there).
      "sequence_truncate" w_i = min(prod_t delta_{i,t}, C) on every token of the row: the
                          sequence-level TIS of Liu et al., "When Speed Kills Stability:
                          Demystifying RL Collapse from the Training-Inference Mismatch", 2025.
      "token_mask"        w_{i,t} = 1 if 1/C <= delta_{i,t} <= C else 0 (masked IS, MIS, token
                          level: a token the two engines disagree on carries no gradient).
      "sequence_mask"     w_i = 1 if 1/C <= prod_t delta_{i,t} <= C else 0 (MIS, Liu et al.):
                          the whole completion is dropped.
      "none"              w = 1.

    Masked-out tokens are weighted 0 by the loss's mask, whatever w holds; the product over a
    row is taken in log space (a long completion's product overflows float32).

    Args:
      old_logps: [N, T] log pi_old recomputed by the trainer.
      sampler_logps: [N, T] log pi_sampler, returned by the sampler.
      mask: [N, T] completion mask.
      correction: one of IS_CORRECTIONS. cap: C > 1.

    Returns:
      [N, T] float32 weights, stop-gradient (they correct the data, not the objective).
    """
    _check_choice("correction", correction, IS_CORRECTIONS)
    if not cap > 1.0:
        raise ValueError(f"cap={cap} must be > 1 (C bounds the ratio to [1/C, C])")
    valid = mask > 0
    log_delta = jnp.where(valid, old_logps.astype(jnp.float32) - sampler_logps, 0.0)
    log_cap = jnp.log(jnp.float32(cap))
    if correction.startswith("sequence"):
        log_delta = jnp.broadcast_to(log_delta.sum(axis=1, keepdims=True), log_delta.shape)
    if correction == "none":
        weights = jnp.ones_like(log_delta)
    elif correction.endswith("truncate"):
        weights = jnp.exp(jnp.minimum(log_delta, log_cap))
    else:
        weights = (jnp.abs(log_delta) <= log_cap).astype(jnp.float32)
    return jax.lax.stop_gradient(weights)


def logp_gap_metrics(old_logps: jax.Array, sampler_logps: jax.Array,
                     mask: jax.Array) -> dict[str, jax.Array]:
    """How far the sampler's log-probs are from the trainer's, over the real tokens.

    With delta = log pi_old - log pi_sampler (the trainer's recomputation minus the sampler's):
    "mean_abs_delta" mean |delta|; "k3_kl" the mean k3 estimate of KL(pi_sampler || pi_old),
    exp(delta) - 1 - delta (>= 0, from samples of the sampler); "max_ratio" max exp(delta).
    Zeros when there is no real token.
    """
    valid = mask > 0
    delta = jnp.where(valid, old_logps.astype(jnp.float32) - sampler_logps, 0.0)
    count = jnp.maximum(valid.sum(), 1)
    return {"mean_abs_delta": jnp.abs(delta).sum() / count,
            "k3_kl": (jnp.exp(delta) - 1.0 - delta).sum() / count,
            "max_ratio": jnp.where(valid, jnp.exp(delta), 0.0).max(initial=0.0)}


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------


def _advantages_nt(advantages: jax.Array, shape) -> jax.Array:
    """[N] (per completion) or [N, T] (per token) advantages as an [N, T]-broadcastable array."""
    if advantages.shape == shape[:1]:
        return advantages.astype(jnp.float32)[:, None]
    if advantages.shape == shape:
        return advantages.astype(jnp.float32)
    raise ValueError(f"advantages must be [N]={shape[:1]} or [N, T]={shape}, "
                     f"got {advantages.shape}")


def _check_inputs(logps, old_logps, ref_logps, mask, is_weights, entropy) -> None:
    shapes = {"logps": logps.shape, "old_logps": old_logps.shape, "mask": mask.shape}
    for name, value in (("ref_logps", ref_logps), ("is_weights", is_weights),
                        ("entropy", entropy)):
        if value is not None:
            shapes[name] = value.shape
    if len(logps.shape) != 2 or len(set(shapes.values())) != 1:
        raise ValueError(f"per-token inputs must share one [N, T] shape, got {shapes}")


def _metrics(loss, ratio, adv_nt, mask, kl, clip_eps_low, clip_eps_high):
    """clip_frac_low / clip_frac_high, kl, ratio_mean: token means over the mask.

    A token counts as clipped where its loss takes the clipped, zero-gradient branch (A < 0 and
    r < 1 - eps_low; A > 0 and r > 1 + eps_high); for CISPO, whose weight is clipped whatever
    the sign of A and which keeps every gradient, where its weight is clipped.
    """
    def token_mean(values):
        return jax.lax.stop_gradient(grpo.aggregate(values, mask, "token_mean"))

    low = ratio < 1.0 - clip_eps_low
    high = ratio > 1.0 + clip_eps_high
    if loss != "cispo":
        low, high = low & (adv_nt < 0), high & (adv_nt > 0)
    return {"clip_frac_low": token_mean(low.astype(jnp.float32)),
            "clip_frac_high": token_mean(high.astype(jnp.float32)),
            "kl": token_mean(kl), "ratio_mean": token_mean(ratio)}


def policy_loss(
    logps: jax.Array,
    old_logps: jax.Array,
    ref_logps: jax.Array | None,
    advantages: jax.Array,
    mask: jax.Array,
    *,
    loss: str = "grpo",
    clip_eps_low: float,
    clip_eps_high: float,
    beta: float,
    kl_estimator: str = "k3",
    aggregation: str = "seq_mean",
    max_length: int | None = None,
    dual_clip_c: float = 3.0,
    is_weights: jax.Array | None = None,
    entropy: jax.Array | None = None,
    entropy_coef: float = 0.0,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The policy loss selected by name (module docstring), KL, entropy bonus, IS weights.

    Per token: w_{i,t} * l_{i,t} + beta * KL_{i,t} - entropy_coef * H_{i,t}, reduced by
    `grpo.aggregate`. With loss="grpo", [N] advantages and no weights or entropy it equals
    `grpo.grpo_loss`. Masked positions may hold any value (replaced before any arithmetic).

    Args:
      logps: [N, T] log pi_theta of the sampled tokens (differentiated).
      old_logps: [N, T] log pi_old. ref_logps: [N, T] log pi_ref, or None when beta == 0.
      advantages: [N] per completion or [N, T] per token.
      mask: [N, T] 1 for completion tokens, 0 for padding.
      loss: one of LOSSES. clip_eps_low, clip_eps_high: the clip band (of rho, s_i, or of
        CISPO's weight). beta: KL weight (0 when the KL is in the reward).
      kl_estimator, aggregation, max_length: as in `grpo.grpo_loss`.
      dual_clip_c: c > 1 of "dual_clip".
      is_weights: optional [N, T] rollout-correction weights (`rollout_is_weights`).
      entropy: optional [N, T] per-token entropy of pi_theta (differentiated when
        entropy_coef > 0; also the `entropy` metric).
      entropy_coef: weight of the entropy bonus (>= 0).

    Returns:
      (loss, metrics): scalar float32; metrics clip_frac_low, clip_frac_high, kl, ratio_mean
      (of the ratio the objective clips), entropy when given, token means over the mask.
    """
    _check_choice("loss", loss, LOSSES)
    if ref_logps is None and not _is_zero(beta):
        raise ValueError(f"ref_logps is None but beta={beta}; pass ref_logps or set beta=0")
    if loss == "dual_clip" and not dual_clip_c > 1.0:
        raise ValueError(f"dual_clip_c={dual_clip_c} must be > 1")
    _check_inputs(logps, old_logps, ref_logps, mask, is_weights, entropy)
    adv_nt = _advantages_nt(advantages, logps.shape)
    valid = mask > 0
    # Zero padded positions first: exp(-inf - -inf) would put NaN into the gradient.
    logps = jnp.where(valid, logps.astype(jnp.float32), 0.0)
    old_logps = jnp.where(valid, old_logps.astype(jnp.float32), 0.0)

    ratio = _ratio(loss, logps, old_logps, mask)
    if loss == "cispo":
        per_token = cispo_terms(logps, ratio, adv_nt, clip_eps_low, clip_eps_high)
    elif loss == "dual_clip":
        per_token = dual_clip_surrogate(ratio, adv_nt, clip_eps_low, clip_eps_high, dual_clip_c)
    else:
        per_token = clipped_surrogate(ratio, adv_nt, clip_eps_low, clip_eps_high)
    if is_weights is not None:
        per_token = jnp.where(valid, jax.lax.stop_gradient(is_weights), 0.0) * per_token
    kl = jnp.zeros_like(per_token)
    if ref_logps is not None:
        kl = grpo.kl_penalty(logps, jnp.where(valid, ref_logps.astype(jnp.float32), 0.0),
                             kl_estimator)
        per_token = per_token + beta * kl
    if entropy is not None:
        entropy = jnp.where(valid, entropy.astype(jnp.float32), 0.0)
        if not _is_zero(entropy_coef):  # no backward through the entropy for a metric only
            per_token = per_token - entropy_coef * entropy
    value = grpo.aggregate(per_token, mask, aggregation, max_length)
    metrics = _metrics(loss, ratio, adv_nt, mask, kl, clip_eps_low, clip_eps_high)
    if entropy is not None:
        metrics["entropy"] = jax.lax.stop_gradient(grpo.aggregate(entropy, mask, "token_mean"))
    return value, metrics
