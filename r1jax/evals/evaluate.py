"""Offline evaluation of a policy: pass@1 over k samples, cons@k, greedy accuracy, and more.

DeepSeek-R1 (arXiv:2501.12948), Sec. 3 "Evaluation Setup": k responses per question at
temperature 0.6 and top-p 0.95; pass@1 = 1/k sum_i p_i; cons@k is the accuracy of the
majority-vote answer. A `Model` is a policy with its tokenizer, template, rewards and mesh;
`r1jax.rl.runs` builds one from an R1-Zero run directory or a local HF directory, and knows a
run's own prompts, settings and sampling key.

Prompts are a generated task split (name + knobs) or a user JSONL file (GSM8K, MATH-500, AIME
via `r1jax.data.tasks.jsonl`). Sampling, scoring and the shared metrics are the trainer's
(`rollout.sample` / `score` / `eval_metrics`), so every number means what a run's `eval/`
metrics mean; answers for the vote are read as the accuracy rewards read them
(`rewards.answer.final_answer`: outside the reasoning unless the accuracy reward's
`answer_in_think` option is set). Batch b > 0 of a multi-batch evaluation samples with fold_in(key, b);
batch 0 with the key itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import tqdm

from r1jax.data import pipeline, tasks, templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.evals import passk, rollout
from r1jax.models import config as config_lib
from r1jax.rewards import answer as answer_lib
from r1jax.rewards import registry

#: Rewards for prompts that lack the fields of a run's own rewards (and for HF checkpoints):
#: the task-dispatching accuracy checker (countdown, code tests, else math) plus strict format.
DEFAULT_REWARDS = registry.Spec.from_dict({"accuracy": 1.0, "format_strict": 1.0})


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to sample. num_samples: k; temperature/top_p: the paper's 0.6 / 0.95; greedy: add a
    temperature-0 sample per prompt; max_new_tokens: the completion budget; batch_size: prompts
    per `generate` call."""

    num_samples: int = 4
    temperature: float = 0.6
    top_p: float | None = 0.95
    greedy: bool = True
    max_new_tokens: int = 1024
    batch_size: int = 32

    def __post_init__(self):
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (greedy is separate)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1] or None")

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Model:
    """A policy ready to evaluate (`rl.runs.RunModel` adds a run's config, step and key)."""

    config: config_lib.ModelConfig
    params: Any
    tokenizer: tokenizer_lib.Tokenizer
    template: templates.Template
    rewards: registry.Spec
    mesh: jax.sharding.Mesh | None
    source: str


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def generated_examples(task: str, knobs: dict, split: str, seed: int,
                       num: int) -> list[dict[str, Any]]:
    """The first `num` examples of a generated task's split (the pipeline's order)."""
    source = pipeline.generated_source(tasks.get(task, **knobs), split, seed)
    return [source[i] for i in range(num)]


def jsonl_examples(path: str | os.PathLike, fmt: str, num: int | None = None,
                   task: str | None = None) -> list[dict[str, Any]]:
    """Examples of a user JSONL file ("gsm8k" or "math" format: MATH-500, AIME), first `num`."""
    examples = tasks.jsonl.load(path, fmt, task=task, split="test").examples
    return examples[:num] if num else examples


def prompt_batches(examples: Sequence[dict], model: Model, batch_size: int,
                   max_prompt_len: int = 512, bucket: int = 32) -> list[dict[str, Any]]:
    """Pipeline batches of at most `batch_size` prompts, in order, the last one possibly
    smaller; each is padded exactly as the trainer's loader pads a batch of those prompts."""
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        cfg = pipeline.PromptConfig(batch_size=len(chunk), max_prompt_len=max_prompt_len,
                                    bucket=bucket, shuffle=False, num_epochs=1)
        loader = pipeline.prompt_loader(chunk, model.tokenizer, model.template.format_prompt,
                                        cfg, process_index=0, process_count=1)
        batches.append(loader.batch(0))
    return batches


# ---------------------------------------------------------------------------------------------
# Sampling, scoring and the metrics
# ---------------------------------------------------------------------------------------------


