"""This device's peak matmul FLOP/s, measured so that load from other processes cannot fool it.

MFU (model FLOPs utilisation) is model FLOP/s divided by a peak. A single timed matmul on a
shared machine measures the load as much as the chip: one [1024, 1024] float32 matmul gave
~200 GFLOP/s on an idle 2-core CPU and 33.8 on a loaded one, so MFU figures against it were
inflated 6x. Here the peak is the best FLOP/s over several sizes (small ones fit the caches,
large ones amortise dispatch), several repeats of each, and rounds that revisit every size
(a burst of load hits one round, not all), per dtype: float32 and bfloat16 peaks differ (on
accelerators by 2x or more, on CPUs either way), and MFU divides by the peak of the compute
dtype (`ModelConfig.dtype`). Measure it in the same process as the figure it divides.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp

DTYPES = ("float32", "bfloat16")


def _best_seconds(fn, x, repeats: int) -> float:
    """Fastest of `repeats` timed calls of an already-compiled `fn(x)`."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def measure(dtypes=DTYPES, sizes=(512, 1024, 2048), repeats: int = 3,
            rounds: int = 2) -> dict[str, float]:
    """Peak FLOP/s of a jitted square matmul on the default device, per dtype.

    Args:
      dtypes: dtype names ("float32", "bfloat16", ...), each measured on its own.
      sizes: matrix sizes n of the [n, n] @ [n, n] products (2 n^3 FLOPs each).
      repeats: timed calls per size per round (the fastest counts).
      rounds: passes over all sizes; a load burst during one pass spares the others.

    Returns:
      {dtype name: the best FLOP/s over every size, repeat and round}.
    """
    if not sizes or repeats < 1 or rounds < 1:
        raise ValueError(f"peak_flops.measure: sizes={sizes!r}, repeats={repeats}, "
                         f"rounds={rounds}; need at least one size, repeat and round")
    matmul = jax.jit(lambda a: a @ a)
    inputs = {(d, n): jax.random.normal(jax.random.key(n), (n, n), jnp.dtype(d))
              for d in dtypes for n in sizes}
    for x in inputs.values():  # compile every shape before timing any
        matmul(x).block_until_ready()
    best = dict.fromkeys(dtypes, 0.0)
    for _ in range(rounds):
        for (d, n), x in inputs.items():
            best[d] = max(best[d], 2.0 * n**3 / _best_seconds(matmul, x, repeats))
    return best


def describe(peaks: dict[str, float]) -> str:
    """'float32 203.4 / bfloat16 51.2 GFLOP/s' for a `measure` result."""
    return " / ".join(f"{d} {f / 1e9:.1f}" for d, f in peaks.items()) + " GFLOP/s"
