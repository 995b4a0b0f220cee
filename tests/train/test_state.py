"""Optimizer config validation, schedules, masks, one update step, gradient accumulation."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.train import state as state_lib


def _params():
    k = jax.random.split(jax.random.key(0), 3)
    return {
        "embed": {"embedding": jax.random.normal(k[0], (5, 4))},
        "layer": {
            "norm": {"scale": jnp.ones(4)},
            "dense": {"kernel": jax.random.normal(k[1], (4, 4)), "bias": jnp.full(4, 0.5)},
            "moe": {
                "experts": jax.random.normal(k[2], (2, 4, 3)),
                "gate": {"e_score_correction_bias": jnp.arange(2.0)},
            },
        },
    }


def _loss(params, x):
    h = x @ params["layer"]["dense"]["kernel"] + params["layer"]["dense"]["bias"]
    h = (
        h * params["layer"]["norm"]["scale"]
        + params["layer"]["moe"]["gate"]["e_score_correction_bias"].sum()
    )
    return (
        jnp.mean(h**2)
        + jnp.sum(params["embed"]["embedding"])
        + jnp.sum(params["layer"]["moe"]["experts"])
    )


@pytest.mark.parametrize(
    "field,value",
    [
        ("learning_rate", 0.0),
        ("warmup_steps", -1),
        ("schedule", "linear"),
        ("end_lr_factor", 2.0),
        ("b2", 1.0),
        ("eps", 0.0),
        ("weight_decay", -0.1),
        ("grad_clip_norm", 0.0),
        ("learning_rate", float("inf")),
        ("learning_rate", float("nan")),
        ("weight_decay", float("inf")),
        ("weight_decay", float("nan")),
        ("eps", float("inf")),
        ("grad_clip_norm", float("inf")),
    ],
)
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=f"OptimConfig.{field}="):
        state_lib.OptimConfig(**{field: value})


def test_cosine_needs_total_steps():
    with pytest.raises(ValueError, match="OptimConfig.total_steps"):
        state_lib.OptimConfig(schedule="cosine", warmup_steps=10, total_steps=10)


def test_schedules():
    const = state_lib.learning_rate_schedule(
        state_lib.OptimConfig(learning_rate=1.0, warmup_steps=4)
    )
    np.testing.assert_allclose([const(s) for s in range(6)], [0.25, 0.5, 0.75, 1, 1, 1])
    cfg = state_lib.OptimConfig(
        learning_rate=2.0, warmup_steps=2, schedule="cosine", total_steps=12, end_lr_factor=0.1
    )
    cos = state_lib.learning_rate_schedule(cfg)
    np.testing.assert_allclose(float(cos(0)), 1.0)
    np.testing.assert_allclose(float(cos(2)), 2.0)
    np.testing.assert_allclose(float(cos(7)), 0.2 + 1.8 * 0.5, rtol=1e-6)  # half-way
    np.testing.assert_allclose([float(cos(12)), float(cos(100))], [0.2, 0.2], rtol=1e-6)


def test_masks():
    params = _params()
    trainable = state_lib.trainable_mask(params)
    decay = state_lib.weight_decay_mask(params)
    assert trainable["layer"]["moe"]["gate"]["e_score_correction_bias"] is False
    assert sum(jax.tree.leaves(trainable)) == 5
    assert decay["embed"]["embedding"] and decay["layer"]["dense"]["kernel"]
    assert decay["layer"]["moe"]["experts"]
    assert not decay["layer"]["dense"]["bias"] and not decay["layer"]["norm"]["scale"]
    assert not decay["layer"]["moe"]["gate"]["e_score_correction_bias"]


def test_step_leaves_balancing_bias_and_undecayed_leaves_as_expected():
    params = _params()
    cfg = state_lib.OptimConfig(learning_rate=0.1, weight_decay=0.5, grad_clip_norm=None)
    apply = jax.jit(state_lib.apply_gradients, static_argnums=2)
    tx = state_lib.make_optimizer(cfg)
    state = state_lib.create_train_state(params, cfg, jax.random.key(1))
    grads = jax.grad(_loss)(params, jnp.ones((3, 4)))
    assert float(jnp.abs(grads["layer"]["moe"]["gate"]["e_score_correction_bias"]).sum()) > 0
    new, metrics = apply(state, grads, tx)
    assert int(new["step"]) == 1
    bias_path = ("layer", "moe", "gate", "e_score_correction_bias")
    old_bias, new_bias = params, new["params"]
    for key in bias_path:
        old_bias, new_bias = old_bias[key], new_bias[key]
    np.testing.assert_array_equal(new_bias, old_bias)
    for old, upd in zip(jax.tree.leaves(params), jax.tree.leaves(new["params"])):
        if old.shape != (2,):
            assert float(jnp.abs(upd - old).max()) > 1e-3
    # With zero gradients only weight decay moves a leaf: decayed leaves shrink, others don't.
    zero = jax.tree.map(jnp.zeros_like, grads)
    fresh = state_lib.create_train_state(params, cfg, jax.random.key(1))
    decayed, _ = apply(fresh, zero, tx)
    kernel = params["layer"]["dense"]["kernel"]
    np.testing.assert_allclose(
        decayed["params"]["layer"]["dense"]["kernel"], kernel * (1 - 0.1 * 0.5), rtol=1e-6
    )
    np.testing.assert_array_equal(
        decayed["params"]["layer"]["dense"]["bias"], params["layer"]["dense"]["bias"]
    )
    norm = np.sqrt(
        sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(grads))
        - float(jnp.sum(grads["layer"]["moe"]["gate"]["e_score_correction_bias"] ** 2))
    )
    np.testing.assert_allclose(float(metrics["grad_norm"]), norm, rtol=1e-5)


def test_clipping_bounds_the_first_update():
    params = {"w": jnp.zeros((2, 2))}
    cfg = state_lib.OptimConfig(learning_rate=1.0, weight_decay=0.0, grad_clip_norm=1e-3)
    tx = state_lib.make_optimizer(cfg)
    state = state_lib.create_train_state(params, cfg, jax.random.key(0))
    # Adam normalises the step size, so check the clipping through the optimizer state.
    new, metrics = state_lib.apply_gradients(state, {"w": jnp.full((2, 2), 10.0)}, tx)
    np.testing.assert_allclose(float(metrics["grad_norm"]), 20.0)
    mu = jax.tree.leaves(new["opt_state"])
    assert max(float(jnp.abs(x).max()) for x in mu if x.ndim == 2) <= 1e-3


def test_train_state_is_a_jittable_pytree():
    params = _params()
    cfg = state_lib.OptimConfig(learning_rate=0.01)
    tx = state_lib.make_optimizer(cfg)
    state = state_lib.create_train_state(params, cfg, jax.random.key(0))

    @jax.jit
    def step(state, x):
        grads = jax.grad(_loss)(state["params"], x)
        return state_lib.apply_gradients(state, grads, tx)[0]

    state = step(step(state, jnp.ones((2, 4))), jnp.ones((2, 4)))
    assert int(state["step"]) == 2
    assert set(state) == {"step", "params", "opt_state", "rng"}


@pytest.mark.parametrize("num_micro", [1, 4])
def test_accumulation_equals_full_batch(num_micro):
    params = _params()
    x = jax.random.normal(jax.random.key(3), (8, 4))

    def loss_fn(p, batch):
        loss = _loss(p, batch["x"])
        return loss, {"loss": loss}

    full = jax.value_and_grad(loss_fn, has_aux=True)(params, {"x": x})
    loss, aux, grads = jax.jit(state_lib.accumulate_gradients, static_argnums=(0, 3))(
        loss_fn, params, {"x": x}, num_micro
    )
    np.testing.assert_allclose(loss, full[0][0], rtol=1e-5)
    np.testing.assert_allclose(aux["loss"], full[0][0], rtol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(full[1])):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_accumulation_on_a_data_sharded_batch():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    params = _params()
    x = jax.random.normal(jax.random.key(4), (16, 4))
    loss_fn = lambda p, b: (_loss(p, b), ())
    want = jax.grad(_loss)(params, x)
    _, _, grads = jax.jit(state_lib.accumulate_gradients, static_argnums=(0, 3))(
        loss_fn, params, jax.device_put(x, rows), 2
    )
    for got, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


def test_accumulation_rejects_indivisible_batch():
    with pytest.raises(ValueError, match="num_micro=3"):
        state_lib.accumulate_gradients(
            lambda p, b: (jnp.sum(b), ()), {"w": jnp.ones(1)}, jnp.ones(4), 3
        )


def test_config_is_frozen_and_hashable():
    cfg = state_lib.OptimConfig()
    hash(cfg)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.learning_rate = 1.0


def test_guard_update_rejects_non_finite_params_or_moments_from_finite_gradients():
    """A finite loss and gradient can still give a non-finite update (here an overflowing
    learning rate): the guard keeps the old state and reports the skip."""
    params = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
    grads = {"w": jnp.full((4, 3), 0.5), "b": jnp.full((3,), 0.5)}
    for lr, want_skipped in ((1e-2, 0), (3e38, 1)):
        cfg = state_lib.OptimConfig(learning_rate=lr, weight_decay=0.5, warmup_steps=0)
        optimizer = state_lib.make_optimizer(cfg)
        state = dict(state_lib.create_train_state(params, cfg, jax.random.key(0)),
                     skipped=jnp.int32(0))

        def step(state, optimizer=optimizer):
            updated, info = state_lib.apply_gradients(state, grads, optimizer)
            return state_lib.guard_update(state, updated, jnp.float32(1.0), info["grad_norm"])

        new, skipped = jax.jit(step)(state)
        assert int(skipped) == want_skipped == int(new["skipped"])
        assert bool(state_lib.all_finite(new["params"], new["opt_state"]))
        if want_skipped:
            for key in ("step", "params", "opt_state"):
                jax.tree.map(np.testing.assert_array_equal, new[key], state[key])
        else:
            assert int(new["step"]) == 1 and float(new["params"]["w"][0, 0]) < 1.0
    # A non-finite Adam moment alone (finite params) is also rejected.
    poisoned = dict(state, opt_state=jax.tree.map(
        lambda x: x * jnp.nan if jnp.issubdtype(x.dtype, jnp.floating) else x,
        state["opt_state"]))
    _, skipped = state_lib.guard_update(state, poisoned, jnp.float32(1.0), jnp.float32(1.0))
    assert int(skipped) == 1
