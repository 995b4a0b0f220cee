"""Math accuracy: is the final answer symbolically equal to the reference? (R1 Sec. 2.2.2).

"For math problems with deterministic results, the model is required to provide the final answer
in a specified format (e.g., within a box), enabling reliable rule-based verification." The
answer is the completion's last `<answer>` block or last `\\boxed{}` (`templates.extract_answer`).

Two stages:
1. fast path: normalised string equality, then exact numbers (`numeric.parse_number`): two plain
   numbers are decided here without sympy;
2. `math-verify` (LaTeX and plain expressions, fractions, `\\boxed`, units stripped, sets,
   intervals) for everything else.

math-verify can hang on pathological input. Cheap structural limits reject it first (`too_hard`,
one pass over the tokens, before any symbolic work; such an answer scores 0):

- bracket nesting ({, (, [) deeper than `MAX_DEPTH` (60 nested `\\frac` took the whole 10 s);
- an exponent whose numeric size may exceed 10**`MAX_EXPONENT_LOG10` (`9^{9^{9^{9}}}`,
  `x^{10^{100}}`, also as `**`); the bound treats every literal as multiplied, so it is an
  upper bound for any + - * / combination, and towers are bounded from the top down;
- a factorial or binomial of a number that may exceed `MAX_FACTORIAL` (`100000000!`, `(9^9)!`).

Legitimate answers (`\\frac{\\sqrt{3}}{2}`, `2^{10}`, `e^{-x^{2}}`, `5!`, `\\binom{10}{3}`) are far
inside the limits. Past them, inside a `WorkerPool` the pool's per-item timer bounds the work
(math-verify's own alarm is switched off so the two don't cancel each other); called directly
from the main thread, math-verify's own SIGALRM timeout (`timeout_s`) applies.

Only the answer outside the reasoning counts unless `answer_in_think` (see `rewards.answer`).
"""

from __future__ import annotations

import logging
import math
import re
import signal
import threading

from r1jax.data import templates
from r1jax.rewards import answer as answer_lib
from r1jax.rewards import numeric

MAX_CHARS = 1000
MAX_DEPTH = 10  # math-verify's parse time grows steeply with nesting (16 parentheses: ~0.5 s)
MAX_EXPONENT_LOG10 = 5.0  # 2^{100000} is still instant as an exact integer; 9^{9^9} is not
MAX_FACTORIAL = 10_000
_TOKEN = re.compile(r"\d+(?:\.\d*)?|\\[A-Za-z]+|\\.|\*\*|\s+|.", re.S)
_OPEN, _CLOSE = "{([", "})]"
_POWER = ("^", "**")
_FACTORIAL_COMMANDS = ("\\binom", "\\dbinom", "\\tbinom", "\\choose")
_SYMBOL_LOG10 = math.log10(2)  # a symbol counts as a small number: x^{10} stays cheap
_SPACING = re.compile(r"\\left|\\right|\\[,!;: ]|\s|\$")


def accuracy(completion: str, answer: str, *, timeout_s: float = 5.0,
             answer_in_think: bool = False) -> float:
    """Returns 1.0 if the completion's final answer equals `answer` (symbolically), else 0.0.

    Args:
      completion: model output; the answer is its last `<answer>` block or `\\boxed{}` outside
        the reasoning (anywhere if `answer_in_think`).
      answer: the reference answer.
      timeout_s: math-verify's own limit when called outside a `WorkerPool`.
    """
    predicted = answer_lib.final_answer(completion, answer_in_think=answer_in_think)
    if predicted is None or not predicted or len(predicted) > MAX_CHARS:
        return 0.0
    answer = str(answer)
    quick = _fast_equal(predicted, answer)
    if quick is not None:
        return float(quick)
    if too_hard(predicted) or too_hard(answer):
        return 0.0
    try:
        return float(_verify(predicted, answer, timeout_s))
    except Exception:  # noqa: BLE001 - sympy can raise anything on odd input
        return 0.0


def _normalise(text: str) -> str:
    text = text.strip().removesuffix(".")
    inner = templates.last_boxed(text)
    if inner is not None and text.startswith("\\boxed{") and text.endswith("}"):
        text = inner
    return _SPACING.sub("", text).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")


def _fast_equal(predicted: str, answer: str) -> bool | None:
    """True/False when decidable without sympy, else None."""
    a, b = _normalise(predicted), _normalise(answer)
    if a == b:
        return True
    x, y = numeric.parse_number(a), numeric.parse_number(b)
    if x is not None and y is not None:
        return x == y
    return None


