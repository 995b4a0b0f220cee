"""The jitted, sharded GRPO update: score prompt + completion, GRPO loss, AdamW, MoE bias.

One call of the step function is one optimizer update on one minibatch of completions
(DeepSeek-R1, arXiv:2501.12948, Sec. 2.2.1; the outer loop in `trainer` runs mu passes over
the sampled batch in minibatches):

  1. the training forward scores each sequence [prompt ; completion] with `Transformer.apply`
     (prompt padding masked out, the completion at its real positions prompt_length + t), and
     takes log pi_theta at the completion tokens from log_softmax(logits / temperature), the
     sampling temperature, so that the ratio to the sampler's old log-probs is 1 at mu = 1
     (the sampler's formula, formed in chunks of positions and optionally of the vocabulary
     by `rl.logprobs`: no [B, T, V] logits, in the forward or the backward);
  2. the policy loss (`objectives.policy_loss`: `grpo.grpo_loss` or the variant named by
     grpo.loss) with the old log-probs from the sampler and the reference log-probs
     (computed once per batch by `make_score_fn`, in the update's micro-batches), plus any sown MoE auxiliary loss, gradients
     accumulated over micro-batches (`state.accumulate_gradients`);
  3. the AdamW update (`state.apply_gradients`), then the auxiliary-loss-free balancing bias
     update from the expert loads of this forward (DeepSeek-V3 Sec. 2.1.2, gamma);
  4. numerical guard (`state.guard_update`): if the loss, the gradient norm, the new params or
     the new optimizer state hold a NaN or an infinity (one fused check), the update is
     discarded inside the step (state unchanged but for the `skipped` counter), so one bad
     batch never poisons the run and a non-finite state never reaches a checkpoint.

The train state is a dict, donated to the step:
  {"step": updates so far, "params", "opt_state", "rng": uint32 [2] seed key,
   "ref_params": the frozen reference, "skipped": int32 count of skipped updates}.
Shardings come from the logical rules (`r1jax.sharding.RULES`) over the run's mesh; the
reference is sharded exactly like the policy; optimizer moments follow their parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import moe, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import logprobs, objectives, packing, replay
from r1jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class StepConfig:
    """The static settings of the update (hashable: part of the compiled step)."""

    model: config_lib.ModelConfig
    grpo: rl_config.GRPOConfig
    optim: state_lib.OptimConfig
    temperature: float
    max_new_tokens: int

    @property
    def gamma(self) -> float:
        """MoE bias update speed: the GRPO override or the model's bias_update_speed."""
        speed = self.grpo.bias_update_speed
        return self.model.bias_update_speed if speed is None else speed


# ---------------------------------------------------------------------------------------------
# The training forward
# ---------------------------------------------------------------------------------------------


def sequence_inputs(prompt_bp, lengths_b, completion_bt, completion_mask_bt):
    """[prompt ; completion] tokens, mask and RoPE positions, [B, P + T] each.

    The prompt is right-padded; its padding stays in place (masked, never attended to) and the
    completion sits at positions lengths_b + t, as the sampler generated it.
    """
    p, t = prompt_bp.shape[1], completion_bt.shape[1]
    prompt_mask_bp = jnp.arange(p)[None, :] < lengths_b[:, None]
    tokens_bl = jnp.concatenate([prompt_bp, completion_bt], axis=1)
    mask_bl = jnp.concatenate([prompt_mask_bp, completion_mask_bt > 0], axis=1)
    positions_bl = jnp.concatenate([
        jnp.broadcast_to(jnp.arange(p), prompt_bp.shape),
        lengths_b[:, None] + jnp.arange(t)[None, :]], axis=1)
    return tokens_bl, mask_bl, positions_bl


