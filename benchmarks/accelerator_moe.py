"""Device check, MoE section (issue 22), run by `benchmarks/accelerator.py --sections=moe` (it
reads that script's --small and --repeats flags).

Forward + backward (gradients w.r.t. the tokens and the three expert stacks) of the routed
experts of one DeepSeek-V3 MoE layer: d=7168, 256 experts 2048 wide, top-8, bfloat16 compute
with float32 accumulation (the `accelerator` precision policy), at 4k and 16k tokens, random
top-8 routing. Two dispatches: "grouped" (`moe.grouped.grouped_dispatch`, `jax.lax.ragged_dot`,
the GPU/TPU default) and "block loop" (`moe.dropless.dropless_dispatch`, moe_block_size 64, the
CPU default). Prints the median ms of the jitted value-and-gradient, the temporary bytes of
its compiled program (`memory_analysis`) and the ratio block loop / grouped; a setting that
fails (e.g. out of memory) prints why. The weights alone are 22.5 GB in bfloat16 and their
gradients as much again; the block loop also keeps three float32 weight-gradient accumulators
(45 GB), so it needs more than an 80 GB card holds at this size.
--small (CPU, seconds): d=64, 16 experts 32 wide, top-4, float32, 128 and 512 tokens (on the
CPU the grouped path is the slower one: XLA:CPU expands ragged_dot over every expert).
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from r1jax.models.moe import dispatch, dropless, grouped


def _setting() -> dict:
    if flags.FLAGS.small:
        return dict(d=64, f=32, experts=16, top_k=4, dtype=jnp.float32, tokens=(128, 512))
    return dict(d=7168, f=2048, experts=256, top_k=8, dtype=jnp.bfloat16, tokens=(4096, 16384))


def _inputs(tokens: int, s: dict):
    """x [T, d], random top-K routing and gates, expert stacks (made on the device)."""
    d, f, e, dtype = s["d"], s["f"], s["experts"], s["dtype"]

    @jax.jit
    def make():
        keys = jax.random.split(jax.random.key(0), 5)
        x_td = jax.random.normal(keys[0], (tokens, d), dtype)
        weight_tk, idx_tk = jax.lax.top_k(
            jax.nn.sigmoid(jax.random.normal(keys[1], (tokens, e))), s["top_k"])
        experts = dispatch.ExpertParams(*(
            (0.02 * jax.random.normal(k, shape, jnp.float32)).astype(dtype)
            for k, shape in zip(keys[2:], ((e, d, f), (e, d, f), (e, f, d)))))
        return x_td, idx_tk, weight_tk, experts

    return make()


def _dispatches():
    return {"grouped": grouped.grouped_dispatch,
            "block loop": lambda *a: dropless.dropless_dispatch(*a, block_size=64)}


def _measure(fn, inputs) -> tuple[float, int]:
    """(median ms, temp bytes) of jit(value_and_grad) of sum(routed output) w.r.t. x, experts."""
    x_td, idx_tk, weight_tk, experts = inputs

    def loss(x, w):
        return jnp.sum(fn(x, idx_tk, weight_tk, w).astype(jnp.float32))

    compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(x_td, experts).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    jax.block_until_ready(compiled(x_td, experts))
    times = []
    for _ in range(flags.FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(x_td, experts))
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times)), temp


def moe_section() -> None:
    s = _setting()
    print(f"MoE routed experts fwd+bwd, d={s['d']}, {s['experts']} experts {s['f']} wide, "
          f"top-{s['top_k']}, {jnp.dtype(s['dtype']).name} compute, float32 accumulation:")
    for tokens in s["tokens"]:
        inputs = _inputs(tokens, s)
        results = {}
        for name, fn in _dispatches().items():
            try:
                results[name] = _measure(fn, inputs)
                ms, temp = results[name]
                print(f"  T={tokens:6d} {name:10s} {ms:10.1f} ms  temp {temp / 2**30:7.2f} GiB",
                      flush=True)
            except Exception as err:  # noqa: BLE001  (report and go on: OOM at full size)
                print(f"  T={tokens:6d} {name:10s} failed: {type(err).__name__}: "
                      f"{str(err).splitlines()[0][:160]}", flush=True)
        if len(results) == 2:
            ratio = results["block loop"][0] / results["grouped"][0]
            print(f"  T={tokens:6d} block loop / grouped: {ratio:.2f}x")
        del inputs
