"""The GRPO experiment's configuration: frozen, validated dataclasses built once from a ConfigDict.

`configs/r1_zero.py` returns an `ml_collections.ConfigDict` (overridable on the command line);
`from_config_dict` turns it, once, into an `ExperimentConfig` that the trainer reads. Every
section validates itself and names the bad field (`grpo.group_size=0: must be >= 1`); an
unknown key in the ConfigDict is an error, not silently ignored.

Symbols follow DeepSeek-R1 (arXiv:2501.12948, Sec. 2.2.1 and the R1-Zero training details of
its supplementary): G completions per question, mu optimisation passes, KL weight beta, clip
ratio epsilon. The R1-Zero run used: learning rate 3e-6, beta = 0.001, epsilon = 10, G = 16,
32 questions per step (batch 512), sampling temperature 1, the reference model replaced by the
policy every 400 steps. Those are the defaults below wherever a field has a paper value.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math
from collections.abc import Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict as config_dict_lib

from r1jax import config_utils, sharding
from r1jax.data import tasks, templates
from r1jax.evals import evaluate
from r1jax.models import config as model_config_lib
from r1jax.rewards import registry
from r1jax.rl import advantages, grpo, objectives
from r1jax.sampling import sampler
from r1jax.train import guard
from r1jax.train import state as state_lib


def _fail(section: str, field: str, value: Any, why: str):
    raise ValueError(f"{section}.{field}={value!r}: {why}")


def _finite(section: str, obj, *fields: str) -> None:
    """Every named field is a finite number (None allowed: optional fields check that apart)."""
    for field in fields:
        value = getattr(obj, field)
        if value is not None and not (isinstance(value, int | float)
                                      and math.isfinite(value)):
            _fail(section, field, value, "must be a finite number")


def _at_least(section: str, obj, minimum: int, *fields: str) -> None:
    for field in fields:
        value = getattr(obj, field)
        if not isinstance(value, int) or value < minimum:
            _fail(section, field, value, f"must be an int >= {minimum}")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
    """The GRPO algorithm (R1 paper eq. 1-3; variants as config values).

    group_size: G, completions sampled per question (R1-Zero: 16).
    prompts_per_step: questions per step (R1-Zero: 32, i.e. a batch of 512 completions).
    num_iterations: mu, optimisation passes over each sampled batch (old log-probs from the
      sampler, so mu = 1 makes the ratio 1 up to numerics).
    num_minibatches: optimizer updates per pass; prompts_per_step * G must divide evenly.
    num_micro_batches: gradient accumulation inside one minibatch update.
    beta: KL weight (R1-Zero: 0.001). kl_estimator: "k3" (eq. 2) | "k1" | "k2".
    clip_eps_low, clip_eps_high: epsilon of clip(rho, 1 - eps_low, 1 + eps_high) (R1-Zero:
      epsilon = 10 on both sides; DAPO clip-higher: 0.2 / 0.28).
    aggregation: "seq_mean" (paper) | "token_mean" (DAPO) | "fixed_length" (Dr. GRPO).
    advantage_scale: "group" (eq. 3) | "batch" | "none" (Dr. GRPO).
    ref_update_every: replace the reference by the policy every K steps (R1-Zero: 400); 0 keeps
      the base model as reference for the whole run.
    dynamic_sampling: DAPO (arXiv:2503.14476, Sec. 3.2): drop groups whose rewards are all equal
      and draw more prompts until the batch is full, at most `max_extra_draws` extra batches.
    max_consecutive_nonfinite: a run stops after this many skipped (non-finite) updates in a row;
      nonfinite_window, max_nonfinite_fraction: it also stops when more than that fraction of the
      last `nonfinite_window` updates were skipped (1.0 turns this rate rule off).
    bias_update_speed: gamma of the MoE balancing-bias rule (DeepSeek-V3 Sec. 2.1.2); None
      takes the model config's `bias_update_speed`.
    logps_chunk_size, vocab_chunk_size: the update and the reference scorer form log-probs
      `logps_chunk_size` completion positions (and `vocab_chunk_size` vocabulary columns, None:
      all) at a time, never [B, T, V] logits (`r1jax.rl.logprobs`).
    entropy_metric: log the policy's mean token entropy (computed in the same chunks).
    update_width_multiple: the update runs over the longest real completion of the batch,
      rounded up to this multiple (fewer distinct compiled widths), not over max_new_tokens;
      0 always uses max_new_tokens. The loss is unchanged (padding is masked).
    packing: the update packs several [prompt ; completion] sequences into each row (segment
      ids, `r1jax.rl.packing`), rows as wide as the longest sequence rounded up to
      update_width_multiple; the GRPO loss is unchanged.
    loss: the policy objective (`r1jax.rl.objectives`): "grpo" (eq. 1, token ratios) | "gspo"
      (GSPO: length-normalised sequence ratio, sequence clipping) | "gspo_token" | "cispo"
      (MiniMax-M1: clipped, stop-gradient IS weight, no token dropped) | "dual_clip" (PPO
      bounded by dual_clip_c * A where A < 0).
    advantage: the estimator (`r1jax.rl.advantages`): "group" (eq. 3, scaled by
      advantage_scale) | "rloo" (leave-one-out) | "reinforce_pp" (REINFORCE++: batch-
      normalised returns) | "reinforce_pp_baseline" (group mean subtracted first); discount:
      gamma of the REINFORCE++ returns.
    kl_in: "loss" (eq. 1: beta * KL per token in the loss) | "reward" (PPO / REINFORCE++:
      -beta * KL per token in the rewards the advantages are estimated from).
    entropy_coef: weight of an entropy bonus in the loss (the entropy comes with
      entropy_metric, which must be on).
    algorithm: "grpo" (no critic) | "ppo" (a value model, `r1jax.rl.critic` / `rl.ppo`:
      advantage must be "gae", with gae_lambda; the critic's value loss clips at
      clip_eps_value around the old values (None: no clip) and its AdamW takes
      critic_learning_rate, None: the policy's optim settings).
    old_logps_from: "sampler" (the sampler's log-probs are pi_old) | "trainer" (the trainer's
      forward recomputes them with the policy before the update; the sampler-vs-trainer gap is
      then logged every step, `objectives.logp_gap_metrics`).
    rollout_is: the sampler-vs-trainer correction (`objectives.rollout_is_weights`, needs
      old_logps_from="trainer"): "none" | "token_truncate" (TIS) | "sequence_truncate" |
      "token_mask" | "sequence_mask" (MIS), with cap C = rollout_is_cap > 1.
    routing_replay: MoE routing replay, "none" | "r3": the sampler records every token's
      experts (`SamplingConfig.record_routing`) and the training forwards select the same ones,
      gate values from the current router (`r1jax.rl.replay`); the flip rate of each router
      (its own choice vs the record) is logged. Not with packing.
    """

    group_size: int = 16
    prompts_per_step: int = 32
    num_iterations: int = 1
    num_minibatches: int = 1
    num_micro_batches: int = 1
    beta: float = 0.001
    kl_estimator: str = "k3"
    clip_eps_low: float = 10.0
    clip_eps_high: float = 10.0
    aggregation: str = "seq_mean"
    advantage_scale: str = "group"
    ref_update_every: int = 400
    dynamic_sampling: bool = False
    max_extra_draws: int = 4
    max_consecutive_nonfinite: int = 5
    nonfinite_window: int = 20
    max_nonfinite_fraction: float = 0.25
    bias_update_speed: float | None = None
    logps_chunk_size: int = 512
    vocab_chunk_size: int | None = None
    entropy_metric: bool = True
    update_width_multiple: int = 64
    packing: bool = False
    loss: str = "grpo"
    dual_clip_c: float = 3.0
    advantage: str = "group"
    discount: float = 1.0
    kl_in: str = "loss"
    entropy_coef: float = 0.0
    algorithm: str = "grpo"
    gae_lambda: float = 0.95
    clip_eps_value: float | None = 0.2
    critic_learning_rate: float | None = None
    old_logps_from: str = "sampler"
    rollout_is: str = "none"
    rollout_is_cap: float = 2.0
    routing_replay: str = "none"

    def __post_init__(self):
        s = "grpo"
        _at_least(s, self, 1, "prompts_per_step", "num_iterations", "num_minibatches",
                  "num_micro_batches", "logps_chunk_size")
        _at_least(s, self, 0, "update_width_multiple")
        if self.vocab_chunk_size is not None and self.vocab_chunk_size < 1:
            _fail(s, "vocab_chunk_size", self.vocab_chunk_size, "must be >= 1 or None")
        if not isinstance(self.group_size, int) or self.group_size < 2:
            _fail(s, "group_size", self.group_size,
                  "must be an int >= 2: advantages are relative to the group's mean (eq. 3), "
                  "so a group of one completion always has advantage 0 and nothing is learned")
        guard.check_settings(s, self.max_consecutive_nonfinite, self.nonfinite_window,
                             self.max_nonfinite_fraction)
        _finite(s, self, "beta", "clip_eps_low", "clip_eps_high", "bias_update_speed")
        _at_least(s, self, 0, "ref_update_every", "max_extra_draws")
        rows = self.group_size * self.prompts_per_step
        if rows % self.num_minibatches:
            _fail(s, "num_minibatches", self.num_minibatches,
                  f"must divide prompts_per_step * group_size = {rows}")
        if (rows // self.num_minibatches) % self.num_micro_batches:
            _fail(s, "num_micro_batches", self.num_micro_batches,
                  f"must divide the minibatch size {rows // self.num_minibatches}")
        if self.beta < 0:
            _fail(s, "beta", self.beta, "must be >= 0")
        for field, allowed in (("kl_estimator", grpo.KL_ESTIMATORS),
                               ("aggregation", grpo.AGGREGATIONS),
                               ("advantage_scale", grpo.ADVANTAGE_SCALES)):
            if getattr(self, field) not in allowed:
                _fail(s, field, getattr(self, field), f"must be one of {allowed}")
        for field in ("clip_eps_low", "clip_eps_high"):
            if not getattr(self, field) > 0:
                _fail(s, field, getattr(self, field), "must be > 0")
        if self.bias_update_speed is not None and self.bias_update_speed < 0:
            _fail(s, "bias_update_speed", self.bias_update_speed, "must be >= 0 or None")
        self._check_objective()

    def _check_objective(self) -> None:
        """The loss / advantage / KL-placement / entropy-bonus choices."""
        s = "grpo"
        for field, allowed in (("loss", objectives.LOSSES), ("advantage", advantages.ESTIMATORS),
                               ("kl_in", ("loss", "reward")), ("algorithm", ("grpo", "ppo"))):
            if getattr(self, field) not in allowed:
                _fail(s, field, getattr(self, field), f"must be one of {allowed}")
        if (self.advantage == "gae") != (self.algorithm == "ppo"):
            _fail(s, "advantage", self.advantage,
                  f"algorithm={self.algorithm!r} needs advantage='gae' exactly when it is "
                  "'ppo' (GAE needs the critic's values; PPO estimates with them)")
        _finite(s, self, "dual_clip_c", "entropy_coef", "discount", "gae_lambda",
                "clip_eps_value", "critic_learning_rate")
        self._check_rollout_correction()
        if self.routing_replay not in ("none", "r3"):
            _fail(s, "routing_replay", self.routing_replay, "must be one of ('none', 'r3')")
        if self.routing_replay == "r3" and self.packing:
            _fail(s, "routing_replay", self.routing_replay,
                  "needs packing=False (the record is in the unpacked [prompt ; completion] "
                  "layout)")
        if not 0 <= self.gae_lambda <= 1:
            _fail(s, "gae_lambda", self.gae_lambda, "must be in [0, 1]")
        for field in ("clip_eps_value", "critic_learning_rate"):
            if getattr(self, field) is not None and not getattr(self, field) > 0:
                _fail(s, field, getattr(self, field), "must be > 0 or None")
        if not self.dual_clip_c > 1:
            _fail(s, "dual_clip_c", self.dual_clip_c, "must be > 1")
        if not 0 < self.discount <= 1:
            _fail(s, "discount", self.discount, "must be in (0, 1]")
        if self.entropy_coef < 0:
            _fail(s, "entropy_coef", self.entropy_coef, "must be >= 0")
        if self.entropy_coef > 0 and not self.entropy_metric:
            _fail(s, "entropy_coef", self.entropy_coef,
                  "needs entropy_metric=True (the entropy is computed with the log-probs)")

    def _check_rollout_correction(self) -> None:
        s = "grpo"
        for field, allowed in (("old_logps_from", ("sampler", "trainer")),
                               ("rollout_is", objectives.IS_CORRECTIONS)):
            if getattr(self, field) not in allowed:
                _fail(s, field, getattr(self, field), f"must be one of {allowed}")
        if self.rollout_is != "none" and self.old_logps_from != "trainer":
            _fail(s, "rollout_is", self.rollout_is,
                  "needs old_logps_from='trainer' (the correction compares the trainer's "
                  "log-probs with the sampler's)")
        _finite(s, self, "rollout_is_cap")
        if not self.rollout_is_cap > 1:
            _fail(s, "rollout_is_cap", self.rollout_is_cap, "must be > 1")

    @property
    def loss_beta(self) -> float:
        """The KL weight in the loss: beta, or 0 when the KL is in the reward (kl_in)."""
        return self.beta if self.kl_in == "loss" else 0.0

    @property
    def batch_size(self) -> int:
        """Completions per step, prompts_per_step * G."""
        return self.prompts_per_step * self.group_size


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Prompts: a generated task (`r1jax.data.tasks`) with knobs, wrapped in a template.

    Training reads the task's "train" split, evaluation its disjoint "test" split. With
    `train_jsonl` set, prompts come from user files instead (evaluation reads `test_jsonl`,
    or the training file when none is given: then there is no held-out set), in
    `jsonl_format` "gsm8k" | "math" | "code" (`r1jax.data.tasks.jsonl`); malformed lines are an
    error naming file and line unless `jsonl_on_error` is "skip". A prompt longer than
    `max_prompt_len` is an error, or with `overlong` "truncate" keeps its last tokens.
    """

    task: str = "countdown"
    task_knobs: tuple[tuple[str, Any], ...] = config_utils.converted((), config_utils.sorted_pairs)
    template: str = "r1_zero"
    seed: int = 0
    max_prompt_len: int = 256
    bucket: int = 32
    train_jsonl: str | None = None
    test_jsonl: str | None = None
    jsonl_format: str = "math"
    jsonl_on_error: str = "raise"
    overlong: str = "error"

    def __post_init__(self):
        if self.overlong not in ("error", "truncate"):
            _fail("data", "overlong", self.overlong, "must be 'error' or 'truncate'")
        if self.jsonl_format not in ("gsm8k", "math", "code"):
            _fail("data", "jsonl_format", self.jsonl_format, "must be 'gsm8k', 'math' or 'code'")
        if self.jsonl_on_error not in ("raise", "skip"):
            _fail("data", "jsonl_on_error", self.jsonl_on_error, "must be 'raise' or 'skip'")
        if self.test_jsonl and not self.train_jsonl:
            _fail("data", "test_jsonl", self.test_jsonl, "needs train_jsonl as well")
        if self.task not in tasks.names():
            _fail("data", "task", self.task, f"must be one of {tasks.names()}")
        try:
            tasks.get(self.task, **dict(self.task_knobs))
        except (TypeError, ValueError) as e:
            _fail("data", "task_knobs", dict(self.task_knobs), str(e))
        if self.template not in templates.names():
            _fail("data", "template", self.template, f"must be one of {templates.names()}")
        _at_least("data", self, 1, "max_prompt_len", "bucket")


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Held-out evaluation, every `every` steps and at step 0 (0 turns it off).

    pass@1 is averaged over `num_samples` samples per question at `temperature` / `top_p`
    (default: the R1 paper's evaluation setup, Sec. 3, as in `evaluate.Settings`, whose
    defaults these are); greedy accuracy adds one temperature-0 sample.
    `num_logged_samples` completions are written to samples.jsonl at each eval step.
    max_new_tokens None uses the training budget.
    """

    every: int = 50
    num_prompts: int = 64
    num_samples: int = evaluate.Settings.num_samples
    temperature: float = evaluate.Settings.temperature
    top_p: float | None = evaluate.Settings.top_p
    greedy: bool = evaluate.Settings.greedy
    max_new_tokens: int | None = None
    num_logged_samples: int = 4

    def __post_init__(self):
        _at_least("eval", self, 0, "every", "num_logged_samples")
        _at_least("eval", self, 1, "num_prompts", "num_samples")
        _finite("eval", self, "temperature", "top_p")
        if not self.temperature > 0:
            _fail("eval", "temperature", self.temperature, "must be > 0 (greedy is separate)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            _fail("eval", "top_p", self.top_p, "must be in (0, 1] or None")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            _fail("eval", "max_new_tokens", self.max_new_tokens, "must be >= 1 or None")


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """The whole GRPO run.

    base_dir: the base model (`r1jax.train.base.load_model`: an r1jax base or an HF
    checkpoint directory); toy_base_dir: the toy presets' own base location: only when
    base_dir is this directory (and holds no model yet) do the entry points pretrain the toy
    base into it (None: base_dir must already hold a model); seed: every random stream derives
    from it; total_steps: GRPO steps; mesh: ((axis, size), ...) over data/fsdp/expert/tensor
    (-1 takes the remaining devices); num_slices: TPU slices (or GPU hosts) the `data` axis
    spans (`trainer.make_mesh`: a hybrid mesh when > 1); rollout_mesh: the sampler's own mesh
    over the same devices (e.g. tensor=8 while training with fsdp=8: `r1jax.sampling.layout`;
    the params are resharded to it once per step, `perf/reshard_s`); every size 1 (the
    default): sample on the training mesh; compilation_cache_dir: JAX's
    persistent compilation cache directory, so a resumed run skips recompiling ("auto", the
    default: JAX_COMPILATION_CACHE_DIR if set, else <workdir>/compilation_cache,
    `trainer.compilation_cache_dir`; None: off);
    model_overrides: ModelConfig fields replaced after
    loading (e.g. remat_policy, dtype); rewards: the weighted reward sum (R1-Zero: accuracy +
    format, Sec. 2.2.2); reward_workers: processes for pooled rewards; checkpoint_every,
    keep_checkpoints, async_checkpoints: orbax checkpointing (metrics are logged every step);
    peak_flops: the accelerator's peak FLOP/s for
    the MFU estimate (None: measured in the run's own process, the best matmul FLOP/s of the
    model's compute dtype over several sizes and repeats, `r1jax.peak_flops`); progress_bar, tensorboard, plots:
    outputs.
    """

    base_dir: str
    total_steps: int
    toy_base_dir: str | None = None
    seed: int = 0
    optim: state_lib.OptimConfig = state_lib.OptimConfig(learning_rate=3e-6)
    grpo: GRPOConfig = GRPOConfig()
    sampling: sampler.SamplingOptions = sampler.SamplingOptions()
    data: DataConfig = DataConfig()
    eval: EvalConfig = EvalConfig()
    rewards: registry.Spec = registry.Spec.from_dict({"countdown": 1.0, "format_strict": 1.0})
    reward_workers: int = 2
    mesh: tuple[tuple[str, int], ...] = config_utils.mesh_field(sharding.MESH_AXES)
    num_slices: int = 1
    rollout_mesh: tuple[tuple[str, int], ...] = config_utils.mesh_field(sharding.MESH_AXES, ())
    compilation_cache_dir: str | None = "auto"
    model_overrides: tuple[tuple[str, Any], ...] = config_utils.overrides_field(
        model_config_lib.ModelConfig)
    checkpoint_every: int = 50
    keep_checkpoints: int = 3
    async_checkpoints: bool = True
    peak_flops: float | None = None
    progress_bar: bool = True
    tensorboard: bool = True
    plots: bool = True

    def __post_init__(self):
        s = "config"
        if not isinstance(self.base_dir, str) or not self.base_dir:
            _fail(s, "base_dir", self.base_dir, "must name a base-model directory")
        _at_least(s, self, 1, "total_steps", "checkpoint_every", "keep_checkpoints",
                  "reward_workers", "num_slices")
        for field in ("mesh", "rollout_mesh"):
            unknown = sorted({axis for axis, _ in getattr(self, field)} - set(sharding.MESH_AXES))
            if unknown:
                _fail(s, field, dict(getattr(self, field)),
                      f"unknown axes {unknown}; use {sharding.MESH_AXES}")
        if not self.sampling.temperature > 0:  # greedy sampling has no policy log-probs
            _fail("sampling", "temperature", self.sampling.temperature,
                  "must be > 0 (the policy's log-probs are taken at this temperature)")
        _finite(s, self, "peak_flops")
        if self.peak_flops is not None and not self.peak_flops > 0:
            _fail(s, "peak_flops", self.peak_flops, "must be > 0 or None")

    @property
    def updates_per_step(self) -> int:
        """Optimizer updates per GRPO step: mu * num_minibatches."""
        return self.grpo.num_iterations * self.grpo.num_minibatches

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True, default=str)


# ---------------------------------------------------------------------------------------------
# ConfigDict -> ExperimentConfig
# ---------------------------------------------------------------------------------------------

def config_dict(**values) -> ml_collections.ConfigDict:
    """The ConfigDict of a GRPO run with every field of `ExperimentConfig` declared, so that
    every one is settable on the command line (`configs/r1_zero.py` presets start here).

    Fields whose default is None are typed placeholders (`--config.sampling.top_k=40`);
    `mesh` lists every mesh axis (size 1 unless set: the same mesh as leaving it out);
    `model_overrides` every `ModelConfig` field, unset; `rewards` every registered reward,
    unset (`--config.rewards.math=1.0` adds one, a weight of 0 leaves one out;
    `config_utils.assign` replaces the set); `reward_options` every option of every registered
    reward that `reward_option_types` finds, unset (`--config.reward_options.overlong.
    max_length=1024`); `reward_routes` {task: [name, ...]} (see `registry.Spec`) starts empty.

    Args:
      values: top-level fields to set (sections as dicts of their fields).
    Returns:
      A ConfigDict for `from_config_dict`.
    """
    # The dataclass' default, written there only.
    default_rewards = _FIELDS["rewards"].default.weights
    rewards = dict(values.pop("rewards", None) or default_rewards)
    c = config_utils.from_dataclass(ExperimentConfig, **values)
    # Rewards registered later (the R1 pipeline's reward model) are declared by naming them.
    c.rewards = {name: config_dict_lib.placeholder(float)
                 for name in sorted(set(registry.names()) | set(rewards))}
    config_utils.assign(c.rewards, rewards)
    c.reward_options = {name: {option: config_dict_lib.placeholder(kind)
                               for option, kind in reward_option_types(name).items()}
                        for name in registry.names()}
    c.reward_routes = {}
    return c


#: ExperimentConfig's fields by name (`config_dict` reads the rewards default there).
_FIELDS = {f.name: f for f in dataclasses.fields(ExperimentConfig)}

#: Types of reward options whose default is None (nothing to infer the type from).
_UNTYPED_OPTIONS = {"max_length": int, "cache_length": int}


def reward_option_types(name: str) -> dict[str, type]:
    """{option: type} of the registered reward `name`: the keyword arguments of its scorer
    that are not task fields (`timeout_s`, `answer_in_think`, `max_length`, ...), typed by
    their defaults; empty for rewards without a plain scorer (e.g. a learned one)."""
    fn = registry.get(name)
    target = getattr(fn, "score", None) or getattr(fn, "batch", None)
    if target is None:
        return {}
    skip = {"completion", *fn.fields, *fn.optional}
    types = {}
    for param in inspect.signature(target).parameters.values():
        if param.name in skip or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        if param.default is param.empty:
            continue
        kind = _UNTYPED_OPTIONS.get(param.name) if param.default is None else type(param.default)
        if kind in (bool, int, float, str):
            types[param.name] = kind
    return types


def from_config_dict(config, extra_rewards: Sequence = ()) -> ExperimentConfig:
    """Validates a ConfigDict (or plain nested dict) and freezes it into an ExperimentConfig
    (`config_utils.freeze`: unset fields keep the dataclasses' defaults).

    The sections are `grpo`, `sampling`, `data`, `eval`, `optim` (an `OptimConfig`) and
    `rewards` ({name: weight}; entries left None or set to 0 are not used), with optional
    `reward_options` {name: {option: value}} (options left None are dropped) and
    `reward_routes` {task: [name, ...]}, see `registry.Spec.routes`; `mesh` and
    `model_overrides` are {name: value} dicts (entries left None are dropped: `config_dict`
    declares every possible one). optim.total_steps defaults to the run's number of optimizer
    updates (total_steps * mu * num_minibatches), which a cosine needs. `extra_rewards` are
    reward objects the caller passes in (`registry.Spec.extra`) instead of registering them.
    """
    values = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    rewards = values.pop("rewards", None)
    reward_options = values.pop("reward_options", None)
    reward_routes = values.pop("reward_routes", None)
    built = {"grpo": config_utils.freeze(GRPOConfig, values.pop("grpo", None), "grpo")}
    optim = dict(values.pop("optim", None) or {})
    if optim.get("total_steps") is None and "total_steps" in values:
        optim["total_steps"] = int(values["total_steps"]) * (
            built["grpo"].num_iterations * built["grpo"].num_minibatches)
    built["optim"] = config_utils.freeze(state_lib.OptimConfig, optim, "optim")
    if rewards is not None:
        weights = {k: w for k, w in config_utils.set_entries(rewards).items() if w != 0}
        options = {k: config_utils.set_entries(v) for k, v in (reward_options or {}).items()}
        built["rewards"] = registry.Spec.from_dict(
            weights, {k: v for k, v in options.items() if v}, reward_routes, extra_rewards)
    return config_utils.freeze(ExperimentConfig, values, "config", **built)
