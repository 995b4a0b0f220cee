"""Rollouts: sample G completions per prompt, score them, fill the batch, evaluate.

Shared by the RL trainer (`r1jax.rl.trainer`: its rollouts and its `eval/` metrics) and the
offline evaluation (`r1jax.evals.evaluate`), so a metric means the same in both.

DeepSeek-R1 (arXiv:2501.12948), Sec. 2.2: for each question the old policy samples a group of
G outputs, which rule-based rewards score (accuracy + format for R1-Zero, Sec. 2.2.2). A
rollout is a dict of host (NumPy) arrays with one row per completion, the G completions of a
prompt consecutive:

  prompt_tokens int32 [N, P] (right-padded), prompt_lengths [N], completion_tokens [N, T],
  completion_mask bool [N, T], old_logps float32 [N, T] (the sampler's log-probs at the
  sampling temperature, before top-k/top-p truncation), lengths [N], stopped bool [N],
  rewards float32 [N], accuracy [N], format [N], components {name: [N]}, texts [N] (the
  completions), prompts [N].

DAPO's dynamic sampling (arXiv:2503.14476, Sec. 3.2) is `fill_batch`: groups whose rewards are
all equal carry no advantage signal, so they are dropped and more prompts are drawn, up to a cap.
If the cap is reached first, the batch is completed with dropped groups (zero advantages; they
still contribute the KL term), so its shape never changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np

from r1jax import distributed, sampling
from r1jax.data import templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.evals import passk
from r1jax.models import config as config_lib
from r1jax.rewards import format as format_lib
from r1jax.rewards import lenient, registry
from r1jax.rewards import pool as pool_lib

Rollout = dict[str, Any]
# Keys that the prompt pipeline adds; every other batch key is a task field for the rewards.
_PIPELINE_KEYS = ("prompt_tokens", "prompt_lengths", "prompt_truncated", "source_index",
                  "prompt")


@dataclasses.dataclass(frozen=True)
class Context:
    """What sampling and scoring need besides params: model, tokenizer, template, rewards."""

    model: config_lib.ModelConfig
    tokenizer: tokenizer_lib.Tokenizer
    template: templates.Template
    rewards: registry.Spec
    pool: pool_lib.WorkerPool | None
    mesh: jax.sharding.Mesh | None

    @property
    def stop_sequences(self) -> tuple[tuple[int, ...], ...]:
        return sampling.stop_token_sequences(self.tokenizer, self.template.stop_strings)


def needs_pool(spec: registry.Spec) -> bool:
    """True when a configured reward (or the accuracy metrics) runs in worker processes."""
    names = [name for name, _ in spec.weights]
    return _accuracy_reward(spec).pooled or any(spec.reward(name).pooled for name in names)


def reward_pool(spec: registry.Spec, num_workers: int | None):
    """A context manager that yields a started `WorkerPool` when `needs_pool(spec)`, else None
    (no processes are started for rewards that all run in this process)."""
    return pool_lib.WorkerPool(num_workers) if needs_pool(spec) else contextlib.nullcontext()


def _accuracy_reward(spec: registry.Spec) -> registry.RewardFn:
    """The checker behind the accuracy metrics: the run's own accuracy reward (the first
    accuracy-type reward it weights, `Spec.accuracy_name`, with its options), or the pooled
    generic "accuracy" reward when it has none or routes rewards by task (rows another task owns
    would lack its fields)."""
    name = spec.accuracy_name()
    return spec.reward(name) if name is not None and not spec.routes else registry.get("accuracy")


# ---------------------------------------------------------------------------------------------
# Sampling and scoring
# ---------------------------------------------------------------------------------------------


def sample(ctx: Context, params, batch, rng, *, num_samples: int, max_new_tokens: int,
           temperature: float, top_k: int | None = None, top_p: float | None = None,
           record_routing: bool = False) -> Rollout:
    """G = num_samples completions of each prompt of a pipeline batch, as host arrays. With
    record_routing, the MoE routing record's prompt and completion columns too
    ("routing_prompt" {path: [R, P, ...]}, "routing_completion" {path: [R, N, ...]})."""
    result = sampling.generate(
        ctx.model, params, batch["prompt_tokens"], batch["prompt_lengths"], rng,
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        eos_id=ctx.tokenizer.eos_id, stop_token_sequences=ctx.stop_sequences,
        num_samples=num_samples, pad_id=ctx.tokenizer.pad_id, mesh=ctx.mesh,
        record_routing=record_routing)
    result = distributed.fetch(result)  # every host holds every row (global arrays)
    lengths = np.asarray(result.lengths)
    tokens = np.asarray(result.tokens)
    repeat = lambda x: np.repeat(np.asarray(x), num_samples, axis=0)
    routing = {}
    if result.routing is not None:  # split: concat pads the prompt columns, the update trims
        record = {k: np.asarray(v) for k, v in result.routing.items()}
        used = next(iter(record.values())).shape[1] - max_new_tokens  # padding may be dropped
        width = np.shape(batch["prompt_tokens"])[1]

        def prompt_part(v):  # back to the batch's prompt width; the dropped columns are padding
            return np.pad(v[:, :used], [(0, 0), (0, width - used)] + [(0, 0)] * (v.ndim - 2),
                          constant_values=-1)

        routing = {"routing_prompt": {k: prompt_part(v) for k, v in record.items()},
                   "routing_completion": {k: v[:, used:] for k, v in record.items()}}
    return routing | {
        "prompt_tokens": repeat(batch["prompt_tokens"]).astype(np.int32),
        "prompt_lengths": repeat(batch["prompt_lengths"]).astype(np.int32),
        "completion_tokens": tokens.astype(np.int32),
        "completion_mask": np.asarray(result.mask, bool),
        "old_logps": np.asarray(result.logps, np.float32),
        "lengths": lengths.astype(np.int32),
        "stopped": np.asarray(result.finish_reason) == sampling.FINISH_STOP,
        "texts": [_decode(ctx.tokenizer, tokens[i, : lengths[i]]) for i in range(len(lengths))],
        "prompts": [p for p in batch["prompt"] for _ in range(num_samples)],
        "fields": {k: [v for v in batch[k] for _ in range(num_samples)]
                   for k in batch if k not in _PIPELINE_KEYS},
    }


def _decode(tok: tokenizer_lib.Tokenizer, ids: np.ndarray) -> str:
    # A model's embedding table may be padded past the tokenizer's vocabulary (Qwen2.5: 151936
    # rows for 151665 ids); a sampled id without a piece decodes to nothing.
    return tok.decode(ids[ids < tok.vocab_size])


def score(ctx: Context, rollout: Rollout) -> Rollout:
    """Adds rewards (the weighted total), components, accuracy (0/1) and format (0/1)."""
    responses = [ctx.template.full_response(t) for t in rollout["texts"]]
    fields = dict(rollout["fields"], lengths=list(rollout["lengths"]))
    combined = registry.combine(ctx.rewards, responses, pool=ctx.pool, **fields)
    name = ctx.rewards.accuracy_name()
    if name is not None:
        accuracy = combined.components[name] >= 1.0
    else:
        accuracy = _accuracy_reward(ctx.rewards)(responses, pool=ctx.pool, **fields) >= 1.0
    return dict(rollout, rewards=combined.total, components=combined.components,
                accuracy=accuracy.astype(np.float32),
                lenient_accuracy=_lenient_accuracy(ctx, responses, fields),
                format=np.array([format_lib.strict(r) for r in responses], np.float32))


_SCORE_KEYS = ("rewards", "components", "accuracy", "lenient_accuracy", "format")


def score_across_hosts(ctx: Context, rollout: Rollout) -> Rollout:
    """`score` with the rows split over the processes: each host scores its own block of
    completions (`distributed.host_rows`), then every host receives every score."""
    if jax.process_count() == 1:
        return score(ctx, rollout)
    own = score(ctx, take_rows(rollout, range(len(rollout["texts"]))[
        distributed.host_rows(len(rollout["texts"]))]))
    return dict(rollout, **distributed.allgather({k: own[k] for k in _SCORE_KEYS}))


def _lenient_accuracy(ctx: Context, responses: Sequence[str], fields) -> np.ndarray:
    """Accuracy of the answer read leniently (`rewards.lenient`: tags ignored, the last
    expression or number), scored by the same checker as the strict metric."""
    side = "expression" if "numbers" in fields else "value"
    rewritten = [lenient.as_answer_block(r, side) for r in responses]
    correct = _accuracy_reward(ctx.rewards)(rewritten, pool=ctx.pool, **fields) >= 1.0
    return correct.astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Rows, groups and dynamic sampling
# ---------------------------------------------------------------------------------------------


def take_rows(rollout: Rollout, rows: Sequence[int]) -> Rollout:
    """The rollout restricted to `rows` (in that order)."""
    rows = np.asarray(rows, np.int64)

    def take(value):
        if isinstance(value, dict):
            return {k: take(v) for k, v in value.items()}
        if isinstance(value, list):
            return [value[i] for i in rows]
        return np.asarray(value)[rows]

    return {k: take(v) for k, v in rollout.items()}


def concat(rollouts: Sequence[Rollout], pad_id: int) -> Rollout:
    """Rows of several rollouts, prompt tokens padded on the right to the widest."""
    width = max(r["prompt_tokens"].shape[1] for r in rollouts)

    def pad(x):
        return np.pad(x, ((0, 0), (0, width - x.shape[1])), constant_values=pad_id)

    def join(values, key):
        if key == "routing_prompt":  # the routing record's prompt columns; -1 = not recorded
            return {k: np.concatenate([np.pad(v[k], [(0, 0), (0, width - v[k].shape[1])] +
                                              [(0, 0)] * (v[k].ndim - 2), constant_values=-1)
                                       for v in values]) for k in values[0]}
        if isinstance(values[0], dict):
            return {k: join([v[k] for v in values], k) for k in values[0]}
        if isinstance(values[0], list):
            return [x for v in values for x in v]
        if key == "prompt_tokens":
            values = [pad(v) for v in values]
        return np.concatenate(values, axis=0)

    return {k: join([r[k] for r in rollouts], k) for k in rollouts[0]}


def informative_groups(rewards: np.ndarray, group_size: int) -> np.ndarray:
    """bool [num_groups]: the group's rewards are not all equal (a non-zero advantage)."""
    r_pg = np.asarray(rewards).reshape(-1, group_size)
    return r_pg.max(axis=1) > r_pg.min(axis=1)


