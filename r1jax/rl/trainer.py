"""The GRPO trainer: R1-Zero-style reinforcement learning from a base model.

DeepSeek-R1 (arXiv:2501.12948), Sec. 2.2. Each step s:

  draw prompts -> sample G completions each (`rollout.sample`, old log-probs from the sampler)
  -> score with the configured rule-based rewards -> group-relative advantages (eq. 3)
  -> optional DAPO dynamic sampling (`rollout.fill_batch`) -> reference log-probs
  -> mu passes over the batch in minibatches, one jitted, sharded, donated update each
     (`step.make_train_step`: GRPO loss, AdamW, MoE bias update, non-finite guard)
  -> reference refresh every K steps -> metrics -> evaluation every K steps -> checkpoint.

Determinism and resumption: step s samples with fold_in(seed key, s); the prompt stream is the
pipeline's index-based loader, its position checkpointed; rewards are pure functions of text.
A checkpoint at step s holds the state after s steps (params with the MoE biases, optimizer
state, reference params, seed key, update count) and, as JSON meta, the loader position. A run
killed at any point (SIGKILL) restarts from the newest checkpoint that verifies (a corrupted
one is skipped, named, and set aside: `checkpoint.Checkpointer.restore_latest`), drops the
metric and sample records logged after it (all of them when there is no checkpoint yet), and
continues exactly (on CPU the records after resume are those of an uninterrupted run, except
timings, under `perf/`). SIGTERM (preemption, `r1jax.preemption`) abandons the step in
progress, checkpoints the last completed step and returns with `preempted` set.

Non-finite updates are rejected inside the jitted step and counted; `guard.NonFiniteGuard`
stops the run (`NonFiniteError`) after `grpo.max_consecutive_nonfinite` of them in a row or
when more than `grpo.max_nonfinite_fraction` of the last `grpo.nonfinite_window` were skipped.
No checkpoint ever holds a non-finite value (`checkpoint.Checkpointer.save` refuses one).

Workdir: config.json, checkpoints/, metrics.jsonl, tensorboard/, samples.jsonl, plots/*.png.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from jax.experimental import mesh_utils
from jax.experimental.compilation_cache import compilation_cache

from r1jax import config_utils, distributed, ownership, peak_flops, preemption, sharding
from r1jax.data import pipeline, tasks, templates
from r1jax.data.tasks import jsonl
from r1jax.evals import rollout
from r1jax.models import scan_layout, summary
from r1jax.rl import advantages, grpo, objectives, packing, ppo, step
from r1jax.rl import config as rl_config
from r1jax.sampling import layout
from r1jax.train import base, checkpoint, guard, metrics

SAMPLES_NAME = "samples.jsonl"
COMPILATION_CACHE_NAME = "compilation_cache"  # under the workdir (compilation_cache_dir)
PLOTS = {"reward": ("reward/total", "eval/reward"),
         "accuracy": ("accuracy", "eval/pass@1", "eval/greedy_accuracy"),
         "response_length": ("response_length/mean", "eval/response_length")}
_EVAL_SALT, _TRAIN_SALT = 1, 0


NonFiniteError = guard.NonFiniteError


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def make_mesh(config: rl_config.ExperimentConfig) -> jax.sharding.Mesh:
    """The configured global mesh, its devices placed by the hardware topology.

    Without a -1 axis it uses the first prod(sizes) devices, which with several processes must
    be all of them (every process drives its devices). Devices are ordered by
    `mesh_utils.create_device_mesh` (on TPU: neighbouring chips along the inner, most
    communicating axes; elsewhere the plain device order), or with `config.num_slices` > 1 by
    `create_hybrid_device_mesh`: the `data` axis spans the slices (or hosts, on GPU: one
    granule per process) over the slow network, every other axis stays inside one. Also turns
    on the persistent compilation cache when `config.compilation_cache_dir` is a directory
    ("auto" needs the run's workdir: `train` resolves it, `compilation_cache_dir`).
    """
    path = compilation_cache_dir(config, None)
    if path:
        use_compilation_cache(path)
    shape = dict(config.mesh)
    devices = jax.devices()
    if -1 not in shape.values():
        devices = devices[: int(np.prod(list(shape.values()) or [1]))]
        if jax.process_count() > 1 and len(devices) != jax.device_count():
            raise ValueError(f"config.mesh={shape} uses {len(devices)} of the "
                             f"{jax.device_count()} devices of {jax.process_count()} processes;"
                             " a multi-process mesh must use them all (set one axis to -1)")
    sizes = sharding.make_mesh(shape, devices).devices.shape  # validates; resolves -1
    return sharding.make_mesh(dict(zip(sharding.MESH_AXES, sizes)),
                              _topology_order(sizes, devices, config.num_slices))


def compilation_cache_dir(config: rl_config.ExperimentConfig, workdir: str | None) -> str | None:
    """The run's persistent compilation cache directory: `config.compilation_cache_dir`, where
    "auto" is the process's own JAX cache when one is set (JAX_COMPILATION_CACHE_DIR: shared by
    runs), else <workdir>/compilation_cache (None without a workdir); None: no cache."""
    if config.compilation_cache_dir != "auto":
        return config.compilation_cache_dir
    if jax.config.jax_compilation_cache_dir:
        return jax.config.jax_compilation_cache_dir
    return os.path.join(workdir, COMPILATION_CACHE_NAME) if workdir else None


def use_compilation_cache(path: str | None) -> None:
    """Points JAX's persistent compilation cache at `path` (None: off). JAX opens its cache once
    per process, so a change of directory (a second run in the same process) resets it; else
    that run would read and write the first run's directory."""
    if path == jax.config.jax_compilation_cache_dir:
        return
    jax.config.update("jax_compilation_cache_dir", path)
    compilation_cache.reset_cache()


