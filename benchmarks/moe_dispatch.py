"""MoE dispatch speed: dropless (shape-chosen gather or blocks) vs fixed blocks vs dense.

Times the routed-expert part only (routing given), forward and forward+backward, for several
expert counts at each number of tokens, and the last-vs-first-expert-count ratio (dropless
target for 64 vs 8: <= 1.3x, i.e. cost follows tokens * K, not E). Variants:
  dense          every expert on every token (`moe.dispatch.dense_dispatch`);
  blocked/b<B>   blocks of exactly B rows (`moe.dropless.blocked_dispatch`: dropless before the
                 block size was chosen from the shapes);
  dropless/c<B>  `moe.dropless.dropless_dispatch` with config.moe_block_size = B (the block
                 chosen by `moe.dropless.choose_block_size`, or the gather path when T*K <= 2E);
  gather         `moe.dispatch.gather_dispatch` (one [d, f] weight slice per assignment).
All variants run in one process, so their ratios share the machine's load.

  python benchmarks/moe_dispatch.py                        # defaults below, on this machine
  python benchmarks/moe_dispatch.py --block_sizes=16,64 --experts=8,64
  python benchmarks/moe_dispatch.py --tokens=8 --experts=12 --d=512 --f=384  # small_50m decode
"""

from __future__ import annotations

import argparse
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models.moe import dispatch as dispatch_lib
from r1jax.models.moe import dropless as dropless_lib


def best_ms(fn, *args, repeats: int) -> float:
    """Fastest of `repeats` runs: on a shared machine the minimum is the stable statistic."""
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def make_inputs(tokens: int, experts: int, top_k: int, d: int, f: int, seed: int = 0):
    keys = jax.random.split(jax.random.key(seed), 5)
    x_td = jax.random.normal(keys[0], (tokens, d))
    logits_te = jax.random.normal(keys[1], (tokens, experts))
    weight_tk, idx_tk = jax.lax.top_k(jax.nn.sigmoid(logits_te), top_k)
    params = dispatch_lib.ExpertParams(*(0.05 * jax.random.normal(k, s) for k, s in zip(
        keys[2:], ((experts, d, f), (experts, d, f), (experts, f, d)))))
    return x_td, idx_tk, weight_tk, params


def time_dispatch(dispatch, inputs, repeats: int) -> tuple[float, float]:
    x_td, idx_tk, weight_tk, params = inputs
    forward = jax.jit(dispatch)

    def loss(x, p):
        return jnp.sum(dispatch(x, idx_tk, weight_tk, p) ** 2)

    backward = jax.jit(jax.grad(loss, argnums=(0, 1)))
    return (best_ms(forward, x_td, idx_tk, weight_tk, params, repeats=repeats),
            best_ms(backward, x_td, params, repeats=repeats))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="2048", help="comma-separated token counts T")
    parser.add_argument("--top_k", type=int, default=2)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--f", type=int, default=128)
    parser.add_argument("--experts", default="8,16,64")
    parser.add_argument("--block_sizes", default="16,64")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    experts = [int(e) for e in args.experts.split(",")]
    variants = {"dense": dispatch_lib.dense_dispatch, "gather": dispatch_lib.gather_dispatch}
    for block in (int(b) for b in args.block_sizes.split(",")):
        variants[f"blocked/b{block}"] = functools.partial(dropless_lib.blocked_dispatch,
                                                          block_size=block)
        variants[f"dropless/c{block}"] = functools.partial(dropless_lib.dropless_dispatch,
                                                           block_size=block)
    for tokens in (int(t) for t in args.tokens.split(",")):
        print(f"\n{jax.devices()[0].device_kind}; tokens={tokens} top_k={args.top_k} "
              f"d={args.d} f={args.f}; best of {args.repeats} runs, ms; load average "
              f"{os.getloadavg()[0]:.1f}")
        print(f"{'dispatch':<16}" + "".join(f"{f'E={e} fwd/fwd+bwd':>22}" for e in experts)
              + f"{'ratio fwd':>11}{'ratio f+b':>11}")
        for name, dispatch in variants.items():
            times = [time_dispatch(dispatch, make_inputs(tokens, e, args.top_k, args.d, args.f),
                                   args.repeats) for e in experts]
            cells = "".join(f"{fwd:>13.2f} / {bwd:>6.2f}" for fwd, bwd in times)
            ratio = np.asarray(times[-1]) / np.asarray(times[0])
            print(f"{name:<16}{cells}{ratio[0]:>11.2f}{ratio[1]:>11.2f}", flush=True)


if __name__ == "__main__":
    main()
