"""Advantage estimators (group, RLOO, REINFORCE++ with and without a group baseline, GAE) and
the KL-in-reward token rewards vs float64 NumPy references written from the papers' formulas."""

import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import advantages, grpo

N, T, G = 6, 5, 3


def batch(seed):
    """Rewards [N], mask [N, T] (one empty row, one full row, ragged others), KL [N, T]."""
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 3, N).astype(np.float64)
    lengths = rng.integers(1, T + 1, N)
    lengths[2], lengths[4] = 0, T
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float64)
    kl = rng.normal(0, 0.3, (N, T))
    kl[mask == 0] = np.nan  # padding holds garbage
    return rewards, mask, kl


def f32(*xs):
    return [jnp.asarray(x, jnp.float32) for x in xs]


# ---------------------------------------------------------------------------------------------
# Reference (float64 NumPy, loops)
# ---------------------------------------------------------------------------------------------


def ref_rloo(rewards, g):
    out = np.empty_like(rewards)
    for i in range(len(rewards)):
        start = i - i % g
        others = [rewards[j] for j in range(start, start + g) if j != i]
        out[i] = rewards[i] - sum(others) / (g - 1)
    return out


def ref_token_rewards(rewards, mask, kl, beta):
    out = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        idx = [j for j in range(mask.shape[1]) if mask[i, j]]
        for j in idx:
            out[i, j] = (rewards[i] if j == idx[-1] else 0.0) - (beta * kl[i, j] if beta else 0.0)
    return out


def ref_reinforce_pp(rewards, mask, kl, beta, gamma, g=None):
    if g is not None:
        rewards = np.array([r - np.mean(rewards[i - i % g: i - i % g + g])
                            for i, r in enumerate(rewards)])
    tok = ref_token_rewards(rewards, mask, kl, beta)
    ret = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        running = 0.0
        for j in reversed(range(mask.shape[1])):
            if mask[i, j]:
                running = tok[i, j] + gamma * running
                ret[i, j] = running
    real = ret[mask > 0]
    mean = real.mean()
    std = np.sqrt(np.mean((real - mean) ** 2))
    return np.where(mask > 0, (ret - mean) / (std + 1e-6), 0.0)


def ref_gae(tok, values, mask, gamma, lam):
    adv = np.zeros(mask.shape)
    for i in range(mask.shape[0]):
        idx = [j for j in range(mask.shape[1]) if mask[i, j]]
        for k, j in enumerate(idx):  # the direct sum of eq. 16, no recursion
            total = 0.0
            for l_, jj in enumerate(idx[k:]):
                v_next = values[i, idx[k + l_ + 1]] if k + l_ + 1 < len(idx) else 0.0
                delta = tok[i, jj] + gamma * v_next - values[i, jj]
                total += (gamma * lam) ** l_ * delta
            adv[i, j] = total
    return adv, np.where(mask > 0, adv + values, 0.0)


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def test_rloo_matches_reference_and_scaled_group_mean():
    rewards, _, _ = batch(0)
    got = advantages.rloo(jnp.asarray(rewards, jnp.float32), G)
    np.testing.assert_allclose(got, ref_rloo(rewards, G), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(got, G / (G - 1) * advantages.group(jnp.asarray(rewards), G,
                                                                   "none"), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_token_rewards_put_outcome_on_last_token(beta):
    rewards, mask, kl = batch(1)
    got = advantages.token_rewards(*f32(rewards, mask, kl), beta=beta)
    np.testing.assert_allclose(got, ref_token_rewards(rewards, mask, kl, beta), rtol=1e-6,
                               atol=1e-7)
    if beta == 0:  # row sums are the outcomes, except the empty row
        np.testing.assert_allclose(np.asarray(got).sum(1), rewards * (mask.sum(1) > 0))


@pytest.mark.parametrize("baseline,beta,gamma", [(False, 0.0, 1.0), (True, 0.0, 1.0),
                                                 (False, 0.05, 0.9), (True, 0.05, 1.0)])
def test_reinforce_pp_matches_reference(baseline, beta, gamma):
    rewards, mask, kl = batch(2)
    got = advantages.reinforce_pp(*f32(rewards, mask), kl=jnp.asarray(kl, jnp.float32),
                                  beta=beta, gamma=gamma, group_size=G if baseline else None)
    want = ref_reinforce_pp(rewards, mask, kl, beta, gamma, G if baseline else None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(got)[mask == 0] == 0)
    real = np.asarray(got)[mask > 0]
    np.testing.assert_allclose([real.mean(), real.std()], [0.0, 1.0], atol=1e-5)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.9, 1.0), (0.99, 0.0)])
def test_gae_matches_reference(gamma, lam):
    rewards, mask, kl = batch(3)
    values = np.random.default_rng(4).normal(0, 1, (N, T))
    tok = ref_token_rewards(rewards, mask, kl, 0.05)
    adv, ret = advantages.gae(*f32(tok, values, mask), gamma=gamma, lam=lam)
    want_adv, want_ret = ref_gae(tok, values, mask, gamma, lam)
    np.testing.assert_allclose(adv, want_adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)


def test_gae_limits():
    # lambda = 1, gamma = 1, V = 0: GAE is the return-to-go; lambda = 0: the one-step TD error.
    rewards, mask, kl = f32(*batch(5))
    tok = advantages.token_rewards(rewards, mask, kl, 0.1)
    adv, _ = advantages.gae(tok, jnp.zeros_like(tok), mask, gamma=1.0, lam=1.0)
    np.testing.assert_allclose(adv, advantages.returns_to_go(tok, mask), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("estimator", [e for e in advantages.ESTIMATORS if e != "gae"])
def test_estimate_dispatch_and_kl_in_reward(estimator):
    rewards, mask, kl = batch(6)
    r32, m32, kl32 = f32(rewards, mask, kl)
    got = advantages.estimate(estimator, r32, m32, group_size=G, kl=kl32, beta=0.1)
    shaped = {"reinforce_pp": (N, T), "reinforce_pp_baseline": (N, T)}.get(estimator, (N,))
    assert got.shape == shaped
    if estimator in ("group", "rloo"):  # the KL enters the sequence reward r_i - beta sum KL
        r_kl = rewards - 0.1 * np.where(mask > 0, kl, 0.0).sum(1)
        want = ref_rloo(r_kl, G) if estimator == "rloo" else None
        if want is None:
            want = grpo.group_advantages(jnp.asarray(r_kl, jnp.float32), G)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:
        want = ref_reinforce_pp(rewards, mask, kl, 0.1, 1.0,
                                G if estimator.endswith("baseline") else None)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert np.all(np.isfinite(got))


def test_bad_inputs_raise_naming_the_argument():
    with pytest.raises(ValueError, match="estimator='gae'.*critic"):
        advantages.estimate("gae", jnp.zeros(4), jnp.ones((4, 2)), group_size=2)
    with pytest.raises(ValueError, match="group_size=1"):
        advantages.rloo(jnp.zeros(4), 1)
    with pytest.raises(ValueError, match="group_size=3"):
        advantages.rloo(jnp.zeros(4), 3)
