"""Reward-model training on preference pairs: Bradley-Terry loss, sharded like the policy.

The model, loss and scorer live in `r1jax.train.reward_model`; this is the trainer, laid out
like `sft.train` (mesh, state, step, checkpoint, loop) and resuming, guarding non-finite
updates and handling SIGTERM the same way (`r1jax.train.resume`). A batch holds B pairs as 2B rows, row 2i the chosen response y_w and row 2i + 1 the
rejected y_l of pair i (adjacent, so batch sharding keeps a pair on one device); both rows go
through one forward. With a MoE trunk the loss adds the sequence-wise balance loss (alpha) and
the aux-loss-free bias moves after each step, as in SFT.

Evaluation is the pairwise accuracy on held-out pairs: the fraction with r(x, y_w) > r(x, y_l).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import warnings
from collections.abc import Callable, Sequence

import jax
import numpy as np
import tqdm

from r1jax import config_utils, preemption, sharding
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import config as config_lib
from r1jax.models import moe
from r1jax.train import checkpoint, guard, partition, resume
from r1jax.train import reward_model as rm
from r1jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class RMConfig:
    """steps: optimizer steps; batch_size: pairs per step (2 x rows); max_len: tokens per row;
    span: which part of a response is judged (`rm.SPANS`); eval_every: steps between held-out
    evaluations (and at the end); mesh: {axis: size} (-1 = the rest);
    max_consecutive_nonfinite, nonfinite_window, max_nonfinite_fraction: when skipped
    (non-finite) updates stop the run (`guard.NonFiniteGuard`)."""

    steps: int = 500
    batch_size: int = 32
    max_len: int = 128
    span: str = "summary"
    eval_every: int = 100
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    mesh: tuple[tuple[str, int], ...] = config_utils.mesh_field(sharding.MESH_AXES)
    max_consecutive_nonfinite: int = 5
    nonfinite_window: int = 20
    max_nonfinite_fraction: float = 0.25

    def __post_init__(self):
        guard.check_settings("RMConfig", self.max_consecutive_nonfinite, self.nonfinite_window,
                             self.max_nonfinite_fraction)
        counts = ("steps", "batch_size", "eval_every", "log_every", "checkpoint_every",
                  "keep_checkpoints")
        checks = {name: (getattr(self, name) >= 1, "must be >= 1") for name in counts}
        checks.update(max_len=(self.max_len >= 2, "must be >= 2"),
                      span=(self.span in rm.SPANS, f"must be one of {rm.SPANS}"))
        for name, (ok, why) in checks.items():
            if not ok:
                raise ValueError(f"RMConfig.{name}={getattr(self, name)!r}: {why}")


# --------------------------------------------------------------------------------------- data
def encode_pairs(tok: tokenizer_lib.Tokenizer, examples: Sequence[dict], max_len: int,
                 span: str) -> dict[str, np.ndarray]:
    """Pairs {question, chosen, rejected} -> `tokens` int32 [2N, max_len], `lengths` [2N]
    (row 2i chosen, 2i + 1 rejected) and `num_truncated` (rows longer than max_len).

    Warns when rows are cut: the cut part (often where chosen and rejected differ) is never
    seen, so those pairs cap the pairwise accuracy."""
    texts = [rm.format_input(ex["question"], rm.select_span(ex[side], span))
             for ex in examples for side in ("chosen", "rejected")]
    tokens, lengths, truncated = rm.encode(tok, texts, max_len, width=max_len)
    if truncated.any():
        warnings.warn(f"{int(truncated.sum())} of {len(texts)} reward-model rows are longer "
                      f"than max_len={max_len} tokens and were cut", stacklevel=2)
    return {"tokens": tokens, "lengths": lengths, "num_truncated": np.asarray(truncated.sum())}


def pair_batches(data: dict[str, np.ndarray], batch_size: int, seed: int) -> Callable:
    """`batch_fn(step)` -> batch_size pairs, a fresh permutation per epoch; pure in step."""
    n = data["tokens"].shape[0] // 2
    if n < batch_size:
        raise ValueError(f"only {n} pairs for batch_size={batch_size}")
    per_epoch = n // batch_size

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, per_epoch)
        pairs = np.random.default_rng([seed, epoch]).permutation(n)[i * batch_size:
                                                                     (i + 1) * batch_size]
        rows = np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)
        return {"tokens": data["tokens"][rows], "lengths": data["lengths"][rows]}

    return batch_fn


def pairwise_accuracy(forward, params, data: dict[str, np.ndarray],
                      batch_size: int) -> dict[str, float]:
    """{"accuracy": fraction of pairs with r_w > r_l, "margin": mean r_w - r_l, "loss": L}."""
    r = rm.rewards_of(forward, params, data["tokens"], data["lengths"], batch_size)
    loss, m = rm.bradley_terry_loss(r[0::2], r[1::2])
    return {"accuracy": float(m["accuracy"]), "margin": float(m["margin"]), "loss": float(loss)}


# --------------------------------------------------------------------------------------- step
def _train_step(state, batch, *, model: rm.RewardModel, optimizer):
    def loss_fn(params):
        r_n, inter = model.apply({"params": params}, batch["tokens"], batch["lengths"],
                                 mutable=["intermediates"])
        inter = inter.get("intermediates", {})
        loss, m = rm.bradley_terry_loss(r_n[0::2], r_n[1::2])
        return loss + moe.total_aux_loss(inter), (dict(m, bt_loss=loss), inter)

    (loss, (m, inter)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updated, info = state_lib.apply_gradients(state, grads, optimizer)
    if model.config.is_moe:
        updated["params"] = moe.update_all_biases(updated["params"], inter,
                                                  model.config.bias_update_speed)
    new_state, skipped = state_lib.guard_update(state, updated, loss, info["grad_norm"])
    return new_state, dict(m, loss=loss, grad_norm=info["grad_norm"], nonfinite=skipped)


# -------------------------------------------------------------------------------------- train
def train(model_config: config_lib.ModelConfig, optim_config: state_lib.OptimConfig,
          config: RMConfig, train_data: dict[str, np.ndarray], workdir: str | os.PathLike,
          init_params, *, eval_data: dict[str, np.ndarray] | None = None, devices=None,
          desc: str = "reward_model") -> tuple[dict, dict[str, float]]:
    """Trains reward-model params (`rm.init_params`) on `encode_pairs` data.

    Checkpoints go to `<workdir>/checkpoints`, metrics to `<workdir>/metrics.jsonl` (and
    TensorBoard); a rerun with the same workdir resumes. Returns (final params as host arrays,
    the last held-out metrics {"eval/accuracy", "eval/margin", "eval/loss"}, empty without
    eval_data).
    """
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    shards = rm.batch_shards(mesh)
    if config.batch_size % shards:
        raise ValueError(f"RMConfig.batch_size={config.batch_size} must be a multiple of the "
                         f"{shards} batch shards of mesh {dict(mesh.shape)}")
    with jax.set_mesh(mesh):
        return _train(model_config, optim_config, config, train_data, workdir, init_params,
                      eval_data, mesh, desc)


def _train(model_config, optim_config, config, train_data, workdir, init_params, eval_data,
           mesh, desc):
    model = rm.RewardModel(model_config)
    optimizer = state_lib.make_optimizer(optim_config)
    batch_fn = pair_batches(train_data, config.batch_size, config.seed)
    # ---- state
    abstract_params, _ = rm.param_shardings(model_config, mesh)
    create = lambda p: state_lib.create_train_state(p, optim_config, jax.random.key(config.seed))
    abstract_state = jax.eval_shape(create, abstract_params)
    state_sh = partition.state_shardings(abstract_state, abstract_params, mesh)
    # ---- step
    step_fn = jax.jit(functools.partial(_train_step, model=model, optimizer=optimizer),
                      in_shardings=(state_sh, {"tokens": sharding.batch_sharding(mesh, 2),
                                              "lengths": sharding.batch_sharding(mesh, 1)}),
                      out_shardings=(state_sh, None), donate_argnums=0)
    forward = rm.make_forward(model_config, mesh)

    def evaluate(params) -> dict[str, float]:
        m = pairwise_accuracy(forward, params, eval_data, 2 * config.batch_size)
        return {f"eval/{k}": v for k, v in m.items()}

    # ---- checkpoint
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
    nonfinite = guard.NonFiniteGuard(config.max_consecutive_nonfinite, config.nonfinite_window,
                                     config.max_nonfinite_fraction)
    state, start, writer = resume.resume(
        ckpt, checkpoint.abstract_tree(abstract_state, state_sh), workdir, nonfinite)
    if state is None:
        state = jax.jit(create, out_shardings=state_sh)(init_params)
    # ---- loop
    evaluated: dict[str, float] = {}
    with preemption.handling() as preempt, ckpt, writer, \
            tqdm.tqdm(total=config.steps, initial=start, desc=desc, dynamic_ncols=True) as bar:
        for step in range(start, config.steps):
            resume.stop_if_preempted(preempt, ckpt, state, step, nonfinite, workdir)
            state, m = step_fn(state, batch_fn(step))
            done = step + 1
            nonfinite.record([int(m["nonfinite"])])
            nonfinite.check(desc, done, ckpt, f"last loss={float(m['loss'])}")
            if done % config.log_every == 0 or done == config.steps:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                writer.write(done, m)
                bar.set_postfix(loss=f"{m['bt_loss']:.3f}", acc=f"{m['accuracy']:.2f}")
            if eval_data is not None and (done % config.eval_every == 0 or done == config.steps):
                evaluated = evaluate(state["params"])
                writer.write(done, evaluated)
            if done % config.checkpoint_every == 0 or done == config.steps:
                resume.save(ckpt, state, done, nonfinite)
            bar.update(1)
    if eval_data is not None and not evaluated:  # resumed after the last step
        evaluated = evaluate(state["params"])
    return jax.device_get(state["params"]), evaluated