def completion_hidden(model: transformer.Transformer, params, batch):
    """The final hidden states that predict each completion token [B, T, d], and the sown
    intermediates.

    Completion token 0 is predicted by the last real prompt token (slot length - 1), token
    t > 0 by completion token t - 1 (slot P + t - 1). With batch["routing"] (the sampler's
    `SampleResult.routing` for these rows, [B, P + T, ...]) the MoE layers replay its experts.
    """
    prompt_bp, lengths_b = batch["prompt_tokens"], batch["prompt_lengths"]
    tokens_bl, mask_bl, positions_bl = sequence_inputs(
        prompt_bp, lengths_b, batch["completion_tokens"], batch["completion_mask"])
    variables = {"params": params}
    if "routing" in batch:  # routing replay (R3): the sampler's experts for every token
        variables |= replay.to_replay(batch["routing"])
    hidden_bld, variables = model.apply(variables, tokens_bl, positions_bl, mask_bl,
                                        mutable=["intermediates"],
                                        method=transformer.Transformer.hidden)
    p, t = prompt_bp.shape[1], batch["completion_tokens"].shape[1]
    slot_t = jnp.arange(t)
    slot_bt = jnp.where(slot_t[None, :] == 0, lengths_b[:, None] - 1, p + slot_t[None, :] - 1)
    hidden_btd = jnp.take_along_axis(hidden_bld, slot_bt[..., None], axis=1)
    return hidden_btd, variables.get("intermediates", {})


def packed_completion_hidden(model: transformer.Transformer, params, batch):
    """`completion_hidden` of a packed batch (`rl.packing.pack`): the forward runs over the
    packed rows [R, W] (positions restart per sequence, attention within its segment), then
    each sequence's completion is gathered back to [N, T, d] (columns past its end clamped;
    they are masked in the loss)."""
    if "routing" in batch:
        raise ValueError("routing replay (batch['routing']) is not supported with "
                         "grpo.packing: the record is laid out per sequence, not per packed row")
    hidden_rwd, variables = model.apply(
        {"params": params}, batch["packed_tokens"], batch["packed_positions"],
        batch["packed_mask"], batch["packed_segments"], mutable=["intermediates"],
        method=transformer.Transformer.hidden)
    t = batch["completion_tokens"].shape[1]
    col_nt = jnp.minimum(batch["pack_start"][:, None] + jnp.arange(t)[None, :],
                         hidden_rwd.shape[1] - 1)
    hidden_ntd = hidden_rwd[batch["pack_row"][:, None], col_nt]
    return hidden_ntd, variables.get("intermediates", {})


def completion_logps(config: StepConfig, params, batch, with_entropy: bool = False,
                     packed: bool = False):
    """log pi at the completion tokens [B, T] (log_softmax(logits / temperature), the sampling
    temperature, so the ratio to the sampler's old log-probs is 1 at mu = 1), the entropies
    [B, T] or None, and the intermediates. Logits are formed in chunks (`rl.logprobs`).
    packed: the batch is `rl.packing.pack`'s layout."""
    model = transformer.Transformer(config.model)
    forward = packed_completion_hidden if packed else completion_hidden
    hidden_btd, intermediates = forward(model, params, batch)
    w, vocab_axis = logprobs.unembedding(config.model, params)
    logps_bt, entropy_bt = logprobs.chunked_logps(
        hidden_btd, batch["completion_tokens"], w, vocab_axis, config.model,
        temperature=config.temperature, chunk_size=config.grpo.logps_chunk_size,
        vocab_chunk_size=config.grpo.vocab_chunk_size, with_entropy=with_entropy)
    return logps_bt, entropy_bt, intermediates


