"""Rejection sampling for SFT data (DeepSeek-R1, arXiv:2501.12948, Sec. 2.3.3).

"When reasoning-oriented RL converges, we utilize the resulting checkpoint to collect SFT data":
for each reasoning prompt sample N completions from the policy and keep only the good ones, then
mix in non-reasoning data answered without a chain of thought (R1: about 600k reasoning and 200k
non-reasoning samples). Here a completion is kept when it passes, in this order,

  overlong   it stopped (EOS or a stop string) within `max_length` tokens;
  format     the whole assistant turn is `<think>R</think> <answer>A</answer>` (`format.strict`);
  language   its chain of thought is in one language: `language.consistency` >= `min_language`
             (R1 filters out "chain-of-thought with mixed languages"); the target is the
             example's `language` field when it has one (bilingual tasks), else `language`;
  long_paragraph  no paragraph of the CoT (blank-line separated) is longer than
             `max_paragraph_chars` characters (R1 also drops CoTs with "long paragraphs");
  code_block no ``` fence in the CoT (and R1's "code blocks"), when `drop_code_blocks`;
  incorrect  the sample's answer is correct (R1: "retain only the correct ones"), by route:
             "rule" (the task's rule accuracy reward is 1) for every task not in
             `judge_tasks`, "judge" (a generative judge accepts it against the reference,
             `r1jax.r1.judge`) for those, whose answers no rule can check; with
             `judge_after_rule` a rule-accepted sample must also pass the judge;
  duplicate  no earlier kept completion of the same prompt is equal after whitespace
             normalisation;

and at most `max_per_prompt` per prompt are kept. Each drop is counted against the first filter
it fails. Non-reasoning examples (question, response) become an empty think block and the
response in the template's answer layout, `non_reasoning_fraction` of the final dataset.

Output: a JSONL dataset of {"type": "reasoning" | "non_reasoning", "prompt", "completion",
"question", "answer", "task", "key"} (the prompt is templated; SFT trains on the completion),
written atomically and never over a different existing dataset unless `overwrite`, and next to
it `<name>.stats.json`: candidates, drops per filter, kept per prompt, mean lengths.

The statistics record, per route, how many samples reached the correctness check and how
many it accepted and rejected, the judge's unparseable replies by reason, and the first
`judge_examples` judged items with their verdicts. Where an example keeps a ground truth the
judge does not see (`rule_answer`, a worded reference's integer: `data.tasks.worded`), its
samples are also scored by the rule against it, and each route counts how many of the samples
it accepted are truly correct. The judge only sees samples that passed
the cheaper filters.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from r1jax.data import pipeline, templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.evals import rollout
from r1jax.models import config as config_lib
from r1jax.r1 import judge as judge_lib
from r1jax.rewards import format as format_lib
from r1jax.rewards import language as language_lib
from r1jax.rewards import pool as pool_lib
from r1jax.rewards import registry
from r1jax.sampling import sampler
from r1jax.train import metrics

FILTERS = ("overlong", "format", "language", "long_paragraph", "code_block", "incorrect",
           "duplicate")
ROUTES = ("rule", "judge")
CODE_FENCE = "```"
# judge_fn(candidates) -> (one Verdict per candidate, the judge's replies)
JudgeFn = Callable[[Sequence[dict]], tuple[Sequence[judge_lib.Verdict], Sequence[str]]]
_FORMAT_TAGS = (templates.THINK_OPEN, templates.THINK_CLOSE, templates.ANSWER_OPEN,
                templates.ANSWER_CLOSE)


@dataclasses.dataclass(frozen=True)
class RejectionConfig:
    """num_samples: N completions per prompt; batch_size: prompts per sampling call;
    max_new_tokens, temperature, top_p: sampling; max_prompt_len: longest templated prompt;
    max_length: longest kept completion in tokens (None = max_new_tokens); language, min_language:
    target CoT language and the least consistency kept; accuracy_reward: the registry reward that
    decides correctness; max_per_prompt: cap on kept completions per prompt (None = no cap);
    non_reasoning_fraction: share of non-reasoning examples in the dataset; seed: sampling and
    mixing; max_paragraph_chars: longest CoT paragraph kept (None = no limit);
    drop_code_blocks: drop CoTs with a ``` fence; judge_tasks: tasks whose answers the judge
    checks (no rule can); judge_after_rule: the judge re-checks rule-accepted samples too;
    judge_examples: judged items recorded in the statistics."""

    num_samples: int = 4
    batch_size: int = 8
    max_new_tokens: int = 256
    temperature: float = sampler.SamplingOptions.temperature
    top_p: float | None = None
    max_prompt_len: int = 256
    max_length: int | None = None
    language: str = "en"
    min_language: float = 1.0
    accuracy_reward: str = "accuracy"
    max_per_prompt: int | None = None
    non_reasoning_fraction: float = 0.25
    seed: int = 0
    max_paragraph_chars: int | None = 2000
    drop_code_blocks: bool = True
    judge_tasks: tuple[str, ...] = ()
    judge_after_rule: bool = False
    judge_examples: int = 8

    def __post_init__(self):
        positive = ("num_samples", "batch_size", "max_new_tokens", "max_prompt_len")
        checks = {name: getattr(self, name) >= 1 for name in positive}
        checks.update(
            temperature=self.temperature >= 0,
            max_length=self.max_length is None or self.max_length >= 1,
            language=self.language in language_lib.LANGUAGES,
            min_language=0.0 <= self.min_language <= 1.0,
            max_per_prompt=self.max_per_prompt is None or self.max_per_prompt >= 1,
            non_reasoning_fraction=0.0 <= self.non_reasoning_fraction < 1.0,
            max_paragraph_chars=self.max_paragraph_chars is None or self.max_paragraph_chars >= 1,
            judge_tasks=isinstance(self.judge_tasks, tuple) and all(
                isinstance(t, str) and t for t in self.judge_tasks),
            judge_examples=self.judge_examples >= 0)
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"RejectionConfig.{field}: invalid value {getattr(self, field)!r}")
        registry.get(self.accuracy_reward)


# ---------------------------------------------------------------------------------------------
# Filters (pure)
# ---------------------------------------------------------------------------------------------


def is_complete(length: int, stopped: bool, max_length: int) -> bool:
    """Not overlong: the completion stopped by itself within `max_length` tokens."""
    return bool(stopped) and int(length) <= max_length


def is_well_formatted(response: str) -> bool:
    """The whole assistant turn has the strict R1 layout (`format.strict`)."""
    return format_lib.strict(response) == 1.0


def is_single_language(response: str, language: str, min_fraction: float = 1.0) -> bool:
    """At least `min_fraction` of the CoT's words are in `language` (a CoT with no words has
    none: it passes only min_fraction = 0)."""
    return language_lib.consistency(response, language) >= min_fraction


def chain_of_thought(response: str) -> str:
    """The CoT of an assistant turn (`templates.extract_reasoning`; "" when there is none)."""
    return templates.extract_reasoning(response) or ""


def has_long_paragraph(response: str, max_chars: int) -> bool:
    """A paragraph of the CoT (text between blank lines, stripped) is over `max_chars` long."""
    return any(len(p.strip()) > max_chars
               for p in re.split(r"\n[ \t]*\n", chain_of_thought(response)))


def has_code_block(response: str) -> bool:
    """The CoT holds a Markdown code fence (```)."""
    return CODE_FENCE in chain_of_thought(response)


def normalise_whitespace(text: str) -> str:
    """Runs of whitespace become one space; leading and trailing whitespace goes."""
    return " ".join(text.split())


def deduplicate(candidates: Sequence[dict]) -> tuple[list[dict], int]:
    """The first of each (prompt, normalised completion); returns (kept, number dropped)."""
    seen, kept = set(), []
    for c in candidates:
        key = (c["prompt"], normalise_whitespace(c["completion"]))
        if key not in seen:
            seen.add(key)
            kept.append(c)
    return kept, len(candidates) - len(kept)


def strip_stop(text: str, stop_strings: Sequence[str]) -> str:
    """`text` without a trailing stop string that is not a format tag (e.g. EOS)."""
    for stop in stop_strings:
        if stop and stop not in _FORMAT_TAGS and text.endswith(stop):
            return text[: -len(stop)]
    return text


def _failed_filter(c: dict, config: RejectionConfig, max_length: int) -> str | None:
    """The first filter before the correctness check that `c` fails, or None."""
    if not is_complete(c["length"], c["stopped"], max_length):
        return "overlong"
    if not is_well_formatted(c["response"]):
        return "format"
    if not is_single_language(c["response"], c.get("language") or config.language,
                              config.min_language):
        return "language"
    if config.max_paragraph_chars is not None and has_long_paragraph(
            c["response"], config.max_paragraph_chars):
        return "long_paragraph"
    if config.drop_code_blocks and has_code_block(c["response"]):
        return "code_block"
    return None


def route_of(c: dict, config: RejectionConfig) -> str:
    """"judge" for a candidate of a task in `config.judge_tasks`, else "rule"."""
    task = c.get("task") or (c.get("example") or {}).get("task")
    return "judge" if task in config.judge_tasks else "rule"


def _verdict_label(v: judge_lib.Verdict) -> str:
    return (judge_lib.CORRECT if v.correct else judge_lib.INCORRECT) if v.parsed \
        else f"rejected ({v.reason})"


def check_correct(passed: Sequence[dict], config: RejectionConfig,
                  judge_fn: JudgeFn | None) -> tuple[list[dict], dict]:
    """The correctness check by route (module docstring) of the candidates that passed the
    other filters. Returns (the correct ones in input order, {"routes": {route: {"checked",
    "accepted", "rejected"}}, "judge": {reason counts, "examples": [...]}})."""
    routes = [route_of(c, config) for c in passed]
    rule_ok = [r == "rule" and c["accuracy"] >= 1.0 for c, r in zip(passed, routes)]
    to_judge = [i for i, r in enumerate(routes)
                if r == "judge" or (config.judge_after_rule and rule_ok[i])]
    if to_judge and judge_fn is None:
        raise ValueError(f"rejection: {len(to_judge)} samples need the judge (judge_tasks="
                         f"{config.judge_tasks}, judge_after_rule={config.judge_after_rule}) "
                         "but no judge was given")
    verdicts, replies = judge_fn([passed[i] for i in to_judge]) if to_judge else ([], [])
    ok = [r == "rule" and rule_ok[i] for i, r in enumerate(routes)]
    for i, v in zip(to_judge, verdicts):
        ok[i] = v.correct and (routes[i] == "judge" or rule_ok[i])
    stats = {"routes": {r: _route_counts([(c, o) for c, o, q in zip(passed, ok, routes)
                                          if q == r]) for r in ROUTES},
             "judge": dict(judge_lib.count_reasons(verdicts), judged=len(verdicts),
                           examples=[dict(_judge_item(passed[i]), verdict=_verdict_label(v),
                                          reply=str(reply)[-400:])
                                     for i, v, reply in list(zip(to_judge, verdicts, replies))
                                     [: config.judge_examples]])}
    return [c for c, o in zip(passed, ok) if o], stats


def _route_counts(checked: Sequence[tuple[dict, bool]]) -> dict[str, int]:
    """{"checked", "accepted", "rejected"} of a route's (candidate, accepted) pairs, and where
    candidates carry a ground truth (`truth`, from `collect`): "with_truth", "truly_correct"
    (of those), "accepted_truly_correct" and "accepted_with_truth"."""
    known = [(c["truth"] >= 1.0, o) for c, o in checked if "truth" in c]
    accepted = sum(o for _, o in checked)
    counts = {"checked": len(checked), "accepted": accepted, "rejected": len(checked) - accepted}
    if known:
        counts.update(with_truth=len(known), truly_correct=sum(t for t, _ in known),
                      accepted_with_truth=sum(o for _, o in known),
                      accepted_truly_correct=sum(t and o for t, o in known))
    return counts


def select(candidates: Sequence[dict], config: RejectionConfig,
           judge_fn: JudgeFn | None = None) -> tuple[list[dict], dict]:
    """Applies the filters in order, then the per-prompt cap.

    Args:
      candidates: dicts with `prompt_index`, `prompt`, `completion`, `response` (the assistant
        turn as the rewards see it), `length` (tokens), `stopped`, `accuracy` (the rule's),
        optional `task` (routing) and `example` (the judge's question and reference).
      judge_fn: the judge of the "judge" route (`model_judge`); needed only when some sample
        takes that route.
    Returns:
      (kept candidates in input order, {"candidates", "dropped": {filter: n}, "kept",
      "kept_per_prompt": {"mean", "histogram"}, "mean_length_tokens", "routes", "judge"}).
    """
    max_length = config.max_length or config.max_new_tokens
    dropped = dict.fromkeys(FILTERS + ("per_prompt_cap",), 0)
    passed = []
    for c in candidates:
        failed = _failed_filter(c, config, max_length)
        if failed:
            dropped[failed] += 1
        else:
            passed.append(c)
    correct, checks = check_correct(passed, config, judge_fn)
    dropped["incorrect"] = len(passed) - len(correct)
    passed, dropped["duplicate"] = deduplicate(correct)
    kept, per_prompt = [], collections.Counter()
    for c in passed:
        if config.max_per_prompt is not None and per_prompt[c["prompt_index"]] >= \
                config.max_per_prompt:
            dropped["per_prompt_cap"] += 1
            continue
        per_prompt[c["prompt_index"]] += 1
        kept.append(c)
    prompts = sorted({c["prompt_index"] for c in candidates})
    counts = [per_prompt[p] for p in prompts]
    stats = {
        "candidates": len(candidates),
        "dropped": dropped,
        "kept": len(kept),
        "kept_per_prompt": {"mean": float(np.mean(counts)) if counts else 0.0,
                            "histogram": {str(k): v for k, v in
                                          sorted(collections.Counter(counts).items())}},
        "mean_length_tokens": float(np.mean([c["length"] for c in kept])) if kept else 0.0,
        **checks,
    }
    return kept, stats


# ---------------------------------------------------------------------------------------------
# Records and mixing
# ---------------------------------------------------------------------------------------------


def empty_think_completion(template: templates.Template, response: str,
                           thought: str = "") -> str:
    """A non-reasoning answer in the template's layout: a think block (empty, or the brief
    `thought` of a CoT-prompted answer), then the response (in an <answer> block when the
    template stops at `</answer>`, else followed by its first stop string), without the part
    of the turn that the prompt pre-fills."""
    if templates.ANSWER_CLOSE in template.stop_strings:
        body = f"{templates.ANSWER_OPEN} {response} {templates.ANSWER_CLOSE}"
    else:
        body = response + (template.stop_strings[0] if template.stop_strings else "")
    thought = f"\n{thought.strip()}\n" if thought.strip() else "\n"
    turn = f"{templates.THINK_OPEN}{thought}\n{templates.THINK_CLOSE}\n\n{body}"
    return turn[len(template.response_prefix):] if turn.startswith(template.response_prefix) \
        else turn


def reasoning_record(c: dict) -> dict[str, Any]:
    ex = c["example"]
    return {"type": "reasoning", "prompt": c["prompt"], "completion": c["completion"],
            "question": ex.get("question"), "answer": ex.get("answer"), "task": ex.get("task"),
            "key": ex.get("key")}


def non_reasoning_record(template: templates.Template, question: str, response: str,
                         thought: str = "") -> dict[str, Any]:
    """The SFT record of a non-reasoning answer (with the brief `thought`, if any)."""
    return {"type": "non_reasoning", "prompt": template.format_prompt(question),
            "completion": empty_think_completion(template, response, thought),
            "question": question, "answer": response, "task": "non_reasoning", "key": None}


def mix(reasoning: Sequence[dict], non_reasoning: Sequence[dict], fraction: float,
        seed: int) -> list[dict]:
    """All reasoning records plus the first round(n f / (1 - f)) non-reasoning ones (so they are
    a share f of the result when the pool is large enough), shuffled with `seed`."""
    want = round(len(reasoning) * fraction / (1.0 - fraction))
    records = list(reasoning) + list(non_reasoning[:want])
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in order]


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------


def _judge_item(c: dict) -> dict[str, str]:
    """The judge's question, reference and candidate (the sample's final answer) of `c`."""
    ex = c.get("example") or {}
    return {"question": str(ex.get("question", "")), "reference": str(ex.get("answer", "")),
            "candidate": templates.extract_answer(c["response"]) or ""}


def model_judge(ctx: rollout.Context, params,
                settings: judge_lib.JudgeSettings | None = None) -> JudgeFn:
    """The `JudgeFn` of a judge model (`ctx`'s model and template, `params`; default
    `JudgeSettings` when `settings` is None)."""
    settings = settings or judge_lib.JudgeSettings()
    def judge_fn(candidates: Sequence[dict]):
        return judge_lib.judge(ctx, params, [_judge_item(c) for c in candidates], settings)
    return judge_fn


def collect(ctx: rollout.Context, params, examples: Sequence[dict], config: RejectionConfig,
            accuracy: registry.RewardFn) -> list[dict]:
    """N completions of each example's prompt, as candidate dicts (see `select`). The last
    batch is filled with copies of the last prompt, whose samples are dropped."""
    b = config.batch_size
    padded = list(examples) + [examples[-1]] * (-len(examples) % b)
    batches = pipeline.prompt_dataset(
        padded, ctx.tokenizer, ctx.template.format_prompt,
        pipeline.PromptConfig(batch_size=b, max_prompt_len=config.max_prompt_len,
                              shuffle=False, num_epochs=1),
        process_index=0, process_count=1)
    eos_text = ctx.tokenizer.decode([ctx.tokenizer.eos_id])
    stops = tuple(ctx.template.stop_strings) + (eos_text,)
    candidates = []
    rng = jax.random.key(config.seed)
    for step in tqdm.trange(len(batches), desc="rejection sampling", dynamic_ncols=True):
        batch = batches[step]
        rolled = rollout.sample(ctx, params, batch, jax.random.fold_in(rng, step),
                                num_samples=config.num_samples,
                                max_new_tokens=config.max_new_tokens,
                                temperature=config.temperature, top_p=config.top_p)
        responses = [strip_stop(ctx.template.full_response(t), stops) for t in rolled["texts"]]
        correct = accuracy(responses, pool=ctx.pool, **rolled["fields"])
        truth = _truth(accuracy, responses, rolled["fields"], ctx.pool)
        for row, text in enumerate(rolled["texts"]):
            index = step * b + row // config.num_samples
            if index >= len(examples):
                continue  # a padding prompt
            candidates.append({
                "prompt_index": index, "prompt": rolled["prompts"][row], "completion": text,
                "response": responses[row], "length": int(rolled["lengths"][row]),
                "stopped": bool(rolled["stopped"][row]), "accuracy": float(correct[row]),
                "language": examples[index].get("language"), "task": examples[index].get("task"),
                "example": examples[index]})
            if truth is not None and examples[index].get("rule_answer") is not None:
                candidates[-1]["truth"] = float(truth[row])
    return candidates


def _truth(accuracy: registry.RewardFn, responses: Sequence[str], fields: dict, pool):
    """The rule's score of each response against the rows' `rule_answer` (the ground truth
    of an example whose reference is worded, `data.tasks.worded`; hidden from the judge),
    or None when no row has one. Rows without one score against their `answer`."""
    rule = fields.get("rule_answer")
    if not rule or all(r is None for r in rule):
        return None
    answers = [a if r is None else r for a, r in zip(fields["answer"], rule)]
    return accuracy(responses, pool=pool, **dict(fields, answer=answers))


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def stats_path(path: str | os.PathLike) -> pathlib.Path:
    """Where the statistics of dataset `path` go: `<dir>/<stem>.stats.json`."""
    path = pathlib.Path(path)
    return path.with_name(path.stem + ".stats.json")


def write_dataset(records: Sequence[dict], path: str | os.PathLike, stats: dict, *,
                  overwrite: bool = False) -> pathlib.Path:
    """Writes records as JSONL and `stats_path(path)`, each atomically (stats first, so the
    dataset appears last). An existing dataset with other content raises FileExistsError
    unless `overwrite`; an identical one is left as it is."""
    path = pathlib.Path(path)
    data = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n"
                   for r in records).encode("utf-8")
    if path.exists() and not overwrite and path.read_bytes() != data:
        raise FileExistsError(f"{path} holds a different dataset; pass overwrite=True to "
                              "replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    metrics.atomic_write_bytes(
        stats_path(path), (json.dumps(stats, indent=2, sort_keys=True) + "\n").encode())
    if not path.exists() or path.read_bytes() != data:
        metrics.atomic_write_bytes(path, data)
    return path


def rejection_sample(model_config: config_lib.ModelConfig, params,
                     tokenizer: tokenizer_lib.Tokenizer, template: templates.Template,
                     examples: Sequence[dict], config: RejectionConfig,
                     output: str | os.PathLike, *,
                     non_reasoning: Sequence[tuple[str, str]] = (),
                     pool: pool_lib.WorkerPool | None = None,
                     mesh: jax.sharding.Mesh | None = None, overwrite: bool = False,
                     judge_fn: JudgeFn | None = None,
                     self_judge: judge_lib.JudgeSettings | None = None) -> dict:
    """Samples, filters, mixes and writes an SFT dataset (see the module docstring).

    Args:
      model_config, params, tokenizer, template: the policy (the converged reasoning RL
        checkpoint) and its prompt format.
      examples: task examples (`question` plus the fields of `config.accuracy_reward`).
      non_reasoning: (question, response) pairs answered without a chain of thought.
      pool: worker processes for the accuracy reward (a temporary one if None).
      mesh: optional device mesh for sampling (config.batch_size must be a multiple of its
        batch shards).
      output: the JSONL path; statistics go to `stats_path(output)`.
      judge_fn: the judge of the "judge" route (`model_judge`), or
      self_judge: when judge_fn is None, the policy judges with these settings (at toy scale
        the stage-2 model; R1 asks DeepSeek-V3).
    Returns:
      The statistics dict (also written).
    """
    if not examples:
        raise ValueError("rejection_sample: no examples")
    accuracy = registry.get(config.accuracy_reward)
    if pool is None and accuracy.pooled:
        with pool_lib.WorkerPool() as workers:
            return rejection_sample(model_config, params, tokenizer, template, examples, config,
                                    output, non_reasoning=non_reasoning, pool=workers, mesh=mesh,
                                    overwrite=overwrite, judge_fn=judge_fn,
                                    self_judge=self_judge)
    ctx = rollout.Context(model_config, tokenizer, template,
                          registry.Spec.from_dict({config.accuracy_reward: 1.0}), pool, mesh)
    candidates = collect(ctx, params, examples, config, accuracy)
    if judge_fn is None and self_judge is not None:
        judge_fn = model_judge(ctx, params, self_judge)
    kept, stats = select(candidates, config, judge_fn)
    extra = [non_reasoning_record(template, q, r) for q, r in non_reasoning]
    records = mix([reasoning_record(c) for c in kept], extra, config.non_reasoning_fraction,
                  config.seed)
    n_extra = sum(r["type"] == "non_reasoning" for r in records)
    stats.update(prompts=len(examples), samples_per_prompt=config.num_samples,
                 non_reasoning=n_extra, total=len(records),
                 mean_length_chars={t: float(np.mean([len(r["completion"]) for r in records
                                                      if r["type"] == t] or [0.0]))
                                    for t in ("reasoning", "non_reasoning")},
                 config=json.loads(json.dumps(dataclasses.asdict(config))))  # tuples as lists
    if jax.process_index() == 0:
        write_dataset(records, output, stats, overwrite=overwrite)
    return stats
