"""Toy grading data for the generative judge: answers a rule cannot check.

The word problems (`r1jax.data.tasks.word_problems`) have integer answers. Here one side of
each item, the candidate or the reference, is written the way people write it
(`data.tasks.worded`): digits, digits with a unit ("12 dollars"), number words ("twelve") or
number words with a unit ("twelve dollars"); the other side is plain digits. The candidate is
either the reference's value or a near miss (+- 1..3, or +- 10). The numeric rule
(`rewards.numeric`) cannot read number words, so it cannot grade these; a judge must. A worded
reference is what stage 3's judge route gets (`worded.worded_example`: the policy answers in
digits, the reference is in words). Every item's ground truth is known by construction, which
is what the judge is trained on (`sft_records`) and measured against (`agreement`); the judge
itself never sees the label.

Items: {"question", "reference", "candidate", "correct": bool, "form", "side" (which side is
written freely), "value" (the candidate's), "reference_value"}; questions in English or
Chinese; train and held-out items come from the task's disjoint train and test splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r1jax.data import templates
from r1jax.data.tasks import word_problems
from r1jax.data.tasks.worded import FORMS, UNITS, number_words, write_answer
from r1jax.r1 import judge, rejection

__all__ = ["FORMS", "SIDES", "UNITS", "agreement", "grading_items", "number_words",
           "reasoning", "sft_records", "write_answer"]
SIDES = ("candidate", "reference")


def grading_items(num: int, split: str, seed: int) -> list[dict]:
    """`num` items from word problems of `split` ("train" or "test"), half of them correct,
    the free side alternating between the candidate and the reference.

    Returns:
      [{"question", "reference", "candidate", "correct", "form", "side", "value",
      "reference_value"}], deterministic in (split, seed).
    """
    task = word_problems.WordProblems(language="mixed")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    items = []
    for i in range(num):
        ex = task.example(split, seed, i)
        answer = int(ex["answer"])
        correct = bool(i % 2 == 0)
        value = answer
        if not correct:
            offset = int(rng.choice([1, 2, 3, 10])) * int(rng.choice([-1, 1]))
            value = answer + offset if answer + offset >= 0 else answer + abs(offset)
        form = FORMS[int(rng.integers(len(FORMS)))]
        side = SIDES[(i // 2) % 2]
        unit = UNITS[ex["kind"]]
        candidate = write_answer(value, form, unit) if side == "candidate" else str(value)
        reference = write_answer(answer, form, unit) if side == "reference" else str(answer)
        items.append({"question": ex["question"], "reference": reference,
                      "candidate": candidate, "correct": correct, "form": form, "side": side,
                      "value": value, "reference_value": answer})
    return items


def reasoning(item: dict) -> str:
    """The judge's worked CoT for an item: each side read as a number, then compared."""
    same = "=" if item["value"] == item["reference_value"] else "!="
    return (f"candidate: {item['candidate']} = {item['value']}\n"
            f"reference: {item['reference']} = {item['reference_value']}\n"
            f"{item['value']} {same} {item['reference_value']}")


def sft_records(items: Sequence[dict], template: templates.Template) -> list[dict]:
    """Prompt/completion records that teach a judge the grading task (`r1.data` SFT format):
    the grading prompt, then the worked CoT and the verdict line in the template's layout."""
    records = []
    for it in items:
        prompt = judge.grading_prompt(it["question"], it["reference"], it["candidate"])
        completion = rejection.empty_think_completion(
            template, judge.verdict_text(it["correct"]), reasoning(it))
        records.append({"prompt": template.format_prompt(prompt), "completion": completion})
    return records


def agreement(verdicts: Sequence[judge.Verdict], items: Sequence[dict]) -> dict[str, float]:
    """The judge's agreement with the ground truth: {"agreement", "parsed" (share of replies
    with a verdict), "false_accept" (share of incorrect items it accepted), "n"}. A rejected
    reply counts as "incorrect"."""
    if len(verdicts) != len(items) or not items:
        raise ValueError(f"agreement: {len(verdicts)} verdicts for {len(items)} items")
    truth = np.array([it["correct"] for it in items])
    said = np.array([v.correct for v in verdicts])
    wrong = ~truth
    return {"agreement": float(np.mean(said == truth)),
            "parsed": float(np.mean([v.parsed for v in verdicts])),
            "false_accept": float(np.mean(said[wrong])) if wrong.any() else 0.0,
            "n": len(items)}