def fill_batch(draw: Callable[[int], Rollout], num_groups: int, group_size: int,
               max_extra_draws: int, pad_id: int) -> tuple[Rollout, dict[str, float]]:
    """DAPO dynamic sampling: informative groups from draw(0), draw(1), ... until `num_groups`.

    Args:
      draw: j -> a scored rollout of the j-th prompt batch of this step.
      num_groups: prompts per step; group_size: G; max_extra_draws: the cap on draw(j > 0).
    Returns:
      (rollout of num_groups * G rows, {"dynamic/extra_draws", "dynamic/informative_frac"}).
    """
    draws, kept, spare = [], [], []
    while True:
        j = len(draws)
        draws.append(draw(j))
        mask = informative_groups(draws[-1]["rewards"], group_size)
        kept += [(j, i) for i in np.flatnonzero(mask)]
        spare += [(j, i) for i in np.flatnonzero(~mask)]
        if len(kept) >= num_groups or j >= max_extra_draws:
            break
    informative_frac = len(kept) / (len(draws) * num_groups)
    chosen = (kept + spare)[:num_groups]
    pieces = [take_rows(draws[j], range(i * group_size, (i + 1) * group_size))
              for j, i in chosen]
    stats = {"dynamic/extra_draws": len(draws) - 1, "dynamic/informative_frac": informative_frac,
             "dynamic/filled_frac": min(len(kept), num_groups) / num_groups}
    return concat(pieces, pad_id), stats


