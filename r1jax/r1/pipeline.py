"""The DeepSeek-R1 pipeline (arXiv:2501.12948 Sec. 2.3), one resumable stage at a time.

  base          the toy base model (pretrained when missing, `train.pretrain`), evaluated
  cold_start    SFT of the base on long, single-language CoTs in the R1 format (Sec. 2.3.1)
  reasoning_rl  GRPO from the cold-start model: accuracy + format + language consistency
                (Sec. 2.3.2) on bilingual word problems
  rejection     N samples per prompt from the stage-2 model, filtered (correct by rule or by a
                generative judge, formatted, single-language, no long paragraph or code
                block, not overlong, deduplicated) + non-reasoning data with brief CoTs
                (Sec. 2.3.3; `r1.stage3`)
  sft           SFT of the *base* model on the stage-3 data (Sec. 2.3.3)
  all_scenario  a Bradley-Terry reward model on preference pairs, then GRPO from the stage-4
                model on word problems (rule rewards) mixed with instructions (the reward
                model) and word problems with worded reference answers (the stage-3 judge),
                routed by the example's `task` field (Sec. 2.3.4)
  r1_zero       the baseline: GRPO from the base with accuracy + format only (Sec. 2.2), for
                the table; left out when `r1_zero.total_steps` is 0

Each stage writes into `<workdir>/<stage>/` and records status, outputs, metrics and wall time
in `<workdir>/manifest.json` (`r1.manifest`); a rerun skips complete stages and resumes the
unfinished one from its checkpoints.

    manifest = pipeline.run(configs_r1.get_config("tiny"), "runs/r1_tiny")
    print(pipeline.report(manifest))
"""

from __future__ import annotations

import functools
import json
import pathlib

import ml_collections
import numpy as np

from r1jax import config_utils
from r1jax.data import pipeline as data_pipeline
from r1jax.data import tasks, templates
from r1jax.data.tasks import worded
from r1jax.models import config as config_lib
from r1jax.r1 import common, data, judge, rejection, stage3
from r1jax.r1 import config as r1_config
from r1jax.r1 import manifest as manifest_lib
from r1jax.train import base, pretrain, reward
from r1jax.train import reward_model as rm

STAGES = ("base", "cold_start", "reasoning_rl", "rejection", "sft", "all_scenario", "r1_zero")
#: Rows of the table: (stage, title in the paper's terms).
TITLES = {"base": "base model", "cold_start": "cold start SFT", "reasoning_rl": "reasoning RL",
          "sft": "rejection-sampling SFT", "all_scenario": "all-scenario RL (R1)",
          "r1_zero": "R1-Zero (same base, same steps)"}


def ensure_base(base_dir, toy_base_dir, pretrain_cfg: pretrain.PretrainConfig | None
                ) -> pathlib.Path:
    """The absolute base model directory (an r1jax base or an HF checkpoint, used as is); the
    toy base is pretrained first (cached, resumable) only when `base_dir` is the preset's
    `toy_base_dir` and holds none; anything else is an error within seconds
    (`pretrain.ensure_base`)."""
    def pretrain_config() -> pretrain.PretrainConfig:
        if pretrain_cfg is None:
            raise ValueError(f"no base model in {base_dir} and no `pretrain` section to "
                             "pretrain the toy base with")
        return pretrain_cfg

    return pretrain.ensure_base(base_dir, toy_base_dir, pretrain_config)


def eval_name(config) -> str:
    """What the held-out evaluation runs on, for the report's title."""
    config = r1_config.from_config_dict(config)
    if config.data.eval_jsonl:
        return f"{config.data.eval_jsonl} ({config.data.eval_jsonl_format})"
    return f"{config.eval.task} {dict(config.eval.task_knobs)}"


def _evaluate(config: r1_config.R1Config, model_dir) -> dict[str, float]:
    """The stage's held-out evaluation: the user's `data.eval_jsonl` when set, else the
    generated `eval.task`."""
    return common.evaluate_model(model_dir, config.eval, config.seed, config.data.eval_jsonl,
                                 config.data.eval_jsonl_format)


