"""Advantage estimators: group (GRPO), RLOO, REINFORCE++ (with or without a group baseline)
and GAE, plus the per-token rewards that carry the KL when it is in the reward. Pure functions.

N = num_prompts * G completions, the G completions of a prompt consecutive; T the completion
width; mask [N, T] marks the real tokens (a completion's tokens are a prefix of its row).

  "group"        GRPO, R1 (arXiv:2501.12948) eq. 3: A_i = (r_i - mean_G r) / std_G r, see
                 `grpo.group_advantages` (re-exported here as `group`). [N].
  "rloo"         REINFORCE leave-one-out (Kool et al., "Buy 4 REINFORCE Samples, Get a Baseline
                 for Free!", 2019; used for LLMs by Ahmadian et al., arXiv:2402.14740):
                 A_i = r_i - 1/(G - 1) sum_{j != i} r_j = G/(G - 1) (r_i - mean_G r). [N].
  "reinforce_pp" REINFORCE++ (Hu, arXiv:2501.03262): per-token rewards (the outcome on
                 the last token, -beta KL_t on every token when the KL is in the reward), the
                 return-to-go G_t = sum_{s >= t} gamma^(s - t) r_s, normalised over every real
                 token of the batch: A = (G - mean) / (std + eps). [N, T].
  "reinforce_pp_baseline"  REINFORCE++-baseline (same paper): the group mean outcome is
                 subtracted from each outcome first, then as "reinforce_pp". [N, T].
  "gae"          Generalized Advantage Estimation (Schulman et al., arXiv:1506.02438, eq. 16),
                 for PPO with a critic: delta_t = r_t + gamma V_{t+1} - V_t, A_t = sum_l
                 (gamma lambda)^l delta_{t+l}, V = 0 after a completion's last token. [N, T].

KL in the reward (`token_rewards`): the sequence-level estimators ("group", "rloo") take the
row sum of the token rewards, r_i - beta sum_t KL_{i,t}, as the completion's reward.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from r1jax.rl import grpo

ESTIMATORS = ("group", "rloo", "reinforce_pp", "reinforce_pp_baseline", "gae")
#: Estimators whose advantages are per token, [N, T]; the others give [N].
TOKEN_LEVEL = ("reinforce_pp", "reinforce_pp_baseline", "gae")

group = grpo.group_advantages


def _groups(rewards: jax.Array, group_size: int) -> jax.Array:
    """[N] -> [N / G, G] float32, with the shape checks of `grpo.group_advantages`."""
    if rewards.ndim != 1:
        raise ValueError(f"rewards must be 1-D [N], got shape {rewards.shape}")
    if group_size < 1 or rewards.shape[0] % group_size:
        raise ValueError(
            f"group_size={group_size} must be >= 1 and divide len(rewards)={rewards.shape[0]}")
    return rewards.astype(jnp.float32).reshape(-1, group_size)


def rloo(rewards: jax.Array, group_size: int) -> jax.Array:
    """RLOO advantages A_i = r_i - mean_{j != i} r_j within each group: [N] -> [N].

    Args:
      rewards: [N] rewards, groups of `group_size` consecutive completions.
      group_size: G >= 2 (the leave-one-out mean needs another sample).
    """
    if group_size < 2:
        raise ValueError(f"group_size={group_size}: RLOO's leave-one-out baseline needs G >= 2")
    r_pg = _groups(rewards, group_size)
    others_pg = (r_pg.sum(axis=1, keepdims=True) - r_pg) / (group_size - 1)
    return (r_pg - others_pg).reshape(-1)


def last_token(mask: jax.Array) -> jax.Array:
    """One-hot [N, T] of each row's last real token (all zero for a row without tokens)."""
    mask = (mask > 0).astype(jnp.float32)
    next_mask = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    return mask * (1.0 - next_mask)


def token_rewards(rewards: jax.Array, mask: jax.Array, kl: jax.Array | None = None,
                  beta: float = 0.0) -> jax.Array:
    """Per-token rewards [N, T]: r_i on the last real token, minus beta * KL_{i,t} on each.

    REINFORCE++ (Hu, arXiv:2501.03262) and PPO for RLHF (Ouyang et al., arXiv:2203.02155) put
    the KL to the reference into the reward this way. A row without tokens gets all zeros (its outcome has no
    token to sit on). Padding is 0.

    Args:
      rewards: [N] outcome rewards. mask: [N, T]. kl: optional [N, T] per-token KL estimates
        (e.g. `grpo.kl_penalty(old_logps, ref_logps, "k1")`; masked values ignored).
      beta: the KL weight.
    """
    valid = mask > 0
    out = last_token(mask) * rewards.astype(jnp.float32)[:, None]
    if kl is not None:
        out = out - beta * jnp.where(valid, kl.astype(jnp.float32), 0.0)
    return jnp.where(valid, out, 0.0)


def returns_to_go(rewards_nt: jax.Array, mask: jax.Array, gamma: float = 1.0) -> jax.Array:
    """G_t = sum_{s >= t} gamma^(s - t) r_s over each row's real tokens: [N, T] -> [N, T]."""
    valid = mask > 0
    r_tn = jnp.where(valid, rewards_nt.astype(jnp.float32), 0.0).T

    def back(carry_n, r_n):
        g_n = r_n + gamma * carry_n
        return g_n, g_n

    _, g_tn = jax.lax.scan(back, jnp.zeros_like(r_tn[0]), r_tn, reverse=True)
    return jnp.where(valid, g_tn.T, 0.0)


