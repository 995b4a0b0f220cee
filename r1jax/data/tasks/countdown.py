"""Countdown (TinyZero-style): reach a target with each given number used exactly once.

A problem is generated backwards from a random expression, so it always has a solution:
draw the numbers, then repeatedly combine two pool entries with + - * / until one value is
left; that value is the target. Every intermediate value is a positive integer (subtraction
keeps the larger operand first, division must be exact), which keeps worked solutions readable.

Fields: `numbers` (list[int], in random order, as shown in the question), `target` (int),
`answer` (one solving expression, e.g. "(12 + 7) * 3 - 4").
The worked solution shows a short search: a few dead-end combinations, then the one that works.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from r1jax.data.tasks import base

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_MAX_TRIES = 1000


def _apply(op: str, a: int, b: int) -> int | None:
    """a op b if the result is a positive integer, else None."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b if a > b else None
    if op == "*":
        return a * b
    return a // b if b > 0 and a % b == 0 else None


def _render(node: Any) -> tuple[str, int]:
    """Expression tree -> (text with minimal parentheses, precedence of its top operator)."""
    if isinstance(node, int):
        return str(node), 3
    op, left, right = node
    prec = _PRECEDENCE[op]
    ltext, lprec = _render(left)
    rtext, rprec = _render(right)
    if lprec < prec:
        ltext = f"({ltext})"
    if rprec < prec or (rprec == prec and op in "-/"):
        rtext = f"({rtext})"
    return f"{ltext} {op} {rtext}", prec


def render(node: Any) -> str:
    """Renders an expression tree: an int, or (op, left, right)."""
    return _render(node)[0]


def random_combination(rng: np.random.Generator, numbers: list[int]):
    """Combines all `numbers` in random pairs; returns (value, tree, steps) or None.

    steps: list of (a, op, b, result) in the order performed.
    """
    pool = [(n, n) for n in numbers]  # (value, tree)
    steps = []
    while len(pool) > 1:
        i, j = rng.choice(len(pool), size=2, replace=False)
        (a, ta), (b, tb) = pool[i], pool[j]
        if a < b:  # larger operand first keeps - and / in the positive integers
            (a, ta), (b, tb) = (b, tb), (a, ta)
        ops = [op for op in "+-*/" if _apply(op, a, b) is not None]
        op = ops[rng.integers(len(ops))]
        value = _apply(op, a, b)
        steps.append((a, op, b, value))
        pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(value, (op, ta, tb))]
    return pool[0][0], pool[0][1], steps


def _steps_text(steps) -> str:
    return ", then ".join(f"{a} {op} {b} = {c}" for a, op, b, c in steps)


class Countdown(base.Task):
    """Countdown with knobs: how many numbers, how large they are, how large the target is.

    Args:
      min_numbers, max_numbers: the count of numbers per problem (TinyZero: 3 to 4).
      max_number: numbers are drawn uniformly from [1, max_number].
      max_target: targets lie in [1, max_target].
      max_dead_ends: the worked solution shows up to this many failed attempts first.
    """

    name = "countdown"

    def __init__(self, *, min_numbers=3, max_numbers=4, max_number=99, max_target=100,
                 max_dead_ends=2, test_percent=10):
        super().__init__(test_percent=test_percent)
        if not 2 <= min_numbers <= max_numbers:
            raise ValueError(f"need 2 <= min_numbers <= max_numbers, got {min_numbers}, "
                             f"{max_numbers}")
        if max_number < 1 or max_target < 1:
            raise ValueError("max_number and max_target must be >= 1")
        self.min_numbers, self.max_numbers = min_numbers, max_numbers
        self.max_number, self.max_target = max_number, max_target
        self.max_dead_ends = max_dead_ends

    def knobs(self):
        return dict(super().knobs(), min_numbers=self.min_numbers, max_numbers=self.max_numbers,
                    max_number=self.max_number, max_target=self.max_target,
                    max_dead_ends=self.max_dead_ends)

    def _generate(self, rng):
        for _ in range(_MAX_TRIES):
            count = int(rng.integers(self.min_numbers, self.max_numbers + 1))
            numbers = [int(n) for n in rng.integers(1, self.max_number + 1, size=count)]
            target, tree, steps = random_combination(rng, numbers)
            if target <= self.max_target:
                break
        else:
            raise RuntimeError("countdown: no target within max_target; raise max_target")
        answer = render(tree)
        return {
            "key": f"{sorted(numbers)}->{target}",
            "question": (
                f"Using the numbers {numbers}, create an equation that equals {target}. "
                "You can use basic arithmetic operations (+, -, *, /) and each number can "
                "only be used once."
            ),
            "answer": answer,
            "numbers": numbers,
            "target": target,
            "worked_solution": self._worked(rng, numbers, target, steps, answer),
        }

    def _worked(self, rng, numbers, target, steps, answer) -> str:
        lines = [f"We need to reach {target} using each of {numbers} exactly once."]
        for _ in range(int(rng.integers(0, self.max_dead_ends + 1))):
            value, _, tried = random_combination(rng, list(numbers))
            if value != target:
                lines.append(f"Try {_steps_text(tried)}. That gives {value}, not {target}.")
        lines.append(f"Try {_steps_text(steps)}. That gives {target}. It works.")
        lines.append(f"So {answer} = {target}.")
        lines.append(f"The answer is {answer}")
        return "\n".join(lines)
