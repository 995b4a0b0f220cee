"""Countdown accuracy against an independent reference scorer on generated equations."""

import random
from fractions import Fraction

import pytest

from r1jax.rewards import countdown


class _Parser:
    """Reference: tokenizer + recursive-descent parser over Fractions (no ast)."""

    def __init__(self, text):
        self.tokens = self._tokenize(text)
        self.pos = 0
        self.used = []

    @staticmethod
    def _tokenize(text):
        tokens, i = [], 0
        while i < len(text):
            ch = text[i]
            if ch.isspace():
                i += 1
            elif ch in "0123456789":
                j = i
                while j < len(text) and text[j] in "0123456789":
                    j += 1
                tokens.append(int(text[i:j]))
                i = j
            elif ch in "+-*/()":
                tokens.append(ch)
                i += 1
            else:
                raise ValueError(ch)
        return tokens

    def _peek(self):
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def _take(self):
        self.pos += 1
        return self.tokens[self.pos - 1]

    def expr(self):
        value = self.term()
        while self._peek() in ("+", "-"):
            value = value + self.term() if self._take() == "+" else value - self.term()
        return value

    def term(self):
        value = self.factor()
        while self._peek() in ("*", "/"):
            value = value * self.factor() if self._take() == "*" else value / self.factor()
        return value

    def factor(self):
        token = self._peek()
        if token == "-":
            self._take()
            return -self.factor()
        if token == "(":
            self._take()
            value = self.expr()
            if self._take() != ")":
                raise ValueError(")")
            return value
        if isinstance(token, int):
            self.used.append(self._take())
            return Fraction(token)
        raise ValueError(token)


def reference(completion, numbers, target):
    start, end = completion.rfind("<answer>"), completion.rfind("</answer>")
    if start < 0 or end < start:
        return 0.0
    text = completion[start + len("<answer>") : end].split("=")[0]
    try:
        parser = _Parser(text)
        value = parser.expr()
        if parser.pos != len(parser.tokens):
            return 0.0
    except (ValueError, IndexError, ZeroDivisionError):
        return 0.0
    if sorted(parser.used) != sorted(numbers):
        return 0.0
    return float(abs(value - Fraction(target)) <= Fraction(1, 10**5))


def _random_expr(rng, numbers):
    if len(numbers) == 1:
        return str(numbers[0])
    k = rng.randint(1, len(numbers) - 1)
    left, right = _random_expr(rng, numbers[:k]), _random_expr(rng, numbers[k:])
    expr = f"{left} {rng.choice('+-*/')} {right}"
    return f"({expr})" if rng.random() < 0.7 else expr


def _cases(seed=0, count=400):
    rng = random.Random(seed)
    for i in range(count):
        numbers = [rng.randint(1, 99) for _ in range(rng.randint(2, 5))]
        order = numbers[:]
        rng.shuffle(order)
        expr = _random_expr(rng, order)
        try:
            target = _Parser(expr).expr()
        except ZeroDivisionError:
            continue
        target = int(target) if target.denominator == 1 else float(target)
        kind = i % 5
        if kind == 1:  # wrong target
            target = target + rng.choice([1, -1, 0.5])
        elif kind == 2:  # a number reused or missing
            numbers = numbers[:-1] + [numbers[0]]
        elif kind == 3:  # mutate one operator
            expr = expr.replace("+", "-", 1) if "+" in expr else expr.replace("*", "/", 1)
        elif kind == 4 and rng.random() < 0.5:  # with "= target" and a leading minus
            expr = f"-({expr}) = {target}"
            target = -target
        yield f"<think>search</think><answer>{expr}</answer>", numbers, target


def test_agrees_with_reference_on_generated_equations():
    results = []
    for completion, numbers, target in _cases():
        expected = reference(completion, numbers, target)
        assert countdown.accuracy(completion, numbers, target) == expected, completion
        results.append(expected)
    assert len(results) > 300 and 0.2 < sum(results) / len(results) < 0.8


@pytest.mark.parametrize(
    "completion, numbers, target, expected",
    [
        ("<answer>(1 + 2) * 3</answer>", [3, 2, 1], 9, 1.0),
        ("<answer>(1 + 2) * 3 = 9</answer>", [1, 2, 3], 9.0, 1.0),
        ("<answer>1 + 2 + 3</answer>", [1, 2, 3], 9, 0.0),
        ("<answer>3 * 3</answer>", [1, 2, 3], 9, 0.0),  # 3 reused, 1 and 2 unused
        ("<answer>10 / 4</answer>", [10, 4], 2.5, 1.0),
        ("<answer>1 / 3 * 3</answer>", [1, 3, 3], 1, 1.0),  # exact, no float drift
        ("<answer>2 \\times 3</answer>", [2, 3], 6, 1.0),
        ("<answer>2 ** 3</answer>", [2, 3], 8, 0.0),
        ("<answer>2.0 * 3</answer>", [2, 3], 6, 0.0),
        ("<answer>abs(-6)</answer>", [6], 6, 0.0),
        ("<answer>5 / (3 - 3)</answer>", [5, 3, 3], 1, 0.0),
        ("(1 + 2) * 3", [1, 2, 3], 9, 0.0),  # no answer block
        ("<answer>1 + 2</answer> <answer>(1 + 2) * 3</answer>", [1, 2, 3], 9, 1.0),
    ],
)
def test_accuracy_cases(completion, numbers, target, expected):
    assert countdown.accuracy(completion, numbers, target) == expected


def test_size_guards():
    huge = "9" * 600
    assert countdown.accuracy(f"<answer>{huge}</answer>", [int(huge)], int(huge)) == 0.0
    nines = "*".join(["999999999"] * 6)
    assert countdown.accuracy(f"<answer>{nines}</answer>", [999999999] * 6, 0) == 0.0
    with pytest.raises(countdown._Reject):
        countdown.evaluate("-" * 100 + "1")
