"""Reward throughput: batched worker pool vs a single-process loop, and the code harness of
issue 18 against the one before it.

    python benchmarks/rewards.py [--n 10000] [--code_n 64] [--workers N] [--old_rev 382129a]

Countdown: rewards/s for N generated completions (half right, half wrong), pooled vs a plain
loop over `countdown.accuracy`. Code: sandboxed executions/s (`code.reward`) for code_n small
programs, pooled vs sequential. Pool start-up is excluded (a trainer keeps one pool).
Old vs new harness: sequential executions/s of the same program and assert tests (converted to
call tests by the new harness) and of a fallback test, per sandbox kind; the old harness is
`r1jax/rewards/code.py` at `--old_rev` (read with `git show`, loaded only here).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import time

from r1jax import rewards
from r1jax.rewards import code, countdown, sandbox

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def countdown_batch(n: int, seed: int = 0):
    rng = random.Random(seed)
    completions, numbers, targets = [], [], []
    for i in range(n):
        nums = [rng.randint(1, 99) for _ in range(4)]
        a, b, c, d = nums
        target = (a + b) * c - d + (i % 2)  # odd rows are wrong
        completions.append(f"<think>try things</think><answer>({a} + {b}) * {c} - {d}</answer>")
        numbers.append(nums)
        targets.append(target)
    return completions, numbers, targets


def code_batch(n: int):
    program = "```python\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```"
    tests = ["assert fib(10) == 55", "assert fib(15) == 610", "assert fib(3) == 3"]
    return [program] * n, [tests] * n


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--code_n", type=int, default=64)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--old_rev", default="382129a", help="commit of the old code harness")
    args = parser.parse_args()
    comps, nums, targets = countdown_batch(args.n)
    codes, tests = code_batch(args.code_n)
    print(f"cpus={os.cpu_count()} workers={args.workers} sandbox={code.sandbox_kind()}")
    with rewards.WorkerPool(args.workers) as pool:
        reward = rewards.get("countdown")
        reward(comps[:100], pool=pool, numbers=nums[:100], target=targets[:100])  # warm up
        loop_s = timed(lambda: [countdown.accuracy(*row) for row in zip(comps, nums, targets)])
        pool_s = timed(lambda: reward(comps, pool=pool, numbers=nums, target=targets))
        _report("countdown rewards/s", args.n, loop_s, pool_s)
        code_reward = rewards.get("code")
        seq_s = timed(lambda: [code.reward(c, t) for c, t in zip(codes, tests)])
        par_s = timed(lambda: code_reward(codes, pool=pool, tests=tests))
        _report("sandboxed code executions/s", args.code_n, seq_s, par_s)
    old_vs_new(load_old_harness(args.old_rev), max(8, args.code_n // 4))


def load_old_harness(rev: str):
    """Returns `r1jax/rewards/code.py` at git revision `rev` as a module (stdlib only)."""
    source = subprocess.run(["git", "-C", REPO, "show", f"{rev}:r1jax/rewards/code.py"],
                            check=True, capture_output=True, text=True).stdout
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(source)
    try:
        spec = importlib.util.spec_from_file_location("old_code_harness", f.name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up
        spec.loader.exec_module(module)
    finally:
        os.unlink(f.name)
    return module


def old_vs_new(old, n: int):
    """Sequential executions/s, old harness vs new, for each sandbox kind both have."""
    program = "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)"
    converted = ["assert fib(10) == 55", "assert fib(15) == 610", "assert fib(3) == 2"]
    fallback = ["for n, f in [(10, 55), (15, 610)]:\n    assert fib(n) == f"]
    kinds = [k for k in ("bwrap", "rlimit") if k == "rlimit" or sandbox.probe(k) is None]
    for kind in kinds + [k for k in ("unshare",) if sandbox.probe(k) is None]:
        for name, tests in (("3 assert tests", converted), ("1 fallback test", fallback)):
            new_s = timed(functools.partial(_repeat, code.run_tests, program, tests, kind, n))
            line = f"{kind:8s} {name}: new harness {n / new_s:6.1f} executions/s"
            if kind in old.KINDS:
                old_s = timed(functools.partial(_repeat, old.run_tests, program, tests, kind, n))
                line += f", old harness {n / old_s:6.1f} (new/old speed {old_s / new_s:.2f}x)"
            print(line, flush=True)


def _repeat(run_tests, program, tests, kind, n):
    for _ in range(n):
        assert run_tests(program, tests, kind=kind).passed == (True,) * len(tests)


def _report(what, n, single_s, pooled_s):
    print(
        f"{what}: single-process {n / single_s:,.0f}, pooled {n / pooled_s:,.0f}, "
        f"ratio {single_s / pooled_s:.2f}x"
    )


if __name__ == "__main__":
    main()
