"""GSPO, GSPO-token, CISPO, dual-clip PPO and the TIS/MIS rollout corrections vs float64 NumPy
references written from the papers' formulas (loops over tokens), plus edge cases.

Stop-gradient objectives (GSPO-token, CISPO, IS weights) are checked with finite differences of
a reference whose stop-gradient parts are explicit frozen arguments: at the base point the
derivative in the live argument is exactly the gradient the objective defines.
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.rl import grpo, objectives

EPS_LOW, EPS_HIGH, BETA, DUAL_C = 0.2, 0.28, 0.04, 3.0

# ---------------------------------------------------------------------------------------------
# Reference (float64 NumPy, loops; frozen = the stop-gradient copy of the log-probs)
# ---------------------------------------------------------------------------------------------


def clip(x, lo, hi):
    return min(max(x, lo), hi)


def ref_seq_ratio(frozen, old, mask, i):
    """GSPO's s_i = (pi(o_i) / pi_old(o_i))^(1/|o_i|), from the frozen log-probs."""
    idx = [j for j in range(mask.shape[1]) if mask[i, j]]
    return np.exp(sum(frozen[i, j] - old[i, j] for j in idx) / len(idx)) if idx else 1.0


def ref_term(loss, lp, frozen, old, adv, mask, i, j):
    """The objective's loss term for token (i, j); lp live, frozen the stop-gradient copy."""
    a = adv[i, j] if adv.ndim == 2 else adv[i]
    lo, hi = 1 - EPS_LOW, 1 + EPS_HIGH
    if loss == "gspo":  # s_i is live in every token of the row
        idx = [k for k in range(mask.shape[1]) if mask[i, k]]
        r = np.exp(sum(lp[i, k] - old[i, k] for k in idx) / len(idx))
    elif loss == "gspo_token":  # sg[s_i] * pi / sg[pi]
        r = ref_seq_ratio(frozen, old, mask, i) * np.exp(lp[i, j] - frozen[i, j])
    else:
        r = np.exp(lp[i, j] - old[i, j])
    if loss == "cispo":
        return -clip(np.exp(frozen[i, j] - old[i, j]), lo, hi) * a * lp[i, j]
    objective = min(r * a, clip(r, lo, hi) * a)
    if loss == "dual_clip" and a < 0:
        objective = max(objective, DUAL_C * a)
    return -objective


def ref_loss(loss, lp, old, ref, adv, mask, agg, *, frozen=None, weights=None, entropy=None,
             entropy_coef=0.0, beta=BETA, max_length=10):
    """The whole loss: w * term + beta * k3 - entropy_coef * H, aggregated over the mask."""
    frozen = lp if frozen is None else frozen
    n, t = lp.shape
    sums, counts = np.zeros(n), np.zeros(n)
    for i, j in itertools.product(range(n), range(t)):
        if not mask[i, j]:
            continue
        v = ref_term(loss, lp, frozen, old, adv, mask, i, j)
        v *= 1.0 if weights is None else weights[i, j]
        if ref is not None:
            v += beta * (np.exp(ref[i, j] - lp[i, j]) - (ref[i, j] - lp[i, j]) - 1)
        if entropy is not None:
            v -= entropy_coef * entropy[i, j]
        sums[i] += v
        counts[i] += 1
    if agg == "seq_mean":
        means = [s / c for s, c in zip(sums, counts) if c]
        return sum(means) / len(means) if means else 0.0
    if agg == "token_mean":
        return sums.sum() / max(counts.sum(), 1)
    return sums.sum() / (n * max_length)


def random_batch(seed, n=6, t=5, token_adv=False):
    rng = np.random.default_rng(seed)
    lp = -rng.uniform(0.1, 3.0, (n, t))
    old = lp + rng.normal(0, 0.3, (n, t))  # token ratios spread across the clip band
    old[0] = lp[0] - 0.5  # a row whose every ratio (and s_0) is far above the band
    old[1] = lp[1] + 0.5  # and one far below it
    ref = lp + rng.normal(0, 0.5, (n, t))
    lengths = rng.integers(1, t + 1, n)
    lengths[2] = 0  # a fully masked row
    lengths[4] = t  # a full row
    mask = (np.arange(t)[None] < lengths[:, None]).astype(np.float64)
    adv = rng.normal(0, 1.5, (n, t) if token_adv else n)
    return lp, old, ref, adv, mask


