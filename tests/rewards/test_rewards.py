"""Text, length and math rewards, and the registry / weighted combination."""

import numpy as np
import pytest

from r1jax import rewards
from r1jax.data import templates
from r1jax.rewards import format, language, length, math, numeric


@pytest.fixture(scope="module")
def pool():
    with rewards.WorkerPool(2) as workers:
        yield workers


@pytest.mark.parametrize(
    "completion, strict, lenient",
    [
        ("<think>a</think><answer>1</answer>", 1.0, 1.0),
        (" <think>a</think>\n<answer>1</answer>\n", 1.0, 1.0),
        ("a</think><answer>1</answer>", 0.0, 1.0),  # R1-Zero: the model must open <think>
        ("<think>a</think><answer> </answer>", 0.0, 1.0),
        ("<think>a</think> text <answer>1</answer>", 0.0, 1.0),
        ("<think>a</think><answer>1</answer> more", 0.0, 0.75),
        ("<think>a</think><answer>1</answer></answer>", 0.0, 0.75),
        ("<think>a</think><think>b</think><answer>1</answer>", 0.0, 0.5),
        ("<think>a</think> so \\boxed{2}", 0.0, 1.0),
        ("<answer>1</answer><think>a</think>", 0.0, 0.25),
        ("<think>a", 0.0, 0.0),
    ],
)
def test_format(completion, strict, lenient):
    assert format.strict(completion) == strict
    assert format.lenient(completion) == lenient


def test_format_with_prefilled_chat_template():
    chat = templates.get("r1_chat")
    completion = "reasoning</think><answer>4</answer>"
    assert format.strict(completion) == 0.0
    assert format.strict(chat.full_response(completion)) == 1.0


def test_language_consistency():
    assert language.words("我们 need \\frac{1}{2} café 3") == ["我", "们", "need", "café"]
    mixed = "<think>we 计算 this</think><answer>1</answer>"
    assert language.consistency(mixed, "en") == 0.5 and language.consistency(mixed, "zh") == 0.5
    assert language.consistency("<think>只用中文</think>", "zh") == 1.0
    assert language.consistency("<think>123 + 4</think>") == 0.0
    assert language.consistency("no think block") == 0.0
    with pytest.raises(ValueError, match="language"):
        language.consistency("<think>x</think>", "fr")


def test_overlong_matches_dapo():
    values = length.overlong(
        [0, 768, 800, 1000, 1024, 1025, 5000], max_length=1024, cache_length=256
    )
    expected = [0, 0, -32 / 256, -232 / 256, -1, -1, -1]
    np.testing.assert_allclose(values, expected, rtol=1e-6)
    with pytest.raises(ValueError):
        length.overlong([1], max_length=10, cache_length=20)


def test_cosine_length_scaling():
    lengths = np.array([0, 250, 500, 999, 1000])
    right = length.cosine(lengths, np.ones(5, bool), max_length=1000)
    wrong = length.cosine(lengths, np.zeros(5, bool), max_length=1000)
    assert right[0] == pytest.approx(2.0) and np.all(np.diff(right[:4]) < 0)
    assert wrong[0] == pytest.approx(-10.0) and np.all(np.diff(wrong[:4]) > 0)
    assert right[2] == pytest.approx(1.5) and wrong[2] == pytest.approx(-5.0)
    assert right[4] == wrong[4] == -10.0


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("<answer>\\frac{1}{2}</answer>", "0.5", 1.0),
        ("\\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
        ("<answer>\\sqrt{8}</answer>", "2\\sqrt{2}", 1.0),
        ("<answer>5 \\text{ cm}</answer>", "5", 1.0),
        ("<answer>[1, 2)</answer>", "[1,2)", 1.0),
        ("\\boxed{3}", "4", 0.0),
        ("<answer>x</answer>", "y", 0.0),
        ("The answer is 4", "4", 0.0),
    ],
)
def test_math_accuracy(completion, answer, expected):
    assert math.accuracy(completion, answer) == expected