def rewards_for(model: Model, examples: Sequence[dict]) -> registry.Spec:
    """The model's rewards when every example has the fields they need, else DEFAULT_REWARDS
    (e.g. a countdown run evaluated on GSM8K falls back to the generic accuracy checker)."""
    needed = {f for name, _ in model.rewards.weights for f in model.rewards.reward(name).fields}
    present = set.intersection(*(set(e) for e in examples)) | {"lengths"}
    return model.rewards if needed <= present else DEFAULT_REWARDS


def normalise_answer(answer: str | None) -> str | None:
    """The answer as the vote compares it: whitespace removed ("78 - 9" and "78-9" agree)."""
    if answer is None:
        return None
    return "".join(answer.split()) or None


def vote(answers_nk: Sequence[Sequence[str | None]],
         correct_nk: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    """Majority votes and whether each is correct.

    A vote's correctness is the score the accuracy reward gave to the vote's first sample, so
    the vote is judged by the very checker (and answer reader) that scored the samples.

    Args:
      answers_nk: per problem, the k normalised extracted answers (None: no answer).
      correct_nk: [num_problems, k] 0/1 accuracy of each sample.
    Returns:
      (the winning answer per problem or None, bool [num_problems]).
    """
    votes = [passk.majority_vote(row) for row in answers_nk]
    correct = np.array([v is not None and bool(correct_nk[i][list(answers_nk[i]).index(v)])
                        for i, v in enumerate(votes)], bool)
    return votes, correct


def cons_at_k(answers_nk: Sequence[Sequence[str | None]], correct_nk: np.ndarray) -> float:
    """cons@k (`passk.cons_at_k`) with the vote judged as in `vote`."""
    def correct_fn(i, answer):
        return bool(correct_nk[i][list(answers_nk[i]).index(answer)])

    return passk.cons_at_k(answers_nk, correct_fn)


def _language_consistency(ctx: rollout.Context, scored: rollout.Rollout) -> np.ndarray:
    """The language-consistency reward (R1 Sec. 2.3.3) of each completion; the target language
    is the example's `language` field, English without one."""
    responses = [ctx.template.full_response(t) for t in scored["texts"]]
    fields = {"language": scored["fields"]["language"]} if "language" in scored["fields"] else {}
    return registry.get("language")(responses, **fields)


def vote_answers(texts: Sequence[str], template: templates.Template,
                 spec: registry.Spec) -> list[str | None]:
    """The normalised answer of each completion for the vote, read as the accuracy reward of
    `spec` reads it (`rewards.answer.final_answer`): an answer written only inside the reasoning is
    no answer unless that reward's `answer_in_think` option is set, so a vote never counts
    what the accuracy metrics would not."""
    name = spec.accuracy_name()
    options = dict(dict(spec.options).get(name, ())) if name else {}
    in_think = bool(options.get("answer_in_think", False))
    return [normalise_answer(answer_lib.final_answer(template.full_response(t),
                                                     answer_in_think=in_think))
            for t in texts]


def _keep(ctx: rollout.Context, scored: rollout.Rollout) -> dict[str, Any]:
    """The per-completion values the metrics and the JSON report need."""
    answers = vote_answers(scored["texts"], ctx.template, ctx.rewards)
    out = {k: np.asarray(scored[k]) for k in ("accuracy", "lenient_accuracy", "format",
                                              "lengths", "rewards")}
    out.update(texts=list(scored["texts"]), answers=answers,
               language=_language_consistency(ctx, scored))
    return out


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list)
                else np.concatenate([p[k] for p in parts])) for k in parts[0]}


def sample_and_score(ctx: rollout.Context, params, batches: Sequence[dict], rng,
                     settings: Settings, progress: bool = True):
    """k sampled (and, with `settings.greedy`, one greedy) completions of every prompt, scored.

    Returns:
      (sampled, greedy or None): dicts of per-completion arrays and lists over all batches,
      the k samples of a prompt consecutive.
    """
    sampled, greedy = [], []
    for b, batch in enumerate(tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress,
                                        dynamic_ncols=True)):
        key = rng if b == 0 else jax.random.fold_in(rng, b)
        out = rollout.sample(ctx, params, batch, key, num_samples=settings.num_samples,
                             max_new_tokens=settings.max_new_tokens,
                             temperature=settings.temperature, top_p=settings.top_p)
        sampled.append(_keep(ctx, rollout.score(ctx, out)))
        if settings.greedy:
            out = rollout.sample(ctx, params, batch, key, num_samples=1,
                                 max_new_tokens=settings.max_new_tokens, temperature=0.0)
            greedy.append(_keep(ctx, rollout.score(ctx, out)))
    return _join(sampled), (_join(greedy) if greedy else None)