def masked_whiten(values: jax.Array, mask: jax.Array, eps: float = 1e-6) -> jax.Array:
    """(x - mean) / (std + eps) over the real tokens of the whole batch (population std);
    padding stays 0. With no real token at all, zeros."""
    valid = mask > 0
    count = jnp.maximum(valid.sum(), 1)
    mean = jnp.where(valid, values, 0.0).sum() / count
    var = jnp.where(valid, jnp.square(values - mean), 0.0).sum() / count
    return jnp.where(valid, (values - mean) / (jnp.sqrt(var) + eps), 0.0)


def reinforce_pp(rewards: jax.Array, mask: jax.Array, *, group_size: int | None = None,
                 kl: jax.Array | None = None, beta: float = 0.0, gamma: float = 1.0,
                 eps: float = 1e-6) -> jax.Array:
    """REINFORCE++ advantages [N, T] (module docstring): returns-to-go of `token_rewards`,
    whitened over the batch's real tokens; with `group_size`, the group mean outcome is
    subtracted first (REINFORCE++-baseline).

    Args:
      rewards: [N] outcome rewards. mask: [N, T].
      group_size: G for the group baseline, or None.
      kl, beta: the KL in the reward (see `token_rewards`); None / 0 for none.
      gamma: discount (1 in the paper). eps: added to the std.
    """
    if group_size is not None:
        r_pg = _groups(rewards, group_size)
        rewards = (r_pg - r_pg.mean(axis=1, keepdims=True)).reshape(-1)
    returns_nt = returns_to_go(token_rewards(rewards, mask, kl, beta), mask, gamma)
    return masked_whiten(returns_nt, mask, eps)


def gae(rewards_nt: jax.Array, values_nt: jax.Array, mask: jax.Array, *, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[jax.Array, jax.Array]:
    """Generalized Advantage Estimation (Schulman et al., arXiv:1506.02438, eq. 16).

    delta_t = r_t + gamma V_{t+1} - V_t with V_{t+1} = 0 after the row's last real token (the
    episode ends there); A_t = delta_t + gamma lambda A_{t+1}. Padding gives 0.

    Args:
      rewards_nt: [N, T] per-token rewards (`token_rewards`).
      values_nt: [N, T] V(s_t), the critic's value before emitting token t (not differentiated).
      mask: [N, T]. gamma, lam: discount and the GAE lambda.

    Returns:
      (advantages [N, T], returns [N, T] = advantages + values, the critic's regression target).
    """
    valid = mask > 0
    v_nt = jnp.where(valid, jax.lax.stop_gradient(values_nt).astype(jnp.float32), 0.0)
    r_nt = jnp.where(valid, rewards_nt.astype(jnp.float32), 0.0)
    next_v_nt = jnp.concatenate([v_nt[:, 1:], jnp.zeros_like(v_nt[:, :1])], axis=1)
    delta_tn = (r_nt + gamma * next_v_nt - v_nt).T
    valid_tn = valid.T

    def back(carry_n, x):
        delta_n, valid_n = x
        a_n = jnp.where(valid_n, delta_n + gamma * lam * carry_n, 0.0)
        return a_n, a_n

    _, a_tn = jax.lax.scan(back, jnp.zeros_like(delta_tn[0]), (delta_tn, valid_tn),
                           reverse=True)
    advantages_nt = a_tn.T
    return advantages_nt, jnp.where(valid, advantages_nt + v_nt, 0.0)


def estimate(estimator: str, rewards: jax.Array, mask: jax.Array, *, group_size: int,
             scale: str = "group", kl: jax.Array | None = None, beta: float = 0.0,
             gamma: float = 1.0) -> jax.Array:
    """The advantages of a critic-free estimator selected by name (the trainer's one call).

    With `kl` and beta > 0 the KL is in the reward: the token-level estimators use
    `token_rewards`, the sequence-level ones the row sums r_i - beta sum_t KL_{i,t}.

    Args:
      estimator: one of ESTIMATORS except "gae" (which needs a critic's values: call `gae`).
      rewards: [N] outcomes. mask: [N, T]. group_size: G.
      scale: the "group" estimator's std scale (`grpo.ADVANTAGE_SCALES`).
      kl: optional [N, T] per-token KL estimates; beta their weight. gamma: discount.

    Returns:
      [N] for "group" / "rloo", [N, T] for the REINFORCE++ estimators.
    """
    if estimator not in ESTIMATORS or estimator == "gae":
        raise ValueError(f"estimator={estimator!r} is not one of "
                         f"{tuple(e for e in ESTIMATORS if e != 'gae')} (GAE needs a critic)")
    if estimator in TOKEN_LEVEL:
        baseline = group_size if estimator == "reinforce_pp_baseline" else None
        return reinforce_pp(rewards, mask, group_size=baseline, kl=kl, beta=beta, gamma=gamma)
    if kl is not None:
        kl_n = jnp.where(mask > 0, kl.astype(jnp.float32), 0.0).sum(axis=1)
        rewards = rewards.astype(jnp.float32) - beta * kl_n
    if estimator == "rloo":
        return rloo(rewards, group_size)
    return group(rewards, group_size, scale)
