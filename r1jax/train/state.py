"""Train state, the AdamW optimizer with its schedule, and gradient accumulation.

The train state is a plain dict pytree (big_vision style), donated to the jitted step:

    {"step": int32 [], "params": ..., "opt_state": ..., "rng": PRNG key}

The optimizer is AdamW (Loshchilov & Hutter, arXiv:1711.05101) after global-norm clipping, with
linear warmup and a constant or cosine schedule; DeepSeek-R1 (arXiv:2501.12948, Sec. 2.2.2 /
App. B) trains with AdamW, a constant learning rate and gradient clipping. Two masks decide
what it touches:

  * Frozen leaves: the DeepSeekMoE balancing bias `e_score_correction_bias` (DeepSeek-V3,
    arXiv:2412.19437, Sec. 2.1.2) is state moved by its own sign rule, not a parameter: it gets
    no gradient update and no weight decay, and it is left out of the gradient norm.
  * Weight decay: the usual convention (GPT-2 / nanoGPT / MaxText) decays matrices and higher-rank
    tensors (kernels, embeddings, stacked experts) and leaves vectors and scalars (norm scales,
    biases) alone, since decaying a norm scale towards 0 fights the normalisation itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

FROZEN_PARAM_NAMES = ("e_score_correction_bias",)
SCHEDULES = ("constant", "cosine")

TrainState = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class OptimConfig:
    """AdamW hyper-parameters.

    learning_rate: peak lr (alpha); warmup_steps: linear warmup, lr * (s + 1) / warmup_steps;
    schedule: "constant" | "cosine" (decays to learning_rate * end_lr_factor at total_steps);
    b1, b2, eps: Adam's beta_1, beta_2, epsilon; weight_decay: decoupled decay lambda;
    grad_clip_norm: max global gradient norm (None turns clipping off).
    """

    learning_rate: float = 1e-6
    warmup_steps: int = 0
    schedule: str = "constant"
    total_steps: int | None = None
    end_lr_factor: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip_norm: float | None = 1.0

    def __post_init__(self):
        def bad(field, why):
            raise ValueError(f"OptimConfig.{field}={getattr(self, field)!r}: {why}")

        def finite(field):
            value = getattr(self, field)
            return isinstance(value, int | float) and math.isfinite(value)

        for field in ("learning_rate", "end_lr_factor", "b1", "b2", "eps", "weight_decay"):
            if not finite(field):
                bad(field, "must be a finite number")
        if self.grad_clip_norm is not None and not finite("grad_clip_norm"):
            bad("grad_clip_norm", "must be a finite number or None (no clipping)")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if self.warmup_steps < 0:
            bad("warmup_steps", "must be >= 0")
        if self.schedule not in SCHEDULES:
            bad("schedule", f"must be one of {SCHEDULES}")
        if self.schedule == "cosine" and (
            self.total_steps is None or self.total_steps <= self.warmup_steps
        ):
            bad("total_steps", "schedule='cosine' needs total_steps > warmup_steps")
        if not 0.0 <= self.end_lr_factor <= 1.0:
            bad("end_lr_factor", "must be in [0, 1]")
        for field in ("b1", "b2"):
            if not 0.0 <= getattr(self, field) < 1.0:
                bad(field, "must be in [0, 1)")
        if not self.eps > 0:
            bad("eps", "must be > 0")
        if self.weight_decay < 0:
            bad("weight_decay", "must be >= 0")
        if self.grad_clip_norm is not None and not self.grad_clip_norm > 0:
            bad("grad_clip_norm", "must be > 0 or None")


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------


def learning_rate_schedule(config: OptimConfig) -> Callable[[jax.Array], jax.Array]:
    """step -> lr: linear warmup to `learning_rate`, then constant or cosine decay.

    Warmup reaches lr * (s + 1) / warmup_steps at step s, so the first update is not wasted
    with lr = 0. The cosine runs from the end of warmup to total_steps and stays at
    learning_rate * end_lr_factor afterwards.
    """

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warmup = jnp.minimum(1.0, (step + 1.0) / max(config.warmup_steps, 1))
        if config.schedule == "constant":
            return config.learning_rate * warmup
        span = config.total_steps - config.warmup_steps
        progress = jnp.clip((step - config.warmup_steps) / span, 0.0, 1.0)
        end = config.end_lr_factor
        decay = end + (1.0 - end) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
        return config.learning_rate * warmup * decay

    return schedule


def _leaf_name(path) -> str:
    last = path[-1]
    return str(getattr(last, "key", getattr(last, "name", last)))


def trainable_mask(params) -> Any:
    """Pytree of bools: False for the frozen leaves (`FROZEN_PARAM_NAMES`), True elsewhere."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) not in FROZEN_PARAM_NAMES, params
    )


def weight_decay_mask(params) -> Any:
    """Pytree of bools: True for trainable leaves of rank >= 2 (kernels, embeddings, experts)."""
    return jax.tree_util.tree_map_with_path(
        lambda path, x: _leaf_name(path) not in FROZEN_PARAM_NAMES and jnp.ndim(x) >= 2, params
    )


