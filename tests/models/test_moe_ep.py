"""Expert-parallel MoE dispatch on 8 simulated CPU devices vs the single-device dispatches.

The whole DeepSeekMoE layer (router with groups and bias, routed experts, shared expert) with
moe_dispatch="expert_parallel" on several meshes must give the forward output, the gradients
(w.r.t. every parameter and the input), the sown expert loads and the bias update of the
single-device dropless and dense (loop-over-experts reference) layers, for balanced and for
maximally skewed routing (every assignment bound for one device). The exchange's CPU emulation
must match `jax.lax.ragged_all_to_all`'s documented semantics; the GPU/TPU path (the real
primitive, lowered here through that emulation by a test-only rule, and grouped matmuls) must be
exact too; the local expert compute (grouped matmul on GPU/TPU, block loop on the CPU) must see
only real rows.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import hlo as hlo_lib
from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import moe
from r1jax.models.moe import dispatch as dispatch_lib
from r1jax.models.moe import expert_parallel, grouped, layer, routing

D, F, E = 16, 8, 8
MESHES = ({"expert": 8}, {"fsdp": 2, "expert": 2, "tensor": 2}, {"data": 2, "expert": 4})

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def make_config(dispatch: str) -> config_lib.ModelConfig:
    return config_lib.ModelConfig(
        hidden_size=D, moe_intermediate_size=F, n_routed_experts=E, n_group=4, topk_group=2,
        num_experts_per_tok=2, n_shared_experts=1, moe_block_size=4, routed_scaling_factor=2.5,
        aux_loss_alpha=0.01, moe_dispatch=dispatch)


def make_inputs(skewed: bool):
    """Params (O(1) outputs) and x [8, 4, D]. Skewed: a bias that sends every token to
    experts 0 and 1, which live on the first device of the expert axis."""
    x_btd = jax.random.normal(jax.random.key(1), (8, 4, D))
    boxed = jax.jit(moe.MoE(make_config("dropless")).init)(jax.random.key(0), x_btd)["params"]
    params = nn.meta.unbox(boxed)
    rng = np.random.default_rng(0)
    for name in ("gate_proj", "up_proj", "down_proj"):
        shape = params["experts"][name].shape
        params["experts"][name] = jnp.asarray(rng.normal(0, 0.5, shape), jnp.float32)
    params["gate"]["kernel"] = jnp.asarray(rng.normal(0, 0.5, (D, E)), jnp.float32)
    bias = np.where(np.arange(E) < 2, 10.0, 0.0) if skewed else rng.normal(0, 0.3, E)
    params["gate"][moe.BIAS] = jnp.asarray(bias, jnp.float32)
    return boxed, params, x_btd


def loss_and_grads(cfg, params, x_btd):
    """The layer's output, gradients of a random projection of it plus its aux loss, the sown
    expert loads and the biases after one balancing update."""
    probe = jax.random.normal(jax.random.key(2), x_btd.shape)

    def loss(p, x):
        y, state = moe.MoE(cfg).apply({"params": p}, x, mutable=["intermediates"])
        return jnp.sum(y * probe) + moe.total_aux_loss(state["intermediates"]), (y, state)

    (_, (y, state)), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params,
                                                                                     x_btd)
    loads = moe.collect_expert_loads(state["intermediates"])
    bias = moe.update_all_biases(params, state["intermediates"], 0.001)["gate"][moe.BIAS]
    return y, grads, (loads, bias)


@functools.cache
def jitted_loss_and_grads(dispatch: str):
    """One jitted `loss_and_grads` per dispatch, so that the balanced and the skewed cases
    (same shapes and shardings, new values) share each compile."""
    return jax.jit(lambda p, x: loss_and_grads(make_config(dispatch), p, x))


_COMPILED = {}


def sharded_loss_and_grads(boxed, params, x_btd, mesh_shape):
    """Expert-parallel `loss_and_grads` compiled on a mesh (params by the logical rules, x
    batch-sharded) and run; the executable and its HLO text are kept per mesh and reused."""
    mesh = sharding.make_mesh(mesh_shape)
    params_sh = sharding.logical_shardings(nn.get_partition_spec(boxed), mesh)
    x_sh = jax.sharding.NamedSharding(mesh, sharding.logical_to_spec(layer._BTD))
    key = tuple(sorted(mesh_shape.items()))
    with jax.set_mesh(mesh):
        args = jax.device_put((params, x_btd), (params_sh, x_sh))
        if key not in _COMPILED:
            compiled = jitted_loss_and_grads("expert_parallel").lower(*args).compile()
            _COMPILED[key] = compiled, compiled.as_text()
        compiled, hlo = _COMPILED[key]
        return compiled(*args), hlo


@pytest.mark.parametrize("skewed", [False, True])
def test_expert_parallel_matches_single_device_forward_and_gradients(skewed):
    boxed, params, x_btd = make_inputs(skewed)
    y_ref, grads_ref, stats_ref = jitted_loss_and_grads("dropless")(params, x_btd)
    y_dense, grads_dense, stats_dense = jitted_loss_and_grads("dense")(params, x_btd)
    np.testing.assert_allclose(y_dense, y_ref, rtol=1e-5, atol=1e-5)
    if skewed:
        idx = routing.select_experts(jnp.zeros((1, E)), params["gate"][moe.BIAS], top_k=2,
                                     n_group=4, topk_group=2)
        assert sorted(np.asarray(idx)[0].tolist()) == [0, 1]
    for mesh_shape in MESHES:
        (y, grads, stats), hlo = sharded_loss_and_grads(boxed, params, x_btd, mesh_shape)
        assert "all-to-all" in hlo, mesh_shape  # the exchange really happens
        assert hlo_lib.loop_report(hlo).in_loops == [], mesh_shape  # no loop communicates
        np.testing.assert_allclose(y, y_dense, rtol=1e-5, atol=1e-5, err_msg=str(mesh_shape))
        for reference in (grads_ref, grads_dense):
            for path, g in jax.tree_util.tree_leaves_with_path(grads):
                want = _at(reference, path)
                np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5,
                                           err_msg=f"{mesh_shape} {jax.tree_util.keystr(path)}")
        # Balancing statistics are the layer's, whatever the dispatch: exactly equal.
        for got, want in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_dense)):
            np.testing.assert_array_equal(got, want, err_msg=str(mesh_shape))


def _at(tree, path):
    for key in path:
        tree = tree[key.idx if hasattr(key, "idx") else key.key]
    return tree


def test_expert_parallel_without_mesh_is_dropless():
    _, params, x_btd = make_inputs(False)
    # Jitted: op by op, the layer's many small ops took longer than compiling them.
    y_ep = jax.jit(moe.MoE(make_config("expert_parallel")).apply)({"params": params}, x_btd)
    y_ref = jax.jit(moe.MoE(make_config("dropless")).apply)({"params": params}, x_btd)
    np.testing.assert_allclose(y_ep, y_ref, rtol=1e-6, atol=1e-6)


def test_experts_must_divide_over_the_expert_axis():
    experts = dispatch_lib.ExpertParams(jnp.ones((6, D, F)), jnp.ones((6, D, F)),
                                        jnp.ones((6, F, D)))
    x_td, idx_tk, weight_tk = jnp.ones((8, D)), jnp.zeros((8, 2), jnp.int32), jnp.ones((8, 2))
    dispatch = jax.jit(lambda *a: expert_parallel.expert_parallel_dispatch(*a, block_size=4))
    with jax.set_mesh(sharding.make_mesh({"expert": 4, "data": 2})):
        with pytest.raises(ValueError, match="6 experts do not divide over the 4 devices"):
            dispatch(x_td, idx_tk, weight_tk, experts)


def _random_ragged_exchange(rng, n_dev: int, per_peer: int, rows: int, max_size: int):
    """Per-device arguments of a ragged all-to-all: random sizes, and slices placed in random
    order with random gaps on both sides. Returns the [n_dev, ...] stacks and the reference
    moves [(sender, input offset, receiver, output offset, size)]."""
    size_sji = rng.integers(0, max_size + 1, (n_dev, n_dev, per_peer))

    def place(order_sizes):
        offsets, cursor = {}, 0
        for key, size in order_sizes:
            cursor += int(rng.integers(0, 2))
            offsets[key] = cursor
            cursor += size
        assert cursor <= rows
        return offsets

    def shuffled(keys):
        return [keys[p] for p in rng.permutation(len(keys))]

    slices = [(j, i) for j in range(n_dev) for i in range(per_peer)]
    input_off = [place([(sl, size_sji[s, sl[0], sl[1]]) for sl in shuffled(slices)])
                 for s in range(n_dev)]
    incoming = [(s, i) for s in range(n_dev) for i in range(per_peer)]
    output_off = [place([(sl, size_sji[sl[0], j, sl[1]])
                         for sl in shuffled(incoming)]) for j in range(n_dev)]
    args = np.zeros((4, n_dev, n_dev * per_peer), np.int32)
    moves = []
    for s in range(n_dev):
        for j, i in slices:
            size = int(size_sji[s, j, i])
            args[:, s, j * per_peer + i] = (input_off[s][(j, i)], size,
                                            output_off[j][(s, i)], size_sji[j, s, i])
            moves.append((s, input_off[s][(j, i)], j, output_off[j][(s, i)], size))
    return args, moves


def test_emulated_ragged_all_to_all_matches_its_definition():
    """Forward and both gradients of the CPU stand-in equal jax.lax.ragged_all_to_all's
    documented semantics (a loop of slice copies) on random sizes, orders and gaps."""
    n_dev, per_peer, rows, width = 8, 2, 48, 3
    rng = np.random.default_rng(3)
    args, moves = _random_ragged_exchange(rng, n_dev, per_peer, rows, max_size=2)
    operand = rng.normal(size=(n_dev, rows, width)).astype(np.float32)
    output = rng.normal(size=(n_dev, rows, width)).astype(np.float32)
    probe = rng.normal(size=(n_dev, rows, width)).astype(np.float32)
    want = output.copy()
    want_d_operand, want_d_output = np.zeros_like(operand), probe.copy()
    for s, src, j, dst, size in moves:
        want[j, dst:dst + size] = operand[s, src:src + size]
        want_d_operand[s, src:src + size] = probe[j, dst:dst + size]
        want_d_output[j, dst:dst + size] = 0.0

    exchange = functools.partial(expert_parallel.emulated_ragged_all_to_all,
                                 axis_name="expert", num_devices=n_dev,
                                 block_rows=per_peer * 2)
    spec = jax.sharding.PartitionSpec("expert")
    mesh = sharding.make_mesh({"expert": n_dev})
    run = jax.shard_map(lambda o, out, *a: exchange(o, out, *a), mesh=mesh,
                        in_specs=(spec,) * 6, out_specs=spec)
    flat = [a.reshape(-1, *a.shape[2:]) for a in (operand, output, probe)]
    offsets = [jnp.asarray(a.reshape(-1)) for a in args]

    @jax.jit
    def forward_and_grads(operand, output, probe):
        result = run(operand, output, *offsets)
        grads = jax.grad(lambda o, out: jnp.sum(run(o, out, *offsets) * probe),
                         argnums=(0, 1))(operand, output)
        return result, grads

    with jax.set_mesh(mesh):
        result, (d_operand, d_output) = forward_and_grads(*flat)
    np.testing.assert_array_equal(result, want.reshape(-1, width))
    np.testing.assert_allclose(d_operand, want_d_operand.reshape(-1, width), rtol=1e-6)
    np.testing.assert_allclose(d_output, want_d_output.reshape(-1, width), rtol=1e-6)


@contextlib.contextmanager
def ragged_all_to_all_on_cpu():
    """Test-only: lowers the real `jax.lax.ragged_all_to_all` primitive on the CPU through
    `emulated_ragged_all_to_all` (whose match with the primitive's documented semantics is
    tested above), so that the GPU/TPU path (exchange="ragged") runs here: its arguments, and
    the backward JAX builds from the primitive's own transpose rule. Private JAX API (jax
    0.10.2): skips if it moved."""
    try:
        from jax._src.interpreters import mlir
        from jax._src.lax import parallel
        table = mlir._platform_specific_lowerings["cpu"]
        primitive = parallel.ragged_all_to_all_p
    except (ImportError, AttributeError, KeyError) as error:
        pytest.skip(f"jax internals moved: {error}")

    def rule(ctx, *args, axis_name, axis_index_groups):
        groups = parallel._replica_groups(ctx.module_context.axis_context, axis_name,
                                          axis_index_groups)
        # Every operand row bound for one peer is the largest block a device can send.
        emulate = functools.partial(expert_parallel.emulated_ragged_all_to_all,
                                    axis_name=axis_name[0], num_devices=len(groups[0]),
                                    block_rows=ctx.avals_in[0].shape[0])
        return mlir.lower_fun(emulate, multiple_results=False)(ctx, *args)

    saved = table.get(primitive)
    mlir.register_lowering(primitive, rule, platform="cpu")
    try:
        yield
    finally:
        if saved is None:
            table.pop(primitive, None)
        else:
            table[primitive] = saved


def dispatch_inputs(skewed: bool, tokens: int = 16):
    """x [T, D], idx [T, 2] (random distinct experts, or all on experts 0 and 1 of device 0),
    gates, and expert weights, for the dispatch alone."""
    rng = np.random.default_rng(4)
    idx = (np.tile([0, 1], (tokens, 1)) if skewed
           else np.stack([rng.choice(E, 2, replace=False) for _ in range(tokens)]))
    experts = dispatch_lib.ExpertParams(*(jnp.asarray(rng.normal(0, 0.5, s), jnp.float32)
                                          for s in ((E, D, F), (E, D, F), (E, F, D))))
    return (jnp.asarray(rng.normal(size=(tokens, D)), jnp.float32),
            jnp.asarray(idx, jnp.int32), jnp.asarray(rng.uniform(size=(tokens, 2)), jnp.float32),
            experts)


def dispatch_loss(dispatch, x_td, idx_tk, weight_tk, experts):
    """A random projection of the routed output, for gradients w.r.t. x, gates and weights."""
    probe = jax.random.normal(jax.random.key(5), x_td.shape)
    out = dispatch(x_td, idx_tk, weight_tk, experts)
    y_td, aux = out if isinstance(out, tuple) else (out, None)
    return jnp.sum(y_td * probe), (y_td, aux)


@functools.cache
def ragged_value_and_grad():
    run = functools.partial(expert_parallel.expert_parallel_dispatch, block_size=4,
                            exchange="ragged", return_group_sizes=True)
    return jax.jit(jax.value_and_grad(functools.partial(dispatch_loss, run),
                                      argnums=(0, 2, 3), has_aux=True))


def test_ragged_path_is_exact_and_groups_only_real_rows():
    """exchange="ragged" (the GPU/TPU path) on the CPU through the test-only lowering: forward
    and gradients equal the dense (every expert) reference, and the group sizes fed to the
    grouped matmul sum to the real rows each device received: the per-expert counts of its EP
    group's tokens, never the padding of the receive buffer."""
    reference = jax.jit(jax.value_and_grad(
        functools.partial(dispatch_loss, dispatch_lib.dense_dispatch), argnums=(0, 2, 3),
        has_aux=True))
    # One mesh (the CPU path runs on three): 2 EP groups of 4 devices, 2 local experts each.
    mesh_shape = {"data": 2, "expert": 4}
    n_ep, groups = mesh_shape["expert"], mesh_shape["data"]
    for skewed in (False, True):
        args = dispatch_inputs(skewed)
        (_, (y_want, _)), grads_want = reference(*args)
        with ragged_all_to_all_on_cpu(), jax.set_mesh(sharding.make_mesh(mesh_shape)):
            (_, (y, group_sizes)), grads = ragged_value_and_grad()(*args)
        np.testing.assert_allclose(y, y_want, rtol=1e-5, atol=1e-5)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_want)):
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        idx = np.asarray(args[1])
        tokens_per_group = idx.shape[0] // groups
        sizes = np.asarray(group_sizes).reshape(groups, E)  # [EP group, global expert]
        for g in range(groups):
            counts = np.bincount(idx[g * tokens_per_group:(g + 1) * tokens_per_group].ravel(),
                                 minlength=E)
            np.testing.assert_array_equal(sizes[g], counts, err_msg=f"{mesh_shape} group {g}")
        assert sizes.sum() == idx.size
        # The receive buffer (n_ep * local tokens * min(K, E / n_ep) rows) exceeds the real
        # rows on every device when the load is balanced: padding exists and joins no group.
        buffer_rows = n_ep * (idx.shape[0] // (groups * n_ep)) * min(2, E // n_ep)
        assert sizes.reshape(groups * n_ep, -1).sum(1).max() <= buffer_rows
        if not skewed:
            assert sizes.reshape(groups * n_ep, -1).sum(1).max() < buffer_rows


def test_ragged_path_lowers_to_ragged_all_to_all_for_gpu():
    """For GPU the forward and backward lower to the ragged all-to-all custom call (two
    exchanges forward, their two transposes backward) and grouped matmuls (chlo.ragged_dot),
    with no dense all-to-all of rows."""
    args = dispatch_inputs(False)
    with jax.set_mesh(sharding.make_mesh({"expert": 8})):
        text = ragged_value_and_grad().trace(*args).lower(
            lowering_platforms=("cuda",)).as_text()
    assert text.count("@ragged_all_to_all") == 4
    assert "ragged_dot" in text


def test_cpu_block_loop_reads_only_real_rows():
    """`grouped_blocks` (the CPU's local expert compute) equals the grouped matmul on the same
    groups, forward and gradients, and never reads a padding row: NaN padding stays out of
    every output and gradient, and padding rows come out zero."""
    rows, sizes = 24, jnp.array([5, 0, 7, 1], jnp.int32)  # 13 real rows, 11 padding rows
    rng = np.random.default_rng(6)
    experts = dispatch_lib.ExpertParams(*(jnp.asarray(rng.normal(0, 0.5, s), jnp.float32)
                                          for s in ((4, D, F), (4, D, F), (4, F, D))))
    real = np.arange(rows) < int(sizes.sum())
    x = jnp.asarray(np.where(real[:, None], rng.normal(size=(rows, D)), np.nan), jnp.float32)
    probe = jnp.asarray(rng.normal(size=(rows, D)), jnp.float32)

    def loss(run, x, w):
        return jnp.sum(run(x, sizes, w) * probe)

    blocks = functools.partial(expert_parallel.grouped_blocks, block_size=4,
                               accum_dtype=jnp.float32)
    grouped_ref = functools.partial(grouped.grouped_swiglu, accum_dtype=jnp.float32)
    y, grads = jax.jit(lambda x, w: (blocks(x, sizes, w), jax.grad(
        functools.partial(loss, blocks), argnums=(0, 1))(x, w)))(x, experts)
    x_clean = jnp.where(real[:, None], x, 0.0)
    y_ref, grads_ref = jax.jit(lambda x, w: (grouped_ref(x, sizes, w), jax.grad(
        functools.partial(loss, grouped_ref), argnums=(0, 1))(x, w)))(x_clean, experts)
    np.testing.assert_array_equal(np.asarray(y)[~real], 0.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.asarray(grads[0])[~real], 0.0)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_exchange_is_chosen_by_backend():
    assert expert_parallel.resolve_exchange("auto") == "emulated"  # XLA:CPU lacks the primitive
    assert expert_parallel.resolve_exchange("ragged") == "ragged"
    with pytest.raises(ValueError, match="exchange='nccl'"):
        expert_parallel.resolve_exchange("nccl")
