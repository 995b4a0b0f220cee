"""Code-execution reward: the fraction of tests a completion's program passes, sandboxed.

DeepSeek-R1 (Sec. 2.2.2) scores coding problems by running the program against predefined test
cases ("a compiler can be used to generate feedback"). An RL policy optimises whatever the reward
pays for, so the program is treated as an adversary:

- verdicts are formed here, in the trusted process, from plain data: call tests return their
  results as JSON-like data compared here (an object whose `__eq__` is always true cannot cross),
  stdin/stdout tests are compared here, and assert tests are converted to call tests where
  possible; the rest run in a weaker fallback, one fresh process per test (`harness.py` lists
  the test forms and what the fallback does and does not stop);
- the program runs in the sandbox of `sandbox.kind()` (bubblewrap or `unshare` namespaces, a
  per-run cgroup, nothing left running; `sandbox.py`); a broken sandbox raises
  `sandbox.SandboxError`, an error of the run and never a silent zero reward.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import secrets
import time
from collections.abc import Sequence

from r1jax.rewards import _child, harness, sandbox

KINDS = sandbox.KINDS
SandboxError = sandbox.SandboxError
_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """What one `run_tests` call found.

    Attributes:
      passed: one flag per test (tests not finished before the deadline count as failed).
      kind: the sandbox that ran ("bwrap", "unshare" or "rlimit").
      timed_out: the wall-clock limit was hit.
      wall_s: seconds from start until every sandboxed process was gone.
    """

    passed: tuple[bool, ...]
    kind: str
    timed_out: bool
    wall_s: float

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


def extract_code(completion: str) -> str | None:
    """Returns the last ```python (or bare ```) fenced block of a completion, or None."""
    if not isinstance(completion, str):
        return None
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else None


def pass_rate(code: str, tests: Sequence, *, timeout_s: float = 5.0,
              kind: str | None = None) -> float:
    """Returns the fraction of `tests` that `code` passes (test forms: `harness.py`).

    `timeout_s` bounds the whole run; `kind` picks the sandbox (default `sandbox.kind()`).
    Never raises on any code or test text.

    Raises:
      SandboxError: the sandbox itself failed (an error of the run, not of the program).
    """
    try:
        return run_tests(code, tests, timeout_s=timeout_s, kind=kind).pass_rate
    except SandboxError:
        raise
    except Exception:  # noqa: BLE001 - untrusted text: a run that breaks scores zero
        return 0.0


def reward(completion: str, tests: Sequence, timeout_s: float = 5.0,
           kind: str | None = None) -> float:
    """Per-item reward: pass rate of the completion's last fenced code block (0 if none)."""
    code = extract_code(completion)
    return 0.0 if code is None else pass_rate(code, tests, timeout_s=timeout_s, kind=kind)


def sandbox_kind() -> str:
    """The sandbox this process uses (`sandbox.kind()`; raises SandboxError if none works)."""
    return sandbox.kind()


def run_tests(
    code: str,
    tests: Sequence,
    *,
    timeout_s: float = 5.0,
    kind: str | None = None,
    memory_mb: int = 1024,
) -> SandboxResult:
    """Runs `code` against each test in the sandbox; returns the per-test outcomes.

    Call tests (given or converted from asserts) share one process; each stdin/stdout test and
    each fallback assert test gets a fresh one.

    Args:
      code: the program (untrusted).
      tests: test strings or specs (`harness.parse`); a malformed one fails.
      timeout_s: wall-clock limit for the whole run.
      kind: a sandbox kind; default `sandbox.kind()`.
      memory_mb: total memory of each sandboxed run.
    """
    kind = kind or sandbox.kind()
    start = time.monotonic()
    deadline = start + timeout_s
    run = functools.partial(_sandboxed, kind=kind, memory_mb=memory_mb, deadline=deadline)
    parsed = [_parse(t) for t in tests]
    passed = [False] * len(parsed)
    code = str(code)
    timed_out = _run_calls(code, parsed, passed, run)
    for i, test in enumerate(parsed):
        if isinstance(test, (harness.Stdio, harness.Script)):
            passed[i], late = _run_one(code, test, run)
            timed_out |= late
    return SandboxResult(tuple(passed), kind, timed_out, time.monotonic() - start)


def _parse(test):
    try:
        return harness.parse(test)
    except ValueError:
        return None  # a malformed test fails


def _sandboxed(stdin: bytes, *, kind, memory_mb, deadline) -> sandbox.Completed | None:
    """Runs the harness with `stdin`; None when no time is left."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        return None
    return sandbox.run(["-c", _child_source()], stdin, timeout_s=remaining, kind=kind,
                       memory_mb=memory_mb)


def _run_calls(code, parsed, passed, run) -> bool:
    """Runs every call test in one process; sets `passed`; returns whether it timed out."""
    owners = [(i, call) for i, test in enumerate(parsed) if isinstance(test, tuple)
              for call in test]
    if not owners:
        return False
    nonce = secrets.token_hex(16)
    calls = [c for _, c in owners]
    done = run(harness.header("calls", harness.call_payload(code, calls, nonce)))
    if done is None:
        return True
    results = harness.call_results(done.stdout, len(owners), nonce)
    ok = {i: True for i, _ in owners}
    for (i, call), result in zip(owners, results):
        ok[i] &= result is not harness.MISSING and harness.check(call, result)
    for i, value in ok.items():
        passed[i] = value
    return done.timed_out


def _run_one(code, test, run) -> tuple[bool, bool]:
    """Runs one stdin/stdout or fallback test in a fresh process; returns (passed, timed_out)."""
    if isinstance(test, harness.Stdio):
        done = run(harness.header("stdio", {"code": code}) + test.input.encode())
        if done is None:
            return False, True
        clean = not done.timed_out and not done.overflow and done.returncode == 0
        return clean and harness.stdio_matches(done.stdout, test.output), done.timed_out
    nonce = secrets.token_hex(16)
    done = run(harness.header("script", {"code": code, "test": test.source, "nonce": nonce}))
    if done is None:
        return False, True
    return harness.script_passed(done.stdout, nonce), done.timed_out


@functools.cache
def _child_source() -> str:
    with open(_child.__file__, encoding="utf-8") as f:
        return f.read()
