"""Generated tasks: determinism, disjoint splits, solvable countdowns, correct worked solutions."""

import ast
import fractions
import itertools
import json
import operator
import re

import numpy as np
import pytest

from r1jax.data import tasks
from r1jax.data.tasks import base, jsonl

COMMON = ("task", "question", "answer", "worked_solution", "key", "split")


def take(task, split, seed, n):
    return list(itertools.islice(task.examples(split, seed), n))


def evaluate(expression: str) -> tuple[fractions.Fraction, list[int]]:
    """Our own evaluator: exact value and the integer literals of an arithmetic expression."""
    ops = {
        ast.Add: operator.add,
        ast.Sub: operator.sub,
        ast.Mult: operator.mul,
        ast.Div: operator.truediv,
    }
    literals = []

    def walk(node):
        if isinstance(node, ast.BinOp) and type(node.op) in ops:
            return ops[type(node.op)](walk(node.left), walk(node.right))
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return fractions.Fraction(node.value)
        raise ValueError(f"unexpected node {ast.dump(node)}")

    return walk(ast.parse(expression, mode="eval").body), literals


def test_registry():
    assert tasks.names() == ["arithmetic", "countdown", "mixture", "word_problems"]
    assert isinstance(tasks.get("countdown", max_numbers=5), tasks.countdown.Countdown)
    with pytest.raises(KeyError, match="unknown task"):
        tasks.get("sudoku")
    task = tasks.get("arithmetic", ops="+", max_digits=6)
    assert tasks.get("arithmetic", **task.knobs()).knobs() == task.knobs()


@pytest.mark.parametrize("name", ["countdown", "arithmetic", "word_problems"])
def test_examples_deterministic_per_seed_and_fields(name):
    task = tasks.get(name)
    first = take(task, "train", 7, 30)
    assert first == take(tasks.get(name), "train", 7, 30)
    assert first != take(task, "train", 8, 30)
    assert task.example("train", 7, 12) == first[12]
    for ex in first:
        assert all(isinstance(ex[k], str) and ex[k] for k in COMMON)
        assert ex["task"] == name and ex["split"] == "train"
        assert ex["worked_solution"].endswith(ex["answer"])


@pytest.mark.parametrize(
    "name,n_test", [("countdown", 150), ("arithmetic", 400), ("word_problems", 400)]
)
def test_splits_never_overlap(name, n_test):
    task = tasks.get(name)
    train = take(task, "train", 0, 3000)
    test = take(task, "test", 0, n_test)
    assert {e["split"] for e in train} == {"train"} and {e["split"] for e in test} == {"test"}
    assert not {e["key"] for e in train} & {e["key"] for e in test}
    # The split is a function of the key alone, whatever the seed or knobs.
    for ex in train[:200] + test:
        assert base.split_of(f"{name}:{ex['key']}", 10) == ex["split"]
    mixed = [task.sample(np.random.default_rng(i)) for i in range(500)]
    share = sum(e["split"] == "test" for e in mixed) / len(mixed)
    assert 0.04 < share < 0.18


def test_split_stable_across_languages_and_test_percent():
    en = take(tasks.get("word_problems", language="en"), "test", 3, 40)
    zh = take(tasks.get("word_problems", language="zh"), "test", 3, 40)
    assert [e["key"] for e in en] == [e["key"] for e in zh]
    assert [e["answer"] for e in en] == [e["answer"] for e in zh]
    assert all(e["question"] != z["question"] for e, z in zip(en, zh))
    assert all(re.search(r"[\u4e00-\u9fff]", z["question"]) for z in zh)
    assert all(z["worked_solution"].endswith("答案是 " + z["answer"]) for z in zh)
    with pytest.raises(ValueError, match="empty"):
        tasks.get("countdown", test_percent=0).example("test", 0, 0)


@pytest.mark.parametrize(
    "knobs",
    [
        {},
        {"min_numbers": 5, "max_numbers": 6, "max_target": 1000},
        {"max_number": 9, "max_target": 30},
    ],
)
def test_countdown_always_solvable(knobs):
    task = tasks.get("countdown", **knobs)
    for ex in take(task, "train", 1, 300):
        value, literals = evaluate(ex["answer"])
        assert value == ex["target"], ex
        assert sorted(literals) == sorted(ex["numbers"])
        assert knobs.get("min_numbers", 3) <= len(ex["numbers"]) <= knobs.get("max_numbers", 4)
        assert 1 <= ex["target"] <= knobs.get("max_target", 100)
        assert all(1 <= n <= knobs.get("max_number", 99) for n in ex["numbers"])
        assert str(ex["numbers"]) in ex["question"] and str(ex["target"]) in ex["question"]
        # Every step shown in the worked solution is correct arithmetic.
        for a, op, b, c in re.findall(
            r"(?:Try |then )(\d+) ([-+*/]) (\d+) = (\d+)", ex["worked_solution"]
        ):
            assert evaluate(f"{a} {op} {b}")[0] == int(c)