def compute_metrics(sampled: dict[str, Any], greedy: dict[str, Any] | None,
                    k: int) -> dict[str, float]:
    """The trainer's evaluation metrics (`rollout.eval_metrics`, without the `eval/` prefix)
    plus cons@k and language consistency, from `sample_and_score`'s output."""
    metrics = rollout.eval_metrics(sampled, greedy, k)
    answers_nk = [sampled["answers"][i:i + k] for i in range(0, len(sampled["answers"]), k)]
    metrics[f"cons@{k}"] = cons_at_k(answers_nk, sampled["accuracy"].reshape(-1, k))
    metrics["language_consistency"] = float(np.mean(sampled["language"]))
    # The report's order: pass@k, vote, then the per-sample rates.
    first = ("pass@1", f"pass@{k}", f"cons@{k}", "lenient_accuracy", "format_rate",
             "language_consistency")
    return {name: metrics[name] for name in first} | metrics


# ---------------------------------------------------------------------------------------------
# The evaluation and its report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """Metrics and, per problem, the extracted answers, their correctness and the vote."""

    metrics: dict[str, float]
    problems: list[dict[str, Any]]

    def to_json(self, **header) -> str:
        return json.dumps({**header, "metrics": self.metrics, "problems": self.problems},
                          indent=2, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _problems(examples, sampled, greedy, k: int) -> list[dict[str, Any]]:
    correct_nk = sampled["accuracy"].reshape(-1, k)
    answers_nk = [sampled["answers"][i:i + k] for i in range(0, len(sampled["answers"]), k)]
    votes, vote_correct = vote(answers_nk, correct_nk)
    problems = []
    for i, example in enumerate(examples):
        record = {"question": example["question"], "answer": example.get("answer"),
                  "answers": answers_nk[i], "correct": correct_nk[i].astype(int).tolist(),
                  "vote": votes[i], "vote_correct": bool(vote_correct[i]),
                  "completions": sampled["texts"][i * k:(i + 1) * k]}
        if greedy is not None:
            record.update(greedy_completion=greedy["texts"][i],
                          greedy_correct=bool(greedy["accuracy"][i]))
        problems.append(record)
    return problems


def evaluate(model: Model, examples: Sequence[dict], settings: Settings, rng, *,
             max_prompt_len: int = 512, bucket: int = 32, reward_workers: int = 2,
             progress: bool = True) -> Result:
    """Evaluates `model` on `examples` (dicts with `question` and the reward fields).

    Args:
      rng: the sampling key (batch b > 0 uses fold_in(rng, b)).
      max_prompt_len, bucket: prompt padding (`pipeline.PromptConfig`); a run's own values
        reproduce its evaluation batch exactly.
      reward_workers: processes for the pooled accuracy checkers.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    batches = prompt_batches(examples, model, settings.batch_size, max_prompt_len, bucket)
    rewards = rewards_for(model, examples)
    with rollout.reward_pool(rewards, reward_workers) as pool:
        ctx = rollout.Context(model.config, model.tokenizer, model.template, rewards, pool,
                              model.mesh)
        sampled, greedy = sample_and_score(ctx, model.params, batches, rng, settings, progress)
    k = settings.num_samples
    return Result(compute_metrics(sampled, greedy, k), _problems(examples, sampled, greedy, k))


_PERCENT = ("pass@", "cons@", "accuracy", "rate", "consistency")


def format_table(metrics: dict[str, float]) -> str:
    """A two-column Markdown table; rates in percent, lengths and rewards as numbers."""
    lines = ["| metric | value |", "|---|---|"]
    for name, value in metrics.items():
        percent = any(p in name for p in _PERCENT)
        lines.append(f"| {name} | {100 * value:.1f}% |" if percent else
                     f"| {name} | {value:.3f} |")
    return "\n".join(lines)


def write_result(path: str | os.PathLike, result: Result, **header) -> None:
    """Writes the JSON report atomically (a tmp file renamed over `path`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(result.to_json(**header))
    os.replace(tmp, path)