@contextlib.contextmanager
def _compilation_cache(path: str | None):
    """The cache at `path` for the duration of one run, then the process's previous one."""
    before = jax.config.jax_compilation_cache_dir
    use_compilation_cache(path)
    try:
        yield
    finally:
        use_compilation_cache(before)


def make_rollout_mesh(config: rl_config.ExperimentConfig,
                      mesh: jax.sharding.Mesh) -> jax.sharding.Mesh | None:
    """config.rollout_mesh over the training mesh's devices (`layout.decode_mesh`), or None
    when every size is 1 (sample on the training mesh)."""
    sizes = dict(config.rollout_mesh)
    if all(size == 1 for size in sizes.values()):
        return None
    return layout.decode_mesh(sizes, list(mesh.devices.flat))


def _topology_order(sizes: tuple[int, ...], devices: list, num_slices: int) -> list:
    """`devices` in the order that `sharding.make_mesh` reshapes into a topology-aware grid."""
    if num_slices == 1:
        grid = mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
        return list(grid.flat)
    if sizes[0] % num_slices:
        raise ValueError(f"config.mesh data={sizes[0]} must be a multiple of "
                         f"config.num_slices={num_slices} (the data axis spans the slices)")
    ici = (sizes[0] // num_slices,) + tuple(sizes[1:])
    dcn = (num_slices,) + (1,) * (len(sizes) - 1)
    by_process = not hasattr(devices[0], "slice_index")  # GPU hosts: one granule per process
    grid = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices,
                                                process_is_granule=by_process)
    return list(grid.flat)


def measure_peak_flops(dtype: str = "float32") -> float:
    """The MFU denominator: peak matmul FLOP/s of `dtype` (the model's compute dtype) on this
    device, best of two sizes, three repeats and two rounds (`peak_flops.measure`: one timed
    matmul reads the machine's load as much as its peak). Sizes up to 1024 keep it ~0.2 s on
    a CPU, where every training run pays it once; the benchmarks measure larger sizes too."""
    return peak_flops.measure((dtype,), sizes=(512, 1024))[dtype]


def _truncate_jsonl(path: str, step: int) -> None:
    """Drops records with step > `step` (atomically), as `MetricsWriter.truncate_after`."""
    if jax.process_index() == 0:
        metrics.truncate_jsonl(path, step)


def _append_jsonl(path: str, records: list[dict]) -> None:
    if jax.process_index() == 0 and records:
        with open(path, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in records)


class _Preempted(Exception):
    """Raised inside a step when SIGTERM arrived; the step is abandoned."""


# ---------------------------------------------------------------------------------------------
# One GRPO step
# ---------------------------------------------------------------------------------------------