def _micro_split(x, m: int):
    # [B, ...] -> [M, B/M, ...], rows j, j + M, ... in micro-batch j, as the update's
    # accumulation splits them (every micro-batch keeps rows on every device).
    return jnp.swapaxes(x.reshape(x.shape[0] // m, m, *x.shape[1:]), 0, 1)


def _micro_merge(x):
    return jnp.swapaxes(x, 0, 1).reshape(-1, *x.shape[2:])


def make_score_fn(config: StepConfig, num_micro: int = 1):
    """(params, batch) -> log pi at the completion tokens [B, T] (for the reference model),
    0 at padding; `num_micro` micro-batches one after another (`jax.lax.map`), so the
    reference forward holds the activations of one micro-batch, like the update."""
    def score(params, batch):
        logps_bt, _, _ = completion_logps(config, params, batch)
        return jnp.where(batch["completion_mask"] > 0, logps_bt, 0.0)

    def score_micro(params, batch):
        rows = batch["completion_tokens"].shape[0]
        if num_micro == 1:
            return score(params, batch)
        if rows % num_micro:
            raise ValueError(f"the scored batch ({rows} rows) is not divisible by "
                             f"num_micro={num_micro}")
        micro = jax.tree.map(lambda x: _micro_split(x, num_micro), batch)
        return _micro_merge(jax.lax.map(lambda b: score(params, b), micro))

    return score_micro


def _expert_loads(intermediates) -> dict:
    """The `expert_load` entries of an intermediates tree (other sown values dropped)."""
    flat = traverse_util.flatten_dict(nn.unbox(dict(intermediates)))
    return traverse_util.unflatten_dict(
        {k: v for k, v in flat.items() if k[-1] == moe.EXPERT_LOAD})


def make_loss_fn(config: StepConfig):
    """(params, minibatch) -> (loss, aux): the GRPO loss plus sown MoE auxiliary losses."""
    g = config.grpo

    def loss_fn(params, batch):
        # The entropy (chunked like the log-probs) for the metric or an entropy bonus.
        with_entropy = g.entropy_metric or g.entropy_coef != 0
        logps_bt, entropy_bt, intermediates = completion_logps(config, params, batch,
                                                               with_entropy, g.packing)
        # grpo.loss picks the objective (GRPO by default); with grpo.kl_in="reward" the KL is
        # in the advantages and loss_beta is 0.
        loss, metrics = objectives.policy_loss(
            logps_bt, batch["old_logps"], batch["ref_logps"] if g.loss_beta > 0 else None,
            batch["advantages"], batch["completion_mask"], loss=g.loss,
            clip_eps_low=g.clip_eps_low, clip_eps_high=g.clip_eps_high, beta=g.loss_beta,
            dual_clip_c=g.dual_clip_c, entropy_coef=g.entropy_coef, kl_estimator=g.kl_estimator,
            aggregation=g.aggregation, max_length=config.max_new_tokens, entropy=entropy_bt)
        aux_loss = moe.total_aux_loss(intermediates)
        metrics = dict(metrics, pg_loss=loss, aux_loss=aux_loss)
        if "routing" in batch:  # routing replay: how often each router's own choice differs
            flips = replay.flip_rates(batch["routing"], intermediates, moe.routing.OWN_CHOICE)
            metrics.update({f"routing_flip/{k}": v for k, v in flips.items()})
        return loss + aux_loss, {"metrics": metrics, "loads": _expert_loads(intermediates)}

    return loss_fn


# ---------------------------------------------------------------------------------------------
# The update
# ---------------------------------------------------------------------------------------------


def make_train_step(config: StepConfig):
    """(state, minibatch) -> (state, metrics): one guarded optimizer update (module docstring)."""
    optimizer = state_lib.make_optimizer(config.optim)
    loss_fn = make_loss_fn(config)
    schedule = state_lib.learning_rate_schedule(config.optim)

    def train_step(state, batch):
        loss, aux, grads = state_lib.accumulate_gradients(
            loss_fn, state["params"], batch, config.grpo.num_micro_batches)
        updated, opt_metrics = state_lib.apply_gradients(state, grads, optimizer)
        if config.model.is_moe and config.gamma > 0:
            updated["params"] = moe.update_all_biases(updated["params"], aux["loads"],
                                                      config.gamma)
        new_state, skipped = state_lib.guard_update(state, updated, loss,
                                                    opt_metrics["grad_norm"])
        metrics = dict(aux["metrics"], loss=loss, grad_norm=opt_metrics["grad_norm"],
                       learning_rate=schedule(state["step"]),
                       nonfinite=skipped)
        return new_state, metrics

    return train_step


def init_state(params, config: StepConfig, seed: int) -> dict[str, Any]:
    """The initial train state: the policy and the reference both start from `params`.

    A pure function: `jit_init_state` compiles it with the state's shardings, so that a large
    model's state is built shard by shard where it lives, never whole on one device.
    """
    state = state_lib.create_train_state(params, config.optim, jax.random.PRNGKey(seed))
    state["ref_params"] = jax.tree.map(jnp.copy, params)
    state["skipped"] = jnp.zeros((), jnp.int32)
    return state


# ---------------------------------------------------------------------------------------------
# Shardings and compilation
# ---------------------------------------------------------------------------------------------


def param_shardings(model_config: config_lib.ModelConfig, mesh):
    """The NamedSharding tree of `transformer.param_shardings` (no memory allocated)."""
    return transformer.param_shardings(model_config, mesh)[1]


def state_shardings(config: StepConfig, mesh) -> dict[str, Any]:
    """Shardings of the train state (`sharding.like_params`): params by the rules, the
    reference and Adam's moments like their parameters, scalars and the key replicated."""
    abstract, _ = transformer.param_shardings(config.model, mesh)
    state = jax.eval_shape(lambda p: init_state(p, config, 0), abstract)
    return sharding.like_params(state, abstract, mesh)


def jit_init_state(config: StepConfig, mesh, seed: int):
    """`init_state` compiled with in/out shardings: params (placed by `param_shardings`) ->
    the sharded state. The reference copy and the moments are created on the devices that
    hold their shards; nothing is gathered on one device. The params are not donated (the
    caller may keep them, e.g. a loaded checkpoint)."""
    return jax.jit(lambda p: init_state(p, config, seed),
                   in_shardings=(param_shardings(config.model, mesh),),
                   out_shardings=state_shardings(config, mesh))


_BATCH_NDIM = {"prompt_tokens": 2, "prompt_lengths": 1, "completion_tokens": 2,
               "completion_mask": 2, "old_logps": 2, "ref_logps": 2, "advantages": 1,
               **{k: 2 for k in packing.PACKED_KEYS}, **{k: 1 for k in packing.INDEX_KEYS},
               "routing": 1}  # a {path: array} dict: one sharding of its leading axis for all
_UPDATE_KEYS = ("prompt_tokens", "prompt_lengths", "completion_tokens", "completion_mask",
                "old_logps", "ref_logps", "advantages")


def update_keys(config: StepConfig) -> tuple[str, ...]:
    """The arrays of an update's minibatch: packed rows replace the prompts when packing; the
    routing record ({path: [B, P + T, ...]}) joins with routing replay."""
    if config.grpo.routing_replay == "r3":
        return _UPDATE_KEYS + ("routing",)
    if not config.grpo.packing:
        return _UPDATE_KEYS
    return _UPDATE_KEYS[2:] + packing.PACKED_KEYS + packing.INDEX_KEYS


def batch_shardings(mesh, keys=_UPDATE_KEYS) -> dict[str, Any]:
    """Every batch array sharded on its leading (batch) axis over the data axes."""
    return {k: sharding.batch_sharding(mesh, _BATCH_NDIM[k]) for k in keys}


def jit_train_step(config: StepConfig, mesh):
    """The compiled step with state shardings in and out and the state donated.

    Call it inside `jax.set_mesh(mesh)` so the model's activation constraints apply.
    """
    state_sh = state_shardings(config, mesh)
    return jax.jit(make_train_step(config),
                   in_shardings=(state_sh, batch_shardings(mesh, update_keys(config))),
                   out_shardings=(state_sh, sharding.replicated(mesh)),
                   donate_argnums=0)


_SCORE_KEYS = ("prompt_tokens", "prompt_lengths", "completion_tokens", "completion_mask")


def jit_score(config: StepConfig, mesh):
    """The compiled reference scorer: (ref_params, batch) -> [B, T] log-probs, over the
    sampled batch in micro-batches of the update's size (num_minibatches * num_micro_batches
    of them)."""
    num_micro = config.grpo.num_minibatches * config.grpo.num_micro_batches
    # With routing replay every forward of the update replays the record (pi_old recomputed
    # by the trainer must route like the update's forward, or the ratio is off at mu = 1).
    keys = _SCORE_KEYS + (("routing",) if config.grpo.routing_replay == "r3" else ())
    return jax.jit(make_score_fn(config, num_micro),
                   in_shardings=(param_shardings(config.model, mesh),
                                 batch_shardings(mesh, keys)),
                   out_shardings=sharding.batch_sharding(mesh, 2))
