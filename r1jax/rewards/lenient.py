"""Lenient answer reading: the last expression or number of a completion, tags ignored.

A diagnostic, not a reward. R1-Zero's strict accuracy needs the `<answer>` block, so its rise
mixes learning the format with learning to solve. Reading the answer leniently, as a base model
would be graded (the "The answer is ..." line, else the last arithmetic expression or number),
separates the two: if lenient accuracy rises too, RL improved the solving, not just the format.
"""

from __future__ import annotations

import re

_TAG = re.compile(r"</?[A-Za-z_]{1,20}>")
_ANSWER_IS = re.compile(r"answer is[:\s]*(.+)", re.IGNORECASE)
# A run of numbers, operators, parentheses and spaces that contains a digit.
_EXPRESSION = re.compile(r"[0-9(][0-9+\-*/×÷().=\s]*")
_MAX_CHARS = 20_000


def last_answer(completion: str, side: str = "value") -> str | None:
    """The completion's final answer read leniently, or None when it has no digit at all.

    Tags such as `<answer>` are removed first; then, from the last line with a digit, the text
    after "answer is" if present, else the last expression. Of an equation `a = b` the value
    side (`b`, for numeric tasks) or the expression side (`a`, for countdown) is kept.
    """
    if side not in ("value", "expression"):
        raise ValueError(f"side={side!r}: must be 'value' or 'expression'")
    text = _TAG.sub("\n", completion[-_MAX_CHARS:])  # a tag ends a line
    for line in reversed(text.splitlines()):
        if not any(c.isdigit() for c in line):
            continue
        said = _ANSWER_IS.search(line)
        if said:
            line = said.group(1)
        runs = [m.group(0).strip() for m in _EXPRESSION.finditer(line)]
        runs = [r for r in runs if any(c.isdigit() for c in r)]
        if runs:
            parts = (max(runs, key=len) if said else runs[-1]).split("=")
            candidate = parts[0] if side == "expression" else parts[-1]
            return candidate.strip().rstrip(".").strip() or None
    return None


def as_answer_block(completion: str, side: str = "value") -> str:
    """The completion rewritten so that a strict `<answer>` reader sees its lenient answer."""
    answer = last_answer(completion, side)
    return "" if answer is None else f"<answer>{answer}</answer>"
