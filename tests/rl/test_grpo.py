"""GRPO advantages and loss vs an independent float64 NumPy implementation, plus edge cases."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import grpo
from r1jax.sampling import controls

# ---------------------------------------------------------------------------------------------
# Reference implementation (float64 NumPy, loops over rows; written from the papers' formulas)
# ---------------------------------------------------------------------------------------------


def ref_advantages(rewards, g, scale, eps=1e-6):
    rewards = np.asarray(rewards, np.float64)
    out = np.empty_like(rewards)
    batch_std = np.sqrt(np.mean((rewards - rewards.mean()) ** 2))
    for start in range(0, len(rewards), g):
        grp = rewards[start : start + g]
        mean = sum(grp) / g
        std = np.sqrt(sum((x - mean) ** 2 for x in grp) / g)
        denom = {"group": std + eps, "batch": batch_std + eps, "none": 1.0}[scale]
        out[start : start + g] = (grp - mean) / denom
    return out


def ref_token_loss(lp, old, ref, a, eps_low, eps_high, beta, kl_est):
    rho = np.exp(lp - old)
    surrogate = -min(rho * a, min(max(rho, 1 - eps_low), 1 + eps_high) * a)
    if ref is None:
        return surrogate
    if kl_est == "k3":
        kl = np.exp(ref - lp) - (ref - lp) - 1
    elif kl_est == "k1":
        kl = lp - ref
    else:
        kl = 0.5 * (lp - ref) ** 2
    return surrogate + beta * kl


def ref_loss(lp, old, ref, adv, mask, *, eps_low, eps_high, beta, kl_est, agg, max_length=None):
    n, t = lp.shape
    per_row_sums, per_row_counts = [], []
    for i in range(n):
        s, c = 0.0, 0
        for j in range(t):
            if mask[i, j]:
                r = None if ref is None else ref[i, j]
                s += ref_token_loss(lp[i, j], old[i, j], r, adv[i], eps_low, eps_high, beta, kl_est)
                c += 1
        per_row_sums.append(s)
        per_row_counts.append(c)
    if agg == "seq_mean":
        means = [s / c for s, c in zip(per_row_sums, per_row_counts) if c > 0]
        return sum(means) / len(means) if means else 0.0
    if agg == "token_mean":
        return sum(per_row_sums) / max(sum(per_row_counts), 1)
    return sum(per_row_sums) / (n * max_length)


def random_batch(seed, n=8, t=7):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.1, 3.0, (n, t))
    old = lp + rng.normal(0, 0.3, (n, t))  # ratios spread across the clip band
    ref = lp + rng.normal(0, 0.5, (n, t))
    mask = (np.arange(t)[None] < rng.integers(1, t + 1, (n, 1))).astype(np.float64)
    mask[3] = 0.0  # one fully masked row
    rewards = rng.integers(0, 3, n).astype(np.float64)
    return lp, old, ref, mask, rewards


# ---------------------------------------------------------------------------------------------
# Every combination against the reference
# ---------------------------------------------------------------------------------------------

COMBOS = list(itertools.product(grpo.KL_ESTIMATORS, grpo.AGGREGATIONS, grpo.ADVANTAGE_SCALES))


@pytest.mark.parametrize("kl_est,agg,scale", COMBOS)
def test_loss_matches_reference(kl_est, agg, scale):
    lp, old, ref, mask, rewards = random_batch(COMBOS.index((kl_est, agg, scale)))
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.28, beta=0.04, max_length=10)
    adv = ref_advantages(rewards, 4, scale)
    np.testing.assert_allclose(
        grpo.group_advantages(jnp.asarray(rewards, jnp.float32), 4, scale),
        adv,
        rtol=1e-5,
        atol=1e-6,
    )
    loss, _ = grpo.grpo_loss(
        *(jnp.asarray(x, jnp.float32) for x in (lp, old, ref, adv, mask)),
        kl_estimator=kl_est,
        aggregation=agg,
        **kw,
    )
    want = ref_loss(
        lp,
        old,
        ref,
        adv,
        mask,
        eps_low=0.2,
        eps_high=0.28,
        beta=0.04,
        kl_est=kl_est,
        agg=agg,
        max_length=10,
    )
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6)


def test_gradient_matches_finite_differences_of_reference():
    lp, old, ref, mask, rewards = random_batch(7, n=4, t=5)
    adv = ref_advantages(rewards, 2, "group")
    kw = dict(eps_low=0.2, eps_high=0.28, beta=0.1, kl_est="k3", agg="seq_mean")
    grad = jax.grad(
        lambda x: grpo.grpo_loss(
            x,
            *(jnp.asarray(v, jnp.float32) for v in (old, ref, adv, mask)),
            clip_eps_low=0.2,
            clip_eps_high=0.28,
            beta=0.1,
        )[0]
    )(jnp.asarray(lp, jnp.float32))
    h = 1e-6
    fd = np.zeros_like(lp)
    for idx in np.ndindex(*lp.shape):
        plus, minus = lp.copy(), lp.copy()
        plus[idx] += h
        minus[idx] -= h
        fd[idx] = (
            ref_loss(plus, old, ref, adv, mask, **kw) - ref_loss(minus, old, ref, adv, mask, **kw)
        ) / (2 * h)
    assert np.abs(fd).max() > 1e-3  # the check is not vacuous
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad)[mask == 0] == 0)


# ---------------------------------------------------------------------------------------------
# Hand-computed edge cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", grpo.ADVANTAGE_SCALES)
def test_equal_rewards_in_a_group_give_zero_advantages(scale):
    rewards = jnp.array([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])
    adv = grpo.group_advantages(rewards, 3, scale)
    np.testing.assert_array_equal(adv[:3], 0.0)
    assert np.all(np.isfinite(adv))
    assert float(jnp.abs(adv[3:]).sum()) > 0


def test_group_advantages_hand_values():
    # Group [0, 1]: mean 0.5, population std 0.5 -> (-1, 1).
    adv = grpo.group_advantages(jnp.array([0.0, 1.0]), 2, "group", eps=0.0)
    np.testing.assert_allclose(adv, [-1.0, 1.0])
    np.testing.assert_allclose(grpo.group_advantages(jnp.array([0.0, 1.0]), 2, "none"), [-0.5, 0.5])


def _ones(n, t):
    return jnp.zeros((n, t)), jnp.ones((n, t))


def test_ratio_one_gives_minus_mean_advantage():
    lp = jnp.asarray(np.random.default_rng(0).normal(size=(3, 4)), jnp.float32)
    mask = jnp.array([[1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]], jnp.float32)
    adv = jnp.array([0.5, -2.0, 1.0])
    loss, metrics = grpo.grpo_loss(
        lp, lp, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0
    )
    np.testing.assert_allclose(float(loss), -float(adv.mean()), rtol=1e-6)
    np.testing.assert_allclose(float(metrics["ratio_mean"]), 1.0)
    assert float(metrics["kl"]) == 0.0


@pytest.mark.parametrize("agg", grpo.AGGREGATIONS)
def test_fully_masked_rows_are_excluded_and_finite(agg):
    lp = jnp.array([[-1.0, -1.0], [-jnp.inf, jnp.nan]])
    mask = jnp.array([[1.0, 1.0], [0.0, 0.0]])
    adv = jnp.array([1.0, 5.0])
    fn = lambda x: grpo.grpo_loss(
        x,
        x,
        x,
        adv,
        mask,
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        beta=0.1,
        aggregation=agg,
        max_length=2,
    )[0]
    loss, grad = jax.value_and_grad(fn)(lp)
    want = {"seq_mean": -1.0, "token_mean": -1.0, "fixed_length": -2.0 / 4}[agg]
    np.testing.assert_allclose(float(loss), want, rtol=1e-6)
    assert np.all(np.isfinite(grad))


def test_all_rows_masked_gives_zero_loss():
    lp = jnp.array([[-1.0, -1.0], [-jnp.inf, jnp.nan]])
    adv = jnp.array([1.0, 5.0])
    empty = jnp.zeros((2, 2))
    loss, metrics = grpo.grpo_loss(
        lp, lp, None, adv, empty, clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0
    )
    assert float(loss) == 0.0 and all(np.isfinite(float(v)) for v in metrics.values())


def test_clip_activation_outside_the_band():
    # rho = [1.5, 0.5, 1.1] for A = +1: clipped at 1 + eps_high = 1.2 for the first only.
    old = jnp.zeros((1, 3))
    lp = jnp.log(jnp.array([[1.5, 0.5, 1.1]]))
    mask = jnp.ones((1, 3))
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0, aggregation="token_mean")
    loss, m = grpo.grpo_loss(lp, old, None, jnp.array([1.0]), mask, **kw)
    np.testing.assert_allclose(float(loss), -(1.2 + 0.5 + 1.1) / 3, rtol=1e-6)
    np.testing.assert_allclose([float(m["clip_frac_high"]), float(m["clip_frac_low"])], [1 / 3, 0])
    grad = jax.grad(lambda x: grpo.grpo_loss(x, old, None, jnp.array([1.0]), mask, **kw)[0])(lp)
    np.testing.assert_allclose(grad, [[0.0, -0.5 / 3, -1.1 / 3]], rtol=1e-6)
    # A = -1: min(-rho, -clip(rho)) clips rho = 0.5 up to 0.8 (zero gradient), 1.5 is kept.
    loss, m = grpo.grpo_loss(lp, old, None, jnp.array([-1.0]), mask, **kw)
    np.testing.assert_allclose(float(loss), (1.5 + 0.8 + 1.1) / 3, rtol=1e-6)
    np.testing.assert_allclose([float(m["clip_frac_high"]), float(m["clip_frac_low"])], [0, 1 / 3])


def test_asymmetric_dapo_clip():
    old = jnp.zeros((1, 2))
    lp = jnp.log(jnp.array([[1.25, 0.75]]))
    mask = jnp.ones((1, 2))
    kw = dict(beta=0.0, aggregation="token_mean", clip_eps_low=0.2, clip_eps_high=0.28)
    loss_pos, _ = grpo.grpo_loss(lp, old, None, jnp.array([1.0]), mask, **kw)
    # A > 0: 1.25 < 1.28 stays unclipped (it would be clipped to 1.2 by a symmetric 0.2 band).
    np.testing.assert_allclose(float(loss_pos), -(1.25 + 0.75) / 2, rtol=1e-6)
    loss_neg, _ = grpo.grpo_loss(lp, old, None, jnp.array([-1.0]), mask, **kw)
    # A < 0: 0.75 < 0.8 is clipped up to 0.8 by the low side.
    np.testing.assert_allclose(float(loss_neg), (1.25 + 0.8) / 2, rtol=1e-6)


def test_kl_estimators_hand_values():
    lp, ref = jnp.log(jnp.array([[0.5]])), jnp.log(jnp.array([[0.25]]))
    log_r = np.log(2.0)  # log(pi / pi_ref)
    want = {"k1": log_r, "k2": 0.5 * log_r**2, "k3": 0.5 + log_r - 1.0}
    for est, value in want.items():
        np.testing.assert_allclose(float(grpo.kl_penalty(lp, ref, est)[0, 0]), value, rtol=1e-6)


def test_entropy_metric_and_token_logps():
    """Hand values of the one log-prob / entropy formula (`controls`), and the loss's entropy
    metric: the token mean over the mask."""
    logits = jnp.log(jnp.array([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    tokens = jnp.array([[0, 2]])
    lp = controls.policy_logps(logits, tokens, 1.0)
    np.testing.assert_allclose(lp, np.log([[0.5, 1 / 3]]), rtol=1e-6)
    entropy = controls.entropy(logits, 1.0)
    _, m = grpo.grpo_loss(
        lp,
        lp,
        None,
        jnp.ones(1),
        jnp.ones((1, 2)),
        clip_eps_low=0.2,
        clip_eps_high=0.2,
        beta=0.0,
        entropy=entropy,
    )
    h = (-(0.5 * np.log(0.5) + 0.5 * np.log(0.25)) + np.log(3)) / 2
    np.testing.assert_allclose(float(m["entropy"]), h, rtol=1e-6)
    _, m = grpo.grpo_loss(lp, lp, None, jnp.ones(1), jnp.array([[1.0, 0.0]]), clip_eps_low=0.2,
                          clip_eps_high=0.2, beta=0.0, entropy=entropy)
    np.testing.assert_allclose(float(m["entropy"]), -(0.5 * np.log(0.5) + 0.5 * np.log(0.25)),
                               rtol=1e-6)


def test_loss_is_jittable_with_static_options():
    lp, old, ref, mask, rewards = random_batch(3)
    args = [
        jnp.asarray(x, jnp.float32)
        for x in (lp, old, ref, ref_advantages(rewards, 4, "group"), mask)
    ]
    fn = jax.jit(grpo.grpo_loss, static_argnames=("kl_estimator", "aggregation", "max_length"))
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, kl_estimator="k1", aggregation="seq_mean")
    np.testing.assert_allclose(
        fn(*args, beta=0.04, **kw)[0], grpo.grpo_loss(*args, beta=0.04, **kw)[0], rtol=1e-6
    )


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_bad_options_raise_naming_the_argument():
    x, mask = _ones(2, 3)
    adv = jnp.zeros(2)
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0)
    with pytest.raises(ValueError, match="kl_estimator='k4'.*k1"):
        grpo.grpo_loss(x, x, x, adv, mask, kl_estimator="k4", **kw)
    with pytest.raises(ValueError, match="aggregation='sum'"):
        grpo.grpo_loss(x, x, x, adv, mask, aggregation="sum", **kw)
    with pytest.raises(ValueError, match="max_length"):
        grpo.grpo_loss(x, x, x, adv, mask, aggregation="fixed_length", **kw)
    with pytest.raises(ValueError, match="ref_logps is None but beta"):
        grpo.grpo_loss(x, x, None, adv, mask, clip_eps_low=0.2, clip_eps_high=0.2, beta=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo.grpo_loss(x, x, x, jnp.zeros(3), mask, **kw)
    with pytest.raises(ValueError, match="scale='std'"):
        grpo.group_advantages(jnp.zeros(4), 2, "std")
    with pytest.raises(ValueError, match="group_size=3"):
        grpo.group_advantages(jnp.zeros(4), 3)


def test_sharded_loss_and_grad_match_single_device():
    from jax.sharding import AxisType, NamedSharding, PartitionSpec

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Auto,))
    lp, old, ref, mask, rewards = random_batch(11, n=16, t=6)
    args = [jnp.asarray(x, jnp.float32) for x in (lp, old, ref)]
    adv = grpo.group_advantages(jnp.asarray(rewards, jnp.float32), 4)
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.28, beta=0.04, aggregation="token_mean")
    fn = jax.jit(jax.value_and_grad(lambda x, o, r, a, m: grpo.grpo_loss(x, o, r, a, m, **kw)[0]))
    want = fn(*args, adv, jnp.asarray(mask))
    rows = NamedSharding(mesh, PartitionSpec("data"))
    sharded = [jax.device_put(x, rows) for x in (*args, adv, jnp.asarray(mask))]
    got = fn(*sharded)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-6, atol=1e-8)
    assert got[1].sharding.is_equivalent_to(rows, 2)
