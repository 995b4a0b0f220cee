"""Reward throughput: batched worker pool vs a single-process loop.

    python benchmarks/rewards.py [--n 10000] [--code_n 64] [--workers N]

Countdown: rewards/s for N generated completions (half right, half wrong), pooled vs a plain
loop over `countdown.accuracy`. Code: sandboxed executions/s (`code.reward`) for code_n small
programs, pooled vs sequential. Pool start-up is excluded (a trainer keeps one pool).
"""

from __future__ import annotations

import argparse
import os
import random
import time

from r1jax import rewards
from r1jax.rewards import code, countdown


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


def _report(what, n, single_s, pooled_s):
    print(
        f"{what}: single-process {n / single_s:,.0f}, pooled {n / pooled_s:,.0f}, "
        f"ratio {single_s / pooled_s:.2f}x"
    )


if __name__ == "__main__":
    main()