def make_optimizer(config: OptimConfig) -> optax.GradientTransformation:
    """Global-norm clipping + AdamW on the trainable leaves; zero updates for frozen ones.

    Adam's moments mu and nu take each parameter's dtype (optax's default, `mu_dtype=None`), and
    the update is applied in it: the precision policy is the parameters' dtype
    (`ModelConfig.param_dtype`, float32 master weights on accelerators; see
    `r1jax.models.config.PRECISION_POLICIES` for the bytes per parameter). bf16 parameters
    would get bf16 moments and lose most updates at small learning rates.
    """
    adamw = optax.adamw(
        learning_rate=learning_rate_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
        mask=weight_decay_mask,
    )
    clip = (
        optax.clip_by_global_norm(config.grad_clip_norm)
        if config.grad_clip_norm is not None
        else optax.identity()
    )
    # multi_transform hides the frozen leaves from the trainable chain, so they neither get
    # Adam moments nor enter the clipping norm.
    labels = lambda params: jax.tree.map(
        lambda trainable: "train" if trainable else "frozen", trainable_mask(params)
    )
    return optax.multi_transform(
        {"train": optax.chain(clip, adamw), "frozen": optax.set_to_zero()}, labels
    )


# ---------------------------------------------------------------------------------------------
# Train state
# ---------------------------------------------------------------------------------------------


def create_train_state(params, optim_config: OptimConfig, rng: jax.Array) -> TrainState:
    """The initial train state dict: step 0, params, fresh optimizer state, rng."""
    return {
        "step": jnp.zeros((), jnp.int32),
        "params": params,
        "opt_state": make_optimizer(optim_config).init(params),
        "rng": rng,
    }


def all_finite(*trees) -> jax.Array:
    """bool []: every floating-point element of `trees` is finite (one fused reduction)."""
    flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(trees)
             if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(flags)) if flags else jnp.bool_(True)


def guard_update(state: TrainState, updated: TrainState, loss: jax.Array,
                 grad_norm: jax.Array) -> tuple[TrainState, jax.Array]:
    """Keeps `updated` only when it is wholly finite, else `state`; returns (kept, skipped).

    The check covers the loss, the gradient norm, the new params and the new optimizer state
    in one fused reduction: a finite loss does not make a finite update (an infinite learning
    rate or an overflowing Adam moment turns finite gradients into NaN parameters). The choice
    is a select, not a branch, so the donated buffers stay in place. `skipped` is int32 [] (1
    when the update was rejected); a state with a "skipped" counter gets it added.
    """
    ok = all_finite(loss, grad_norm, updated["params"], updated["opt_state"])
    kept = {key: jax.tree.map(lambda new, old: jnp.where(ok, new, old), updated[key], state[key])
            if key in ("step", "params", "opt_state") else updated[key] for key in updated}
    skipped = (~ok).astype(jnp.int32)
    if "skipped" in state:
        kept["skipped"] = state["skipped"] + skipped
    return kept, skipped


def apply_gradients(
    state: TrainState, grads, optimizer: optax.GradientTransformation
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer update. Returns the new state and {"grad_norm": norm before clipping}.

    grad_norm is over the trainable leaves only, the same norm the clipping sees.
    """
    masked = jax.tree.map(
        lambda g, trainable: g if trainable else jnp.zeros_like(g),
        grads,
        trainable_mask(grads),
    )
    updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    new_state = dict(state, step=state["step"] + 1, params=params, opt_state=opt_state)
    return new_state, {"grad_norm": optax.tree.norm(masked)}


# ---------------------------------------------------------------------------------------------
# Gradient accumulation
# ---------------------------------------------------------------------------------------------


def _split_micro(x: jax.Array, num_micro: int) -> jax.Array:
    # [B, ...] -> [M, B/M, ...] taking rows j, j+M, j+2M, ... into micro-batch j: with the batch
    # sharded over devices, every micro-batch then keeps rows on every device.
    if x.shape[0] % num_micro:
        raise ValueError(f"batch size {x.shape[0]} is not divisible by num_micro={num_micro}")
    return jnp.swapaxes(x.reshape(x.shape[0] // num_micro, num_micro, *x.shape[1:]), 0, 1)


def accumulate_gradients(
    loss_fn: Callable[[Any, Any], tuple[jax.Array, Any]], params, batch, num_micro: int
) -> tuple[jax.Array, Any, Any]:
    """Mean loss, aux and gradients over `num_micro` micro-batches, with `jax.lax.scan`.

    Args:
      loss_fn: (params, micro_batch) -> (scalar loss, aux pytree of arrays).
      params: parameters differentiated.
      batch: pytree of arrays with a common leading batch dim B, divisible by num_micro.
      num_micro: M, number of micro-batches (1 = one plain value_and_grad).

    Returns:
      (loss, aux, grads), each the mean over micro-batches. This equals the full-batch result
      when loss_fn is a mean over equally weighted examples; a loss normalised by a
      batch-dependent count (e.g. GRPO's "token_mean") is then weighted per micro-batch instead.
      Gradients are summed in float32 and cast back to the parameter dtype.
    """
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if num_micro == 1:
        (loss, aux), grads = grad_fn(params, batch)
        return loss, aux, grads
    micro = jax.tree.map(lambda x: _split_micro(x, num_micro), batch)

    def body(acc, micro_batch):
        (loss, aux), grads = grad_fn(params, micro_batch)
        acc = jax.tree.map(lambda a, g: a + g.astype(jnp.float32), acc, grads)
        return acc, (loss, aux)

    zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), params)
    grad_sum, (losses, auxes) = jax.lax.scan(body, zeros, micro)
    grads = jax.tree.map(lambda g, p: (g / num_micro).astype(p.dtype), grad_sum, params)
    return losses.mean(), jax.tree.map(lambda a: a.mean(axis=0), auxes), grads