def test_arithmetic_answers_and_column_steps():
    task = tasks.get("arithmetic", min_digits=1, max_digits=5)
    for ex in take(task, "train", 2, 400):
        assert int(ex["answer"]) == evaluate(f"{ex['a']} {ex['op']} {ex['b']}")[0]
        assert ex["question"] == f"What is {ex['a']} {ex['op']} {ex['b']}?"
        lines = ex["worked_solution"]
        if ex["op"] == "+":  # the written digits, read back to front, spell the answer
            digits = re.findall(r"write (\d)", lines)
            carry = re.findall(r"final carry (\d)", lines)
            assert ("".join(carry + digits[::-1]).lstrip("0") or "0") == ex["answer"]
        if ex["op"] == "*" and ex["b"] >= 10:
            partials = re.search(r"partial products: ([\d + ]+) = (\d+)", lines)
            assert sum(map(int, partials.group(1).split(" + "))) == int(ex["answer"])
    assert {e["op"] for e in take(tasks.get("arithmetic", ops="-"), "train", 0, 50)} == {"-"}
    with pytest.raises(ValueError, match="ops"):
        tasks.get("arithmetic", ops="+^")


def test_arithmetic_length_weights():
    """Operand lengths follow the weights: (1, 3) over 1-2 digits makes 3 operands in 4
    two-digit (2,000 operands: about 5 standard errors of slack either side)."""
    task = tasks.get("arithmetic", min_digits=1, max_digits=2, ops="+", length_weights=(1, 3))
    examples = take(task, "train", 3, 1000)
    two_digit = np.mean([x >= 10 for ex in examples for x in (ex["a"], ex["b"])])
    assert 0.70 < two_digit < 0.80
    assert tasks.get("arithmetic", **task.knobs()).knobs()["length_weights"] == (1.0, 3.0)
    only_two = tasks.get("arithmetic", min_digits=1, max_digits=2, length_weights=(0, 1))
    assert all(ex["a"] >= 10 and (ex["b"] >= 10 or ex["op"] == "*")
               for ex in take(only_two, "train", 0, 200))
    for bad in ((1,), (1, -1), (0, 0)):
        with pytest.raises(ValueError, match="length_weights"):
            tasks.get("arithmetic", min_digits=1, max_digits=2, length_weights=bad)
    with pytest.raises(ValueError, match="max_mul_digits=1"):  # * operand b has 1 digit, weight 0
        tasks.get("arithmetic", min_digits=1, max_digits=2, max_mul_digits=1,
                  length_weights=(0, 1))
    capped = tasks.get("arithmetic", min_digits=1, max_digits=2, ops="*", max_mul_digits=1,
                       length_weights=(1, 3))
    assert all(ex["b"] < 10 for ex in take(capped, "train", 0, 50))


FORMULAS = {
    "shopping": lambda v: v["bill"] - v["n"] * v["p"],
    "ages": lambda v: (v["s"] - v["d"] - 2 * v["k"]) // 2,
    "travel": lambda v: v["v"] * v["t"] + v["w"] * v["u"],
    "reading": lambda v: v["pages"] // v["r"] - v["d"],
    "sharing": lambda v: v["n"] // v["k"],
}


@pytest.mark.parametrize("language", ["en", "zh", "mixed"])
def test_word_problem_answers(language):
    task = tasks.get("word_problems", language=language, scale=2)
    examples = take(task, "train", 4, 300)
    for ex in examples:
        values = dict(kv.split("=") for kv in ex["key"].split(":", 1)[1].split(","))
        values = {k: int(v) for k, v in values.items()}
        assert FORMULAS[ex["kind"]](values) == int(ex["answer"]) >= 0, ex
        assert ex["worked_solution"].endswith(ex["answer"])
    assert {e["kind"] for e in examples} == set(FORMULAS)
    if language == "mixed":
        pairs = {(e["language"], e["solution_language"]) for e in examples}
        assert pairs == {("en", "en"), ("en", "zh"), ("zh", "en"), ("zh", "zh")}
    else:
        assert {e["language"] for e in examples} == {language}
    with pytest.raises(ValueError, match="language"):
        tasks.get("word_problems", language="fr")


# ----------------------------------------------------------------------------- user JSONL


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


GSM8K_GOOD = json.dumps(
    {
        "question": "Tom has 3 bags of 415 apples. How many?",
        "answer": "3 * 415 = <<3*415=1245>>1245 apples.\n#### 1,245",
    }
)


def test_gsm8k(tmp_path):
    path = write_lines(tmp_path / "gsm8k.jsonl", [GSM8K_GOOD, "", GSM8K_GOOD])
    examples = jsonl.load(path, "gsm8k").examples
    assert len(examples) == 2
    ex = examples[0]
    assert ex["answer"] == "1245" and ex["task"] == "gsm8k" and ex["split"] == "train"
    assert ex["question"].startswith("Tom has")
    assert ex["worked_solution"] == "3 * 415 = 1245 apples.\nThe answer is 1245"
    assert set(COMMON) <= set(ex)


