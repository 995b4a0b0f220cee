"""Expert parallelism at 2-, 4- and 8-way EP on 8 simulated CPU devices: rows and step time.

For each EP width n_ep the 8 devices form the mesh data = 8 / n_ep x expert = n_ep, so every
device holds the same tokens (--tokens per device). The routed experts run through
`moe.expert_parallel.expert_parallel_dispatch` on random top-K routing (and, with --skewed,
on routing that sends every token to the experts of one device). Printed per width:
  buffer rows   the receive buffer per device, n_ep * T * min(K, E / n_ep) (static shapes)
  real rows     the rows each device's experts really receive: sum of the group sizes fed to
                the grouped matmul (mean and max over devices; padding joins no group)
  old rows      what the previous all-to-all dispatch computed per device, n_ep * T * K
  fwd+bwd ms    the jitted forward + backward of the dispatch (best of --repeats)
  temp MiB      XLA's temporary bytes per device for that step (`memory_analysis`): the
                worst-case receive buffer makes it grow with n_ep
On the CPU the exchange is the emulation of the ragged all-to-all (XLA:CPU cannot compile the
real one), which moves the whole buffer, and the local experts run the block loop over the real
rows' groups (`expert_parallel.grouped_blocks`); on GPU/TPU only the real rows move and one
grouped matmul per projection runs. Simulated devices share this machine's cores: the times
measure this CPU's cost of the program, not an accelerator's.

  python benchmarks/moe_ep.py --small      # seconds
  python benchmarks/moe_ep.py              # defaults below
  python benchmarks/moe_ep.py --skewed
"""

from __future__ import annotations

import argparse
import functools
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402  (after XLA_FLAGS: the device count is read at import)
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from moe_dispatch import best_ms  # noqa: E402  (benchmarks/, the script's directory)

from r1jax import sharding  # noqa: E402
from r1jax.models.moe import dispatch as dispatch_lib  # noqa: E402
from r1jax.models.moe import expert_parallel  # noqa: E402


def make_inputs(tokens: int, experts: int, top_k: int, d: int, f: int, skewed: bool):
    """x [T, d], idx [T, K] (top-K of random logits; skewed: experts 0..K-1 for every token),
    gates [T, K] and expert weights."""
    keys = jax.random.split(jax.random.key(0), 5)
    logits_te = jax.random.normal(keys[1], (tokens, experts))
    if skewed:
        logits_te = logits_te + 100.0 * (jnp.arange(experts) < top_k)
    weight_tk, idx_tk = jax.lax.top_k(jax.nn.sigmoid(logits_te), top_k)
    params = dispatch_lib.ExpertParams(*(0.05 * jax.random.normal(k, s) for k, s in zip(
        keys[2:], ((experts, d, f), (experts, d, f), (experts, f, d)))))
    return jax.random.normal(keys[0], (tokens, d)), idx_tk.astype(jnp.int32), weight_tk, params


def measure(n_ep: int, inputs, repeats: int) -> dict:
    """Rows and fwd+bwd time of the expert-parallel dispatch on data=8/n_ep x expert=n_ep."""
    x_td, idx_tk, weight_tk, params = inputs
    run = functools.partial(expert_parallel.expert_parallel_dispatch, block_size=64)

    def loss(x, p):
        return jnp.sum(run(x, idx_tk, weight_tk, p) ** 2)

    with jax.set_mesh(sharding.make_mesh({"data": 8 // n_ep, "expert": n_ep})):
        _, group_sizes = jax.jit(functools.partial(run, return_group_sizes=True))(*inputs)
        step = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x_td, params).compile()
        step_ms = best_ms(step, x_td, params, repeats=repeats)
    temp_mib = step.memory_analysis().temp_size_in_bytes / 2**20
    real = np.asarray(group_sizes).sum(axis=1)  # per device
    local_tokens, top_k = x_td.shape[0] // 8, idx_tk.shape[1]
    local_experts = params.gate_edf.shape[0] // n_ep
    return {"buffer": n_ep * local_tokens * min(top_k, local_experts), "real_mean": real.mean(),
            "real_max": int(real.max()), "old": n_ep * local_tokens * top_k, "ms": step_ms,
            "temp_mib": temp_mib}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=256, help="tokens per device")
    parser.add_argument("--experts", type=int, default=16)
    parser.add_argument("--top_k", type=int, default=4)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--f", type=int, default=32)
    parser.add_argument("--widths", default="2,4,8", help="EP widths n_ep (divide 8)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skewed", action="store_true", help="every token to one device")
    parser.add_argument("--small", action="store_true", help="tiny shapes, 2 repeats")
    args = parser.parse_args()
    if args.small:
        args.tokens, args.experts, args.d, args.f, args.repeats = 32, 8, 32, 16, 2
    if jax.device_count() != 8:
        raise SystemExit(f"moe_ep: needs 8 devices, found {jax.device_count()}; unset XLA_FLAGS "
                         "or add --xla_force_host_platform_device_count=8")
    inputs = make_inputs(8 * args.tokens, args.experts, args.top_k, args.d, args.f,
                         args.skewed)
    print(f"{jax.devices()[0].device_kind} x8 (simulated); {args.tokens} tokens/device, "
          f"E={args.experts} K={args.top_k} d={args.d} f={args.f}, "
          f"{'skewed' if args.skewed else 'random'} routing; load average "
          f"{os.getloadavg()[0]:.1f}")
    print(f"{'n_ep':>5}{'buffer rows':>13}{'real rows mean/max':>20}{'old rows':>10}"
          f"{'fwd+bwd ms':>12}{'temp MiB':>10}")
    for n_ep in (int(w) for w in args.widths.split(",")):
        row = measure(n_ep, inputs, args.repeats)
        print(f"{n_ep:>5}{row['buffer']:>13}{row['real_mean']:>13.1f} / {row['real_max']:<5}"
              f"{row['old']:>10}{row['ms']:>12.1f}{row['temp_mib']:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
