"""PPO's critic: a value model (an r1jax Transformer with a scalar head), the clipped value loss
and its jitted, sharded update with an optimizer state of its own.

PPO (Schulman et al., arXiv:1707.06347) for LLMs (Ouyang et al., arXiv:2203.02155) trains a
value model V(s_t) beside the policy; GAE (`advantages.gae`) turns its values and the per-token
rewards into advantages and returns, and the critic regresses the returns. This is the model
the R1 paper's GRPO does without (Sec. 2.2.1): one more network of the policy's size, with its
own Adam moments, forward and backward every step (`benchmarks/grpo_vs_ppo.py` measures it).

The value model is the policy's transformer up to the final norm (`Transformer.hidden`) and a
scalar head v = h w + b. `init_params` starts the backbone from the policy's parameters (the
R1/V3 reports initialise it from the reward model; any r1jax parameters of the same config
serve) and the head at zero, so V = 0 before the first update. Departures: the backbone keeps
the policy's unembedding leaves (unused by `hidden`, zero gradient) so that its tree and
shardings are exactly the policy's.

Params: {"backbone": the Transformer's params, "value_head": {"kernel": [d], "bias": []}}.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.rl import grpo, step
from r1jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """The critic's update (hashable: part of the compiled step).

    clip_eps_value: epsilon of the value clip around the old values (None: no clipping).
    aggregation: "token_mean" | "seq_mean" | "fixed_length" over the completion tokens.
    max_length: L_max for "fixed_length".
    """

    model: config_lib.ModelConfig
    optim: state_lib.OptimConfig
    clip_eps_value: float | None = 0.2
    aggregation: str = "token_mean"
    max_length: int | None = None

    def __post_init__(self):
        if self.clip_eps_value is not None and not self.clip_eps_value > 0:
            raise ValueError(f"critic.clip_eps_value={self.clip_eps_value}: must be > 0 or None")
        if self.aggregation not in grpo.AGGREGATIONS:
            raise ValueError(f"critic.aggregation={self.aggregation!r}: must be one of "
                             f"{grpo.AGGREGATIONS}")


def init_params(model_config: config_lib.ModelConfig, policy_params) -> dict[str, Any]:
    """The critic's parameters: a copy of `policy_params` as backbone, a zero scalar head."""
    return {"backbone": jax.tree.map(jnp.copy, policy_params),
            "value_head": {"kernel": jnp.zeros((model_config.hidden_size,), jnp.float32),
                           "bias": jnp.zeros((), jnp.float32)}}


def values(model_config: config_lib.ModelConfig, params, batch) -> jax.Array:
    """V(s_t) [B, T] float32: the value of the state that emits completion token t (the same
    positions whose logits give the policy's log-probs, `step.completion_hidden`)."""
    hidden_btd, _ = step.completion_hidden(transformer.Transformer(model_config),
                                           params["backbone"], batch)
    head = params["value_head"]
    return hidden_btd.astype(jnp.float32) @ head["kernel"] + head["bias"]