# ---------------------------------------------------------------------------------------------
# Metrics and evaluation
# ---------------------------------------------------------------------------------------------


def rollout_metrics(rollout: Rollout, max_new_tokens: int) -> dict[str, float]:
    """Reward components, accuracy, format rate and response-length statistics."""
    lengths = rollout["lengths"]
    clipped = (lengths >= max_new_tokens) & ~rollout["stopped"]
    metrics = {"reward/total": float(np.mean(rollout["rewards"]))}
    metrics.update({f"reward/{k}": float(np.mean(v)) for k, v in rollout["components"].items()})
    metrics.update({
        "accuracy": float(np.mean(rollout["accuracy"])),
        "accuracy_lenient": float(np.mean(rollout["lenient_accuracy"])),
        "format_rate": float(np.mean(rollout["format"])),
        "response_length/mean": float(np.mean(lengths)),
        "response_length/max": int(np.max(lengths)),
        "response_length/clipped_frac": float(np.mean(clipped)),
    })
    return metrics


def eval_metrics(sampled: Rollout, greedy: Rollout | None, k: int) -> dict[str, float]:
    """The evaluation metrics of k sampled (and, optionally, one greedy) completions per prompt.

    The one place they are computed: the trainer logs them under `eval/`, `evals.evaluate`
    adds cons@k and language consistency.

    Args:
      sampled: a scored rollout of [num_prompts * k] rows, a prompt's k samples consecutive.
      greedy: a scored rollout of [num_prompts] temperature-0 rows, or None.
      k: samples per prompt.
    Returns:
      pass@1 (R1 Sec. 3: mean over the k samples), pass@k, lenient_accuracy, format_rate,
      response_length, reward; with `greedy`, greedy_accuracy and greedy_lenient_accuracy.
    """
    correct_nk = np.asarray(sampled["accuracy"]).reshape(-1, k)
    metrics = {
        "pass@1": passk.pass_at_1_mean(correct_nk),
        f"pass@{k}": float(np.mean(passk.pass_at_k(k, correct_nk.sum(1), k))),
        "lenient_accuracy": float(np.mean(sampled["lenient_accuracy"])),
        "format_rate": float(np.mean(sampled["format"])),
        "response_length": float(np.mean(sampled["lengths"])),
        "reward": float(np.mean(sampled["rewards"])),
    }
    if greedy is not None:
        metrics["greedy_accuracy"] = float(np.mean(greedy["accuracy"]))
        metrics["greedy_lenient_accuracy"] = float(np.mean(greedy["lenient_accuracy"]))
    return metrics


