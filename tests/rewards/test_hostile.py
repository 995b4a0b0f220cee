"""Hostile completions: every reward returns an in-range value in bounded time, nothing escapes.

The code reward runs the programs of `hostile_programs.py` (reward hacks and sandbox probes,
whose tests pass only if the attack worked) through the real path (registry + worker pool) in
every isolating sandbox available here, with honest victims running among them: every hostile
program scores 0, every victim 1, and the listeners, files and process table show from the
outside that nothing got out or stayed behind.
"""

import glob
import os
import secrets
import socket
import sys
import time

import hostile_programs
import numpy as np
import pytest

from r1jax import rewards
from r1jax.data import templates
from r1jax.rewards import countdown, format, language, numeric, sandbox

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHY_NOT = {k: sandbox.probe(k) for k in sandbox.ISOLATING}
ISOLATING = [pytest.param(k, marks=pytest.mark.skipif(why is not None, reason=f"{k}: {why}"))
             for k, why in WHY_NOT.items()]  # fmt: skip

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


@pytest.fixture(scope="module")
def pool():
    with rewards.WorkerPool(4, grace_s=0.5) as workers:
        yield workers


@pytest.fixture
def targets(tmp_path):
    """Host endpoints and files the probes aim at: (Context, {name: listening socket})."""
    token = secrets.token_hex(4)
    tcp = socket.socket()
    tcp.bind(("0.0.0.0", 0))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "listener.sock"))
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind(f"\0r1jax-hostile-{token}")
    for server in (tcp, unix, abstract):
        server.listen(8)
    for server in (tcp, udp, unix, abstract):
        server.setblocking(False)
    (tmp_path / "secret.txt").write_text(f"secret-{token}")
    context = hostile_programs.Context(
        token=token, tcp_port=tcp.getsockname()[1], udp_port=udp.getsockname()[1],
        host_ip=_host_ip(), unix_path=str(tmp_path / "listener.sock"),
        abstract=f"r1jax-hostile-{token}", host_dir=str(tmp_path),
        secret_path=str(tmp_path / "secret.txt"), secret=f"secret-{token}", repo=REPO)
    servers = {"tcp": tcp, "udp": udp, "unix": unix, "abstract": abstract}
    yield context, servers
    for server in servers.values():
        server.close()


def _host_ip() -> str:
    try:
        return socket.gethostbyname(socket.gethostname())
    except OSError:
        return "127.0.0.1"


def _escapes(context, servers) -> list[str]:
    """Everything the probes may have done outside the sandbox, seen from the outside."""
    found = []
    for name, server in servers.items():
        try:
            server.recv(1) if name == "udp" else server.accept()[0].close()
            found.append(f"{name} listener reached")
        except OSError:  # BlockingIOError: nothing arrived
            pass
    t = context.token
    paths = [f"/tmp/{t}-tmp", f"/dev/shm/{t}-shm", f"/dev/shm/{t}-fill",
             f"{context.host_dir}/escaped-{t}", f"{context.repo}/{t}-repo",
             f"{sys.prefix}/{t}-prefix", f"/usr/{t}", f"/root/{t}",
             *glob.glob(f"/tmp/r1jax-sbx-*/{t}-x")]
    found += [f"{path} written" for path in paths if os.path.exists(path)]
    found += [f"process {pid} survived" for pid in hostile_programs.processes_with(t)]
    return found


def _score(kind, programs, pool):
    """Scores `programs`, with the victims spread among them, through the real reward path.

    Returns:
      [(name, reward)].
    """
    items = []
    for i, program in enumerate(programs):
        items.append(program)
        if i % 20 == 6:
            items.extend(hostile_programs.VICTIMS)
    completions = [f"```python\n{p.code}\n```" for p in items]
    reward = rewards.get("code", timeout_s=2.0, kind=kind)
    values = reward(completions, pool=pool, tests=[p.tests for p in items])
    return [(p.name, float(v)) for p, v in zip(items, values)]


@pytest.mark.parametrize("kind", ISOLATING)
def test_hostile_programs_score_zero_and_nothing_escapes(kind, pool, targets):
    context, servers = targets
    programs = hostile_programs.hacks() + hostile_programs.probes(context)
    assert len(programs) >= 60 and len({p.name for p in programs}) == len(programs)
    start = time.perf_counter()
    scored = _score(kind, programs, pool)
    elapsed = time.perf_counter() - start
    victims = [v for name, v in scored if name.startswith("victim:")]
    assert len(victims) >= 9 and victims == [1.0] * len(victims), scored
    assert [(n, v) for n, v in scored if not n.startswith("victim:") and v != 0.0] == []
    assert _escapes(context, servers) == []
    assert elapsed < 40.0, elapsed
    ok = rewards.get("code", kind=kind)(["```python\nx = 1\n```"], pool=pool,
                                        tests=[["assert x == 1"]])
    assert ok.tolist() == [1.0]  # the pool still scores honest work


def test_hacks_score_zero_in_the_weak_sandbox(pool):
    # The weak (opt-in) sandbox contains nothing, so only the verdict's integrity is tested.
    scored = _score("rlimit", hostile_programs.hacks(), pool)
    assert [(n, v) for n, v in scored if not n.startswith("victim:") and v != 0.0] == []
    assert all(v == 1.0 for n, v in scored if n.startswith("victim:"))


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


def test_pool_survives_worker_death_and_hangs(pool):
    modes = ("ok", "die", "hang", "c_hang", "ok")
    values = pool.map(hostile_programs.pool_item, [{"mode": m} for m in modes],
                      timeout_s=0.3)  # fmt: skip
    assert values.tolist() == [1.0, 0.0, 0.0, 0.0, 1.0]
    assert pool.restarts >= 2