def value_loss(values_bt: jax.Array, old_values_bt: jax.Array, returns_bt: jax.Array,
               mask: jax.Array, *, clip_eps_value: float | None, aggregation: str = "token_mean",
               max_length: int | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The clipped value loss, 1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2).

    The clipped form is PPO's as implemented by OpenAI baselines (ppo2) and studied by Engstrom
    et al., "Implementation Matters in Deep Policy Gradients" (arXiv:2005.12729): the value may
    not move further than eps from the values the advantages were computed with, unless that
    lowers the loss. With clip_eps_value None it is 1/2 (V - R)^2.

    Args:
      values_bt: [B, T] V_theta (differentiated). old_values_bt: [B, T] V before the update.
      returns_bt: [B, T] the regression targets R (GAE's returns). mask: [B, T].
      clip_eps_value: eps, or None. aggregation, max_length: as `grpo.aggregate`.

    Returns:
      (loss, {"value_clip_frac": share of tokens whose clipped term is the larger}).
    """
    valid = mask > 0
    v = jnp.where(valid, values_bt.astype(jnp.float32), 0.0)
    old = jnp.where(valid, old_values_bt.astype(jnp.float32), 0.0)
    ret = jnp.where(valid, returns_bt.astype(jnp.float32), 0.0)
    plain = jnp.square(v - ret)
    if clip_eps_value is None:
        per_token, clipped_frac = plain, jnp.zeros((), jnp.float32)
    else:
        clipped = jnp.square(old + jnp.clip(v - old, -clip_eps_value, clip_eps_value) - ret)
        per_token = jnp.maximum(plain, clipped)
        clipped_frac = jax.lax.stop_gradient(
            grpo.aggregate((clipped > plain).astype(jnp.float32), mask, "token_mean"))
    loss = 0.5 * grpo.aggregate(per_token, mask, aggregation, max_length)
    return loss, {"value_clip_frac": clipped_frac}


# ---------------------------------------------------------------------------------------------
# The update, its state and shardings
# ---------------------------------------------------------------------------------------------

#: The critic update's batch: the policy's sequence arrays plus old values and returns.
BATCH_KEYS = ("prompt_tokens", "prompt_lengths", "completion_tokens", "completion_mask",
              "old_values", "returns")


def make_step(config: CriticConfig):
    """(state, batch) -> (state, metrics): one guarded AdamW update of the critic."""
    optimizer = state_lib.make_optimizer(config.optim)

    def loss_fn(params, batch):
        v_bt = values(config.model, params, batch)
        loss, metrics = value_loss(v_bt, batch["old_values"], batch["returns"],
                                   batch["completion_mask"],
                                   clip_eps_value=config.clip_eps_value,
                                   aggregation=config.aggregation, max_length=config.max_length)
        return loss, metrics

    def critic_step(state, batch):
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], batch)
        updated, opt_metrics = state_lib.apply_gradients(state, grads, optimizer)
        new_state, skipped = state_lib.guard_update(state, updated, loss,
                                                    opt_metrics["grad_norm"])
        return new_state, dict(metrics, value_loss=loss, value_grad_norm=opt_metrics["grad_norm"],
                               value_nonfinite=skipped)

    return critic_step


def init_state(policy_params, config: CriticConfig, seed: int = 0) -> dict[str, Any]:
    """The critic's train state: params from `init_params`, a fresh optimizer state."""
    return state_lib.create_train_state(init_params(config.model, policy_params), config.optim,
                                        jax.random.PRNGKey(seed))


def state_shardings(config: CriticConfig, mesh) -> dict[str, Any]:
    """The backbone and its moments sharded exactly like the policy's; the head replicated."""
    abstract, _ = transformer.param_shardings(config.model, mesh)
    state = jax.eval_shape(lambda p: init_state(p, config), abstract)
    return sharding.like_params(state, abstract, mesh)


def jit_step(config: CriticConfig, mesh):
    """The compiled critic update, state shardings in and out, the state donated."""
    state_sh = state_shardings(config, mesh)
    batch_sh = {k: sharding.batch_sharding(mesh, 1 if k == "prompt_lengths" else 2)
                for k in BATCH_KEYS}
    return jax.jit(make_step(config), in_shardings=(state_sh, batch_sh),
                   out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=0)


def jit_values(config: CriticConfig, mesh):
    """The compiled value forward: (critic params, batch) -> V [B, T] (for GAE)."""
    params_sh = state_shardings(config, mesh)["params"]
    keys = BATCH_KEYS[:4]
    batch_sh = {k: sharding.batch_sharding(mesh, 1 if k == "prompt_lengths" else 2)
                for k in keys}
    return jax.jit(lambda p, b: values(config.model, p, {k: b[k] for k in keys}),
                   in_shardings=(params_sh, batch_sh),
                   out_shardings=sharding.batch_sharding(mesh, 2))