def test_math_formats_and_boxed(tmp_path):
    lines = [
        json.dumps(
            {
                "problem": "p1",
                "solution": "So $\\boxed{1}$, no: $\\boxed{\\frac{a^{2}}{b}}$.",
                "level": "Level 3",
                "type": "Algebra",
            }
        ),
        json.dumps({"problem": "p2", "answer": "\\sqrt{2}", "solution": "\\boxed{wrong}"}),
        json.dumps({"problem": "p3", "answer": 204}),  # AIME answers are often integers
    ]
    examples = jsonl.load(write_lines(tmp_path / "math.jsonl", lines), "math", task="aime").examples
    assert [e["answer"] for e in examples] == ["\\frac{a^{2}}{b}", "\\sqrt{2}", "204"]
    assert examples[0]["subject"] == "Algebra" and examples[0]["level"] == "Level 3"
    assert examples[0]["worked_solution"].endswith("The answer is \\frac{a^{2}}{b}")
    assert {e["task"] for e in examples} == {"aime"}
    assert jsonl.last_boxed("\\boxed{\\{1, 2\\}} text") == "\\{1, 2\\}"
    assert jsonl.last_boxed("\\boxed 7$") == "7"
    assert jsonl.last_boxed("\\boxed{unbalanced") is None
    assert jsonl.last_boxed("nothing here") is None


def test_code(tmp_path):
    lines = [
        json.dumps(
            {"prompt": "Write add(a, b).", "tests": ["assert add(1, 2) == 3"], "entry_point": "add"}
        ),
        json.dumps({"prompt": "Write neg(x).", "tests": ["assert neg(1) == -1"]}),
    ]
    examples = jsonl.load(write_lines(tmp_path / "code.jsonl", lines), "code").examples
    assert examples[0]["tests"] == ["assert add(1, 2) == 3"]
    assert examples[0]["entry_point"] == "add" and examples[1]["entry_point"] == ""
    assert examples[0]["question"] == "Write add(a, b)." and examples[0]["answer"] == ""


BAD = {
    "gsm8k": [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "JSON object"),
        (json.dumps({"question": "q"}), "missing field 'answer'"),
        (json.dumps({"question": 3, "answer": "#### 1"}), "field 'question'"),
        (json.dumps({"question": "q", "answer": "no marker"}), "####"),
    ],
    "math": [
        (json.dumps({"problem": "p"}), "'answer' or 'solution'"),
        (json.dumps({"problem": "p", "solution": "no box"}), "boxed"),
        (json.dumps({"problem": "p", "answer": True}), "field 'answer'"),
        (json.dumps({"problem": "p", "answer": [1]}), "field 'answer'"),
    ],
    "code": [
        (json.dumps({"prompt": "p", "tests": "assert x"}), "field 'tests'"),
        (json.dumps({"prompt": "p", "tests": [1]}), "list of non-empty strings"),
        (json.dumps({"prompt": "p", "tests": ["assert 1"], "entry_point": 5}), "entry_point"),
    ],
}
GOOD = {
    "gsm8k": GSM8K_GOOD,
    "math": json.dumps({"problem": "p", "answer": "1"}),
    "code": json.dumps({"prompt": "p", "tests": ["assert True"]}),
}


@pytest.mark.parametrize("fmt", sorted(BAD))
def test_malformed_lines_name_file_and_line(tmp_path, fmt):
    for bad, reason in BAD[fmt]:
        path = write_lines(tmp_path / f"{fmt}.jsonl", [GOOD[fmt], "", bad, GOOD[fmt]])
        with pytest.raises(ValueError) as info:
            jsonl.load(path, fmt)
        assert f"{fmt}.jsonl:3:" in str(info.value) and reason in str(info.value)
        loaded = jsonl.load(path, fmt, on_error="skip")
        assert len(loaded.examples) == 2 and loaded.skipped == 1
        assert loaded.errors[0].startswith(f"{path}:3:")
    with pytest.raises(ValueError, match="on_error"):
        jsonl.load(path, fmt, on_error="ignore")


def test_generated_answers_score_full_accuracy_under_the_rewards():
    """Contract with r1jax.rewards: a completion that states the canonical answer scores 1."""
    from r1jax.rewards import countdown as countdown_reward
    from r1jax.rewards import math as math_reward

    for ex in take(tasks.get("countdown"), "train", 9, 50):
        completion = f"<think>{ex['worked_solution']}</think> <answer>{ex['answer']}</answer>"
        assert countdown_reward.accuracy(completion, ex["numbers"], ex["target"]) == 1.0
    for name in ("arithmetic", "word_problems"):
        for ex in take(tasks.get(name), "train", 9, 30):
            completion = f"<think>{ex['worked_solution']}</think> <answer>{ex['answer']}</answer>"
            assert math_reward.accuracy(completion, ex["answer"]) == 1.0
