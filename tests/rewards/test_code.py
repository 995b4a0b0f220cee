"""Sandboxed code execution: pass rates, limits, test forms and verdicts, in each sandbox."""

import math

import pytest

from r1jax.rewards import _child, code, harness, sandbox

KINDS = ["rlimit"] + [
    pytest.param(k, marks=pytest.mark.skipif(why is not None, reason=f"{k}: {why}"))
    for k, why in ((k, sandbox.probe(k)) for k in sandbox.ISOLATING)
]


@pytest.mark.parametrize("kind", KINDS)
def test_pass_rate_counts_each_test(kind):
    result = code.run_tests(
        "def add(a, b):\n    return a + b",
        ["assert add(1, 2) == 3", "assert add(1, 1) == 3", "raise SystemExit(0)", "add(0, 0)"],
        timeout_s=3.0,
        kind=kind,
    )
    assert result.passed == (True, False, False, True) and result.kind == kind
    assert not result.timed_out


@pytest.mark.parametrize("kind", KINDS)
def test_timeout_kills_and_fails(kind):
    result = code.run_tests(
        "import time\ntime.sleep(30)", ["assert True"], timeout_s=0.5, kind=kind
    )
    assert result.timed_out and result.passed == (False,) and result.wall_s < 3.0


@pytest.mark.parametrize("kind", KINDS)
def test_limits(kind):
    result = code.run_tests(
        "",
        [
            "x = bytearray(4 << 30)",  # RLIMIT_AS
            "open('big', 'wb').write(b'0' * (64 << 20))",  # RLIMIT_FSIZE
            "import os; os.fork()",
            "import subprocess; subprocess.run(['true'])",
            "open('small', 'w').write('ok')",  # the work dir is writable
        ],
        timeout_s=3.0,
        kind=kind,
    )
    assert result.passed == (False, False, False, False, True)


@pytest.mark.parametrize("kind", KINDS)
def test_environment_and_workdir_are_clean(kind, monkeypatch):
    monkeypatch.setenv("R1JAX_TEST_SECRET", "hunter2")
    result = code.run_tests(
        "import os",
        ["assert os.environ.get('R1JAX_TEST_SECRET') is None", "assert os.listdir('.') == []"],
        timeout_s=3.0,
        kind=kind,
    )
    assert result.passed == (True, True)


def test_printing_the_protocol_cannot_fake_a_pass():
    forged = "import sys\nfor i in range(3): print('x', i, 1)\nsys.stdout.flush()"
    assert code.pass_rate(forged + "\nraise SystemExit", ["assert True"], timeout_s=3.0) == 0.0


def test_extract_code_takes_the_last_fence():
    completion = "```python\nx = 1\n```\ntext\n```py\ny = 2\n```"
    assert code.extract_code(completion) == "y = 2\n"
    assert code.extract_code("no code") is None
    assert code.reward("```python\ndef f(): return 3\n```", ["assert f() == 3"]) == 1.0


def test_sandbox_kind_is_known():
    assert code.sandbox_kind() in code.KINDS


def test_pass_rate_never_raises():
    assert code.pass_rate("\x00\udcff", ["\x00"], timeout_s=2.0) == 0.0
    assert code.pass_rate("x = 1", [], timeout_s=2.0) == 0.0


# HumanEval-style problems written for these tests: (prompt, canonical body, check, entry point).
HUMANEVAL = [
    ("def sum_of_squares(nums):\n    \"\"\"Sum of the squares of nums.\"\"\"\n",
     "    return sum(x * x for x in nums)\n",
     "METADATA = {'author': 'r1jax'}\n\n\ndef check(candidate):\n"
     "    assert candidate([1, 2, 3]) == 14\n    assert candidate([]) == 0\n"
     "    assert candidate([-2]) == 4\n", "sum_of_squares"),
    ("def count_vowels(word):\n",
     "    return sum(c in 'aeiou' for c in word)\n",
     "def check(candidate):\n    for word, n in [('apple', 2), ('sky', 0), ('queue', 4)]:\n"
     "        assert candidate(word) == n\n", "count_vowels"),
    ("def is_palindrome(text):\n",
     "    return text == text[::-1]\n",
     "def check(candidate):\n    assert candidate('abba')\n    assert not candidate('abc')\n"
     "    assert candidate('') is True\n", "is_palindrome"),
    ("def mean(xs):\n",
     "    return sum(xs) / len(xs)\n",
     "import math\n\n\ndef check(candidate):\n    assert abs(candidate([1, 2]) - 1.5) < 1e-6\n"
     "    assert math.isclose(candidate([0.1, 0.2]), 0.15)\n", "mean"),
    ("def pairs_summing_to(xs, k):\n",
     "    return [(a, b) for i, a in enumerate(xs) for b in xs[i + 1:] if a + b == k]\n",
     "def check(candidate):\n    assert candidate([1, 2, 3], 4) == [(1, 3)]\n"
     "    assert candidate([2, 2], 4) == [(2, 2)]\n    assert candidate([], 1) == []\n",
     "pairs_summing_to"),
    ("def word_lengths(text):\n",
     "    return {w: len(w) for w in text.split()}\n",
     "def check(candidate):\n    assert candidate('a bb') == {'a': 1, 'bb': 2}\n"
     "    assert candidate('') == {}\n", "word_lengths"),
]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_humaneval_style_canonical_and_stubs(kind):
    for prompt, body, check, entry in HUMANEVAL:
        test = f"{check}\ncheck({entry})\n"
        assert code.pass_rate(prompt + body, [test], timeout_s=10.0, kind=kind) == 1.0, entry
        assert code.pass_rate(prompt + "    pass\n", [test], timeout_s=10.0, kind=kind) == 0.0
    converted = [harness.convert(f"{c}\ncheck({e})") is not None for _, _, c, e in HUMANEVAL]
    assert converted == [True, False, True, True, True, True]  # count_vowels has a loop


