"""Word-problem answers written the way people write them: in number words, with a unit.

"twelve dollars" and 12 are the same answer, but the numeric rule (`rewards.numeric`) reads
only numbers, so an example whose reference answer is worded (`worded_example`) has to be
graded by a generative judge (`r1jax.r1.judge`). Its task is `WORDED_TASK`, so a reward spec
routes it to the judge (`registry.Spec.routes`), and its original integer answer stays in
`rule_answer`: the ground truth a measurement may use, which the judge never sees.
"""

from __future__ import annotations

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen "
         "fourteen fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
#: The unit of each word-problem kind (`word_problems.KINDS`).
UNITS = {"shopping": "dollars", "ages": "years", "travel": "kilometres", "reading": "days",
         "sharing": "each"}
FORMS = ("digits", "digits_unit", "words", "words_unit")
WORDED_TASK = "word_problems_worded"


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
    if form not in FORMS:
        raise ValueError(f"write_answer: form {form!r} is not one of {FORMS}")
    text = str(value) if form.startswith("digits") else number_words(value)
    return f"{text} {unit}" if form.endswith("_unit") else text


def can_word(example: dict) -> bool:
    """Whether `worded_example` can rewrite `example`: a toy word problem (a `kind` of `UNITS`)
    with a whole-number answer. User data (JSONL) has no kind and is never rewritten."""
    return example.get("kind") in UNITS and str(example.get("answer", "")).isdigit()


def worded_example(example: dict, form: str = "words_unit") -> dict:
    """A word-problem example whose reference `answer` is written in `form` (number words with
    the kind's unit by default), task `WORDED_TASK`, the integer answer kept in `rule_answer`.

    Raises:
      ValueError: the example is not a word problem (no `kind` of `UNITS`, or a non-integer
        answer).
    """
    kind, answer = example.get("kind"), str(example.get("answer", ""))
    if not can_word(example):
        raise ValueError(f"worded_example: needs a word problem (kind in {sorted(UNITS)}, an "
                         f"integer answer); got kind={kind!r}, answer={answer!r}")
    return dict(example, task=WORDED_TASK, answer=write_answer(int(answer), form, UNITS[kind]),
                rule_answer=answer)