# ---------------------------------------------------------------------------------------------
# Stages: fn(config, manifest, stage_dir) -> (outputs, metrics)
# ---------------------------------------------------------------------------------------------


def _base(config, m: manifest_lib.Manifest, stage_dir: pathlib.Path):
    base_dir = ensure_base(config.base_dir, config.toy_base_dir, config.pretrain)
    return {}, {"eval": _evaluate(config, base_dir),
                "base_dir": str(pathlib.Path(base_dir).absolute())}


def _cold_start(config, m, stage_dir):
    c = config.cold_start
    template = templates.get(common.TEMPLATE)
    path = config.data.cold_start_jsonl
    records = data.user_cold_start_records(path, config.data.cold_start_format,
                                           c.num_examples, template) if path else \
        data.cold_start_records(config.eval.task, dict(config.eval.task_knobs), c.num_examples,
                                config.seed, template)
    model_dir = common.sft_stage(stage_dir, m.entry("base")["metrics"]["base_dir"], records, c,
                                 desc="cold start")
    return {"model": model_dir}, {"eval": _evaluate(config, model_dir),
                                  "examples": len(records)}


def _grpo(section_name: str, start_stage: str, config, m, stage_dir, extra_rewards=()):
    start = m.output(start_stage, "model") if start_stage != "base" else \
        m.entry("base")["metrics"]["base_dir"]
    model_dir, summary = common.grpo_stage(stage_dir, start, getattr(config, section_name),
                                           config.seed, extra_rewards)
    return {"model": model_dir}, {"eval": _evaluate(config, model_dir),
                                  "grpo": summary}


def _rejection(config, m, stage_dir):
    c = config.rejection
    policy_dir = m.output("reasoning_rl", "model")
    model_config, params, tok = base.load_base(policy_dir)
    template = templates.get(common.TEMPLATE)
    judge_ctx, judge_params, judge_dir = stage3.judge_model(
        c, stage_dir, policy_dir, (model_config, params, tok), template, config.seed,
        base_dir=m.entry("base")["metrics"]["base_dir"])
    prompts, accuracy = _rejection_prompts(config)
    rcfg = c.sampler(accuracy)
    reasoning_path = stage_dir / "reasoning.jsonl"
    stats = rejection.rejection_sample(
        model_config, params, tok, template, prompts, rcfg, reasoning_path, overwrite=True,
        judge_fn=rejection.model_judge(judge_ctx, judge_params, c.judge))
    kept = data.read_records(reasoning_path) if stats["total"] else []
    path = config.data.non_reasoning_jsonl
    pairs = data.user_non_reasoning_pairs(path, c.num_non_reasoning) if path else \
        data.non_reasoning_pairs(c.num_non_reasoning, config.seed)
    extra, cot_counts = stage3.non_reasoning_records(
        c, judge.sampling_context(model_config, tok, template), params, pairs)
    records = data.shuffled(kept + extra, c.seed)
    summary = {"reasoning": len(kept), "non_reasoning": len(extra),
               "prompts": len(prompts),
               "worded_prompts": sum(ex.get("task") == worded.WORDED_TASK for ex in prompts),
               "candidates": stats["candidates"], "dropped": stats["dropped"],
               "routes": stats["routes"], "judge": stats["judge"], "judge_dir": judge_dir,
               "judge_trained": bool(c.judge_train), "non_reasoning_cot": cot_counts,
               "judge_agreement": stage3.judge_agreement(judge_ctx, judge_params, c,
                                                         config.seed)}
    path = rejection.write_dataset(records, stage_dir / "sft_data.jsonl",
                                   dict(summary, total=len(records)), overwrite=True)
    return {"data": path, "reasoning": reasoning_path}, summary


#: The accuracy reward of rejection sampling for each user JSONL format.
_ACCURACY = {"gsm8k": "numeric", "math": "math", "code": "code"}


