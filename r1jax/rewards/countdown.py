"""Countdown accuracy: does the answer's equation use each given number once and hit the target?

A rule-based accuracy reward in the sense of DeepSeek-R1 Sec. 2.2.2, for the Countdown task used
by small R1-Zero reproductions (TinyZero). The equation is read from the last `<answer>` block
outside the reasoning (`rewards.answer`; left side of any `=`), parsed with `ast` and evaluated by a whitelist walker over exact
`Fraction`s, never `eval`:

- allowed: non-negative integer literals, binary + - * /, unary minus, parentheses;
- each of `numbers` used exactly once (multiset equality);
- |value - target| <= 1e-5;
- bounded work: at most 512 characters of ASCII, AST depth 64, and every intermediate numerator
  and denominator below 10**40, so `9**9**9`, huge literals and deep nesting are rejected fast.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from fractions import Fraction

import numpy as np

from r1jax.rewards import answer as answer_lib

MAX_CHARS = 512
MAX_DEPTH = 64
MAX_MAGNITUDE = 10**40
TOLERANCE = 1e-5
_ALLOWED = re.compile(r"[0-9+\-*/().\s]*")
_NORMALISE = (("\\times", "*"), ("\\cdot", "*"), ("\\div", "/"), ("×", "*"), ("÷", "/"), ("−", "-"))


class _Reject(Exception):
    """The expression breaks a rule."""


def accuracy(completion: str, numbers: Sequence[int], target: float, *,
             answer_in_think: bool = False) -> float:
    """Returns 1.0 if the completion's `<answer>` equation is a correct Countdown solution, else 0.

    Args:
      completion: model output; the equation is the last `<answer>` block (left of `=`) outside
        the reasoning (anywhere if `answer_in_think`, see `rewards.answer`).
      numbers: the numbers to use, each exactly once.
      target: the value to reach.
    """
    try:
        expr = equation(completion, answer_in_think=answer_in_think)
        if expr is None:
            return 0.0
        value, used = evaluate(expr)
        given = sorted(_as_int(n) for n in numbers)
        if sorted(used) != given:
            return 0.0
        return float(abs(value - Fraction(target)) <= TOLERANCE)
    except (_Reject, ValueError, TypeError, ZeroDivisionError, OverflowError, RecursionError,
            MemoryError, SyntaxError):  # fmt: skip
        return 0.0


def equation(completion: str, *, answer_in_think: bool = False) -> str | None:
    """Returns the candidate equation (left of `=`) from the answer block, or None."""
    answer = answer_lib.final_answer(completion, answer_in_think=answer_in_think)
    if answer is None:
        return None
    expr = answer.split("=", 1)[0]
    for old, new in _NORMALISE:
        expr = expr.replace(old, new)
    return expr.strip() or None


def evaluate(expr: str) -> tuple[Fraction, list[int]]:
    """Returns (exact value, integer literals used) of a whitelisted arithmetic expression.

    Raises:
      _Reject: on anything outside the grammar or the size limits.
      ZeroDivisionError: on division by zero.
    """
    if len(expr) > MAX_CHARS or not _ALLOWED.fullmatch(expr):
        raise _Reject(expr[:40])
    tree = ast.parse(expr, mode="eval")
    used: list[int] = []
    return _eval(tree.body, used, 0), used


def _eval(node: ast.AST, used: list[int], depth: int) -> Fraction:
    if depth > MAX_DEPTH:
        raise _Reject("too deep")
    if isinstance(node, ast.Constant) and type(node.value) is int:
        used.append(node.value)
        return _bounded(Fraction(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_eval(node.operand, used, depth + 1)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left = _eval(node.left, used, depth + 1)
        right = _eval(node.right, used, depth + 1)
        return _bounded(_BINARY[type(node.op)](left, right))
    raise _Reject(type(node).__name__)


_BINARY = {
    ast.Add: lambda a, b: a + b,
    ast.Sub: lambda a, b: a - b,
    ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b,
}


def _bounded(value: Fraction) -> Fraction:
    if abs(value.numerator) >= MAX_MAGNITUDE or value.denominator >= MAX_MAGNITUDE:
        raise _Reject("too large")
    return value


def _as_int(number) -> int:
    if isinstance(number, int | np.integer):
        return int(number)
    as_float = float(number)
    if not as_float.is_integer():
        raise _Reject("non-integer given number")
    return int(as_float)