@pytest.mark.parametrize("kind", KINDS)
def test_call_and_stdio_specs(kind):
    program = "import sys\ndef pair(x):\n    return (x, x + 1)\n" \
              "if __name__ == '__main__':\n    n = int(sys.stdin.read())\n" \
              "    print(n * 2, '  ')\n    print()\n    sys.exit(n == 7)\n"
    tests = [
        {"call": "pair", "args": [1], "expected": [1, 2]},  # JSON specs read tuples as lists
        '{"call": "pair", "kwargs": {"x": 2}, "expected": [2, 3]}',  # a spec as JSON text
        {"call": "pair", "args": [1], "expected": [1, 3]},
        {"input": "21\n", "output": "42\n"},  # trailing spaces and blank lines are ignored
        {"input": "21", "output": "43"},
        {"input": "7", "output": "14"},  # right output, but a nonzero exit status
        {"call": "missing", "args": [], "expected": None},
        {"nonsense": 1},  # malformed: fails, does not raise
    ]
    result = code.run_tests(program, tests, timeout_s=10.0, kind=kind)
    assert result.passed == (True, True, False, True, False, False, False, False)


def test_assert_conversion_forms():
    calls = harness.convert("assert f(1, x=[2]) == (3, 'a')\nassert 4 == f(2)\nassert f(3)\n"
                            "assert not f(4)\nassert f(5) is None\nassert abs(f(6) - 1.0) <= 0.5")
    assert [(c.name, c.args, c.kwargs, c.predicate, c.expected) for c in calls] == [
        ("f", (1,), (("x", [2]),), "eq", (3, "a")), ("f", (2,), (), "eq", 4),
        ("f", (3,), (), "truthy", None), ("f", (4,), (), "falsy", None),
        ("f", (5,), (), "is", None), ("f", (6,), (), "close", (1.0, 0.5, False))]
    for source in ["x = 1\nassert f(x) == 1", "assert f(g(1)) == 2", "assert f(1) == g(2)",
                   "assert f(1) > 2", "print(f(1))", "assert f(1) is 1", "import os\nassert f()",
                   "def check(c):\n    assert c(1) == 1\ncheck(f)\ncheck(g)", "syntax error("]:
        assert harness.convert(source) is None, source
    equal = harness.Call("f", (), (), "eq", 1)
    assert harness.check(equal, 1.0) and not harness.check(equal, True + 1)
    assert not harness.check(harness.Call("f", (), (), "is", True), 1)
    assert harness.check(harness.Call("f", (), (), "isclose", (0.3, 1e-9, 0.0)), 0.1 + 0.2)


def test_plain_data_codec():
    value = [None, True, 3, -2.5, math.inf, "s\udcff", b"\x00", 1j, (1, (2,)), {3, 4},
             frozenset({5}), {"a": [1], (1, 2): {}}]
    encoded = _child.encode(value)
    assert _child.decode(eval(repr(encoded))) == value  # the wire format: repr, literal_eval
    assert math.isnan(_child.decode(_child.encode(math.nan)))

    class Int(int):
        def __eq__(self, other):
            return True

    for bad in [Int(1), [Int(1)], object(), {"k": object()}, type, print]:
        with pytest.raises(TypeError):
            _child.encode(bad)
    for bad in [{"l": 1}, {"d": [[1]]}, {"z": []}, {"l": [], "t": []}, [1], {"s": [{"l": []}]}]:
        with pytest.raises((TypeError, ValueError)):
            _child.decode(bad)
    nested = []
    for _ in range(100):
        nested = [nested]
    with pytest.raises(TypeError):
        _child.encode(nested)


@pytest.mark.parametrize("kind", KINDS)
def test_jail_keeps_common_library_code_working(kind):
    # namedtuple, enum, typing and warnings call sys._getframe, dataclasses read __code__: the
    # jail refuses the frame as they expect (ValueError) and allows the rest.
    program = """import collections, dataclasses, enum, functools, typing, warnings
Pt = collections.namedtuple("Pt", "a b")
Color = enum.Enum("Color", "RED GREEN")
Pair = typing.NamedTuple("Pair", [("x", int)])
@dataclasses.dataclass
class P:
    x: int
@functools.lru_cache(None)
def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)
def f(n):
    warnings.warn("deprecated")
    return fib(n) + P(1).x + Pt(2, 0).a + Color.GREEN.value + Pair(3).x"""
    result = code.run_tests(program, ["assert f(10) == 63", "assert [f(0)] == [8]"],
                            timeout_s=10.0, kind=kind)
    assert result.passed == (True, True)