@pytest.mark.parametrize(
    "text, value",
    [("1,234", 1234), ("$1234.", 1234), ("\\frac{3}{4}", 0.75), ("-2/8", -0.25), ("50\\%", 50),
     ("1e400000", None), ("12 apples", None), ("1/0", None)],
)  # fmt: skip
def test_numeric(text, value):
    parsed = numeric.parse_number(text)
    assert parsed == value if value is not None else parsed is None
    if value is not None:
        assert numeric.accuracy(f"<answer>{text}</answer>", str(value)) == 1.0


def test_registry_and_spec_validation():
    assert {"accuracy", "countdown", "math", "code", "format_strict", "language"} <= set(
        rewards.names()
    )
    with pytest.raises(ValueError, match="unknown reward"):
        rewards.get("speed")
    with pytest.raises(ValueError, match="finite"):
        rewards.Spec.from_dict({"format_strict": float("nan")})
    with pytest.raises(ValueError, match="needs task field"):
        rewards.get("countdown")(["x"], numbers=[[1]])
    with pytest.raises(ValueError, match="entries"):
        rewards.get("math")(["x", "y"], answer=["1"])
    with pytest.raises(ValueError, match="max_length"):
        rewards.get("overlong")(["x"], lengths=[1])
    spec = rewards.Spec.from_dict({"math": 1.0}, {"math": {"timeout_s": 3.0}})
    assert hash(spec) == hash(rewards.Spec.from_dict({"math": 1.0}, {"math": {"timeout_s": 3.0}}))
    assert spec.reward("math").timeout_s == 4.0


def test_combine_weights_components_and_correctness(pool):
    completions = [
        "<think>t</think><answer>(1 + 2) * 3</answer>",
        "<think>t</think><answer>1 + 2 + 3</answer>",
        "<answer>(1 + 2) * 3</answer> trailing",
    ]
    spec = rewards.Spec.from_dict(
        {"countdown": 1.0, "format_strict": 0.5, "cosine": 0.1},
        {"cosine": {"max_length": 100}},
    )
    result = rewards.combine(
        spec, completions, pool=pool, numbers=[[1, 2, 3]] * 3, target=[9] * 3, lengths=[0, 0, 0]
    )
    np.testing.assert_array_equal(result.components["countdown"], [1, 0, 1])
    np.testing.assert_array_equal(result.components["format_strict"], [1, 1, 0])
    np.testing.assert_allclose(result.components["cosine"], [2, -10, 2])
    np.testing.assert_allclose(result.total, [1.7, -0.5, 1.2], rtol=1e-6)
    metrics = result.metrics()
    assert metrics["reward/total"] == pytest.approx(np.mean([1.7, -0.5, 1.2]))
    assert "reward/sandbox" not in metrics


def test_accuracy_dispatches_on_task_fields(pool):
    completions = ["<answer>1 + 2</answer>", "\\boxed{\\frac{6}{4}}", "```python\nx = 2\n```", "?"]
    values = rewards.get("accuracy")(
        completions,
        pool=pool,
        numbers=[[1, 2], None, None, None],
        target=[3, None, None, None],
        answer=[None, "1.5", None, None],
        tests=[None, None, ["assert x == 2", "assert x == 3"], None],
    )
    np.testing.assert_array_equal(values, [1.0, 1.0, 0.5, 0.0])
    result = rewards.combine({"accuracy": 1.0}, completions[2:3], pool=pool, tests=[["x"]])
    assert result.metrics()["reward/sandbox"] in ("bwrap", "rlimit")


def test_batched_equals_per_item(pool):
    completions = [f"<answer>{a} + {b}</answer>" for a in range(5) for b in range(5)]
    numbers = [[a, b] for a in range(5) for b in range(5)]
    target = [4] * len(completions)
    pooled = rewards.get("countdown")(completions, pool=pool, numbers=numbers, target=target)
    from r1jax.rewards import countdown

    direct = [countdown.accuracy(c, n, t) for c, n, t in zip(completions, numbers, target)]
    np.testing.assert_array_equal(pooled, direct)
    assert pooled.sum() == 5
