"""DeepSeek-R1: cold start -> reasoning RL -> rejection sampling + SFT -> all-scenario RL
(arXiv:2501.12948 Sec. 2.3), and distillation into a small dense student (Sec. 2.4).

  python experiments/r1.py                                   # tiny: every stage on one CPU
  python experiments/r1.py --config=configs/r1.py:tiny --workdir=runs/r1_tiny --stage=sft
  python experiments/r1.py --config.reasoning_rl.total_steps=60
  python experiments/distill.py --config=configs/r1.py:tiny --workdir=runs/r1_tiny

Presets:
  tiny   bilingual (English/Chinese) word problems on a toy base model pretrained on a corpus
         that switches language between question and worked solution, so that the language-
         consistency reward has mixing to correct. Budget: about 45 minutes on 2 CPU cores.
  smoke  seconds per stage (for the tests; the base model is pretrained for 4 steps).

Every section is a dataclass of `r1jax.r1.config` (declared whole by `from_dataclass`, so the
command line can set any field); a preset lists only what it changes. Each GRPO section (`reasoning_rl`, `all_scenario`, `r1_zero`,
`distill.rl`) has every field of configs/r1_zero.py, whose presets it starts from, and its
`base_dir` is set by the pipeline (the previous stage's model). `r1_zero.total_steps = 0`
leaves out the R1-Zero baseline row.
"""

import importlib.util
import pathlib

import ml_collections

from r1jax import config_utils
from r1jax.r1 import config as r1_config


