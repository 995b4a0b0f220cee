"""Numeric accuracy for arithmetic and word problems (GSM8K-style): exact value comparison.

A rule-based accuracy reward (DeepSeek-R1 Sec. 2.2.2) for tasks whose answer is one number. The
prediction is the completion's final answer (`answer.final_answer`); both sides are parsed
to exact `Fraction`s, so "1,234", "1234.0", "$1234", "\\frac{2468}{2}" and "2468/2" all equal
1234. Anything that is not a plain number scores 0: use `rewards.math` for expressions.
"""

from __future__ import annotations

import re
from fractions import Fraction

from r1jax.rewards import answer as answer_lib

MAX_CHARS = 64
_NUMBER = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d{1,3})?")
_FRAC = re.compile(r"\\d?frac\{([^{}]+)\}\{([^{}]+)\}")
_STRIP = re.compile(r"\\boxed\{|\\text\{[^{}]*\}|\\[,!;: ]|[\s$,}{%]|\\%|\\\$|\.$")


def parse_number(text: str) -> Fraction | None:
    """Returns the exact value of a plain number ("-1,234.5", "3/4", "\\frac{3}{4}", "50%"
    is 50), or None."""
    if not isinstance(text, str) or len(text) > 4 * MAX_CHARS:
        return None
    text = _FRAC.sub(r"(\1)/(\2)", text.strip())
    text = _STRIP.sub("", text).replace("(", "").replace(")", "")
    if not text or len(text) > MAX_CHARS:
        return None
    num, slash, den = text.partition("/")
    try:
        if not _NUMBER.fullmatch(num) or (slash and not _NUMBER.fullmatch(den)):
            return None
        value = Fraction(num)
        return value / Fraction(den) if slash else value
    except (ValueError, ZeroDivisionError, OverflowError):
        return None


def accuracy(completion: str, answer, *, answer_in_think: bool = False) -> float:
    """Returns 1.0 if the completion's final answer equals `answer` exactly as a number, else 0.

    The answer is read outside the reasoning unless `answer_in_think` (see `rewards.answer`)."""
    predicted = answer_lib.final_answer(completion, answer_in_think=answer_in_think)
    if predicted is None:
        return 0.0
    gold = parse_number(str(answer))
    value = parse_number(predicted)
    return float(gold is not None and value is not None and gold == value)
