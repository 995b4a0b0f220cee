"""PPO's critic: the clipped value loss vs a float64 NumPy reference (values and finite-
difference gradients), a value model that fits GAE returns on a fixed batch, and its state
sharded like the policy's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_models

from r1jax import sharding
from r1jax.models import transformer
from r1jax.rl import advantages, critic, grpo, ppo
from r1jax.train import state as state_lib

EPS = 0.2


def ref_value_loss(v, old, ret, mask, eps, agg, max_length=8):
    """1/2 max((V - R)^2, (V_old + clip(V - V_old, -eps, eps) - R)^2), aggregated (loops)."""
    n, t = v.shape
    sums, counts = np.zeros(n), np.zeros(n)
    for i in range(n):
        for j in range(t):
            if mask[i, j]:
                plain = (v[i, j] - ret[i, j]) ** 2
                if eps is not None:
                    moved = old[i, j] + min(max(v[i, j] - old[i, j], -eps), eps)
                    plain = max(plain, (moved - ret[i, j]) ** 2)
                sums[i] += 0.5 * plain
                counts[i] += 1
    if agg == "token_mean":
        return sums.sum() / max(counts.sum(), 1)
    if agg == "fixed_length":
        return sums.sum() / (n * max_length)
    means = [s / c for s, c in zip(sums, counts) if c]
    return sum(means) / len(means) if means else 0.0


def value_batch(seed, n=6, t=5):
    rng = np.random.default_rng(seed)
    old = rng.normal(0, 1, (n, t))
    v = old + rng.normal(0, 0.3, (n, t))  # moves on both sides of the eps band
    ret = old + rng.normal(0, 1, (n, t))
    lengths = rng.integers(1, t + 1, n)
    lengths[2] = 0
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    return v, old, ret, mask


@pytest.mark.parametrize("eps", [EPS, None])
def test_value_loss_matches_reference_and_finite_differences(eps):
    v, old, ret, mask = value_batch(0)
    for agg in grpo.AGGREGATIONS:
        got, m = critic.value_loss(*(jnp.asarray(x, jnp.float32) for x in (v, old, ret, mask)),
                                   clip_eps_value=eps, aggregation=agg, max_length=8)
        want = ref_value_loss(v, old, ret, mask, eps, agg)
        np.testing.assert_allclose(float(got), want, rtol=1e-5, err_msg=agg)
    assert (float(m["value_clip_frac"]) > 0) == (eps is not None)
    grad = jax.grad(lambda x: critic.value_loss(
        x, *(jnp.asarray(a, jnp.float32) for a in (old, ret, mask)), clip_eps_value=eps,
        aggregation="seq_mean")[0])(jnp.asarray(v, jnp.float32))
    h, fd = 1e-6, np.zeros_like(v)
    for idx in np.ndindex(*v.shape):
        plus, minus = v.copy(), v.copy()
        plus[idx] += h
        minus[idx] -= h
        fd[idx] = (ref_value_loss(plus, old, ret, mask, eps, "seq_mean")
                   - ref_value_loss(minus, old, ret, mask, eps, "seq_mean")) / (2 * h)
    assert np.abs(fd).max() > 1e-3
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-6)
    if eps is not None:  # the clipped branch carries no gradient where it is the larger
        assert np.any((fd == 0) & (mask > 0))


def test_value_model_fits_gae_returns():
    n, p, t, vocab = 4, 3, 6, 31
    model = tiny_models.dense(vocab, 1, 64)
    rng = np.random.default_rng(1)
    lengths = np.array([6, 3, 5, 1])
    batch = {"prompt_tokens": rng.integers(0, vocab, (n, p)).astype(np.int32),
             "prompt_lengths": np.array([3, 2, 1, 3], np.int32),
             "completion_tokens": rng.integers(0, vocab, (n, t)).astype(np.int32),
             "completion_mask": np.arange(t)[None] < lengths[:, None]}
    rewards = advantages.token_rewards(jnp.array([1.0, -1.0, 0.5, 2.0]),
                                       jnp.asarray(batch["completion_mask"]),
                                       jnp.asarray(rng.normal(0, 1, (n, t)), jnp.float32), 0.3)
    config = critic.CriticConfig(model, state_lib.OptimConfig(learning_rate=3e-3,
                                                              warmup_steps=0),
                                 clip_eps_value=None)
    state = critic.init_state(transformer.random_params(model, 0), config)
    # The zero head: V = 0 before any update (so the first GAE uses V = 0).
    np.testing.assert_array_equal(state["params"]["value_head"]["kernel"], 0.0)
    v0 = jnp.zeros((n, t), jnp.float32)
    _, returns = advantages.gae(rewards, v0, jnp.asarray(batch["completion_mask"]), gamma=1.0,
                                lam=0.95)
    batch = dict(batch, old_values=v0, returns=returns)
    update = jax.jit(critic.make_step(config))
    losses = []
    for _ in range(40):  # 10x is reached after about 20 updates
        state, m = update(state, batch)
        losses.append(float(m["value_loss"]))
    print(f"value loss {losses[0]:.4f} -> {losses[-1]:.5f} ({losses[0] / losses[-1]:.0f}x)",
          [i for i, x in enumerate(losses) if x < losses[0] / 10][:1])
    assert losses[-1] < losses[0] / 10


def test_critic_state_is_sharded_like_the_policy():
    from jax.sharding import AxisType

    mesh = jax.make_mesh((2, 2, 1, 2), sharding.MESH_AXES, axis_types=(AxisType.Auto,) * 4)
    model = tiny_models.dense(64, 2, 64)
    config = critic.CriticConfig(model, state_lib.OptimConfig())
    got = critic.state_shardings(config, mesh)
    _, policy = transformer.param_shardings(model, mesh)
    same = jax.tree.map(lambda a, b: a.is_equivalent_to(b, 2), got["params"]["backbone"], policy)
    assert all(jax.tree.leaves(same))
    assert any(not s.is_fully_replicated for s in jax.tree.leaves(policy))  # not vacuous
    head = got["params"]["value_head"]
    assert head["kernel"].is_equivalent_to(sharding.replicated(mesh), 1)


def test_ppo_gae_batch_matches_reference():
    """rl.ppo.gae_batch: k1 KL(pi_old || pi_ref) per token in the rewards, GAE (eq. 16 as a
    direct sum), advantages whitened over the real tokens; returns = GAE + V."""
    v, old_lp, ref_lp, mask = value_batch(3)  # any [N, T] floats serve as log-probs here
    rewards = np.array([1.0, 0.0, 2.0, -1.0, 0.5, 1.0])
    beta, gamma, lam = 0.1, 0.9, 0.8
    adv, ret = ppo.gae_batch(*(jnp.asarray(x, jnp.float32) for x in
                               (rewards, mask, v, old_lp, ref_lp)), beta=beta,
                             kl_estimator="k1", gamma=gamma, lam=lam)
    want_adv, want_ret = np.zeros(v.shape), np.zeros(v.shape)
    for i in range(v.shape[0]):
        idx = [j for j in range(v.shape[1]) if mask[i, j]]
        r = [-beta * (old_lp[i, j] - ref_lp[i, j]) + (rewards[i] if j == idx[-1] else 0.0)
             for j in idx]
        vals = [v[i, j] for j in idx] + [0.0]
        for k, j in enumerate(idx):
            want_adv[i, j] = sum((gamma * lam) ** m * (r[k + m] + gamma * vals[k + m + 1]
                                                       - vals[k + m])
                                 for m in range(len(idx) - k))
            want_ret[i, j] = want_adv[i, j] + v[i, j]
    real = want_adv[mask > 0]
    whitened = np.where(mask > 0, (want_adv - real.mean()) / (real.std() + 1e-6), 0.0)
    np.testing.assert_allclose(adv, whitened, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ret, want_ret, rtol=1e-5, atol=1e-5)