def _load(name: str, preset: str) -> ml_collections.ConfigDict:
    """A preset of a sibling config file (its field list stays in one place)."""
    path = pathlib.Path(__file__).with_name(name)
    spec = importlib.util.spec_from_file_location(f"_r1_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(preset)


def _r1_zero(preset: str) -> ml_collections.ConfigDict:
    """A GRPO section from configs/r1_zero.py."""
    c = _load("r1_zero.py", preset)
    c.base_dir = "set-by-the-pipeline"
    return c


_WORD_PROBLEMS = {"language": "mixed"}
_REASONING_REWARDS = {"numeric": 1.0, "format_strict": 0.5, "language": 0.5}
# Stage 4 routes rewards by the example's task: rules where a rule reads the answer, the
# learned reward model on instructions, the stage-3 judge on answers written in words.
_ROUTES = {"word_problems": ["numeric", "format_strict", "language"],
           "preference": ["reward_model", "format_strict"],
           "word_problems_worded": ["judge", "format_strict", "language"]}
_ALL_SCENARIO_KNOBS = dict(_WORD_PROBLEMS, general_fraction=0.5, worded_fraction=0.5)
_ALL_SCENARIO_REWARDS = dict(_REASONING_REWARDS, reward_model=1.0, judge=1.0)


def _grpo(preset: str, *, task: str = "word_problems", knobs=None, rewards=None,
          steps: int | None = None) -> ml_collections.ConfigDict:
    c = _r1_zero(preset)
    c.data.update(task=task, max_prompt_len=512, bucket=64)
    c.data.task_knobs = dict(knobs or _WORD_PROBLEMS)  # update() would merge the old knobs
    # declare: the reward model is registered by the pipeline, after the config is built.
    config_utils.assign(c.rewards, dict(rewards or _REASONING_REWARDS), declare=True)
    c.reward_routes = {}
    if steps is not None:
        c.total_steps = steps
    return c


def _pretrain(preset: str) -> ml_collections.ConfigDict:
    """The toy base of configs/pretrain_base.py, on word problems whose solution language is
    drawn independently of the question's (`word_problems` language="mixed")."""
    c = _load("pretrain_base.py", preset)
    c.tasks = ("word_problems",)
    c.task_knobs = {"word_problems": dict(_WORD_PROBLEMS)}
    c.instruction_fraction = 0.3
    c.vocab_size = 1024  # room for the Chinese characters
    if preset == "tiny":  # the cold start teaches the worked solutions: a shorter pretraining
        c.sft.update(steps=2500)
    if preset == "smoke":
        c.num_documents = c.tokenizer_documents = 200
        c.sft.update(steps=2, log_every=1, checkpoint_every=2)
    return c


def _sft(steps: int, batch_size: int, seq_len: int, lr: float, every: int) -> dict:
    """An SFT stage's `sft` and `optim` sections: a cosine from `lr` over `steps`."""
    return dict(sft=dict(steps=steps, batch_size=batch_size, seq_len=seq_len,
                         log_every=max(1, every // 5), checkpoint_every=every),
                optim=_optim(lr, steps))


def _optim(lr: float, steps: int, **changes) -> dict:
    """An `OptimConfig` section: a cosine from `lr` over `steps`, no weight decay."""
    values = dict(learning_rate=lr, warmup_steps=min(10, steps // 10), schedule="cosine",
                  total_steps=steps, end_lr_factor=0.1, weight_decay=0.0)
    return dict(values, **changes)


def tiny() -> ml_collections.ConfigDict:
    c = config_utils.from_dataclass(
        r1_config.R1Config, base_dir="runs/base_r1_tiny/base",
        # Held-out evaluation after every stage (the table): mixed-language word problems.
        eval=dict(max_new_tokens=160, task_knobs=dict(_WORD_PROBLEMS)),
        # 1. Cold start: long, single-language CoTs from the worked solutions.
        cold_start=dict(num_examples=2000, **_sft(300, 8, 384, 1e-3, 100)))
    c.toy_base_dir = c.base_dir  # the toy base is pretrained here (only here) when missing
    c.pretrain = _pretrain("tiny")
    # 2. Reasoning RL: accuracy + format + language consistency (R1 Sec. 2.3.2).
    c.reasoning_rl = _grpo("tiny", steps=60)
    c.reasoning_rl.sampling.update(max_new_tokens=160)
    c.reasoning_rl.optim.update(learning_rate=5e-5)
    c.reasoning_rl.eval.update(every=30, num_prompts=32, max_new_tokens=160)
    # 3. Rejection sampling from the stage-2 model, mixed with non-reasoning data (Sec. 2.3.3).
    c.rejection.update(batch_size=32, max_new_tokens=160, max_prompt_len=512, max_per_prompt=2)
    # The judge (issue 26): the base model (R1's judge, DeepSeek-V3, is not the RL policy
    # either) fine-tuned on 6,400 synthetic grading examples (one side in number words / with
    # units, r1.judge_data; a grading prompt and its reply fill one 384-token row: 1,600 steps
    # of 8 see each twice), measured on 200 held-out items. Agreement measured so far: 79.5%
    # after 800 steps, 86.5% and 91.0% continued from it to 1,200 and 1,600 steps (each
    # continuation a new cosine); this straight 1,600-step run has not been measured yet.
    # Half of the prompts get a worded reference answer, which no rule reads: the judge
    # decides those (its worked replies are at most 91 tokens), the rule the others.
    c.rejection.update(judge_train=6400, judge_eval=200, worded_share=0.5, judge_from="base",
                       judge_sft=_sft(1600, 8, 384, 1e-3, 400))
    c.rejection.judge.update(batch_size=32, max_new_tokens=96)
    c.rejection.cot.sampling.update(batch_size=32, max_new_tokens=48)
    # 4. SFT of the *base* model on the stage-3 data.
    c.sft.update(_sft(400, 8, 384, 1e-3, 100))
    # 5. All-scenario RL: rule rewards on word problems, the reward model on instructions,
    # the stage-3 judge on word problems with worded reference answers (_ROUTES).
    # The reward model starts from the stage-4 SFT policy (as DeepSeek-V3's do): 94.0% held-out
    # pairwise accuracy after 1,000 steps with 50 warmup steps (89.4% with 10), where a 2-layer
    # MoE trunk from scratch plateaued at 86.4% with its wrong-answer pairs at chance. max_len
    # 96: no preference pair is cut with the policy's tokenizer (64 cut 18% of the rows).
    # `model`: ModelConfig fields of a "scratch" trunk (every field declared, unset ones keep
    # the policy's).
    c.reward_model.train.update(steps=1000, max_len=96, eval_every=250, log_every=25,
                                checkpoint_every=250)
    c.reward_model.optim.update(_optim(1e-3, 1000, warmup_steps=50, weight_decay=0.01))
    c.all_scenario = _grpo("tiny", task="mixture", knobs=_ALL_SCENARIO_KNOBS,
                           rewards=_ALL_SCENARIO_REWARDS, steps=30)
    c.all_scenario.reward_routes = {k: list(v) for k, v in _ROUTES.items()}
    c.all_scenario.sampling.update(max_new_tokens=160)
    c.all_scenario.optim.update(learning_rate=2e-5)
    c.all_scenario.eval.update(every=15, num_prompts=32, max_new_tokens=160)
    # Baseline: R1-Zero from the same base with the same steps as stage 2 (accuracy + format).
    c.r1_zero = _grpo("tiny", rewards={"numeric": 1.0, "format_strict": 0.5,
                                       "format_lenient": 0.5}, steps=60)
    c.r1_zero.sampling.update(max_new_tokens=160)
    c.r1_zero.eval.update(every=30, num_prompts=32, max_new_tokens=160)
    c.distill = _distill("tiny")
    # `data`: your own data for the stages (JSONL; schemas in r1jax/r1/data.py), unset: the toy
    # data. The GRPO stages read theirs from their sections: reasoning_rl.data.train_jsonl, ...
    return c


def _distill(preset: str) -> ml_collections.ConfigDict:
    """A Qwen2-style dense student (qwen2_5_0_5b shrunk), pretrained on the base corpus, then
    SFT on the stage-3 data vs GRPO (R1-Zero style) for the same estimated FLOPs."""
    c = config_utils.from_dataclass(r1_config.DistillConfig, base_dir="runs/base_r1_tiny/student",
                                    sft=_sft(300, 8, 384, 1e-3, 100))
    c.toy_base_dir = c.base_dir
    c.pretrain = _pretrain(preset)
    c.pretrain.model_preset = "qwen2_5_0_5b"
    config_utils.assign(c.pretrain.model, {
        "hidden_size": 128, "num_hidden_layers": 2, "intermediate_size": 256,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
        "max_position_embeddings": 1024, "dtype": "float32", "param_dtype": "float32"})
    c.rl = _grpo(preset, rewards={"numeric": 1.0, "format_strict": 0.5, "format_lenient": 0.5})
    c.rl.total_steps = 0  # 0: as many steps as the SFT's estimated FLOPs buy
    c.rl.sampling.update(max_new_tokens=160 if preset == "tiny" else 12)
    c.rl.eval.update(every=10_000)
    if preset == "smoke":
        c.pretrain.model.update(hidden_size=32, intermediate_size=64, num_attention_heads=2,
                                num_key_value_heads=1, head_dim=16)
        # 2 x 128 tokens per step: the SFT's estimated FLOPs buy the RL student 2 steps (not 9).
        c.sft.update(_sft(2, 2, 128, 1e-3, 2))
        c.rl.mesh.update(data=1)  # merged into the GRPO section's {fsdp: -1}
        c.rl.plots = False
        c.rl.eval.update(greedy=False)  # one sampler fewer to compile
    return c


def smoke() -> ml_collections.ConfigDict:
    """Seconds per stage: 2-step SFTs and RMs, 1-step GRPO, 2 prompts, 12 new tokens."""
    c = tiny()
    c.base_dir = "runs/base_r1_smoke/base"
    c.toy_base_dir = c.base_dir
    c.pretrain = _pretrain("smoke")
    c.eval.update(num_prompts=2, num_samples=2, max_new_tokens=12)
    c.cold_start.update(dict(num_examples=16, **_sft(2, 4, 256, 1e-3, 2)))
    for name in ("reasoning_rl", "all_scenario", "r1_zero"):
        section = _grpo("smoke", **_SMOKE_GRPO[name])
        section.total_steps = 1 if name != "r1_zero" else 0
        section.grpo.update(ref_update_every=0)
        section.eval.update(every=2, num_prompts=2, num_samples=2, max_new_tokens=12,
                            greedy=False)
        section.plots = False  # seconds of matplotlib per stage
        c[name] = section
    c.all_scenario.reward_routes = {k: list(v) for k, v in _ROUTES.items()}
    c.r1_zero.total_steps = 0  # the baseline row is the reasoning_rl stage's code path
    c.rejection.update(num_prompts=2, num_non_reasoning=8, num_samples=2, batch_size=2,
                       max_new_tokens=12)
    # The judge route and the CoT writer on the stage-2 model itself (no judge SFT): one
    # compiled sampler shape for both (batch 2, 8 new tokens, prompts padded to 512).
    # worded_share 0.25: of the 2 prompts, the first gets a worded reference (judge route),
    # the second keeps its number (rule route).
    c.rejection.update(judge_train=0, judge_eval=4, judge_after_rule=True, worded_share=0.25)
    c.rejection.judge.update(batch_size=2, max_new_tokens=8)
    c.rejection.cot.sampling.update(batch_size=2, max_new_tokens=8)
    c.sft.update(_sft(2, 4, 256, 1e-3, 2))
    c.reward_model.update(num_train=16, num_test=8)
    c.reward_model.train.update(steps=2, batch_size=4, max_len=32, eval_every=2, log_every=1,
                                checkpoint_every=2)
    c.reward_model.optim.update(_optim(1e-3, 2, weight_decay=0.01))
    c.distill = _distill("smoke")
    c.distill.base_dir = "runs/base_r1_smoke/student"
    c.distill.toy_base_dir = c.distill.base_dir
    return c


_SMOKE_GRPO = {
    "reasoning_rl": {},
    "all_scenario": {"task": "mixture", "knobs": _ALL_SCENARIO_KNOBS,
                     "rewards": _ALL_SCENARIO_REWARDS},
    "r1_zero": {"rewards": {"numeric": 1.0, "format_strict": 0.5, "format_lenient": 0.5}},
}

PRESETS = {"tiny": tiny, "smoke": smoke}


def get_config(arg=None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name not in PRESETS:
        raise ValueError(f"unknown r1 preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
