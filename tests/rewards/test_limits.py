"""Reward bounds (issue 19): structural LaTeX limits, the language cap, the per-batch time
budget, option validation, and the answer_in_think switch."""

import random
import re
import subprocess
import time

import numpy as np
import pytest

from r1jax import rewards
from r1jax.rewards import answer, countdown, language, math, numeric, registry

PATHOLOGICAL = {
    "nested_frac": "\\frac{1}{" * 60 + "2" + "}" * 60,
    "power_tower": "9^{9^{9^{9}}}",
    "huge_factorial": "100000000!",
    "python_tower": "9**9**9",
    "factorial_of_power": "(9^{9})!",
    "sum_to_googol": "\\sum_{n=1}^{10^{100}} n",
    "deep_parentheses": "(" * 11 + "1" + ")" * 11,
}
LEGITIMATE = [
    ("\\frac{1}{2}", "0.5"), ("5!", "120"), ("2^{10}", "1024"), ("\\frac{100!}{98!}", "9900"),
    ("\\binom{5}{2}", "10"), ("(x+1)^2", "x^2+2x+1"), ("e^{-x^{2}}", "\\exp(-x^2)"),
    ("\\frac{\\sqrt{3}}{2}", "\\sqrt{3}/2"), ("2^{3^{2}}", "512"),
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def warm_math_verify():
    math.accuracy("<answer>x+1</answer>", "1+x")  # the sympy import is not the scorer's time


@pytest.mark.parametrize("name", sorted(PATHOLOGICAL))
def test_pathological_latex_rejected_before_symbolic_work(name):
    text = PATHOLOGICAL[name]
    assert math.too_hard(text)
    start = time.perf_counter()
    # A non-numeric reference, so the exact-number fast path cannot decide it first.
    assert math.accuracy(f"<answer>{text}</answer>", "x + 1", timeout_s=10.0) == 0.0
    assert time.perf_counter() - start < 0.5  # was the whole 10 s item limit


@pytest.mark.parametrize("predicted, gold", LEGITIMATE)
def test_legitimate_answers_pass_the_limits_and_still_score(predicted, gold):
    assert math.too_hard(predicted) is None
    assert math.accuracy(f"<think>t</think> <answer>{predicted}</answer>", gold) == 1.0


def test_limit_reasons_name_the_rule():
    assert "nested deeper than 10" in math.too_hard(PATHOLOGICAL["nested_frac"])
    assert "exponent" in math.too_hard(PATHOLOGICAL["power_tower"])
    assert "factorial" in math.too_hard(PATHOLOGICAL["huge_factorial"])
    assert math.too_hard("(" * 10 + "1" + ")" * 10) is None  # exactly at the depth limit


def test_language_reward_bounded():
    huge = "<think>" + "word 中 " * (10 << 20 >> 3) + "</think>"  # 10 MB
    start = time.perf_counter()
    assert language.consistency(huge, "en") == pytest.approx(0.5, abs=1e-3)
    assert time.perf_counter() - start < 1.0  # 7-8 s before the cap
    head = "english " * (language.MAX_CHARS // 8)
    assert language.consistency(f"<think>{head}{'中' * 1000}</think>", "en") == 1.0  # past the cap


# ------------------------------------------------------------------------------- batch budget


def _slow(completion):
    time.sleep(0.2)
    return 1.0


def test_inline_batch_budget():
    fn = registry.RewardFn("slow_test_reward", _slow).with_options(batch_timeout_s=0.5)
    start = time.perf_counter()
    values, over = fn.score_batch(["x"] * 10)
    assert time.perf_counter() - start < 1.5  # 10 items would take 2 s
    assert 0 < over < 10 and values.sum() == 10 - over
    np.testing.assert_array_equal(values[10 - over :], 0.0)
    registry.register(fn)
    try:
        result = registry.combine({"slow_test_reward": 1.0}, ["x"] * 10)
        assert result.over_budget["slow_test_reward"] > 0
        assert result.metrics()["reward/over_budget"] == result.over_budget["slow_test_reward"]
        assert "reward/over_budget" not in registry.combine({"format_strict": 1.0}, ["x"]).metrics()
    finally:
        registry.unregister("slow_test_reward")


def test_pool_batch_budget_scores_unfinished_items_as_failures():
    fast, slow = {"args": ["false"]}, {"args": ["sleep", "8"]}  # exit status 1 -> score 1.0
    with rewards.WorkerPool(2, preload=()) as workers:
        workers.map(subprocess.call, [fast, fast], timeout_s=5)  # workers up
        start = time.perf_counter()
        out = workers.map(subprocess.call, [fast, slow, fast, slow, fast], timeout_s=60,
                          failure=-1.0, budget_s=1.5)
        assert time.perf_counter() - start < 4.0
        np.testing.assert_array_equal(out, [1, -1, 1, -1, -1])
        assert workers.over_budget == 3
        # The stuck workers were replaced: no late result leaks into the next batch.
        np.testing.assert_array_equal(workers.map(subprocess.call, [fast] * 4, timeout_s=5), 1.0)
        assert workers.over_budget == 0


def test_options_are_validated():
    assert rewards.get("math").batch_timeout_s == registry.BATCH_TIMEOUT_S
    assert rewards.get("math", batch_timeout_s=None).batch_timeout_s is None
    assert ("batch_timeout_s", 5.0) not in rewards.get("math", batch_timeout_s=5.0).options
    for bad in (0, -1.0, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="'batch_timeout_s' must be a positive"):
            rewards.get("numeric", batch_timeout_s=bad)
    with pytest.raises(ValueError, match="reward 'math' has no option 'answer_in_thinks'"):
        rewards.get("math", answer_in_thinks=True)
    with pytest.raises(ValueError, match="reward 'format_strict' has no option 'max_length'"):
        rewards.Spec.from_dict({"format_strict": 1.0}, {"format_strict": {"max_length": 3}})


# ------------------------------------------------------------------------------- answer_in_think


@pytest.mark.parametrize("completion, outside", [
    ("<think>so \\boxed{7}</think>", None),
    ("<think><answer>7</answer></think> I am not sure", None),
    ("<think>\\boxed{3}</think> <answer>7</answer>", "7"),
    ("<think>maybe 3</think> so \\boxed{7}", "7"),
    ("reasoning \\boxed{3}</think><answer>7</answer>", "7"),  # template pre-filled <think>
    ("<answer>7</answer><think>a</think>", "7"),
    ("<think>\\boxed{7}", None),  # never closed: all of it is reasoning
    ("The answer is \\boxed{7}.", "7"),  # no tags: the whole text
])
def test_final_answer_outside_think(completion, outside):
    assert answer.final_answer(completion) == outside
    assert answer.final_answer(completion, answer_in_think=True) is not None


def test_answer_in_think_switch_for_every_accuracy_reward():
    inside = "<think>I get \\boxed{7}, done</think> </answer>"
    assert math.accuracy(inside, "7") == 0.0 and numeric.accuracy(inside, "7") == 0.0
    assert math.accuracy(inside, "7", answer_in_think=True) == 1.0
    assert numeric.accuracy(inside, "7", answer_in_think=True) == 1.0
    equation = "<think><answer>3 + 4</answer></think>"
    assert countdown.accuracy(equation, [3, 4], 7) == 0.0
    assert countdown.accuracy(equation, [3, 4], 7, answer_in_think=True) == 1.0
    assert registry.accuracy(inside, answer="7") == 0.0
    assert registry.accuracy(inside, answer="7", answer_in_think=True) == 1.0
    spec = rewards.Spec.from_dict({"numeric": 1.0}, {"numeric": {"answer_in_think": True}})
    assert rewards.combine(spec, [inside], answer=["7"]).total[0] == 1.0
    assert rewards.combine({"numeric": 1.0}, [inside], answer=["7"]).total[0] == 0.0


def _outside_think_reference(text):
    """Slow and obvious: walk the tags with a state machine."""
    kept, since_close, inside = [], [], False
    for piece in re.split(r"(</?think>)", text):
        if piece == "<think>":
            if not inside:  # the text before a think block is kept, closed or not
                kept.extend(since_close)
                since_close = []
            inside = True
        elif piece == "</think>":
            if not inside:  # a close with no open: everything since the last close was reasoning
                since_close = []
            kept.extend(since_close)
            since_close, inside = [], False
        elif not inside:
            since_close.append(piece)
    return "".join(kept + ([] if inside else since_close))


def test_outside_think_equals_reference_and_is_linear():
    rng = random.Random(0)
    alphabet = ["<think>", "</think>", "a", "b", " ", "<thi", "nk>"]
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
        assert answer.outside_think(text) == _outside_think_reference(text), text
    for text in ("<think>" * 100_000 + "</think>" * 100_000, "</think>" * 200_000,
                 "<think></think>x" * 100_000):
        start = time.perf_counter()
        answer.outside_think(text)
        # A linear scan takes milliseconds; a quadratic one on 1.4 M characters takes minutes,
        # so the bound leaves room for a loaded machine without letting that through.
        assert time.perf_counter() - start < 5.0