def f32(*xs):
    return [jnp.asarray(x, jnp.float32) for x in xs]


def loss_fn(loss, agg, **kw):
    """lp -> the r1jax loss (float32), the other inputs bound."""
    kw = dict(loss=loss, aggregation=agg, clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH,
              beta=BETA, max_length=10, dual_clip_c=DUAL_C, **kw)
    return lambda lp, old, ref, adv, mask: objectives.policy_loss(lp, old, ref, adv, mask, **kw)[0]


# ---------------------------------------------------------------------------------------------
# Values: every objective x aggregation x advantage shape
# ---------------------------------------------------------------------------------------------

CASES = list(itertools.product(objectives.LOSSES, grpo.AGGREGATIONS, (False, True)))


@pytest.mark.parametrize("loss,agg,token_adv", CASES)
def test_loss_matches_reference(loss, agg, token_adv):
    lp, old, ref, adv, mask = random_batch(CASES.index((loss, agg, token_adv)), token_adv=token_adv)
    got = loss_fn(loss, agg)(*f32(lp, old, ref, adv, mask))
    want = ref_loss(loss, lp, old, ref, adv, mask, agg)
    np.testing.assert_allclose(float(got), want, rtol=2e-5, atol=1e-6)


def test_grpo_equals_grpo_loss():
    lp, old, ref, adv, mask = f32(*random_batch(0))
    kw = dict(clip_eps_low=EPS_LOW, clip_eps_high=EPS_HIGH, beta=BETA, kl_estimator="k2",
              aggregation="token_mean")
    got, got_m = objectives.policy_loss(lp, old, ref, adv, mask, **kw)
    want, want_m = grpo.grpo_loss(lp, old, ref, adv, mask, **kw)
    assert float(got) == float(want)
    assert {k: float(v) for k, v in got_m.items()} == {k: float(v) for k, v in want_m.items()}


# ---------------------------------------------------------------------------------------------
# Gradients: finite differences of the reference
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss,agg", [("grpo", "seq_mean"), ("gspo", "seq_mean"),
                                      ("gspo_token", "token_mean"), ("cispo", "token_mean"),
                                      ("dual_clip", "fixed_length")])
def test_gradient_matches_finite_differences(loss, agg):
    lp, old, ref, adv, mask = random_batch(7, token_adv=loss == "gspo_token")
    old[3] = lp[3] + 2.0  # rho = e^-2 < 1/c: the dual clip binds where A < 0
    adv[3] = -1.0
    weights = np.random.default_rng(1).uniform(0.5, 2.0, lp.shape)
    args = f32(old, ref, adv, mask)
    grad = jax.grad(lambda x: loss_fn(loss, agg, is_weights=jnp.asarray(weights, jnp.float32))(
        x, *args))(jnp.asarray(lp, jnp.float32))
    h, fd = 1e-6, np.zeros_like(lp)
    for idx in np.ndindex(*lp.shape):
        plus, minus = lp.copy(), lp.copy()
        plus[idx] += h
        minus[idx] -= h
        fd[idx] = (ref_loss(loss, plus, old, ref, adv, mask, agg, frozen=lp, weights=weights)
                   - ref_loss(loss, minus, old, ref, adv, mask, agg, frozen=lp, weights=weights)
                   ) / (2 * h)
    assert np.abs(fd).max() > 1e-3  # not vacuous
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(grad)[mask == 0] == 0)