class _Run:
    """Everything a step needs, built once by `train` (see its banner sections)."""

    def __init__(self, config, ctx, mesh, loader, eval_batch, step_config, preempt):
        self.config, self.ctx, self.mesh = config, ctx, mesh
        self.loader, self.eval_batch, self.preempt = loader, eval_batch, preempt
        self.step_config = step_config
        self.train_step = step.jit_train_step(step_config, mesh)
        self.score = step.jit_score(step_config, mesh)
        # PPO's value model (grpo.algorithm="ppo"); its state is state["critic"].
        self.critic = ppo.Critic(step_config, mesh) if config.grpo.algorithm == "ppo" else None
        # The sampler's own layout (config.rollout_mesh; None: the training mesh).
        self.rollout_mesh = make_rollout_mesh(config, mesh)
        self.rollout_ctx = ctx if self.rollout_mesh is None else dataclasses.replace(
            ctx, mesh=self.rollout_mesh)
        self.consistency = {}  # the sampler-vs-trainer gap of the last batch (old_logps_from)
        self.key = None  # set from the state's seed key
        self.peak_flops = config.peak_flops

    def check_preempted(self):
        if self.preempt.is_set():
            raise _Preempted()

    def collect(self, params, s: int) -> tuple[rollout.Rollout, dict[str, float]]:
        """Samples, scores and (optionally) filters the step's batch; returns it and timings."""
        cfg, g = self.config, self.config.grpo
        timings = {"sample": 0.0, "reward": 0.0}
        if self.rollout_mesh is not None:  # once per step: the weights to the decode layout
            params, timings["reshard"] = layout.reshard(self.ctx.model, params,
                                                        self.rollout_mesh)

        def draw(j):
            self.check_preempted()
            batch = distributed.gather_prompts(next(self.loader), self.ctx.tokenizer.pad_id)
            start = time.perf_counter()
            rng = _stream_key(self.key, _TRAIN_SALT, s, j)
            out = rollout.sample(self.rollout_ctx, params, batch, rng,
                                 num_samples=g.group_size,
                                 max_new_tokens=cfg.sampling.max_new_tokens,
                                 temperature=cfg.sampling.temperature,
                                 top_k=cfg.sampling.top_k, top_p=cfg.sampling.top_p,
                                 record_routing=g.routing_replay == "r3")
            timings["sample"] += time.perf_counter() - start
            start = time.perf_counter()
            out = rollout.score_across_hosts(self.ctx, out)
            timings["reward"] += time.perf_counter() - start
            return out

        max_extra = g.max_extra_draws if g.dynamic_sampling else 0
        batch, stats = rollout.fill_batch(draw, g.prompts_per_step, g.group_size, max_extra,
                                          self.ctx.tokenizer.pad_id)
        if not g.dynamic_sampling:
            stats = {}
        return batch, dict(stats, **timings)

    def host_batch(self, ro: rollout.Rollout) -> dict[str, np.ndarray]:
        """The update's per-sequence arrays on the host, completions cut to the longest real
        one (rounded up to grpo.update_width_multiple; `packing.update_width`)."""
        g = self.config.grpo
        host = {k: np.asarray(ro[k]) for k in ("prompt_tokens", "prompt_lengths",
                                               "completion_tokens", "completion_mask",
                                               "old_logps")}
        width = packing.update_width(host["completion_mask"],
                                     self.config.sampling.max_new_tokens,
                                     g.update_width_multiple)
        host = packing.trim(host, width)
        if "routing_prompt" in ro:  # routing replay: the record of [prompt ; completion[:width]]
            host["routing"] = {k: np.concatenate([p, ro["routing_completion"][k][:, :width]], 1)
                               for k, p in ro["routing_prompt"].items()}
        if g.kl_in == "loss" and self.critic is None:  # else `device_batch` estimates them
            host["advantages"] = np.asarray(advantages.estimate(
                g.advantage, jnp.asarray(ro["rewards"]), jnp.asarray(host["completion_mask"]),
                group_size=g.group_size, scale=g.advantage_scale, gamma=g.discount))
        return host

    def device_batch(self, host: dict[str, np.ndarray], state,
                     rewards: np.ndarray) -> dict[str, jax.Array]:
        """The arrays of the update with the reference log-probs, batch-sharded."""
        g = self.config.grpo
        shardings = step.batch_shardings(self.mesh, tuple(host))
        if "routing" in host:  # one sharding per router's record
            shardings["routing"] = {k: shardings["routing"] for k in host["routing"]}
        batch = distributed.global_batch(host, shardings)
        seq = {k: batch[k] for k in ("prompt_tokens", "prompt_lengths", "completion_tokens",
                                     "completion_mask", "routing") if k in batch}
        if g.beta > 0:
            batch["ref_logps"] = self.score(state["ref_params"], seq)
        else:
            batch["ref_logps"] = jnp.zeros_like(batch["old_logps"])
        sampler_logps = batch["old_logps"]
        if g.old_logps_from == "trainer":  # pi_old from the trainer's forward, gap logged
            batch["old_logps"] = self.score(state["params"], seq)
            self.consistency = _logp_gap(sampler_logps, batch["old_logps"], seq)
        if g.kl_in == "reward" or self.critic is not None:
            rewards = distributed.global_batch(
                {"r": rewards}, {"r": sharding.batch_sharding(self.mesh, 1)})["r"]
        if self.critic is not None:  # GAE from the critic's values of this batch
            batch.update(self.critic.advantages(state["critic"]["params"], batch, rewards))
        elif g.kl_in == "reward":
            batch["advantages"] = _kl_reward_advantages(g, rewards, batch)
        if g.rollout_is != "none":  # TIS / MIS: w >= 0 folds exactly into the advantages
            batch["advantages"] = _is_weighted(g, batch["advantages"], batch["old_logps"],
                                               sampler_logps, seq["completion_mask"])
        return batch

    def minibatch(self, batch, host, m: int) -> dict[str, jax.Array]:
        """Minibatch m of the update, in the step's layout (packed rows when grpo.packing)."""
        g = self.config.grpo
        rows = slice(m * (g.batch_size // g.num_minibatches),
                     (m + 1) * (g.batch_size // g.num_minibatches))
        keys = step.update_keys(self.step_config)
        minibatch = {k: jax.tree.map(lambda x: x[rows], batch[k]) for k in keys if k in batch}
        # An eager slice of a sharded array comes back replicated; the step's in_shardings
        # refuse a committed array sharded otherwise.
        minibatch = jax.device_put(minibatch, step.batch_shardings(self.mesh, tuple(minibatch)))
        if g.packing:
            packed = packing.pack({k: v[rows] for k, v in host.items()}, g.num_micro_batches,
                                  g.update_width_multiple, _batch_shards(self.mesh))
            extra = {k: packed[k] for k in packing.PACKED_KEYS + packing.INDEX_KEYS}
            minibatch.update(distributed.global_batch(
                extra, step.batch_shardings(self.mesh, tuple(extra))))
        return minibatch

    def optimise(self, state, batch, host) -> tuple[Any, list[dict]]:
        """mu passes over the batch in minibatches; one jitted update each."""
        g = self.config.grpo
        state = dict(state)
        critic_state = state.pop("critic", None)  # the policy's step never sees the critic
        size = g.batch_size // g.num_minibatches
        updates = []
        for _ in range(g.num_iterations):
            for m in range(g.num_minibatches):
                state, out = self.train_step(state, self.minibatch(batch, host, m))
                if critic_state is not None:
                    critic_state, critic_out = self.critic.update(
                        critic_state, batch, slice(m * size, (m + 1) * size))
                    out = dict(out, **critic_out)
                updates.append(out)
        if critic_state is not None:
            state["critic"] = critic_state
        return state, jax.device_get(updates)

    def run_step(self, state, s: int) -> tuple[Any, dict[str, Any], list[int]]:
        """GRPO step s (0-based): returns the state after s + 1 steps, its metrics and whether
        each of its updates was skipped (1) or applied (0)."""
        start = time.perf_counter()
        ro, timings = self.collect(state["params"], s)
        self.check_preempted()
        train_start = time.perf_counter()
        with jax.set_mesh(self.mesh):
            host = self.host_batch(ro)
            batch = self.device_batch(host, state, np.asarray(ro["rewards"], np.float32))
            state, updates = self.optimise(state, batch, host)
        train_s = time.perf_counter() - train_start
        if self.config.grpo.ref_update_every and (s + 1) % self.config.grpo.ref_update_every == 0:
            state = dict(state, ref_params=jax.tree.map(jnp.copy, state["params"]))
        out = rollout.rollout_metrics(ro, self.config.sampling.max_new_tokens)
        out.update({k: v for k, v in timings.items() if k.startswith("dynamic/")})
        out.update(self.update_metrics(updates))
        out.update({k: float(v) for k, v in jax.device_get(self.consistency).items()})
        out.update(self.perf_metrics(host, timings, train_s, time.perf_counter() - start,
                                     float(np.sum(ro["lengths"]))))
        return state, out, [int(u["nonfinite"]) for u in updates]

    def update_metrics(self, updates: list[dict]) -> dict[str, Any]:
        """Means over the step's updates; `nonfinite` is the number of skipped updates."""
        out = {k: float(np.mean([u[k] for u in updates])) for k in updates[0]
               if k != "nonfinite"}
        out["nonfinite"] = int(sum(int(u["nonfinite"]) for u in updates))
        return out

    def perf_metrics(self, host, timings, train_s: float, step_s: float,
                     sampled: float) -> dict[str, float]:
        """Timings, tokens/s and the training MFU estimate, all under `perf/`; the update's
        work is counted at its width (`host_batch`), `sampled` is the real tokens sampled."""
        if self.peak_flops is None:
            self.peak_flops = measure_peak_flops(self.ctx.model.dtype)
        rows, p = host["prompt_tokens"].shape
        length = p + host["completion_tokens"].shape[1]
        fwd = summary.forward_flops(self.ctx.model, rows, length)
        flops = 3 * fwd * self.config.grpo.num_iterations + (fwd if self.config.grpo.beta else 0)
        reshard = {"perf/reshard_s": timings["reshard"]} if "reshard" in timings else {}
        return reshard | {"perf/sample_s": timings["sample"], "perf/reward_s": timings["reward"],
                "perf/train_s": train_s, "perf/step_s": step_s,
                "perf/sample_tokens_per_s": sampled / max(timings["sample"], 1e-9),
                "perf/train_tokens_per_s": rows * length * self.config.grpo.num_iterations
                / max(train_s, 1e-9),
                "perf/mfu": flops / max(train_s, 1e-9) / self.peak_flops}

    def evaluate(self, params, s: int) -> tuple[dict[str, float], list[dict]]:
        e = self.config.eval
        rng = eval_key(self.key, s)
        out, samples = rollout.evaluate(
            self.ctx, params, self.eval_batch, rng, num_samples=e.num_samples,
            temperature=e.temperature, top_p=e.top_p, greedy=e.greedy,
            max_new_tokens=e.max_new_tokens or self.config.sampling.max_new_tokens,
            num_logged=e.num_logged_samples)
        return out, [dict(r, step=s) for r in samples]


@functools.partial(jax.jit, static_argnums=0)
def _kl_reward_advantages(g: rl_config.GRPOConfig, rewards_n, batch) -> jax.Array:
    """grpo.advantage's estimate with -beta * KL(pi_old || pi_ref) per token in the rewards
    (grpo.kl_in="reward"; `advantages.estimate`), on the global batch."""
    mask = batch["completion_mask"]
    valid = mask > 0
    kl = grpo.kl_penalty(jnp.where(valid, batch["old_logps"], 0.0),
                         jnp.where(valid, batch["ref_logps"], 0.0), g.kl_estimator)
    return advantages.estimate(g.advantage, rewards_n, mask, group_size=g.group_size,
                               scale=g.advantage_scale, kl=kl, beta=g.beta, gamma=g.discount)


@jax.jit
def _logp_gap(sampler_logps, old_logps, seq) -> dict[str, jax.Array]:
    """`objectives.logp_gap_metrics` under "consistency/" (trainer's pi_old vs the sampler's)."""
    gap = objectives.logp_gap_metrics(old_logps, sampler_logps, seq["completion_mask"])
    return {f"consistency/{k}": v for k, v in gap.items()}


@functools.partial(jax.jit, static_argnums=0)
def _is_weighted(g: rl_config.GRPOConfig, advantages_n, old_logps, sampler_logps, mask):
    """[N, T] advantages times the grpo.rollout_is weights (`objectives.rollout_is_weights`;
    weights >= 0 commute with every objective's min and clip, so this equals weighting the
    policy loss terms, tests/rl/test_objectives.py)."""
    w = objectives.rollout_is_weights(old_logps, sampler_logps, mask,
                                      correction=g.rollout_is, cap=g.rollout_is_cap)
    return w * (advantages_n[:, None] if advantages_n.ndim == 1 else advantages_n)


def _batch_shards(mesh) -> int:
    """How many shards the batch axis is split into on `mesh` (the data axes' product)."""
    return mesh.size // step.batch_shardings(mesh, ("advantages",))["advantages"].shard_shape(
        (mesh.size,))[0]


def eval_key(seed_key, step: int) -> jax.Array:
    """The key of the evaluation at `step`: fold_in(fold_in(seed key, evaluation stream), step);
    `rl.runs` rebuilds it to reproduce a run's logged `eval/` numbers."""
    return _stream_key(seed_key, _EVAL_SALT, step)


def _stream_key(key, *indices: int) -> jax.Array:
    """fold_in of the seed key with (stream, step, draw): independent keys per use."""
    for index in indices:
        key = jax.random.fold_in(key, index)
    return key


# ---------------------------------------------------------------------------------------------
# train(config, workdir)
# ---------------------------------------------------------------------------------------------


def _load_model(config: rl_config.ExperimentConfig):
    model_config, params, tok = base.load_model(config.base_dir)
    if config.model_overrides:
        model_config = model_config.replace(**dict(config.model_overrides))
    # A checkpoint holds one layer layout; a scan_layers override picks the one that runs.
    relayout = scan_layout.to_scanned if model_config.scan_layers else scan_layout.to_unrolled
    params = relayout(model_config, params)
    # Params keep the checkpoint's dtype unless a param_dtype override asks for another.
    return model_config, base.cast_params(jax.device_get(params), model_config.param_dtype), tok


def _per_host(count: int, field: str) -> int:
    """A global prompt count split over the processes (each host loads its own prompts)."""
    if count % jax.process_count():
        raise ValueError(f"{field}={count} must be a multiple of the {jax.process_count()} "
                         "processes (each host loads an equal share of the prompts)")
    return count // jax.process_count()


def _loaders(config: rl_config.ExperimentConfig, tok, template):
    """This host's training prompt loader (resumable) and the global held-out eval batch."""
    d = config.data
    task = tasks.get(d.task, **dict(d.task_knobs))
    prompts = pipeline.PromptConfig(batch_size=_per_host(config.grpo.prompts_per_step,
                                                         "grpo.prompts_per_step"),
                                    max_prompt_len=d.max_prompt_len, bucket=d.bucket, seed=d.seed,
                                    overlong=d.overlong)
    train_source = _source(d, task, "train")
    loader = pipeline.prompt_loader(train_source, tok, template.format_prompt, prompts)
    eval_source = _source(d, task, "test")
    eval_prompts = pipeline.PromptConfig(batch_size=_per_host(_eval_count(config, eval_source),
                                                              "eval.num_prompts"),
                                         max_prompt_len=d.max_prompt_len, bucket=d.bucket,
                                         seed=d.seed, overlong=d.overlong)
    eval_batch = distributed.gather_prompts(pipeline.prompt_loader(
        eval_source, tok, template.format_prompt, eval_prompts).batch(0), tok.pad_id)
    return loader, eval_batch


def _eval_count(config: rl_config.ExperimentConfig, source) -> int:
    """eval.num_prompts, clamped with a note to the held-out prompts there are (rounded down
    to a multiple of the processes): a smaller test set is never repeated to fill the batch."""
    wanted, available = config.eval.num_prompts, len(source)
    if available >= wanted:
        return wanted
    count = available - available % jax.process_count()
    if count < 1:
        raise ValueError(f"the test set has {available} prompts, fewer than the "
                         f"{jax.process_count()} processes that share the evaluation")
    _say(f"note: eval.num_prompts={wanted} but the test set has {available} prompts: "
         f"evaluating {count} (each once)")
    return count


def _say(message: str) -> None:
    """One line on process 0 (what a long, otherwise silent phase is doing)."""
    if jax.process_index() == 0:
        print(message, flush=True)


def _source(d: rl_config.DataConfig, task, split: str):
    """The prompts of one split: user JSONL when configured, else the generated task."""
    path = d.train_jsonl if split == "train" else (d.test_jsonl or d.train_jsonl)
    if path is None:
        return pipeline.generated_source(task, split, d.seed)
    loaded = jsonl.load(path, d.jsonl_format, on_error=d.jsonl_on_error, split=split)
    if not loaded.examples:
        raise ValueError(f"{path}: no usable examples ({loaded.skipped} skipped)")
    return loaded.examples


def _write_config(config: rl_config.ExperimentConfig, workdir: str) -> None:
    if jax.process_index() == 0:
        path = os.path.join(workdir, "config.json")
        config_utils.report_changes(path, json.loads(config.to_json()), "GRPO run")
        with open(f"{path}.tmp", "w") as f:
            f.write(config.to_json())
        os.replace(f"{path}.tmp", path)


def _nonfinite_guard(config: rl_config.ExperimentConfig) -> guard.NonFiniteGuard:
    g = config.grpo
    return guard.NonFiniteGuard(g.max_consecutive_nonfinite, g.nonfinite_window,
                                g.max_nonfinite_fraction)


def _restore(ckpt: checkpoint.Checkpointer, state, loader, writer, workdir, nonfinite):
    """Resumes from the newest checkpoint that verifies: state, loader position, the
    non-finite counts; truncates the logs to its step (to nothing without a checkpoint, so a
    run killed before its first checkpoint restarts its logs cleanly)."""
    restored = ckpt.restore_latest(checkpoint.abstract_tree(state), set_aside=True)
    for s, reason in ckpt.skipped:
        warnings.warn(f"resume: skipped checkpoint step {s} in {ckpt.directory} ({reason}); "
                      f"resuming from step {ckpt.restored_step or 0}", stacklevel=2)
    step_ = -1 if restored is None else restored[1]["step"]
    writer.truncate_after(step_)
    _truncate_jsonl(os.path.join(workdir, SAMPLES_NAME), step_)
    if restored is None:
        return state, 0
    state, meta = restored
    loader.set_state(meta["data"])
    nonfinite.load(meta["nonfinite"])
    return state, meta["step"]


def _save(ckpt, state, s: int, data_state, nonfinite: guard.NonFiniteGuard) -> None:
    if ckpt.latest_step() == s:  # already saved (e.g. SIGTERM right after a periodic save)
        return
    meta = {"step": s, "data": data_state, "nonfinite": nonfinite.state()}
    ckpt.save(s, state, meta, force=True)


def _eval_due(config: rl_config.ExperimentConfig, s: int) -> bool:
    every = config.eval.every
    return s == config.total_steps or (every > 0 and s % every == 0)


def _plots(workdir: str) -> None:
    os.makedirs(os.path.join(workdir, "plots"), exist_ok=True)
    jsonl = os.path.join(workdir, metrics.JSONL_NAME)
    for name, keys in PLOTS.items():
        metrics.plot_metrics(jsonl, keys, os.path.join(workdir, "plots", f"{name}.png"))


def train(config, workdir: str) -> dict[str, Any]:
    """Runs (or resumes) GRPO; returns {"step", "preempted", "train": last step metrics,
    "eval": last evaluation metrics, "nonfinite_total"}.

    Args:
      config: an `ExperimentConfig` or a ConfigDict (`configs/r1_zero.py`), frozen once here.
      workdir: the run directory (created and marked as r1jax's; an existing one is resumed;
        an existing non-empty one that r1jax did not create is refused, see `r1jax.ownership`).
    """
    # ------------------------------------------------------------------ config and workdir
    if not isinstance(config, rl_config.ExperimentConfig):
        config = rl_config.from_config_dict(config)
    workdir = str(ownership.claim(workdir, "rl.trainer run"))
    _write_config(config, workdir)
    with _compilation_cache(compilation_cache_dir(config, workdir)):
        return _train(config, workdir)


def _train(config: rl_config.ExperimentConfig, workdir: str) -> dict[str, Any]:
    """`train` once the config is frozen and the workdir claimed."""
    # ------------------------------------------------------------------ mesh, model, data
    mesh = make_mesh(config)
    _say(f"loading the base model from {config.base_dir}")
    model_config, params, tok = _load_model(config)
    template = templates.get(config.data.template)
    loader, eval_batch = _loaders(config, tok, template)
    step_config = step.StepConfig(model_config, config.grpo, config.optim,
                                  config.sampling.temperature, config.sampling.max_new_tokens)

    # ------------------------------------------------------------------ state and checkpoint
    # Each device reads its shard of the host params; the reference copy and the moments are
    # then built in place (step.jit_init_state), never whole on one device.
    params = distributed.put_global(params, step.param_shardings(model_config, mesh))
    state = step.jit_init_state(step_config, mesh, config.seed)(params)
    if config.grpo.algorithm == "ppo":  # the value model starts from the policy (rl.critic)
        state["critic"] = ppo.Critic(step_config, mesh).init(params)
    del params
    ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"),
                                   max_to_keep=config.keep_checkpoints,
                                   async_save=config.async_checkpoints)
    writer = metrics.MetricsWriter(workdir, use_tensorboard=config.tensorboard)
    nonfinite = _nonfinite_guard(config)
    state, start = _restore(ckpt, state, loader, writer, workdir, nonfinite)

    # ------------------------------------------------------------------ loop
    with preemption.handling() as preempt, ckpt, writer, \
            rollout.reward_pool(config.rewards, config.reward_workers) as pool:
        ctx = rollout.Context(model_config, tok, template, config.rewards, pool, mesh)
        run = _Run(config, ctx, mesh, loader, eval_batch, step_config, preempt)
        run.key = jax.device_get(state["rng"])
        summary_ = _loop(run, state, start, nonfinite, ckpt, writer, workdir)
    # A run preempted before its first record has nothing to plot.
    if config.plots and jax.process_index() == 0 \
            and os.path.exists(os.path.join(workdir, metrics.JSONL_NAME)):
        _plots(workdir)
    return summary_


def _evaluate_and_log(run: _Run, params, s: int, writer, workdir: str) -> dict[str, float]:
    out, samples = run.evaluate(params, s)
    writer.write(s, out)
    _append_jsonl(os.path.join(workdir, SAMPLES_NAME), samples)
    return out


def _loop(run: _Run, state, start: int, nonfinite: guard.NonFiniteGuard, ckpt, writer,
          workdir):
    """Steps start..total_steps-1 with logging, evaluation, checkpoints and the guards."""
    config = run.config
    summary_ = {"step": start, "preempted": False, "train": {}, "eval": {}}
    if start == 0 and not run.preempt.is_set():
        _say(f"step 0: evaluating {run.eval_batch['prompt_tokens'].shape[0]} held-out prompts "
             f"(the first call compiles the sampler)")
        summary_["eval"] = _evaluate_and_log(run, state["params"], 0, writer, workdir)
    if start < config.total_steps:
        _say(f"step {start + 1}: sampling, scoring and compiling the GRPO step (the slowest "
             "step; the progress bar follows)")
    bar = tqdm.tqdm(total=config.total_steps, initial=start, desc="grpo", dynamic_ncols=True,
                    disable=not config.progress_bar or jax.process_index() != 0)
    with bar:
        for s in range(start, config.total_steps):
            data_state = run.loader.get_state()
            try:
                state, out, skipped = run.run_step(state, s)
            except _Preempted:
                if s > 0:  # step 0 is the initial state: a rerun rebuilds it
                    _save(ckpt, state, s, data_state, nonfinite)
                summary_["preempted"] = True
                break
            nonfinite.record(skipped)
            writer.write(s + 1, out)
            summary_.update(step=s + 1, train=out)
            bar.update(1)
            bar.set_postfix(reward=f"{out['reward/total']:.3f}", acc=f"{out['accuracy']:.3f}")
            nonfinite.check("GRPO", s + 1, ckpt, _detail(out))
            if _eval_due(config, s + 1):
                summary_["eval"] = _evaluate_and_log(run, state["params"], s + 1, writer, workdir)
            if (s + 1) % config.checkpoint_every == 0 or s + 1 == config.total_steps:
                _save(ckpt, state, s + 1, run.loader.get_state(), nonfinite)
            writer.flush()
    summary_["nonfinite_total"] = int(jax.device_get(state["skipped"]))
    return summary_


def _detail(out: dict[str, Any]) -> str:
    return (f"last loss={out['loss']}, grad_norm={out['grad_norm']}, kl={out.get('kl')}, "
            f"mean reward={out['reward/total']}")
