"""Hostile completions: every reward returns an in-range value in bounded time, nothing escapes.

Code payloads come with a test that passes only if the attack worked, so a pass rate of 0 means
the sandbox held (and the file, listener and environment checks confirm it from the outside).
"""

import os
import socket
import time

import numpy as np
import pytest

from r1jax import rewards
from r1jax.data import templates
from r1jax.rewards import code, countdown, format, language, numeric

MB = 1 << 20
TEXT = [
    "", " ", "\x00", "\udcff", "\ufeff<answer>6</answer>", "\r\n\t\v\f", "🙂" * 1000,
    "a" * MB, "<think>" * (MB // 8), "<answer>" + "a" * MB + "</answer>",
    "<think>" * 10_000 + "</think>" * 10_000, "</answer><answer>", "<answer><answer></answer>",
    "<answer>" + "(" * 100_000 + "</answer>", "<answer>" + "(" * 150 + "1" + ")" * 150 + "</answer>",
    "<answer>" + "-" * 10_000 + "1</answer>", "<answer>" + "1+" * 100_000 + "1</answer>",
    "<answer>9**9**9</answer>", "<answer>10**10**10</answer>", "<answer>" + "9" * 5000 + "</answer>",
    "<answer>1" + "0" * 4000 + "</answer>", "<answer>1e999999</answer>", "<answer>2^{100000}</answer>",
    "<answer>10^{10^{10^{10}}}</answer>", "<answer>100000!</answer>", "<answer>١٢٣</answer>",
    "<answer>１+２+３</answer>", "<answer>١/٠</answer>", "<answer>½</answer>", "<answer>1/0</answer>",
    "<answer>0/0</answer>", "<answer>\\frac{1}{0}</answer>", "<answer>nan</answer>",
    "<answer>\\infty</answer>", "\\boxed{" * 50_000, "\\boxed{" + "{" * 100_000 + "6",
    "<answer>" + "\\sqrt{" * 300 + "2" + "}" * 300 + "</answer>",
    "<answer>x^{x^{x^{x^{x^{x^{x^{x}}}}}}}</answer>",
    "<answer>\\frac{\\frac{\\frac{1}{2}}{3}}{4}</answer>",
    "<answer>\\sum_{n=1}^{10^{100}} n</answer>", "<answer>\\int_0^\\infty e^{-x^2} dx</answer>",
    "<answer>\\begin{pmatrix}" + "1&" * 300 + "1\\end{pmatrix}</answer>",
    "<answer>__import__('os').system('touch /tmp/r1jax_pwned')</answer>",
    "<answer>().__class__.__bases__[0].__subclasses__()</answer>", "<answer>lambda: 1</answer>",
    "<answer>\\left( \\right.</answer>", "<answer>$$$$</answer>", "<answer>{}{}{}</answer>",
    "<answer>\\\\\\\\</answer>", "<answer>%</answer>", "<answer>1,2,3,...</answer>",
    "<think>中文思考 english</think><answer>6</answer>", "<think>x</think><answer>1+2+3</answer>",
]  # fmt: skip


def _attacks(tmp_path, port):
    """(code, test that passes only if the attack worked)."""
    escaped = tmp_path / "escaped.txt"
    return [
        ("while True:\n    pass", "assert True"),
        ("import os\nwhile True:\n    os.fork()", "assert True"),
        ("x = []\nwhile True:\n    x.append(bytearray(1 << 26))", "assert True"),
        ("x = 9**9**9", "assert True"),
        (f"open({str(escaped)!r}, 'w').write('escaped')", "assert True"),
        ("import os\nsecret = os.environ.get('R1JAX_TEST_SECRET')", "assert secret == 'hunter2'"),
        (
            f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=1)",
            "assert s",
        ),
        (
            f"import _socket\ns = _socket.socket()\ns.settimeout(1)\ns.connect(('127.0.0.1', {port}))",
            "assert s",
        ),
        ("import os\nos.kill(os.getppid(), 9)", "assert True"),
        ("__import__('os').system('echo pwned > /tmp/r1jax_pwned')", "assert True"),
        ("import ctypes\nctypes.string_at(0)", "assert True"),  # segfault
        ("import os\nos._exit(0)", "assert True"),
    ]