def evaluate(ctx: Context, params, batch, rng, *, num_samples: int, temperature: float,
             top_p: float | None, greedy: bool, max_new_tokens: int,
             num_logged: int) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """pass@1 over `num_samples` samples (R1 paper Sec. 3: temperature 0.6, top-p 0.95),
    greedy accuracy, format rate and mean length on a held-out prompt batch (`eval_metrics`).

    Returns (metrics with an `eval/` prefix, the first `num_logged` sampled completions).
    """
    sampled = score_across_hosts(ctx, sample(
        ctx, params, batch, rng, num_samples=num_samples, max_new_tokens=max_new_tokens,
        temperature=temperature, top_p=top_p))
    greedy_rollout = None
    if greedy:
        greedy_rollout = score_across_hosts(ctx, sample(
            ctx, params, batch, rng, num_samples=1, max_new_tokens=max_new_tokens,
            temperature=0.0))
    metrics = {f"eval/{name}": value
               for name, value in eval_metrics(sampled, greedy_rollout, num_samples).items()}
    logged = [{"prompt": sampled["prompts"][i], "completion": sampled["texts"][i],
               "reward": float(sampled["rewards"][i]), "correct": bool(sampled["accuracy"][i]),
               "length": int(sampled["lengths"][i])}
              for i in range(min(num_logged, len(sampled["texts"])))]
    return metrics, logged