def test_gspo_token_gradient_differs_from_gspo_per_token():
    """Same value, but GSPO spreads d s_i over the row (1/|o_i|) while GSPO-token puts s_i on
    the token itself (GSPO-token): with token-level advantages the gradients differ."""
    lp, old, _, adv, mask = f32(*random_batch(3, token_adv=True))
    kw = dict(clip_eps_low=10.0, clip_eps_high=10.0, beta=0.0, aggregation="token_mean")

    def fn(x, loss):
        return objectives.policy_loss(x, old, None, adv, mask, loss=loss, **kw)[0]

    value = {k: fn(lp, k) for k in ("gspo", "gspo_token")}
    grad = {k: jax.grad(fn)(lp, k) for k in ("gspo", "gspo_token")}
    np.testing.assert_allclose(value["gspo"], value["gspo_token"], rtol=1e-6)
    assert np.abs(np.asarray(grad["gspo"] - grad["gspo_token"])).max() > 1e-3
    # Unclipped, token-mean: d/d lp_t of -s_i A_t / n_tok is -s_i A_t / n_tok for GSPO-token.
    s_n = np.exp(np.asarray(objectives.sequence_log_ratio(lp, old, mask)))
    want = -s_n[:, None] * np.asarray(adv) * np.asarray(mask) / float(mask.sum())
    np.testing.assert_allclose(grad["gspo_token"], want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------------------------------------------------
# Hand-computed edge cases
# ---------------------------------------------------------------------------------------------


def test_gspo_clips_whole_sequences():
    # Row 0: token ratios [2, 0.5] -> s = 1 (geometric mean), nothing clipped although each
    # token is outside the band; row 1: ratios [1.5, 1.5] -> s = 1.5 > 1.2, clipped for A > 0.
    lp = jnp.log(jnp.array([[2.0, 0.5], [1.5, 1.5]]))
    old, mask, adv = jnp.zeros((2, 2)), jnp.ones((2, 2)), jnp.array([1.0, 1.0])
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0, loss="gspo")
    value, m = objectives.policy_loss(lp, old, None, adv, mask, **kw)
    np.testing.assert_allclose(float(value), -(1.0 + 1.2) / 2, rtol=1e-6)
    np.testing.assert_allclose(float(m["clip_frac_high"]), 0.5)
    grad = jax.grad(lambda x: objectives.policy_loss(x, old, None, adv, mask, **kw)[0])(lp)
    np.testing.assert_allclose(grad[1], 0.0)  # the clipped completion contributes nothing
    np.testing.assert_allclose(grad[0], [-0.25, -0.25], rtol=1e-6)  # s/|o| * 1/G


def test_cispo_keeps_gradient_of_clipped_tokens():
    # rho = 3 for A > 0: PPO-clip drops the token, CISPO weights its log-prob gradient by 1.28.
    lp = jnp.log(jnp.full((2, 2), 0.3))
    old, mask, adv = jnp.log(jnp.full((2, 2), 0.1)), jnp.ones((2, 2)), jnp.ones(2)
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.28, beta=0.0, aggregation="token_mean")
    g = {k: np.asarray(jax.grad(lambda x, k=k: objectives.policy_loss(
        x, old, None, adv, mask, loss=k, **kw)[0])(lp)) for k in ("grpo", "cispo")}
    np.testing.assert_array_equal(g["grpo"], 0.0)
    np.testing.assert_allclose(g["cispo"], -1.28 / 4, rtol=1e-6)


def test_dual_clip_bounds_negative_advantage_loss():
    # rho = 10, A = -1: PPO loss 10, dual clip caps it at c = 3 (zero gradient); A = +1 unchanged.
    lp, old, mask = jnp.log(jnp.full((2, 2), 10.0)), jnp.zeros((2, 2)), jnp.ones((2, 2))
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0, dual_clip_c=3.0)
    for loss, want in (("grpo", 10.0), ("dual_clip", 3.0)):
        value, _ = objectives.policy_loss(lp, old, None, -jnp.ones(2), mask, loss=loss, **kw)
        np.testing.assert_allclose(float(value), want, rtol=1e-6)
    value, _ = objectives.policy_loss(lp, old, None, jnp.ones(2), mask, loss="dual_clip", **kw)
    np.testing.assert_allclose(float(value), -1.2, rtol=1e-6)


@pytest.mark.parametrize("loss", objectives.LOSSES)
def test_masked_positions_hold_anything(loss):
    lp = jnp.array([[-1.0, -jnp.inf], [jnp.nan, jnp.inf]])
    mask = jnp.array([[1.0, 0.0], [0.0, 0.0]])
    adv = jnp.array([1.0, 5.0])
    for agg in grpo.AGGREGATIONS:
        kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.1, aggregation=agg, max_length=2,
                  entropy_coef=0.01, loss=loss)
        fn = lambda x, kw=kw: objectives.policy_loss(x, x, x, adv, mask, is_weights=x,
                                                     entropy=x, **kw)[0]
        value, grad = jax.value_and_grad(fn)(lp)
        assert np.isfinite(float(value)) and np.all(np.isfinite(grad)), agg
        assert float(jnp.abs(grad[1]).sum()) == 0.0 and float(grad[0, 1]) == 0.0, agg


