"""Multi-digit arithmetic (+, -, *) with column-style worked solutions.

Fields: `a`, `b` (int operands), `op` ("+", "-" or "*"), `answer` (the decimal result).
Subtraction keeps a >= b so the result and every column step stay non-negative.
Worked solutions follow the school algorithms: column addition with carries, column
subtraction with borrows, and long multiplication by partial products.
"""

from __future__ import annotations

import numpy as np

from r1jax.data.tasks import base

_PLACES = ("ones", "tens", "hundreds", "thousands")


def _place(i: int) -> str:
    return _PLACES[i] if i < len(_PLACES) else f"10^{i}"


def _digits(n: int) -> list[int]:
    """Decimal digits of n >= 0, least significant first."""
    return [int(c) for c in reversed(str(n))]


def add_steps(a: int, b: int) -> list[str]:
    """Column addition of a + b, one line per column."""
    da, db = _digits(a), _digits(b)
    lines, carry = ["Add column by column from the right."], 0
    for i in range(max(len(da), len(db))):
        x = da[i] if i < len(da) else 0
        y = db[i] if i < len(db) else 0
        total = x + y + carry
        lines.append(f"{_place(i)}: {x} + {y} + carry {carry} = {total}, "
                     f"write {total % 10}, carry {total // 10}.")
        carry = total // 10
    if carry:
        lines.append(f"The final carry {carry} goes in front.")
    return lines


def sub_steps(a: int, b: int) -> list[str]:
    """Column subtraction of a - b (a >= b), one line per column."""
    da, db = _digits(a), _digits(b)
    lines, borrow = ["Subtract column by column from the right."], 0
    for i in range(len(da)):
        x = da[i] - borrow
        y = db[i] if i < len(db) else 0
        if x < y:
            lines.append(f"{_place(i)}: {x} < {y}, borrow 10: {x + 10} - {y} = {x + 10 - y}.")
            borrow = 1
        else:
            lines.append(f"{_place(i)}: {x} - {y} = {x - y}.")
            borrow = 0
    return lines


def mul_steps(a: int, b: int) -> list[str]:
    """Long multiplication a * b: one partial product per digit of b, then their sum."""
    lines = [f"Multiply {a} by each digit of {b}, from the right."]
    partials = []
    for i, d in enumerate(_digits(b)):
        p = a * d * 10**i
        shift = f", shifted {i} place{'s' if i > 1 else ''}: {p}" if i else ""
        lines.append(f"{a} * {d} = {a * d}{shift}.")
        partials.append(p)
    if len(partials) > 1:
        lines.append(f"Add the partial products: {' + '.join(map(str, partials))} = {sum(partials)}.")
    return lines


_OPS = {"+": (lambda a, b: a + b, add_steps), "-": (lambda a, b: a - b, sub_steps),
        "*": (lambda a, b: a * b, mul_steps)}


class Arithmetic(base.Task):
    """a op b with operands of `min_digits` to `max_digits` digits.

    Args:
      min_digits, max_digits: operand lengths (each operand drawn independently).
      ops: which operators to draw from, e.g. "+-" or "*".
      max_mul_digits: caps the second operand of * (long multiplications grow fast).
      length_weights: relative weights of the operand lengths min_digits, min_digits + 1, ...,
        max_digits (uniform when None); e.g. (1, 3) with 1-2 digits makes three operands in
        four 2-digit, so 9 problems in 16 have two 2-digit operands instead of 1 in 4.
    """

    name = "arithmetic"

    def __init__(self, *, min_digits=2, max_digits=4, ops="+-*", max_mul_digits=3,
                 length_weights=None, test_percent=10):
        super().__init__(test_percent=test_percent)
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        if not ops or set(ops) - set(_OPS):
            raise ValueError(f"ops must be a non-empty subset of '+-*', got {ops!r}")
        self.min_digits, self.max_digits = min_digits, max_digits
        self.length_weights = None
        if length_weights is not None:
            w = np.asarray(length_weights, float)
            if w.shape != (max_digits - min_digits + 1,) or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"length_weights needs {max_digits - min_digits + 1} "
                                 f"non-negative weights (one per length {min_digits}.."
                                 f"{max_digits}) with a positive sum, got {length_weights}")
            self.length_weights = tuple(float(x) for x in w)
        self.ops, self.max_mul_digits = "".join(sorted(set(ops))), max_mul_digits
        top = max(min_digits, max_mul_digits)  # the longest second operand of *
        if "*" in self.ops and self.length_weights is not None \
                and sum(self.length_weights[:top - min_digits + 1]) <= 0:
            raise ValueError(f"length_weights {length_weights} give no weight to the lengths "
                             f"{min_digits}..{top} that the second operand of * may have "
                             f"(max_mul_digits={max_mul_digits})")

    def knobs(self):
        return dict(super().knobs(), min_digits=self.min_digits, max_digits=self.max_digits,
                    ops=self.ops, max_mul_digits=self.max_mul_digits,
                    length_weights=self.length_weights)

    def _operand(self, rng, max_digits: int) -> int:
        top = max(self.min_digits, max_digits)
        if self.length_weights is None:
            n = int(rng.integers(self.min_digits, top + 1))
        else:  # the weights of the lengths up to `top` (a * operand may be capped lower)
            w = np.asarray(self.length_weights[:top - self.min_digits + 1])
            n = self.min_digits + int(rng.choice(len(w), p=w / w.sum()))
        low = 10 ** (n - 1) if n > 1 else 0
        return int(rng.integers(low, 10**n))

    def _generate(self, rng: np.random.Generator):
        op = self.ops[rng.integers(len(self.ops))]
        a = self._operand(rng, self.max_digits)
        b = self._operand(rng, self.max_mul_digits if op == "*" else self.max_digits)
        if op == "-" and a < b:
            a, b = b, a
        fn, steps = _OPS[op]
        result = str(fn(a, b))
        lines = steps(a, b) + [f"So {a} {op} {b} = {result}.", f"The answer is {result}"]
        return {
            "key": f"{a}{op}{b}",
            "question": f"What is {a} {op} {b}?",
            "answer": result,
            "a": a,
            "b": b,
            "op": op,
            "worked_solution": "\n".join(lines),
        }
