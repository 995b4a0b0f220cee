"""PPO with a critic, the pieces between the sampled batch and the two updates (pure functions).

One PPO step (Ouyang et al., arXiv:2203.02155, Sec. 3.5, with the R1 rewards):
  1. per-token rewards r_t: the outcome reward on the completion's last token and
     -beta KL_t(pi_old || pi_ref) on every token (`advantages.token_rewards`: the KL is in the
     reward, so the policy loss carries none);
  2. the critic's values V_t of the sampled batch (`critic.values`, before any update);
  3. GAE (`advantages.gae`, Schulman et al. arXiv:1506.02438 eq. 16): advantages A_t and
     returns R_t = A_t + V_t; the advantages are whitened over the batch's real tokens (the
     usual PPO normalisation);
  4. mu passes of minibatch updates of the policy (`objectives.policy_loss` with [N, T]
     advantages) and of the critic (`critic.value_loss` against R_t, values clipped around V_t).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.rl import advantages, critic, grpo, step


def gae_batch(rewards: jax.Array, mask: jax.Array, values_bt: jax.Array,
              old_logps: jax.Array, ref_logps: jax.Array | None, *, beta: float,
              kl_estimator: str, gamma: float, lam: float,
              whiten: bool = True) -> tuple[jax.Array, jax.Array]:
    """Steps 1 and 3 of the module docstring: (advantages [N, T], returns [N, T]).

    Args:
      rewards: [N] outcome rewards. mask: [N, T] completion mask.
      values_bt: [N, T] the critic's V_t for the batch (not differentiated).
      old_logps, ref_logps: [N, T] log pi_old (the sampler) and log pi_ref (None: no KL).
      beta: the KL weight in the reward. kl_estimator: "k1" | "k2" | "k3" (`grpo.kl_penalty`).
      gamma, lam: GAE's discount and lambda.
      whiten: normalise the advantages over the batch's real tokens.
    """
    kl = None
    if ref_logps is not None and beta > 0:
        valid = mask > 0
        kl = grpo.kl_penalty(jnp.where(valid, old_logps, 0.0),
                             jnp.where(valid, ref_logps, 0.0), kl_estimator)
    rewards_nt = advantages.token_rewards(rewards, mask, kl, beta)
    adv_nt, returns_nt = advantages.gae(rewards_nt, values_bt, mask, gamma=gamma, lam=lam)
    if whiten:
        adv_nt = advantages.masked_whiten(adv_nt, mask)
    return adv_nt, returns_nt


# ---------------------------------------------------------------------------------------------
# The critic inside the trainer
# ---------------------------------------------------------------------------------------------


def critic_config(config: step.StepConfig) -> critic.CriticConfig:
    """The critic's update settings from the run's: the policy's optimizer (at
    grpo.critic_learning_rate when set), aggregation and L_max, grpo.clip_eps_value."""
    g = config.grpo
    optim = config.optim
    if g.critic_learning_rate is not None:
        optim = dataclasses.replace(optim, learning_rate=g.critic_learning_rate)
    return critic.CriticConfig(config.model, optim, clip_eps_value=g.clip_eps_value,
                               aggregation=g.aggregation, max_length=config.max_new_tokens)


class Critic:
    """The compiled critic programs of a PPO run on `mesh`: init, values + GAE, update.

    Its train state lives in the run's state under "critic" (so checkpoints hold it and a
    resumed run restores it exactly); the policy's step never sees it.
    """

    def __init__(self, config: step.StepConfig, mesh):
        self.config, self.mesh = config, mesh
        self.critic_config = critic_config(config)
        self.init = jax.jit(lambda p: critic.init_state(p, self.critic_config, 0),
                            in_shardings=(step.param_shardings(config.model, mesh),),
                            out_shardings=critic.state_shardings(self.critic_config, mesh))
        self.values = critic.jit_values(self.critic_config, mesh)
        self.update_step = critic.jit_step(self.critic_config, mesh)
        g = config.grpo
        self.gae = jax.jit(functools.partial(
            gae_batch, beta=g.beta if g.kl_in == "reward" else 0.0,
            kl_estimator=g.kl_estimator, gamma=g.discount, lam=g.gae_lambda))

    def advantages(self, critic_params, batch, rewards) -> dict[str, jax.Array]:
        """{"advantages", "old_values", "returns"} [N, T] of the sampled batch (steps 1-3)."""
        seq = {k: batch[k] for k in critic.BATCH_KEYS[:4]}
        values_bt = self.values(critic_params, seq)
        adv_nt, returns_nt = self.gae(rewards, batch["completion_mask"], values_bt,
                                      batch["old_logps"], batch["ref_logps"])
        return {"advantages": adv_nt, "old_values": values_bt, "returns": returns_nt}

    def update(self, critic_state, batch, rows: slice):
        """One critic update on the minibatch `rows` of the sampled batch."""
        minibatch = {k: batch[k][rows] for k in critic.BATCH_KEYS}
        shardings = {k: sharding.batch_sharding(self.mesh, 1 if k == "prompt_lengths" else 2)
                     for k in critic.BATCH_KEYS}
        return self.update_step(critic_state, jax.device_put(minibatch, shardings))