def test_entropy_bonus():
    lp, old, _, adv, mask = f32(*random_batch(5))
    entropy = jnp.asarray(np.random.default_rng(0).uniform(0, 2, lp.shape), jnp.float32)
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0, aggregation="seq_mean")
    base, _ = objectives.policy_loss(lp, old, None, adv, mask, **kw)
    value, m = objectives.policy_loss(lp, old, None, adv, mask, entropy=entropy,
                                      entropy_coef=0.5, **kw)
    h = float(grpo.aggregate(entropy, mask, "seq_mean"))
    np.testing.assert_allclose(float(value), float(base) - 0.5 * h, rtol=1e-5)
    np.testing.assert_allclose(float(m["entropy"]), float(grpo.aggregate(entropy, mask,
                                                                         "token_mean")), rtol=1e-6)
    grad = jax.grad(lambda e: objectives.policy_loss(lp, old, None, adv, mask, entropy=e,
                                                     entropy_coef=0.5, **kw)[0])(entropy)
    assert float(grad[mask > 0].max()) < 0 and float(jnp.abs(grad[mask == 0]).sum()) == 0


# ---------------------------------------------------------------------------------------------
# TIS / MIS
# ---------------------------------------------------------------------------------------------


def ref_is_weights(old, sampler, mask, correction, cap):
    n, t = old.shape
    w = np.ones((n, t))
    for i in range(n):
        idx = [j for j in range(t) if mask[i, j]]
        seq = np.prod([np.exp(old[i, j] - sampler[i, j]) for j in idx]) if idx else 1.0
        for j in idx:
            tok = np.exp(old[i, j] - sampler[i, j])
            w[i, j] = {"none": 1.0, "token_truncate": min(tok, cap),
                       "sequence_truncate": min(seq, cap),
                       "token_mask": float(1 / cap <= tok <= cap),
                       "sequence_mask": float(1 / cap <= seq <= cap)}[correction]
    return w


@pytest.mark.parametrize("correction", objectives.IS_CORRECTIONS)
def test_is_weights_and_loss_match_reference(correction):
    lp, old, ref, adv, mask = random_batch(11, n=6, t=5)
    sampler = old + np.random.default_rng(2).normal(0, 0.4, old.shape)
    sampler[5] = old[5]  # sampler == trainer on one row: weights 1
    sampler[2] = np.nan  # the fully masked row holds garbage
    cap = 1.5
    w = objectives.rollout_is_weights(*f32(old, sampler, mask), correction=correction, cap=cap)
    want = ref_is_weights(old, sampler, mask, correction, cap)
    np.testing.assert_allclose(np.asarray(w)[mask > 0], want[mask > 0], rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(w)[5][mask[5] > 0], 1.0)
    if correction != "none":
        assert np.any(want[mask > 0] != 1.0)  # the cap binds somewhere: not vacuous
    got = loss_fn("grpo", "token_mean", is_weights=w)(*f32(lp, old, ref, adv, mask))
    np.testing.assert_allclose(float(got), ref_loss("grpo", lp, old, ref, adv, mask,
                                                    "token_mean", weights=want), rtol=2e-5)