def _verify(predicted: str, answer: str, timeout_s: float) -> bool:
    import math_verify  # deferred: sympy import is slow and only this path needs it

    logging.getLogger("math_verify").setLevel(logging.ERROR)
    # Our own timer (the pool's) is running: don't let math-verify's alarm() overwrite it.
    own_timer = threading.current_thread() is threading.main_thread() and (
        signal.getitimer(signal.ITIMER_REAL)[0] == 0
    )
    limit = max(1, round(timeout_s)) if own_timer else None  # math-verify uses alarm(int)
    gold = math_verify.parse(_wrap(answer), parsing_timeout=limit)
    pred = math_verify.parse(_wrap(predicted), parsing_timeout=limit)
    if not gold or not pred:
        return False
    return bool(math_verify.verify(gold, pred, timeout_seconds=limit))


def _wrap(text: str) -> str:
    return text if "\\boxed" in text else f"${text}$"


# ---------------------------------------------------------------------------------------------
# Structural limits, checked before any symbolic work.


class _TooHard(Exception):
    """The expression breaks a structural limit."""


def too_hard(text: str) -> str | None:
    """Why `text` is too costly to hand to math-verify (see the module docstring), or None."""
    try:
        _log_bound(_tree(text))
    except _TooHard as e:
        return str(e)
    return None


def _tree(text: str) -> list:
    """Tokens nested by brackets: a bracketed group becomes a list (its brackets dropped);
    whitespace tokens are dropped. Unbalanced brackets are tolerated (math-verify decides)."""
    root: list = []
    stack = [root]
    for token in _TOKEN.findall(text):
        if token in _OPEN:
            if len(stack) > MAX_DEPTH:
                raise _TooHard(f"brackets nested deeper than {MAX_DEPTH}")
            stack[-1].append([])
            stack.append(stack[-1][-1])
        elif token in _CLOSE:
            if len(stack) > 1:
                stack.pop()
        elif not token.isspace():
            stack[-1].append(token)
    return root


def _log_bound(items: list) -> float:
    """An upper bound on log10 of any number `items` can denote, checking every exponent,
    factorial and binomial on the way (raises _TooHard).

    Every operand counts as multiplied (|a +- b| and |a * b| are at most max(2,|a|) *
    max(2,|b|)), a power chain a^b^c is bounded from the top down, n! by n^n."""
    total, last, i = 0.0, 0.0, 0
    while i < len(items):
        item = items[i]
        if item in _POWER:  # the previous operand (already in total) to the power of a chain
            exponent, i = _exponent_chain(items, i)
            if exponent > MAX_EXPONENT_LOG10:
                raise _TooHard(f"an exponent may exceed 10^{MAX_EXPONENT_LOG10:g}")
            powered = last * 10**exponent
            total, last = total + powered - last, powered
            continue
        if item == "!" or item in _FACTORIAL_COMMANDS:
            argument = last if item == "!" else _argument_bound(items, i + 1)
            if argument > math.log10(MAX_FACTORIAL):
                raise _TooHard(f"a factorial or binomial of more than {MAX_FACTORIAL}")
            grown = 10**argument * argument
            total, last = total + grown - (last if item == "!" else 0.0), grown
        elif isinstance(item, list):
            last = _log_bound(item)
            total += last
        elif item[0].isdecimal():
            last = math.log10(max(float(item), 2.0))
            total += last
        elif item.isalpha() or (item.startswith("\\") and item[1:].isalpha()):
            last = _SYMBOL_LOG10
            total += last
        i += 1
    return total


def _argument_bound(items: list, i: int) -> float:
    """The log10 bound of the operand at items[i] (a group or one token); 0 if none."""
    if i >= len(items) or items[i] in _POWER:
        return 0.0
    return _log_bound(items[i : i + 1])


def _exponent_chain(items: list, i: int) -> tuple[float, int]:
    """For items[i] = "^": the log10 bound of the exponent a^(b^(c...)) read right to left,
    and the index after the chain."""
    operands = []
    while i < len(items) and items[i] in _POWER:
        operands.append(_argument_bound(items, i + 1))
        i += 2
    exponent = operands.pop()  # log10 of the topmost exponent's value
    for base in reversed(operands):
        if exponent > MAX_EXPONENT_LOG10:
            break  # already too large; the caller rejects it
        exponent = max(base, _SYMBOL_LOG10) * 10**exponent
    return exponent, i
