"""Toy grading data for the generative judge: answers a rule cannot check.

The word problems (`r1jax.data.tasks.word_problems`) have integer answers; here a candidate
answer is written the way people write it: digits, digits with a unit ("12 dollars"), number
words ("twelve") or number words with a unit ("twelve dollars"), and is either the reference
or a near miss (reference +- 1..3, or +- 10). The numeric rule (`rewards.numeric`) cannot read
number words, so it cannot grade these; a judge must. Every item's ground truth is known by
construction, which is what the judge is trained on (`sft_records`) and measured against
(`agreement`); the judge itself never sees the label.

Items: {"question", "reference", "candidate", "correct": bool, "form"}; train and held-out
items come from the task's disjoint train and test splits.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from r1jax.data import templates
from r1jax.data.tasks import word_problems
from r1jax.r1 import judge, rejection

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
UNITS = {"shopping": "dollars", "ages": "years", "travel": "kilometres", "reading": "days",
         "sharing": "each"}
FORMS = ("digits", "digits_unit", "words", "words_unit")


def number_words(n: int) -> str:
    """English words of 0 <= n < 1,000,000 ("one hundred and five", "forty-two").

    Raises:
      ValueError: n out of range.
    """
    if not 0 <= n < 1_000_000:
        raise ValueError(f"number_words: {n} is outside [0, 1000000)")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return f"{_ONES[n // 100]} hundred" + ("" if rest == 0 else " and " + number_words(rest))
    rest = n % 1000
    joiner = "" if rest == 0 else (" and " if rest < 100 else " ") + number_words(rest)
    return f"{number_words(n // 1000)} thousand{joiner}"


def write_answer(value: int, form: str, unit: str) -> str:
    """`value` written in `form` (one of `FORMS`) with `unit`."""
    text = str(value) if form.startswith("digits") else number_words(value)
    return f"{text} {unit}" if form.endswith("_unit") else text


def grading_items(num: int, split: str, seed: int) -> list[dict]:
    """`num` items from word problems of `split` ("train" or "test"), half of them correct.

    Returns:
      [{"question", "reference", "candidate", "correct", "form", "value"}], deterministic in
      (split, seed).
    """
    task = word_problems.WordProblems(language="en")
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
        items.append({"question": ex["question"], "reference": ex["answer"],
                      "candidate": write_answer(value, form, UNITS[ex["kind"]]),
                      "correct": correct, "form": form, "value": value})
    return items


def reasoning(item: dict) -> str:
    """The judge's worked CoT for an item: the candidate read as a number, then compared."""
    same = "the same as" if item["value"] == int(item["reference"]) else "not"
    return (f"The candidate {item['candidate']} is {item['value']}. "
            f"The reference is {item['reference']}. {item['value']} is {same} "
            f"{item['reference']}.")


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
