"""Sandboxed code execution: pass rates, limits, and isolation for each available sandbox."""

import shutil

import pytest

from r1jax.rewards import code

KINDS = ["rlimit"] + (["bwrap"] if shutil.which("bwrap") and code.sandbox_kind() == "bwrap" else [])


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
    if shutil.which("bwrap") is None:
        assert code.sandbox_kind() == "rlimit"


def test_pass_rate_never_raises():
    assert code.pass_rate("\x00\udcff", ["\x00"], timeout_s=2.0) == 0.0
    assert code.pass_rate("x = 1", [], timeout_s=2.0) == 0.0