@pytest.fixture(scope="module")
def pool():
    with rewards.WorkerPool(2, grace_s=0.5) as workers:
        yield workers


@pytest.fixture
def listener():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    server.settimeout(0.2)
    yield server
    server.close()


def _accepted(server) -> bool:
    try:
        server.accept()[0].close()
        return True
    except OSError:
        return False


def test_direct_entry_points_on_hostile_text():
    assert len(TEXT) >= 50
    start = time.perf_counter()
    for text in TEXT:
        assert countdown.accuracy(text, [1, 2, 3], 6) in (0.0, 1.0)
        assert numeric.accuracy(text, "6") in (0.0, 1.0)
        assert 0.0 <= format.lenient(text) <= 1.0 and format.strict(text) in (0.0, 1.0)
        assert 0.0 <= language.consistency(text, "zh") <= 1.0
        templates.extract_answer(text), templates.extract_reasoning(text)
    assert time.perf_counter() - start < 20.0


def test_batched_rewards_on_hostile_text(pool):
    n = len(TEXT)
    fields = {
        "numbers": [[1, 2, 3]] * n, "target": [6] * n, "answer": ["6"] * n,
        "tests": [["assert True"]] * n, "lengths": np.arange(n) * 50, "language": ["zh"] * n,
    }  # fmt: skip
    options = {
        "math": {"timeout_s": 1.0}, "code": {"timeout_s": 1.0}, "accuracy": {"timeout_s": 1.0},
        "overlong": {"max_length": 2000, "cache_length": 500}, "cosine": {"max_length": 2000},
    }  # fmt: skip
    spec = rewards.Spec.from_dict({name: 1.0 for name in rewards.names()}, options)
    start = time.perf_counter()
    result = rewards.combine(spec, TEXT, pool=pool, **fields)
    assert time.perf_counter() - start < 30.0
    for name, values in result.components.items():
        fn = spec.reward(name)
        assert values.dtype == np.float32 and values.shape == (n,), name
        assert np.all((values >= fn.low) & (values <= fn.high)), name
    assert result.components["countdown"][-1] == 1.0  # the one honest completion still scores
    assert result.components["math"][4] == 1.0  # BOM before <answer>6</answer>


def test_sandbox_holds_against_attacks(pool, listener, tmp_path, monkeypatch):
    monkeypatch.setenv("R1JAX_TEST_SECRET", "hunter2")
    attacks = _attacks(tmp_path, listener.getsockname()[1])
    completions = [f"```python\n{src}\n```" for src, _ in attacks]
    tests = [[test] for _, test in attacks]
    start = time.perf_counter()
    values = rewards.get("code", timeout_s=1.0)(completions, pool=pool, tests=tests)
    assert time.perf_counter() - start < 20.0
    assert values.tolist()[4:8] == [0.0] * 4, values  # no write, secret, or connection
    assert np.all((values >= 0) & (values <= 1))
    assert not _accepted(listener)
    if code.sandbox_kind() == "bwrap" or os.getuid() == 0:
        assert not (tmp_path / "escaped.txt").exists()
    # The pool replaced whatever died and still scores honest work.
    ok = rewards.get("code")(["```python\nx = 1\n```"], pool=pool, tests=[["assert x == 1"]])
    assert ok.tolist() == [1.0]


def test_pool_survives_worker_death_and_hangs(pool):
    values = pool.map(_hostile_item, [{"mode": m} for m in ("ok", "die", "hang", "c_hang", "ok")],
                      timeout_s=0.3)  # fmt: skip
    assert values.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert pool.restarts >= 2


def _hostile_item(mode):
    if mode == "die":
        os._exit(3)
    if mode == "hang":
        while True:
            pass
    if mode == "c_hang":  # signals can't interrupt a single long C call: the hard limit must
        return float(sum(range(10**13)) > 0)
    return 1.0