def _rejection_prompts(config) -> tuple[list[dict], str]:
    """The first `rejection.num_prompts` training prompts of the reasoning-RL stage (its JSONL
    when set, else the generated task) and the accuracy reward that checks them; a
    deterministic `rejection.worded_share` of them get a worded reference answer (the judge
    route, `worded.worded_example`)."""
    d, num = config.reasoning_rl.run.data, config.rejection.num_prompts
    if d.train_jsonl:
        examples = tasks.jsonl.load(d.train_jsonl, d.jsonl_format,
                                    on_error=d.jsonl_on_error).examples[:num]
        accuracy = _ACCURACY[d.jsonl_format]
    else:
        source = data_pipeline.generated_source(
            tasks.get(config.eval.task, **dict(config.eval.task_knobs)), "train", config.seed)
        examples, accuracy = [source[i] for i in range(num)], "numeric"
    share = config.rejection.worded_share
    if share:
        worded_rows = np.random.default_rng([config.seed, 2]).random(len(examples)) < share
        # only toy word problems can be worded; user JSONL rows keep their own answers
        examples = [worded.worded_example(ex) if w and worded.can_word(ex) else ex
                    for ex, w in zip(examples, worded_rows)]
    return examples, accuracy


def _sft(config, m, stage_dir):
    records = data.read_records(m.output("rejection", "data"))
    model_dir = common.sft_stage(stage_dir, m.entry("base")["metrics"]["base_dir"], records,
                                 config.sft, desc="rejection-sampling sft")
    return {"model": model_dir}, {"eval": _evaluate(config, model_dir),
                                  "examples": len(records)}


def reward_model_init(c, policy_dir) -> tuple[config_lib.ModelConfig, dict]:
    """(model config, initial parameters) of the reward model: with `c.init` "policy" the
    trunk is the stage-4 SFT policy's (DeepSeek-V3 Sec. 5.2.1 trains its reward models from
    the SFT checkpoints); with "scratch" it is the policy's architecture with `c.model`
    overrides, randomly initialised with `c.train.seed`. `c`: the `reward_model` section
    (frozen here when given as a ConfigDict)."""
    c = config_utils.freeze(r1_config.RewardModelConfig, c, "reward_model")
    overrides = dict(c.model)
    if c.init == "policy":
        if overrides:
            raise ValueError(f"reward_model.model={overrides} reshapes the trunk, but "
                             "reward_model.init='policy' starts from the policy's; use one")
        model_config, trunk, _ = base.load_base(policy_dir)
        return model_config, rm.init_params(model_config, trunk=trunk)
    policy = base.load_config(policy_dir).to_dict()
    model_config = config_lib.ModelConfig.from_dict(dict(policy, **overrides))
    return model_config, rm.init_params(model_config, c.train.seed)


