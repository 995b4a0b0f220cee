"""MoE dispatch speed: dropless (shape-chosen gather or blocks) vs fixed blocks vs grouped vs dense,
and, under simulated meshes, each dispatch's step time, loops and collectives.

Times the routed-expert part only (routing given), forward and forward+backward, for several
expert counts at each number of tokens, and the last-vs-first-expert-count ratio (dropless
target for 64 vs 8: <= 1.3x, i.e. cost follows tokens * K, not E). Variants:
  dense          every expert on every token (`moe.dispatch.dense_dispatch`);
  blocked/b<B>   blocks of exactly B rows (`moe.dropless.blocked_dispatch`: dropless before the
                 block size was chosen from the shapes);
  dropless/c<B>  `moe.dropless.dropless_dispatch` with config.moe_block_size = B (the block
                 chosen by `moe.dropless.choose_block_size`, or the gather path when T*K <= 2E);
  grouped        `moe.grouped.grouped_dispatch` (sort + `jax.lax.ragged_dot`; XLA:CPU expands
                 ragged_dot into a masked product over every expert, so its CPU cost grows with E);
  gather         `moe.dispatch.gather_dispatch` (one [d, f] weight slice per assignment).
All variants run in one process, so their ratios share the machine's load.

With --meshes (semicolon-separated meshes of simulated CPU devices; 8 are created), the whole
MoE layer (router, routed experts through config.moe_dispatch, shared expert) runs forward +
backward per mesh and dispatch on --mesh_tokens tokens per device, and prints: best ms, the
compiled program's while loops, collectives, collectives inside a loop (`r1jax.hlo`), and
temporary MiB per device (`memory_analysis`). Simulated devices share this machine's cores:
times compare dispatches on one mesh, not meshes.

  python benchmarks/moe_dispatch.py                        # defaults below, on this machine
  python benchmarks/moe_dispatch.py --block_sizes=16,64 --experts=8,64
  python benchmarks/moe_dispatch.py --tokens=8 --experts=12 --d=512 --f=384  # small_50m decode
  python benchmarks/moe_dispatch.py --tokens= --meshes="fsdp=2;fsdp=8;data=2,expert=4"
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import sys
import time

if any(a.startswith("--meshes") for a in sys.argv):  # before jax reads XLA_FLAGS
    os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import flax.linen as nn  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from r1jax import hlo, plan, sharding  # noqa: E402
from r1jax.models import config as config_lib  # noqa: E402
from r1jax.models import moe  # noqa: E402
from r1jax.models.moe import dispatch as dispatch_lib  # noqa: E402
from r1jax.models.moe import dropless as dropless_lib  # noqa: E402
from r1jax.models.moe import grouped as grouped_lib  # noqa: E402


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


# ---------------------------------------------------------------------------------------------
# Under a mesh: the whole layer, compiled per mesh and dispatch
# ---------------------------------------------------------------------------------------------


def layer_config(dispatch: str, args) -> config_lib.ModelConfig:
    return config_lib.ModelConfig(
        hidden_size=args.d, moe_intermediate_size=args.f, n_routed_experts=args.mesh_experts,
        num_experts_per_tok=args.top_k, n_group=1, topk_group=1, n_shared_experts=1,
        moe_dispatch=dispatch)


def mesh_row(dispatch: str, mesh_shape: dict[str, int], args) -> str:
    """One table row: the MoE layer's forward + backward on `mesh_shape`."""
    mesh = sharding.make_mesh(mesh_shape, jax.devices()[:math.prod(mesh_shape.values())])
    model = moe.MoE(layer_config(dispatch, args))
    tokens = mesh.size * args.mesh_tokens
    x = jax.random.normal(jax.random.key(0), (tokens // 128 or 1, min(tokens, 128), args.d))
    boxed = jax.eval_shape(model.init, jax.random.key(0), x[:1])["params"]
    params = jax.jit(model.init)(jax.random.key(1), x[:1])["params"]
    params_sh = sharding.logical_shardings(nn.get_partition_spec(boxed), mesh)
    x_sh = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(
        ("act_batch", "act_length", "act_embed")))

    def loss(p, x_btd):
        y, state = model.apply({"params": p}, x_btd, mutable=["intermediates"])
        return jnp.sum(y ** 2) + moe.total_aux_loss(state["intermediates"])

    with jax.set_mesh(mesh):
        params, x = jax.device_put((nn.meta.unbox(params), x), (params_sh, x_sh))
        compiled = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(params, x).compile()
        ms = best_ms(compiled, params, x, repeats=args.repeats)
    report = hlo.loop_report(compiled.as_text())
    temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
    return (f"{dispatch:<16}{ms:>10.2f}{report.loops:>7}{report.collectives:>13}"
            f"{len(report.in_loops):>10}{temp:>10.2f}")


def mesh_tables(args) -> None:
    for text in filter(None, args.meshes.split(";")):
        mesh_shape = plan.parse_mesh(text)
        print(f"\nmesh {text} ({math.prod(mesh_shape.values())} of {jax.device_count()} "
              f"simulated devices); {args.mesh_tokens} tokens per device, E={args.mesh_experts} "
              f"top_k={args.top_k} d={args.d} f={args.f}, MoE layer fwd+bwd")
        print(f"{'dispatch':<16}{'best ms':>10}{'loops':>7}{'collectives':>13}{'in loops':>10}"
              f"{'temp MiB':>10}")
        for dispatch in args.mesh_dispatches.split(","):
            print(mesh_row(dispatch, mesh_shape, args), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="2048", help="comma-separated token counts T "
                        "(empty: no single-device table)")
    parser.add_argument("--top_k", type=int, default=2)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--f", type=int, default=128)
    parser.add_argument("--experts", default="8,16,64")
    parser.add_argument("--block_sizes", default="16,64")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--meshes", default="", help='e.g. "fsdp=2;fsdp=8;data=2,expert=4"')
    parser.add_argument("--mesh_dispatches", default="dropless,grouped,dense,expert_parallel")
    parser.add_argument("--mesh_tokens", type=int, default=512, help="tokens per device")
    parser.add_argument("--mesh_experts", type=int, default=16)
    args = parser.parse_args()
    experts = [int(e) for e in args.experts.split(",")]
    variants = {"dense": dispatch_lib.dense_dispatch, "gather": dispatch_lib.gather_dispatch,
                "grouped": grouped_lib.grouped_dispatch}
    for block in (int(b) for b in args.block_sizes.split(",")):
        variants[f"blocked/b{block}"] = functools.partial(dropless_lib.blocked_dispatch,
                                                          block_size=block)
        variants[f"dropless/c{block}"] = functools.partial(dropless_lib.dropless_dispatch,
                                                           block_size=block)
    for tokens in (int(t) for t in filter(None, args.tokens.split(","))):
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
    if args.meshes:
        mesh_tables(args)


if __name__ == "__main__":
    main()
