"""The R1 pipeline's SFT data: cold-start CoTs, prompt/completion records -> (tokens, weights).

Records are dicts with a templated `prompt` and a `completion` (the rejection-sampling JSONL of
`r1jax.r1.rejection`, or `cold_start_records`). SFT trains on the completion only: weight 0 on
the prompt's tokens, 1 on the completion's and on the EOS that ends it. The prompt and the
completion are encoded separately and concatenated, which is exactly the token sequence a
sampler produces when it continues the encoded prompt.

Cold start (R1 Sec. 2.3.1): "long CoTs ... in a readable pattern", each response
`<think>reasoning</think>` then a summary. Departure: the summary here is the `<answer>` block
holding the bare final answer, because the rule rewards of the later stages read a number
from that block; the reasoning is the task's worked solution, kept only when it is written in
the question's language (single-language CoTs).

Your own data, one JSONL file per stage (config `data.*` of configs/r1.py), one JSON object a
line; a bad line raises naming the file and the record:
- cold start (`data.cold_start_jsonl`), with `data.cold_start_format`:
  "records": {"question": str, "completion": str} (the R1 template writes the prompt) or
  {"prompt": str, "completion": str} (used as is); the completion is the whole response, e.g.
  " <think>\n...\n</think>\n<answer> 42 </answer>";
  "gsm8k" / "math": the task formats of `r1jax.data.tasks.jsonl`; each example's worked
  solution and answer become an R1-format completion (examples without one are skipped).
- reasoning RL and all-scenario RL: their GRPO sections' `data.train_jsonl` / `test_jsonl` /
  `jsonl_format` (gsm8k, math, code); rejection sampling then draws its prompts from the
  reasoning-RL training file.
- non-reasoning data (`data.non_reasoning_jsonl`): {"question": str, "response": str}.
- preference pairs (`data.preference_jsonl`, `data.preference_test_jsonl`):
  {"question": str, "chosen": str, "rejected": str}.
- held-out evaluation (`data.eval_jsonl`, `data.eval_jsonl_format`): gsm8k or math format.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from r1jax.data import pipeline, tasks, templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.tasks import preference
from r1jax.r1 import rejection
from r1jax.train import metrics


def r1_completion(reasoning: str, answer: str) -> str:
    """` <think>\\nreasoning\\n</think>\\n<answer> answer </answer>` (the R1 output format)."""
    return (f" {templates.THINK_OPEN}\n{reasoning.strip()}\n{templates.THINK_CLOSE}\n"
            f"{templates.ANSWER_OPEN} {answer} {templates.ANSWER_CLOSE}")


def _cold_start_record(ex: dict, template: templates.Template) -> dict[str, Any]:
    return {"type": "cold_start", "prompt": template.format_prompt(ex["question"]),
            "completion": r1_completion(ex["worked_solution"], ex["answer"]),
            "question": ex["question"], "answer": ex["answer"],
            "task": ex["task"], "key": ex.get("key")}


def cold_start_records(task_name: str, knobs: dict, num: int, seed: int,
                       template: templates.Template) -> list[dict[str, Any]]:
    """`num` training-split examples whose worked solution is in the question's language, as
    prompt/completion records in the R1 output format."""
    source = pipeline.generated_source(tasks.get(task_name, **knobs), "train", seed)
    records, index = [], 0
    while len(records) < num:
        ex = source[index]
        index += 1
        if ex.get("solution_language", ex.get("language")) != ex.get("language"):
            continue
        records.append(_cold_start_record(ex, template))
        if index > 100 * num + 1000:
            raise RuntimeError(f"{task_name}: too few single-language worked solutions")
    return records


def _strings(path, records: list[dict], *names: str) -> list[dict]:
    """Checks that every record has the string fields `names` (a named error otherwise)."""
    if not records:
        raise ValueError(f"{path}: no records")
    for number, record in enumerate(records, start=1):
        missing = [k for k in names if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}: record {number} needs string field(s) {missing}")
    return records


def user_cold_start_records(path: str | os.PathLike, fmt: str, num: int,
                            template: templates.Template) -> list[dict[str, Any]]:
    """The first `num` cold-start records of the user's JSONL (schemas: module docstring)."""
    if fmt in tasks.jsonl.FORMATS:
        examples = [ex for ex in tasks.jsonl.load(path, fmt).examples if ex.get("worked_solution")]
        if not examples:
            raise ValueError(f"{path}: no example with a worked solution for the cold start")
        return [_cold_start_record(ex, template) for ex in examples[:num]]
    if fmt != "records":
        raise ValueError(f"data.cold_start_format={fmt!r}: must be 'records' or one of "
                         f"{tasks.jsonl.FORMATS}")
    records = metrics.read_jsonl(path)[:num]
    if not records:
        raise ValueError(f"{path}: no records")
    out = []
    for number, record in enumerate(records, start=1):
        key = "prompt" if "prompt" in record else "question"
        if not isinstance(record.get(key), str) or not isinstance(record.get("completion"), str):
            raise ValueError(f"{path}: record {number} needs string fields 'completion' and "
                             "'question' (or 'prompt')")
        prompt = record[key] if key == "prompt" else template.format_prompt(record[key])
        out.append({"type": "cold_start", "prompt": prompt, "completion": record["completion"]})
    return out


