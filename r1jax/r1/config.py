"""The R1 pipeline's configuration (configs/r1.py): a frozen dataclass tree, frozen once by
`from_config_dict` at the entry point (`pipeline.run`, `distill.run`).

Every section is a dataclass validated by `config_utils.freeze`; defaults are written here
(or in the lower layer a field comes from: the evaluation's temperature and top-p are
`evaluate.Settings`', the rejection sampler's are `rejection.RejectionConfig`'s), so the
preset lists only what it changes. The GRPO sections (`reasoning_rl`, `all_scenario`,
`r1_zero`, `distill.rl`) are `GRPOSection`s: each is frozen into its `rl.config.
ExperimentConfig` here, so a bad value fails at the pipeline's start naming the stage and the
field; what only the running stage knows (its start model, the learned reward model) is
filled in by `GRPOSection.experiment` when it starts.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import ml_collections

from r1jax import config_utils
from r1jax.data.tasks import worded
from r1jax.evals import evaluate
from r1jax.models import config as model_config_lib
from r1jax.r1 import judge, non_reasoning, rejection
from r1jax.rl import config as rl_config
from r1jax.train import pretrain, reward, reward_model, sft
from r1jax.train import state as state_lib

_Settings = evaluate.Settings
_Rejection = rejection.RejectionConfig


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """The held-out evaluation after every stage (the report's table): the first
    `num_prompts` test questions of the generated `task` (`task_knobs`), or of the user's
    `data.eval_jsonl`; `num_samples` samples each at `temperature` / `top_p` (the paper's
    0.6 / 0.95, `evaluate.Settings`) of at most `max_new_tokens` tokens; prompts of at most
    `max_prompt_len` tokens."""

    num_prompts: int = 64
    num_samples: int = _Settings.num_samples
    temperature: float = _Settings.temperature
    top_p: float | None = _Settings.top_p
    max_new_tokens: int = _Settings.max_new_tokens
    task: str = "word_problems"
    task_knobs: tuple[tuple[str, Any], ...] = config_utils.converted((), config_utils.sorted_pairs)
    max_prompt_len: int = 512

    def __post_init__(self):
        self.settings(greedy=False)  # validates the sampling fields (one set of rules)
        if self.num_prompts < 1 or self.max_prompt_len < 1:
            raise ValueError(f"eval: num_prompts={self.num_prompts}, max_prompt_len="
                             f"{self.max_prompt_len}: both must be >= 1")

    def settings(self, greedy: bool) -> evaluate.Settings:
        """The `evaluate.Settings` of this evaluation (all prompts in one batch)."""
        return evaluate.Settings(num_samples=self.num_samples, temperature=self.temperature,
                                 top_p=self.top_p, greedy=greedy,
                                 max_new_tokens=self.max_new_tokens, batch_size=self.num_prompts)


@dataclasses.dataclass(frozen=True)
class SFTStage:
    """An SFT stage (`common.sft_stage`): the trainer's `sft` and `optim` sections."""

    sft: sft.SFTConfig = sft.SFTConfig()
    optim: state_lib.OptimConfig = state_lib.OptimConfig()


@dataclasses.dataclass(frozen=True)
class ColdStartConfig(SFTStage):
    """Stage 1: SFT on `num_examples` long, single-language CoTs (generated from the
    evaluation task's worked solutions unless `data.cold_start_jsonl` is set)."""

    num_examples: int = 2000


@dataclasses.dataclass(frozen=True)
class RejectionStage:
    """Stage 3: `num_samples` completions of each of the first `num_prompts` reasoning-RL
    training prompts (`rejection.RejectionConfig`, whose defaults these are: the CoT filters
    and the judge route too), plus `num_non_reasoning` non-reasoning examples, given a brief
    CoT written by the stage-2 model when `cot_non_reasoning` (`non_reasoning.CoTConfig`
    `cot`); `judge`: how the judge samples its verdicts where samples take the judge route
    (`judge_tasks`, `judge_after_rule`); the judge is the stage-2 model (or the base model:
    `judge_from` "base") fine-tuned (`judge_sft`) on `judge_train` synthetic grading examples
    (`r1.judge_data`; 0: the stage-2 model as it is), its agreement with the truth measured on `judge_eval` held-out
    items (0: not measured); `worded_share`: the share of the prompts whose reference answer
    is rewritten in number words with a unit (`data.tasks.worded`: task `WORDED_TASK`, which
    no rule reads, so it takes the judge route and its integer answer stays the ground truth
    the report counts against); `seed` shuffles the mixture too."""

    num_prompts: int = 512
    num_non_reasoning: int = 300
    num_samples: int = _Rejection.num_samples
    batch_size: int = _Rejection.batch_size
    max_new_tokens: int = _Rejection.max_new_tokens
    temperature: float = _Rejection.temperature
    top_p: float | None = _Rejection.top_p
    max_prompt_len: int = _Rejection.max_prompt_len
    min_language: float = _Rejection.min_language
    max_per_prompt: int | None = _Rejection.max_per_prompt
    seed: int = _Rejection.seed
    max_paragraph_chars: int | None = _Rejection.max_paragraph_chars
    drop_code_blocks: bool = _Rejection.drop_code_blocks
    judge_tasks: tuple[str, ...] = _Rejection.judge_tasks
    judge_after_rule: bool = _Rejection.judge_after_rule
    judge_examples: int = _Rejection.judge_examples
    judge: judge.JudgeSettings = judge.JudgeSettings(max_prompt_len=512)
    judge_train: int = 0
    judge_eval: int = 200
    judge_sft: SFTStage = SFTStage()
    cot_non_reasoning: bool = True
    cot: non_reasoning.CoTConfig = non_reasoning.CoTConfig()
    worded_share: float = 0.0
    judge_from: str = "policy"

    def __post_init__(self):
        if not 0.0 <= self.worded_share <= 1.0:
            raise ValueError(f"rejection.worded_share={self.worded_share!r}: must be in [0, 1]")
        if self.judge_from not in ("policy", "base"):
            raise ValueError(f"rejection.judge_from={self.judge_from!r}: must be 'policy' or "
                             "'base'")

    def sampler(self, accuracy_reward: str) -> rejection.RejectionConfig:
        """The stage's `RejectionConfig` (reasoning samples only: the non-reasoning data is
        mixed in by the pipeline), checking answers with `accuracy_reward`; the worded task
        joins `judge_tasks` when `worded_share` > 0."""
        fields = {f.name for f in dataclasses.fields(rejection.RejectionConfig)}
        values = {k: v for k, v in dataclasses.asdict(self).items() if k in fields}
        if self.worded_share and worded.WORDED_TASK not in self.judge_tasks:
            values["judge_tasks"] = (*self.judge_tasks, worded.WORDED_TASK)
        return rejection.RejectionConfig(**values, accuracy_reward=accuracy_reward,
                                         non_reasoning_fraction=0.0)


@dataclasses.dataclass(frozen=True)
class RewardModelConfig:
    """The preference reward model of stage 4: `init` "policy" (the SFT policy's trunk) or
    "scratch" (the policy's architecture with the `model` overrides); `num_train` /
    `num_test` preference pairs; the trainer's `train` and `optim` sections."""

    init: str = "policy"
    model: tuple[tuple[str, Any], ...] = config_utils.overrides_field(model_config_lib.ModelConfig)
    num_train: int = 20000
    num_test: int = 500
    train: reward.RMConfig = reward.RMConfig()
    optim: state_lib.OptimConfig = state_lib.OptimConfig()

    def __post_init__(self):
        if self.init not in ("policy", "scratch"):
            raise ValueError(f"reward_model.init={self.init!r}: must be 'policy' or 'scratch'")


@dataclasses.dataclass(frozen=True)
class UserData:
    """The user's JSONL files for the stages (schemas in `r1jax.r1.data`); unset: the toy
    data. The GRPO stages read theirs from their own `data` sections."""

    cold_start_jsonl: str | None = None
    cold_start_format: str = "records"
    non_reasoning_jsonl: str | None = None
    preference_jsonl: str | None = None
    preference_test_jsonl: str | None = None
    eval_jsonl: str | None = None
    eval_jsonl_format: str = "gsm8k"


def _pretrain(section) -> pretrain.PretrainConfig:
    return pretrain.PretrainConfig.from_config_dict(section)


@dataclasses.dataclass(frozen=True)
class GRPOSection:
    """A GRPO stage: every field of configs/r1_zero.py, frozen and checked with the R1 config.

    Three of a stage's values are its inputs, set by `experiment` when it starts: `base_dir`
    (the previous stage's model), `seed` (the pipeline's) and, where the section leaves
    `total_steps` 0, the step count (r1_zero: 0 leaves the stage out; distill.rl: as many
    steps as the SFT's FLOPs buy). The rewards the stage passes in (`provided`: all-scenario's
    learned reward model) exist only then.

    Attributes:
      name: the section's path in errors (`all_scenario`, `distill.rl`).
      values: the section as the preset and the command line left it.
      run: the `rl.config.ExperimentConfig` of `values`, as the stage would start now: every
        section and field checked (`rl.config.from_config_dict`: the one recursive freeze),
        with the section's own `base_dir` and `seed`, a `total_steps` of 0 checked as 1 (a
        schedule whose length follows it as warmup + 1 updates, the shortest valid one), and
        the `provided` rewards left out of the spec (their weights, options and routes are
        checked when the stage passes them in). Read its data, GRPO and sampling sections;
        the stage's own inputs come from `experiment`.
      provided: names of the rewards the stage passes in.
    """

    name: str
    values: ml_collections.FrozenConfigDict
    run: rl_config.ExperimentConfig = dataclasses.field(compare=False, repr=False)
    provided: tuple[str, ...] = ()

    @property
    def total_steps(self) -> int:
        """The section's step count (0: set by the stage, see the class docstring)."""
        return self.values.total_steps

    @classmethod
    def build(cls, name: str, values, provided: tuple[str, ...] = ()) -> GRPOSection:
        """Freezes and checks a section (a ConfigDict or nested dict) or returns one as is.

        Raises:
          ValueError: "<name>: <the field and what is wrong>".
        """
        if isinstance(values, GRPOSection):
            return values
        values = ml_collections.FrozenConfigDict(
            values.to_dict() if hasattr(values, "to_dict") else dict(values))
        probe = _editable(values)
        if not probe.total_steps:  # set by the stage: checked as the shortest valid run
            probe.total_steps = 1
            if probe.optim.total_steps is None:  # the schedule's length follows total_steps
                probe.optim.total_steps = probe.optim.warmup_steps + 1
        # None drops a weight, and a route may only name weighted rewards (registry.Spec).
        config_utils.assign(probe.rewards, {k: w for k, w in probe.rewards.items()
                                            if k not in provided})
        probe.reward_routes = {task: [r for r in routed if r not in provided]
                               for task, routed in probe.reward_routes.items()}
        try:
            run = rl_config.from_config_dict(probe)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        return cls(name, values, run, tuple(provided))

    def experiment(self, base_dir: str, seed: int, extra_rewards: Sequence = (),
                   **changes) -> rl_config.ExperimentConfig:
        """The stage's `rl.config.ExperimentConfig`: the section from `base_dir` with `seed`,
        top-level fields replaced by `changes` (e.g. total_steps), the `provided` rewards
        passed as `extra_rewards` (`registry.Spec.extra`)."""
        values = _editable(self.values)
        values.update(dict(changes, base_dir=str(base_dir), seed=seed))
        try:
            return rl_config.from_config_dict(values, extra_rewards)
        except ValueError as e:
            raise ValueError(f"{self.name}: {e}") from None


def _editable(values: ml_collections.FrozenConfigDict) -> ml_collections.ConfigDict:
    """A fresh mutable copy (`as_configdict` hands out the same object every time, so an
    edit to it would change what later calls see)."""
    return ml_collections.ConfigDict(values.to_dict())


def _grpo_section(name: str, provided: tuple[str, ...] = ()):
    """The `freeze` converter of GRPO section `name` (None stays None)."""
    return config_utils.converted(None, functools.partial(GRPOSection.build, name,
                                                          provided=provided))


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """Distillation (`r1.distill`): the dense student's base (`base_dir`, pretrained by
    `pretrain` into `toy_base_dir`), its SFT on the stage-3 data and its GRPO section `rl`
    (total_steps 0: as many steps as the SFT's estimated FLOPs buy)."""

    base_dir: str
    pretrain: pretrain.PretrainConfig | None = config_utils.converted(None, _pretrain)
    rl: GRPOSection | None = _grpo_section("distill.rl")
    toy_base_dir: str | None = None
    sft: SFTStage = SFTStage()

    def __post_init__(self):
        if self.rl is None:
            raise ValueError("distill.rl: the GRPO section is missing")


@dataclasses.dataclass(frozen=True)
class R1Config:
    """The whole pipeline: base model (`base_dir`; the toy base pretrained by `pretrain` into
    `toy_base_dir` when that is where it is missing), one section per stage, the held-out
    evaluation, the user's data, distillation; `seed` drives every stage."""

    base_dir: str
    pretrain: pretrain.PretrainConfig | None = config_utils.converted(None, _pretrain)
    reasoning_rl: GRPOSection | None = _grpo_section("reasoning_rl")
    # The learned reward model is trained by the stage, before its GRPO run; the judge is
    # stage 3's.
    all_scenario: GRPOSection | None = _grpo_section("all_scenario",
                                                     (reward_model.KIND, judge.KIND))
    r1_zero: GRPOSection | None = _grpo_section("r1_zero")
    distill: DistillConfig | None = None
    toy_base_dir: str | None = None
    seed: int = 0
    eval: EvalConfig = EvalConfig()
    cold_start: ColdStartConfig = ColdStartConfig()
    rejection: RejectionStage = RejectionStage()
    sft: SFTStage = SFTStage()
    reward_model: RewardModelConfig = RewardModelConfig()
    data: UserData = UserData()

    def __post_init__(self):
        for name in ("reasoning_rl", "all_scenario"):
            if getattr(self, name) is None:
                raise ValueError(f"config.{name}: the GRPO section is missing")

    def runs_r1_zero(self) -> bool:
        """Whether the R1-Zero baseline stage runs (a section with total_steps > 0)."""
        return self.r1_zero is not None and self.r1_zero.total_steps > 0


def from_config_dict(config) -> R1Config:
    """The frozen `R1Config` of configs/r1.py's ConfigDict (an `R1Config` is returned as
    is). Errors name the field (`cold_start.sft.steps`, `rejection.top_p`)."""
    return config_utils.freeze(R1Config, config, "config")
