"""Math accuracy: is the final answer symbolically equal to the reference? (R1 Sec. 2.2.2).

"For math problems with deterministic results, the model is required to provide the final answer
in a specified format (e.g., within a box), enabling reliable rule-based verification." The
answer is the completion's last `<answer>` block or last `\\boxed{}` (`templates.extract_answer`).

Two stages:
1. fast path: normalised string equality, then exact numbers (`numeric.parse_number`): two plain
   numbers are decided here without sympy;
2. `math-verify` (LaTeX and plain expressions, fractions, `\\boxed`, units stripped, sets,
   intervals) for everything else.

math-verify can hang on pathological input. Inside a `WorkerPool` the pool's per-item timer
bounds it (math-verify's own alarm is switched off so the two don't cancel each other); called
directly from the main thread, math-verify's own SIGALRM timeout (`timeout_s`) applies.
"""

from __future__ import annotations

import logging
import re
import signal
import threading

from r1jax.data import templates
from r1jax.rewards import numeric

MAX_CHARS = 1000
_SPACING = re.compile(r"\\left|\\right|\\[,!;: ]|\s|\$")


def accuracy(completion: str, answer: str, *, timeout_s: float = 5.0) -> float:
    """Returns 1.0 if the completion's final answer equals `answer` (symbolically), else 0.0."""
    predicted = templates.extract_answer(completion)
    if predicted is None or not predicted or len(predicted) > MAX_CHARS:
        return 0.0
    answer = str(answer)
    quick = _fast_equal(predicted, answer)
    if quick is not None:
        return float(quick)
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