def test_sequence_is_in_log_space_and_masks_rows():
    # Row 0: delta = e^20 per token, the product e^100 overflows float32 (max ~e^88.7); in log
    # space it truncates to C. Rows 1-5: delta = 1.8 <= C per token, product 1.8^5 = 18.9 > C:
    # the sequence mask drops those rows, the token mask keeps every token.
    old = jnp.concatenate([jnp.full((1, 5), 20.0), jnp.full((5, 5), np.log(1.8))])
    sampler, mask = jnp.zeros((6, 5)), jnp.ones((6, 5))
    kw = dict(cap=2.0)
    trunc = objectives.rollout_is_weights(old, sampler, mask, correction="sequence_truncate", **kw)
    np.testing.assert_allclose(trunc, 2.0, rtol=1e-6)
    seq_mask = objectives.rollout_is_weights(old, sampler, mask, correction="sequence_mask", **kw)
    assert float(seq_mask.sum()) == 0.0
    tok_mask = objectives.rollout_is_weights(old, sampler, mask, correction="token_mask", **kw)
    np.testing.assert_array_equal(tok_mask, np.r_[np.zeros((1, 5)), np.ones((5, 5))])
    grad = jax.grad(lambda o: objectives.rollout_is_weights(
        o, sampler, mask, correction="token_truncate", **kw).sum())(old)
    assert float(jnp.abs(grad).sum()) == 0.0  # stop-gradient


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_bad_options_raise_naming_the_argument():
    x, mask, adv = jnp.zeros((2, 2)), jnp.ones((2, 2)), jnp.zeros(2)
    kw = dict(clip_eps_low=0.2, clip_eps_high=0.2, beta=0.0)
    with pytest.raises(ValueError, match="loss='ppo2'"):
        objectives.policy_loss(x, x, None, adv, mask, loss="ppo2", **kw)
    with pytest.raises(ValueError, match="dual_clip_c=0.5"):
        objectives.policy_loss(x, x, None, adv, mask, loss="dual_clip", dual_clip_c=0.5, **kw)
    with pytest.raises(ValueError, match="advantages must be"):
        objectives.policy_loss(x, x, None, jnp.zeros((2, 3)), mask, **kw)
    with pytest.raises(ValueError, match="is_weights"):
        objectives.policy_loss(x, x, None, adv, mask, is_weights=jnp.ones(2), **kw)
    with pytest.raises(ValueError, match="cap=1.0"):
        objectives.rollout_is_weights(x, x, mask, correction="token_mask", cap=1.0)
    with pytest.raises(ValueError, match="correction='seq'"):
        objectives.rollout_is_weights(x, x, mask, correction="seq", cap=2.0)


def test_logp_gap_metrics_match_reference():
    _, old, _, _, mask = random_batch(13)
    sampler = old + np.random.default_rng(3).normal(0, 0.2, old.shape)
    sampler[mask == 0] = np.nan
    got = objectives.logp_gap_metrics(*f32(old, sampler, mask))
    d = (old - sampler)[mask > 0]
    want = {"mean_abs_delta": np.abs(d).mean(), "k3_kl": np.mean(np.exp(d) - 1 - d),
            "max_ratio": np.exp(d).max()}
    for k, v in want.items():
        np.testing.assert_allclose(float(got[k]), v, rtol=1e-5, err_msg=k)
    same = objectives.logp_gap_metrics(*f32(old, old, mask))
    assert {k: float(v) for k, v in same.items()} == {"mean_abs_delta": 0.0, "k3_kl": 0.0,
                                                      "max_ratio": 1.0}


def test_is_weights_fold_into_token_advantages():
    """w >= 0 commutes with every objective's min / clip: weighting the loss terms equals
    weighting the advantages (how the trainer applies grpo.rollout_is), values and gradients."""
    lp, old, ref, adv, mask = random_batch(17)
    w = ref_is_weights(old, old + np.random.default_rng(4).normal(0, 0.5, old.shape), mask,
                       "token_mask", 1.5) * np.random.default_rng(5).uniform(0.5, 2, old.shape)
    assert np.any(w == 0) and np.any(w > 1)
    args = f32(old, ref)
    for loss in objectives.LOSSES:
        fn = loss_fn(loss, "seq_mean", is_weights=jnp.asarray(w, jnp.float32))
        folded = loss_fn(loss, "seq_mean")
        a, ga = jax.value_and_grad(fn)(jnp.asarray(lp, jnp.float32), *args,
                                       *f32(adv, mask))
        b, gb = jax.value_and_grad(folded)(jnp.asarray(lp, jnp.float32), *args,
                                           *f32(w * adv[:, None], mask))
        np.testing.assert_allclose(float(a), float(b), rtol=1e-5, err_msg=loss)
        np.testing.assert_allclose(ga, gb, rtol=1e-5, atol=1e-7, err_msg=loss)