def user_non_reasoning_pairs(path: str | os.PathLike, num: int) -> list[tuple[str, str]]:
    """(question, response) pairs of the user's non-reasoning JSONL, the first `num`."""
    records = _strings(path, metrics.read_jsonl(path)[:num], "question", "response")
    return [(r["question"], r["response"]) for r in records]


def user_preference_pairs(path: str | os.PathLike, num: int,
                          template: templates.Template) -> list[dict[str, Any]]:
    """The first `num` {question, chosen, rejected} pairs of the user's JSONL, both responses
    in the policy's non-reasoning layout (as `preference_pairs`)."""
    records = _strings(path, metrics.read_jsonl(path)[:num], "question", "chosen", "rejected")
    return [dict(r, **{side: rejection.empty_think_completion(template, r[side])
                       for side in ("chosen", "rejected")}) for r in records]


def non_reasoning_pairs(num: int, seed: int, split: str = "train") -> list[tuple[str, str]]:
    """(instruction, good answer) pairs from the toy preference task: non-reasoning data."""
    task = preference.Preference()
    return [(ex["question"], ex["chosen"])
            for ex in (task.example(split, seed, i) for i in range(num))]


def preference_pairs(num: int, seed: int, split: str,
                     template: templates.Template) -> list[dict[str, Any]]:
    """Preference pairs with both responses in the policy's non-reasoning layout (an empty
    think block, then the answer block), so that the reward model reads what the policy
    writes."""
    task = preference.Preference()
    pairs = []
    for i in range(num):
        ex = dict(task.example(split, seed, i))
        for side in ("chosen", "rejected"):
            ex[side] = rejection.empty_think_completion(template, ex[side])
        pairs.append(ex)
    return pairs


def read_records(path: str | os.PathLike) -> list[dict[str, Any]]:
    """JSONL prompt/completion records (`metrics.read_jsonl`: a line that is not a JSON object
    raises naming the file and line); a record without string `prompt` and `completion`, or a
    file without records, raises too."""
    records = metrics.read_jsonl(path)
    for number, record in enumerate(records, start=1):
        missing = [k for k in ("prompt", "completion") if not isinstance(record.get(k), str)]
        if missing:
            raise ValueError(f"{path}: record {number} needs string field(s) {missing}")
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def sft_examples(records: Iterable[dict], tok: tokenizer_lib.Tokenizer
                 ) -> list[tuple[list[int], list[float]]]:
    """(tokens, weights) per record: prompt tokens weight 0, completion tokens + EOS weight 1."""
    out = []
    for record in records:
        prompt = tok.encode(record["prompt"])
        completion = tok.encode(record["completion"]) + [tok.eos_id]
        out.append((prompt + completion, [0.0] * len(prompt) + [1.0] * len(completion)))
    return out


def shuffled(records: Sequence[dict], seed: int) -> list[dict]:
    order = np.random.default_rng(seed).permutation(len(records))
    return [records[i] for i in order]
