"""Distillation vs RL for a small dense student (DeepSeek-R1 Sec. 2.4 and 4.1, Table 6).

The paper fine-tunes dense Qwen/Llama models on the ~800k samples curated with R1 (the stage-3
data) and compares with the same base trained by large-scale R1-Zero-style RL. Here:

  student_base  a dense Qwen2-style model (`distill.pretrain`, qwen2_5_0_5b shrunk),
                pretrained on the R1 base corpus (cached like the toy base), evaluated
  distill_sft   SFT of the student base on the stage-3 JSONL (loss on completions)
  distill_rl    GRPO from the student base with accuracy + format rewards, for as many
                steps as the SFT's estimated training FLOPs buy (`rl_steps_for_budget`),
                unless `distill.rl.total_steps` is set

Stages run under a manifest in `<workdir>/distill/` exactly like the R1 pipeline's.
FLOPs are estimates from `models.summary.forward_flops` (2 x activated params per token + attention):
SFT 3 x forward per step; a GRPO step = sampling (one forward over prompt + completion) +
3 x forward per pass (mu passes) + 1 forward for the reference when beta > 0.
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

from r1jax.models import summary as model_summary
from r1jax.r1 import common, data, pipeline
from r1jax.r1 import config as r1_config
from r1jax.r1 import manifest as manifest_lib
from r1jax.rl import config as rl_config
from r1jax.train import base

STAGES = ("student_base", "distill_sft", "distill_rl")


def sft_flops(model_config, section: r1_config.SFTStage) -> float:
    """Estimated FLOPs of an SFT stage: 3 x forward per step."""
    cfg = section.sft
    return 3.0 * model_summary.forward_flops(model_config, cfg.batch_size, cfg.seq_len) * cfg.steps


def rl_step_flops(model_config, g: rl_config.GRPOConfig, max_new_tokens: int,
                  prompt_len: int) -> float:
    """Estimated FLOPs of one GRPO step of G x prompts_per_step rows of prompt_len +
    max_new_tokens tokens: sampling, mu passes of forward + backward, the reference."""
    rows, length = g.prompts_per_step * g.group_size, prompt_len + max_new_tokens
    fwd = model_summary.forward_flops(model_config, rows, length)
    return fwd * (1 + 3 * g.num_iterations + (1 if g.beta > 0 else 0))


def _section_step_flops(model_config, section: r1_config.GRPOSection, prompt_len: int
                        ) -> float:
    """`rl_step_flops` of a GRPO section: of its `grpo` and `sampling` sections (checked when
    the R1 config was frozen), on which alone a step's FLOPs depend."""
    run = section.run
    return rl_step_flops(model_config, run.grpo, run.sampling.max_new_tokens, prompt_len)


def rl_steps_for_budget(budget: float, model_config, section: r1_config.GRPOSection,
                        prompt_len: int) -> int:
    """GRPO steps whose estimated FLOPs are closest to `budget` (at least 1)."""
    per_step = _section_step_flops(model_config, section, prompt_len)
    return max(1, int(round(budget / per_step)))


def _mean_prompt_len(tok, records) -> int:
    return int(np.mean([len(tok.encode(r["prompt"])) for r in records[:64]]))


def _student_base(config, m, stage_dir):
    d = config.distill
    base_dir = pipeline.ensure_base(d.base_dir, d.toy_base_dir, d.pretrain)
    return {}, {"eval": common.evaluate_model(base_dir, config.eval, config.seed),
                "base_dir": str(pathlib.Path(base_dir).absolute())}


def _distill_sft(config, data_path, m, stage_dir):
    start = m.entry("student_base")["metrics"]["base_dir"]
    records = data.read_records(data_path)
    model_dir = common.sft_stage(stage_dir, start, records, config.distill.sft,
                                 desc="distill sft")
    flops = sft_flops(base.load_config(start), config.distill.sft)
    return {"model": model_dir}, {"eval": common.evaluate_model(model_dir, config.eval,
                                                                config.seed),
                                  "steps": config.distill.sft.sft.steps, "flops": flops,
                                  "examples": len(records)}


def _distill_rl(config, data_path, m, stage_dir):
    start = m.entry("student_base")["metrics"]["base_dir"]
    model_config, tok = base.load_config(start), base.load_tokenizer(start)
    section = config.distill.rl
    budget = m.entry("distill_sft")["metrics"]["flops"]
    prompt_len = _mean_prompt_len(tok, data.read_records(data_path))
    steps = section.total_steps or rl_steps_for_budget(budget, model_config, section,
                                                       prompt_len)
    model_dir, summary = common.grpo_stage(
        stage_dir, start, section, config.seed, total_steps=steps,
        checkpoint_every=max(1, min(section.run.checkpoint_every, steps)))
    flops = steps * _section_step_flops(model_config, section, prompt_len)
    return {"model": model_dir}, {"eval": common.evaluate_model(model_dir, config.eval,
                                                                config.seed),
                                  "steps": steps, "grpo": summary, "flops": flops}


def run(config, workdir, data_path=None, start: str | None = None) -> manifest_lib.Manifest:
    """Runs the distillation stages in `<workdir>/distill`; the data default to the R1 run's
    stage-3 output in `workdir`. `config` (configs/r1.py's ConfigDict) is frozen first."""
    config = r1_config.from_config_dict(config)
    if config.distill is None:
        raise ValueError("config.distill: the distillation section is missing")
    if data_path is None:
        data_path = manifest_lib.Manifest(workdir).output("rejection", "data")
    m = manifest_lib.Manifest(pathlib.Path(workdir) / "distill")
    stages = [("student_base", functools.partial(_student_base, config, m)),
              ("distill_sft", functools.partial(_distill_sft, config, data_path, m)),
              ("distill_rl", functools.partial(_distill_rl, config, data_path, m))]
    return manifest_lib.run_stages(stages, m, start=start)


def report(m: manifest_lib.Manifest) -> str:
    """Distilled vs RL student on the held-out set, with steps and estimated FLOPs."""
    titles = {"student_base": "student base", "distill_sft": "student + distillation (SFT)",
              "distill_rl": "student + RL (R1-Zero style)"}
    rows = []
    for n in STAGES:
        if m.is_complete(n):
            metrics = m.entry(n)["metrics"]
            flops = f"{metrics['flops']:.2e}" if "flops" in metrics else "-"
            rows.append((titles[n], dict(metrics["eval"], steps=metrics.get("steps", "-"),
                                         flops=flops)))
    return common.table(rows, extra=("steps", "flops"))
