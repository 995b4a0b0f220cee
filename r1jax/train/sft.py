"""Supervised next-token training: base-model pretraining and SFT.

Used for the toy "V3-Base" pretraining (loss on every token), the R1 cold start (arXiv:2501.12948
Sec. 2.3.1) and the SFT on rejection-sampled data (Sec. 2.3.3), where the loss covers the
response only. Sequences are packed into fixed-length rows (`pack`); tokens attend within their
own sequence only (segment ids), so packing changes no example's loss.

The loss is the mean next-token cross-entropy over the weighted target tokens, plus the MoE
sequence-wise balance loss (alpha, DeepSeek-V3 Sec. 2.1.3) and the MTP loss (lambda, Sec. 2.2)
when the model has them. After each step the aux-loss-free balancing bias is moved by
b_i += gamma * sign(mean load - load_i) with the loads of that step's forward.

`train(...)` reads top to bottom: mesh, state, step, checkpoint, loop. A run resumes from its
newest checkpoint that verifies (`checkpoint.Checkpointer.restore_latest`); `batch_fn(step)`
must be a pure function of the step so that a resumed run sees exactly the batches an
uninterrupted one would. An update with any non-finite value is rejected inside the step
(`state.guard_update`) and counted; `guard.NonFiniteGuard` stops the run when they keep
coming. On SIGTERM the run checkpoints its last completed step and raises
`preemption.Preempted`.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from r1jax import config_utils, distributed, preemption, sharding
from r1jax.models import config as config_lib
from r1jax.models import moe, transformer
from r1jax.train import checkpoint, guard, partition, resume
from r1jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    """steps: optimizer steps; batch_size x seq_len tokens per step (packed rows);
    micro_batches: gradient accumulation; mesh: {axis: size} (-1 = the rest);
    packing: how sequences fill the rows (`pack`'s `strategy`: "next_fit" or "best_fit");
    max_consecutive_nonfinite, nonfinite_window, max_nonfinite_fraction: when skipped
    (non-finite) updates stop the run (`guard.NonFiniteGuard`)."""

    steps: int = 100
    batch_size: int = 16
    seq_len: int = 256
    micro_batches: int = 1
    log_every: int = 10
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    seed: int = 0
    mesh: tuple[tuple[str, int], ...] = config_utils.mesh_field(sharding.MESH_AXES)
    packing: str = "next_fit"
    max_consecutive_nonfinite: int = 5
    nonfinite_window: int = 20
    max_nonfinite_fraction: float = 0.25

    def __post_init__(self):
        guard.check_settings("SFTConfig", self.max_consecutive_nonfinite, self.nonfinite_window,
                             self.max_nonfinite_fraction)
        if self.packing not in PACKING:
            raise ValueError(f"SFTConfig.packing: {self.packing!r}, known: {', '.join(PACKING)}")
        for field in ("steps", "batch_size", "seq_len", "micro_batches", "log_every",
                      "checkpoint_every", "keep_checkpoints"):
            if getattr(self, field) <= 0:
                raise ValueError(f"SFTConfig.{field}: must be positive, got {getattr(self, field)}")
        if self.batch_size % self.micro_batches:
            raise ValueError(f"SFTConfig.micro_batches: {self.micro_batches} does not divide "
                             f"batch_size={self.batch_size}")


# ------------------------------------------------------------------------------------ packing
PACKING = ("next_fit", "best_fit")


def pack(examples: Iterable[tuple[Sequence[int], Sequence[int]]], seq_len: int,
         pad_id: int, strategy: str = "next_fit") -> dict[str, np.ndarray]:
    """Packs (tokens, loss_weights) pairs into rows of `seq_len`.

    strategy "next_fit": sequences fill the current row in order; one that does not fit starts
    a new row (the rows keep the input order). "best_fit": each sequence goes to the open row
    with the least room that still holds it (a new row if none does); with sequences much
    shorter than `seq_len` this leaves almost no padding, so more of every step's compute
    trains on real tokens. A sequence never spans two rows; one longer than `seq_len` is cut to
    it (counted in `num_truncated`). Returns int32 `tokens`, `segment_ids` (0 = padding, 1.. per
    sequence), `positions`, float32 `weights` (the loss weight of predicting each token), all
    [N, L].
    """
    if strategy not in PACKING:
        raise ValueError(f"pack: unknown strategy {strategy!r}, known: {', '.join(PACKING)}")
    rows: list[list[tuple[list[int], list[float]]]] = []
    # best_fit: by_room[r] holds the indices of the rows with exactly r free slots;
    # next_fit: last_room is the free slots of the last row.
    by_room: list[list[int]] = [[] for _ in range(seq_len + 1)]
    last_room, truncated = 0, 0
    for tokens, weights in examples:
        if len(tokens) != len(weights):
            raise ValueError(f"pack: {len(tokens)} tokens but {len(weights)} weights")
        if len(tokens) > seq_len:
            tokens, weights, truncated = tokens[:seq_len], weights[:seq_len], truncated + 1
        seq, n = (list(tokens), list(weights)), len(tokens)
        if strategy == "next_fit":
            if not rows or n > last_room:
                rows.append([])
                last_room = seq_len
            rows[-1].append(seq)
            last_room -= n
            continue
        room = next((r for r in range(n, seq_len + 1) if by_room[r]), None)
        if room is None:
            rows.append([])
            index, room = len(rows) - 1, seq_len
        else:
            index = by_room[room].pop()
        rows[index].append(seq)
        by_room[room - n].append(index)
    out = {k: np.zeros((len(rows), seq_len), dt) for k, dt in
           (("tokens", np.int32), ("segment_ids", np.int32), ("positions", np.int32),
            ("weights", np.float32))}
    out["tokens"][:] = pad_id
    for r, row in enumerate(rows):
        start = 0
        for seg, (tokens, weights) in enumerate(row, start=1):
            end = start + len(tokens)
            out["tokens"][r, start:end] = tokens
            out["weights"][r, start:end] = weights
            out["segment_ids"][r, start:end] = seg
            out["positions"][r, start:end] = np.arange(len(tokens))
            start = end
    out["num_truncated"] = np.asarray(truncated)
    return out


def epoch_batches(data: dict[str, np.ndarray], batch_size: int, seed: int):
    """`batch_fn(step)` over packed rows: a fresh permutation per epoch, a pure function of step."""
    n = data["tokens"].shape[0]
    if n < batch_size:
        raise ValueError(f"only {n} packed rows for batch_size={batch_size}")
    per_epoch = n // batch_size
    keys = ("tokens", "segment_ids", "positions", "weights")

    def batch_fn(step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, per_epoch)
        order = np.random.default_rng([seed, epoch]).permutation(n)
        rows = np.sort(order[i * batch_size:(i + 1) * batch_size])
        return {k: data[k][rows] for k in keys}

    return batch_fn


# --------------------------------------------------------------------------------------- loss
def lm_loss(params, batch, model: transformer.Transformer):
    """Mean next-token cross-entropy over weighted targets (+ MoE balance and MTP losses).

    Token i predicts token i+1 when both belong to the same sequence; the weight of that
    prediction is `weights[i+1]` (1 on response tokens, 0 on prompts and padding).
    """
    cfg = model.config
    tokens_bt, seg_bt = batch["tokens"], batch["segment_ids"]
    logits_btv, inter = model.apply(
        {"params": params}, tokens_bt, batch["positions"], seg_bt > 0, seg_bt,
        mutable=["intermediates"])
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1].astype(jnp.float32))
    target_logp_bt = jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], -1)[..., 0]
    w_bt = batch["weights"][:, 1:] * (seg_bt[:, 1:] == seg_bt[:, :-1]) * (seg_bt[:, 1:] > 0)
    ce = -jnp.sum(target_logp_bt * w_bt) / jnp.maximum(w_bt.sum(), 1.0)
    inter = inter.get("intermediates", {})
    loss = ce + moe.total_aux_loss(inter)
    if cfg.num_nextn_predict_layers:
        (mtp_logits,) = inter[transformer.MTP_LOGITS]
        loss = loss + transformer.mtp_loss(mtp_logits, tokens_bt, seg_bt > 0, cfg.mtp_loss_weight)
    return loss, {"ce": ce, "tokens": w_bt.sum(), "intermediates": inter}


def _train_step(state, batch, *, model, optimizer, micro_batches: int):
    def loss_fn(params, micro):
        loss, aux = lm_loss(params, micro, model)
        loads = moe.collect_expert_loads(aux.pop("intermediates"))
        return loss, dict(aux, loads=loads)

    loss, aux, grads = state_lib.accumulate_gradients(
        loss_fn, state["params"], batch, micro_batches)
    updated, info = state_lib.apply_gradients(state, grads, optimizer)
    if aux["loads"]:
        gamma = model.config.bias_update_speed
        updated["params"] = moe.update_all_biases(
            updated["params"], _as_intermediates(aux["loads"]), gamma)
    new_state, skipped = state_lib.guard_update(state, updated, loss, info["grad_norm"])
    return new_state, {"loss": loss, "ce": aux["ce"], "grad_norm": info["grad_norm"],
                       "nonfinite": skipped}


def _as_intermediates(loads: dict[str, jax.Array]) -> dict:
    """Rebuilds the nested 'intermediates' layout that `update_all_biases` reads."""
    nested: dict = {}
    for layer, load in loads.items():
        node = nested
        for key in layer.split("/"):
            node = node.setdefault(key, {})
        node[moe.EXPERT_LOAD] = (load,)
    return nested


# -------------------------------------------------------------------------------------- train
def train(model_config: config_lib.ModelConfig, optim_config: state_lib.OptimConfig,
          config: SFTConfig, batch_fn: Callable[[int], dict], workdir: str | os.PathLike,
          init_params, *, desc: str = "sft", devices=None) -> dict:
    """Trains `init_params` for `config.steps` steps and returns the final params.

    Checkpoints go to `<workdir>/checkpoints`, metrics to `<workdir>/metrics.jsonl` (and
    TensorBoard); a rerun with the same workdir resumes from the latest checkpoint.
    `devices` defaults to all devices. Across processes (`jax.distributed`) every process
    calls this with the same `batch_fn` (the global batch) and gets the same result.

    Returns:
      The final params as jax.Arrays with the training sharding (not fetched to the host:
      across processes no process holds them whole; `np.asarray` reads one in a single
      process, `r1.common.save_model` saves them from any number).
    """
    mesh = sharding.make_mesh(dict(config.mesh), devices)
    shards = sharding.batch_sharding(mesh).num_devices // mesh.shape["tensor"]
    if config.batch_size % shards:
        raise ValueError(f"SFTConfig.batch_size={config.batch_size} must be a multiple of the "
                         f"{shards} batch shards of mesh {dict(mesh.shape)}")
    with jax.set_mesh(mesh):
        return _train(model_config, optim_config, config, batch_fn, workdir, init_params,
                      mesh, desc)


def _train(model_config, optim_config, config, batch_fn, workdir, init_params, mesh, desc):
    model = transformer.Transformer(model_config)
    optimizer = state_lib.make_optimizer(optim_config)
    # ---- state
    abstract_params, _ = partition.param_shardings(model_config, mesh)
    abstract_state = jax.eval_shape(
        lambda p: state_lib.create_train_state(p, optim_config, jax.random.key(config.seed)),
        abstract_params)
    state_sh = partition.state_shardings(abstract_state, abstract_params, mesh)
    batch_sh = sharding.batch_sharding(mesh)
    # ---- step
    step_fn = jax.jit(
        functools.partial(_train_step, model=model, optimizer=optimizer,
                          micro_batches=config.micro_batches),
        in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, None), donate_argnums=0)
    # ---- checkpoint
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints)
    nonfinite = guard.NonFiniteGuard(config.max_consecutive_nonfinite, config.nonfinite_window,
                                     config.max_nonfinite_fraction)
    state, start, writer = resume.resume(ckpt, checkpoint.abstract_tree(abstract_state, state_sh),
                                  workdir, nonfinite)
    if state is None:
        state = jax.jit(lambda p: state_lib.create_train_state(
            p, optim_config, jax.random.key(config.seed)), out_shardings=state_sh)(init_params)
    # ---- loop
    t0, tokens = time.perf_counter(), 0
    with preemption.handling() as preempt, ckpt, writer, \
            tqdm.tqdm(total=config.steps, initial=start, desc=desc, dynamic_ncols=True) as bar:
        for step in range(start, config.steps):
            resume.stop_if_preempted(preempt, ckpt, state, step, nonfinite, workdir)
            batch = batch_fn(step)
            state, m = step_fn(state, _global_batch(batch, batch_sh))
            nonfinite.record([int(m["nonfinite"])])
            nonfinite.check(desc, step + 1, ckpt, f"last loss={float(m['loss'])}")
            tokens += int((batch["segment_ids"] > 0).sum())
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
                m = {k: float(v) for k, v in jax.device_get(m).items()}
                m["tokens_per_s"] = tokens / (time.perf_counter() - t0)
                m["learning_rate"] = float(state_lib.learning_rate_schedule(optim_config)(step))
                writer.write(step + 1, m)
                bar.set_postfix(loss=f"{m['ce']:.3f}")
                t0, tokens = time.perf_counter(), 0
            if (step + 1) % config.checkpoint_every == 0 or step + 1 == config.steps:
                resume.save(ckpt, state, step + 1, nonfinite)
            bar.update(1)
    return state["params"]


def _global_batch(batch: dict[str, np.ndarray], batch_sh) -> dict:
    """The step's batch as the jitted step takes it: the host arrays in one process; across
    processes (each computed the same global batch) global arrays to which each process
    hands only its own devices' rows, as jit refuses host arrays sharded across processes."""
    if jax.process_count() == 1:
        return batch
    return distributed.global_batch(batch, jax.tree.map(lambda _: batch_sh, batch))