def _preference_pairs(config, template) -> tuple[list[dict], list[dict]]:
    """(train, test) preference pairs: the user's `data.preference_jsonl` (and
    `data.preference_test_jsonl`, else the train file's last tenth) or the toy task's."""
    c, path = config.reward_model, config.data.preference_jsonl
    if not path:
        return (data.preference_pairs(c.num_train, config.seed, "train", template),
                data.preference_pairs(c.num_test, config.seed, "test", template))
    test_path = config.data.preference_test_jsonl
    if test_path:
        return (data.user_preference_pairs(path, c.num_train, template),
                data.user_preference_pairs(test_path, c.num_test, template))
    pairs = data.user_preference_pairs(path, c.num_train + c.num_test, template)
    held = max(1, min(c.num_test, len(pairs) // 10))
    if len(pairs) < 2:
        raise ValueError(f"{path}: {len(pairs)} pair(s); at least 2 are needed (train and test)")
    return pairs[:-held], pairs[-held:]


def train_reward_model(config, policy_dir, work: pathlib.Path) -> tuple[rm.Scorer, dict]:
    """The preference reward model (`reward_model_init`; the policy's tokenizer), trained or
    resumed in `work`; returns its Scorer and held-out metrics."""
    c = config.reward_model
    model_dir = work / "model"
    if not base.exists(model_dir):
        tok = base.load_tokenizer(policy_dir)
        model_config, init = reward_model_init(c, policy_dir)
        train_cfg = c.train
        template = templates.get(common.TEMPLATE)
        train_pairs, test_pairs = _preference_pairs(config, template)
        train_data = reward.encode_pairs(tok, train_pairs, train_cfg.max_len, train_cfg.span)
        test_data = reward.encode_pairs(tok, test_pairs, train_cfg.max_len, train_cfg.span)
        params, evaluated = reward.train(model_config, c.optim, train_cfg, train_data,
                                         work / "train", init, eval_data=test_data)
        rm.save(model_dir, model_config, params, base.tokenizer_files(policy_dir),
                span=train_cfg.span, max_len=train_cfg.max_len, info=evaluated)
    info = json.loads((model_dir / "info.json").read_text())
    return rm.load(model_dir), {k: v for k, v in info.items() if k.startswith("eval/")}


def _all_scenario(config, m, stage_dir):
    start = m.output("sft", "model")
    scorer, rm_metrics = train_reward_model(config, start, stage_dir / "reward_model")
    # The scorers reach the stage's reward spec directly; the global registry is untouched.
    extra = (scorer,)
    if config.all_scenario.values.rewards.get(judge.KIND) is not None:
        # The stage-3 judge, for the tasks routed to it (answers no rule reads).
        judge.save_reward(stage_dir, m.entry("rejection")["metrics"]["judge_dir"],
                          common.TEMPLATE, config.rejection.judge)
        extra += (judge.load_reward(stage_dir),)
    outputs, metrics = _grpo("all_scenario", "sft", config, m, stage_dir, extra)
    outputs["reward_model"] = stage_dir / "reward_model" / "model"
    return outputs, dict(metrics, reward_model=rm_metrics)


def stages(config: r1_config.R1Config, m: manifest_lib.Manifest):
    """[(name, fn(stage_dir))] in order (the R1-Zero baseline only when it has steps)."""
    fns = {"base": _base, "cold_start": _cold_start,
           "reasoning_rl": functools.partial(_grpo, "reasoning_rl", "cold_start"),
           "rejection": _rejection, "sft": _sft, "all_scenario": _all_scenario,
           "r1_zero": functools.partial(_grpo, "r1_zero", "base")}
    names = [n for n in STAGES if n != "r1_zero" or config.runs_r1_zero()]
    return [(n, functools.partial(fns[n], config, m)) for n in names]


def run(config: ml_collections.ConfigDict, workdir, start: str | None = None,
        until: str | None = None) -> manifest_lib.Manifest:
    """Runs every stage (resuming; `start` reruns from that stage, `until` stops after one);
    `config` (configs/r1.py's ConfigDict) is frozen first, so a bad field fails here."""
    config = r1_config.from_config_dict(config)
    m = manifest_lib.Manifest(workdir)
    selected = stages(config, m)
    if until is not None:
        names = [n for n, _ in selected]
        if until not in names:
            raise ValueError(f"until={until!r}: unknown stage; stages are {names}")
        selected = selected[:names.index(until) + 1]
    return manifest_lib.run_stages(selected, m, start=start)


def report(m: manifest_lib.Manifest) -> str:
    """The paper-style table: held-out metrics after each stage, plus the stage-3 data."""
    rows = [(TITLES[n], m.entry(n).get("metrics", {}).get("eval")) for n in STAGES
            if n in TITLES and m.is_complete(n)]
    lines = [common.table(rows)]
    if m.is_complete("rejection"):
        lines.append("")
        lines += stage3.summary_lines(m.entry("rejection")["metrics"])
    if m.is_complete("all_scenario"):
        acc = m.entry("all_scenario")["metrics"]["reward_model"].get("eval/accuracy")
        if acc is not None:
            lines.append(f"reward model: held-out pairwise accuracy {100 * acc:.1f}%")
    walls = ", ".join(f"{n} {m.entry(n)['wall_s']:.0f} s" for n in STAGES if m.is_complete(n))
    lines.append(f"wall time per stage: {walls}")
    return "\n".join(lines)

