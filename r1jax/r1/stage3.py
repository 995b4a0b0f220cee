"""Stage 3's model-driven parts (DeepSeek-R1 Sec. 2.3.3), used by `r1.pipeline._rejection`:
the generative judge (trained on toy grading data, or the stage-2 model as it is), its
agreement with the ground truth on held-out items, the CoT-prompted non-reasoning data, and
the lines of the stage-3 summary.

R1's judge is DeepSeek-V3; at toy scale the judge is the stage-2 policy or the base model
(`rejection.judge_from`) fine-tuned on `judge_data.sft_records` (`rejection.judge_train` > 0)
or, with 0, the policy itself (the
smoke preset's, which has never seen a grading prompt: its agreement is what an untrained
judge gets, every unparseable reply counting as "incorrect").
"""

from __future__ import annotations

import pathlib

from r1jax.data import templates
from r1jax.evals import rollout
from r1jax.r1 import common, judge, judge_data, non_reasoning, rejection
from r1jax.r1 import config as r1_config
from r1jax.train import base


def judge_model(c: r1_config.RejectionStage, stage_dir: pathlib.Path, policy_dir, policy,
                template: templates.Template, seed: int, base_dir=None
                ) -> tuple[rollout.Context, dict, str]:
    """The judge: a model fine-tuned on `c.judge_train` synthetic grading examples (into
    `<stage_dir>/judge`, resumable), or the policy itself when that is 0. The fine-tuned
    judge starts from the policy, or from the pipeline's base model (`base_dir`) when
    `c.judge_from` is "base" (R1's judge, DeepSeek-V3, is not the RL policy either).

    Args:
      policy: the loaded policy (model_config, params, tokenizer) of `policy_dir`, reused
        (not loaded twice) when it is the judge.
    Returns:
      (its sampling context, its params, its directory).
    """
    if not c.judge_train:
        model_config, params, tok = policy
        return judge.sampling_context(model_config, tok, template), params, str(policy_dir)
    start = policy_dir if c.judge_from == "policy" else base_dir
    if start is None:
        raise ValueError("rejection.judge_from='base' needs the base model's directory")
    items = judge_data.grading_items(c.judge_train, "train", seed)
    judge_dir = common.sft_stage(stage_dir / "judge", start,
                                 judge_data.sft_records(items, template), c.judge_sft,
                                 desc="judge sft")
    model_config, params, tok = base.load_base(judge_dir)
    return judge.sampling_context(model_config, tok, template), params, str(judge_dir)


def judge_agreement(ctx: rollout.Context, params, c: r1_config.RejectionStage,
                    seed: int) -> dict:
    """The judge's agreement with the truth on `c.judge_eval` held-out grading items (test
    split), with a few of its verdicts; {} when judge_eval is 0."""
    if not c.judge_eval:
        return {}
    items = judge_data.grading_items(c.judge_eval, "test", seed)
    verdicts, replies = judge.judge(ctx, params, items, c.judge)
    out = judge_data.agreement(verdicts, items)
    out["reasons"] = judge.count_reasons(verdicts)
    out["examples"] = [{"candidate": it["candidate"], "reference": it["reference"],
                        "truth": it["correct"], "verdict": v.correct, "reason": v.reason,
                        "reply": r[-200:]}
                       for it, v, r in list(zip(items, verdicts, replies))[:4]]
    return out


def non_reasoning_records(c: r1_config.RejectionStage, ctx: rollout.Context, params,
                          pairs) -> tuple[list[dict], dict[str, int]]:
    """The non-reasoning SFT records: CoT-prompted by the stage-2 model (`ctx`, `params`)
    when `c.cot_non_reasoning`, else with empty think blocks (all counted "no_thought")."""
    if c.cot_non_reasoning:
        return non_reasoning.cot_records(ctx, params, pairs, c.cot)
    counts = dict.fromkeys(non_reasoning.OUTCOMES, 0)
    counts["no_thought"] = len(pairs)
    return [rejection.non_reasoning_record(ctx.template, q, r) for q, r in pairs], counts


def summary_lines(r: dict) -> list[str]:
    """The stage-3 lines of the pipeline's report (counts per route and filter, the judge's
    agreement, the non-reasoning CoTs) from the stage's manifest metrics."""
    lines = [f"rejection sampling: kept {r['reasoning']} of {r['candidates']} samples "
             f"(dropped {r['dropped']}), + {r['non_reasoning']} non-reasoning"]
    if r.get("worded_prompts"):
        lines.append(f"judge route: {r['worded_prompts']} of {r['prompts']} prompts have a "
                     "reference answer in words (no rule reads it)")
    if "routes" in r:
        routes = ", ".join(f"{k} {v['accepted']} kept / {v['rejected']} dropped of "
                           f"{v['checked']}" for k, v in
                           sorted(r["routes"].items(), key=lambda kv: kv[0] != "rule"))
        lines.append(f"stage-3 correctness by route: {routes}; judge unparseable "
                     f"{r['judge']['unparseable']} of {r['judge']['judged']}")
        lines += [_truth_line(name, v) for name, v in sorted(r["routes"].items())
                  if v.get("with_truth")]
    a = r.get("judge_agreement") or {}
    if a:
        lines.append(f"judge ({'trained' if r.get('judge_trained') else 'untrained'}): "
                     f"{100 * a['agreement']:.1f}% agreement with the truth on {a['n']} "
                     f"held-out items, {100 * a['parsed']:.1f}% parsed, false accepts "
                     f"{100 * a['false_accept']:.1f}%")
    if "non_reasoning_cot" in r:
        lines.append(f"non-reasoning CoTs: {r['non_reasoning_cot']}")
    return lines


def _truth_line(route: str, v: dict) -> str:
    """How a route's verdicts compare with the ground truth of its samples."""
    kept, true = v["accepted_with_truth"], v["truly_correct"]
    precision = f"{100 * v['accepted_truly_correct'] / kept:.1f}%" if kept else "-"
    return (f"{route} route vs the ground truth: {v['accepted_truly_correct']} of {kept} "
            f"accepted samples truly correct ({precision}); it accepted "
            f"{v['accepted_truly_correct']} of the {true} truly correct of "
            f"{v['with_truth']}")
