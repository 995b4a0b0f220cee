"""DeepSeekMoE: router vs a float64 NumPy reference, dispatch vs a loop over experts, balancing."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import moe
from r1jax.models.moe import balancing, routing
from r1jax.models.moe import dispatch as dispatch_lib
from r1jax.models.moe import dropless as dropless_lib
from r1jax.models.moe import grouped as grouped_lib
from r1jax.models.moe import layer as layer_lib

D, F = 16, 8


def make_config(**changes) -> config_lib.ModelConfig:
    base = dict(hidden_size=D, moe_intermediate_size=F, n_routed_experts=8, n_group=4,
                topk_group=2, num_experts_per_tok=3, n_shared_experts=1, moe_block_size=4,
                routed_scaling_factor=2.5, norm_topk_prob=True, aux_loss_alpha=0.01)
    base.update(changes)
    return config_lib.ModelConfig(**base)


def init_params(cfg, x_btd, seed=0, bias_scale=0.0):
    params = nn.meta.unbox(jax.jit(moe.MoE(cfg).init)(jax.random.key(seed), x_btd))["params"]
    # Larger expert weights than the default init so that outputs are O(1).
    rng = np.random.default_rng(seed)
    for name in ("gate_proj", "up_proj", "down_proj"):
        shape = params["experts"][name].shape
        params["experts"][name] = jnp.asarray(rng.normal(0, 0.5, shape), jnp.float32)
    params["gate"]["kernel"] = jnp.asarray(rng.normal(0, 0.5, (D, cfg.n_routed_experts)),
                                           jnp.float32)
    params["gate"][moe.BIAS] = jnp.asarray(rng.normal(0, bias_scale, cfg.n_routed_experts),
                                           jnp.float32)
    return params


# ---------------------------------------------------------------------------- NumPy references
def ref_route(x_td, kernel_de, bias_e, cfg):
    """Float64 router written from the paper + HF DeepseekV3TopkRouter, token by token."""
    logits = x_td.astype(np.float64) @ kernel_de.astype(np.float64)
    if cfg.scoring_func == "sigmoid":
        scores = 1.0 / (1.0 + np.exp(-logits))
    else:
        scores = np.exp(logits - logits.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
    t, e = scores.shape
    per_group = e // cfg.n_group
    idx = np.zeros((t, cfg.num_experts_per_tok), np.int64)
    weights = np.zeros((t, cfg.num_experts_per_tok))
    for i in range(t):
        biased = scores[i] + bias_e
        if cfg.n_group > 1:
            groups = [sorted(biased[g * per_group:(g + 1) * per_group])[-2:]
                      for g in range(cfg.n_group)]
            kept = np.argsort([-sum(top2) for top2 in groups], kind="stable")[:cfg.topk_group]
            for g in set(range(cfg.n_group)) - set(kept.tolist()):
                biased[g * per_group:(g + 1) * per_group] = -np.inf
        idx[i] = np.argsort(-biased, kind="stable")[:cfg.num_experts_per_tok]
        w = scores[i, idx[i]]
        if cfg.norm_topk_prob:
            w = w / (w.sum() + 1e-20)
        weights[i] = w * cfg.routed_scaling_factor
    return scores, idx, weights


def ref_silu(x):
    return x / (1.0 + np.exp(-x))


def ref_routed(x_td, idx_tk, weight_tk, gate_edf, up_edf, down_efd):
    """Slow, obvious MoE: a python loop over experts with explicit token masks."""
    x = np.asarray(x_td, np.float64)
    y = np.zeros_like(x)
    for e in range(gate_edf.shape[0]):
        g_t = np.where(np.asarray(idx_tk) == e, np.asarray(weight_tk, np.float64), 0.0).sum(-1)
        if not g_t.any():
            continue
        h = ref_silu(x @ np.float64(gate_edf[e])) * (x @ np.float64(up_edf[e]))
        y += g_t[:, None] * (h @ np.float64(down_efd[e]))
    return y


def ref_routed_jax(x_td, idx_tk, weight_tk, experts):
    """`ref_routed` in JAX (float32), so that autodiff gives the reference gradients."""
    y_td = jnp.zeros_like(x_td)
    for e in range(experts.gate_edf.shape[0]):
        g_t = jnp.where(idx_tk == e, weight_tk, 0.0).sum(-1)
        h_tf = jax.nn.silu(x_td @ experts.gate_edf[e]) * (x_td @ experts.up_edf[e])
        y_td = y_td + g_t[:, None] * (h_tf @ experts.down_efd[e])
    return y_td


def ref_moe(params, x_btd, cfg):
    b, t, d = x_btd.shape
    x_td = np.asarray(x_btd, np.float64).reshape(b * t, d)
    _, idx, w = ref_route(x_td, np.asarray(params["gate"]["kernel"]),
                          np.asarray(params["gate"][moe.BIAS]), cfg)
    ex = params["experts"]
    y = ref_routed(x_td, idx, w, ex["gate_proj"], ex["up_proj"], ex["down_proj"])
    if cfg.n_shared_experts:
        sh = {k: np.float64(v["kernel"]) for k, v in params["shared_experts"].items()}
        y += (ref_silu(x_td @ sh["gate_proj"]) * (x_td @ sh["up_proj"])) @ sh["down_proj"]
    return y.reshape(b, t, d)


def ref_aux_loss(scores_bte, idx_btk, alpha):
    b, t, e = scores_bte.shape
    k = idx_btk.shape[-1]
    total = 0.0
    for s in range(b):
        f = np.array([(idx_btk[s] == i).sum() for i in range(e)]) * e / (k * t)
        p = (scores_bte[s] / scores_bte[s].sum(-1, keepdims=True)).mean(0)
        total += alpha * (f * p).sum()
    return total / b


# ---------------------------------------------------------------------------- router
@pytest.mark.parametrize("scoring_func,n_group,topk_group,norm", [
    ("sigmoid", 4, 2, True), ("sigmoid", 1, 1, True), ("softmax", 1, 1, False),
    ("softmax", 2, 1, True)])
def test_router_matches_numpy_reference(scoring_func, n_group, topk_group, norm):
    cfg = make_config(scoring_func=scoring_func, n_group=n_group, topk_group=topk_group,
                      norm_topk_prob=norm)
    rng = np.random.default_rng(1)
    x_td = rng.normal(size=(64, D)).astype(np.float32)
    kernel = rng.normal(0, 0.5, (D, 8)).astype(np.float32)
    bias = rng.normal(0, 0.3, 8).astype(np.float32)
    scores, idx, w = routing.route(jnp.asarray(x_td @ kernel), jnp.asarray(bias), cfg)
    ref_scores, ref_idx, ref_w = ref_route(x_td, kernel, bias, cfg)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.sort(idx, -1), np.sort(ref_idx, -1))
    order, ref_order = np.argsort(idx, -1), np.argsort(ref_idx, -1)
    np.testing.assert_allclose(np.take_along_axis(np.asarray(w), order, -1),
                               np.take_along_axis(ref_w, ref_order, -1), rtol=1e-5)
    # The bias is large enough to change the selection (weights use unbiased s, as in ref).
    _, unbiased_idx, _ = ref_route(x_td, kernel, np.zeros(8), cfg)
    assert (np.sort(unbiased_idx, -1) != np.sort(ref_idx, -1)).any()


def test_dropped_groups_never_win_like_hf():
    """Dropped groups are filled with -inf (transformers 5.x, official code): even when every
    kept biased score is negative, only experts of kept groups are chosen."""
    scores_te = jnp.full((1, 8), 0.5).at[0, 0].set(0.9).at[0, 1].set(0.8)
    idx = routing.select_experts(scores_te, jnp.full(8, -2.0), top_k=2, n_group=4, topk_group=1)
    # Group 0 (experts 0, 1) is kept; its biased scores (-1.1, -1.2) still beat the fill.
    np.testing.assert_array_equal(np.sort(idx[0]), [0, 1])
    cfg = make_config(n_group=4, topk_group=1, num_experts_per_tok=2)
    x_td = np.eye(1, D)
    kernel = np.zeros((D, 8))
    kernel[0] = np.log(np.asarray(scores_te[0]) / (1 - np.asarray(scores_te[0])))
    _, ref_idx, _ = ref_route(x_td, kernel, np.full(8, -2.0), cfg)
    np.testing.assert_array_equal(np.sort(ref_idx[0]), [0, 1])


def test_greedy_softmax_is_plain_top_k():
    cfg = make_config(scoring_func="softmax", n_group=1, topk_group=1, norm_topk_prob=False,
                      routed_scaling_factor=1.0, num_experts_per_tok=2)
    logits = jax.random.normal(jax.random.key(0), (32, 8))
    scores, idx, w = routing.route(logits, jnp.zeros(8), cfg)
    top_w, top_idx = jax.lax.top_k(jax.nn.softmax(logits), 2)
    np.testing.assert_array_equal(idx, top_idx)
    np.testing.assert_allclose(w, top_w, rtol=1e-6)


# ---------------------------------------------------------------------------- dispatch
@pytest.mark.parametrize("dispatch,n_shared", [("dropless", 0), ("dropless", 2), ("dense", 0),
                                               ("dense", 2), ("grouped", 2)])
def test_moe_matches_loop_over_experts(dispatch, n_shared):
    cfg = make_config(moe_dispatch=dispatch, n_shared_experts=n_shared)
    x_btd = jax.random.normal(jax.random.key(2), (3, 7, D))
    params = init_params(cfg, x_btd, bias_scale=0.3)
    assert ("shared_experts" in params) == (n_shared > 0)
    y_btd = jax.jit(moe.MoE(cfg).apply)({"params": params}, x_btd)
    assert y_btd.shape == x_btd.shape and y_btd.dtype == x_btd.dtype
    np.testing.assert_allclose(y_btd, ref_moe(params, x_btd, cfg), rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("dispatch", ["dropless", "grouped"])
def test_bfloat16_input_keeps_dtype(dispatch):
    cfg = make_config(dtype="bfloat16", moe_dispatch=dispatch)
    x_btd = jax.random.normal(jax.random.key(3), (2, 5, D), jnp.bfloat16)
    params = init_params(cfg, x_btd)
    y_btd = jax.jit(moe.MoE(cfg).apply)({"params": params}, x_btd)
    assert y_btd.dtype == jnp.bfloat16
    ref = ref_moe(params, np.asarray(x_btd, np.float32), cfg)
    np.testing.assert_allclose(np.asarray(y_btd, np.float32), ref, rtol=0.1, atol=0.1)


def test_dropless_gradients_equal_dense_gradients():
    cfg = make_config(moe_dispatch="dropless")
    x_btd = jax.random.normal(jax.random.key(4), (2, 9, D))
    cot_btd = jax.random.normal(jax.random.key(5), x_btd.shape)
    params = init_params(cfg, x_btd, bias_scale=0.3)

    def grads(dispatch):
        model = moe.MoE(cfg.replace(moe_dispatch=dispatch))
        loss = lambda p, x: jnp.sum(model.apply({"params": p}, x) * cot_btd)
        return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x_btd)

    (dropless_p, dropless_x), (dense_p, dense_x) = grads("dropless"), grads("dense")
    np.testing.assert_allclose(dropless_x, dense_x, rtol=1e-4, atol=1e-5)
    for name in ("gate_proj", "up_proj", "down_proj"):
        assert np.abs(dense_p["experts"][name]).max() > 0
        np.testing.assert_allclose(dropless_p["experts"][name], dense_p["experts"][name],
                                   rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dropless_p["gate"]["kernel"], dense_p["gate"]["kernel"],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dispatch", ["dropless", "grouped"])
def test_layer_gradients_match_loop_over_experts(dispatch):
    """Gradients of the whole layer (groups, bias, shared expert) w.r.t. every parameter and
    the input: each sorting dispatch vs the loop over experts, with routing from
    `routing.route` (checked against NumPy above); fresh inputs whose experts span several
    blocks, some none."""
    cfg = make_config(moe_dispatch=dispatch, num_experts_per_tok=2)
    x_btd = jax.random.normal(jax.random.key(11), (4, 10, D))
    cot_btd = jax.random.normal(jax.random.key(12), x_btd.shape)
    params = init_params(cfg, x_btd, seed=3, bias_scale=0.5)

    def reference(p, x_btd):
        x_td = x_btd.reshape(-1, D)
        _, idx_tk, weight_tk = routing.route(x_td @ p["gate"]["kernel"], p["gate"][moe.BIAS], cfg)
        experts = dispatch_lib.ExpertParams(*(p["experts"][n] for n in ("gate_proj", "up_proj",
                                                                 "down_proj")))
        sh = {k: v["kernel"] for k, v in p["shared_experts"].items()}
        y_td = ref_routed_jax(x_td, idx_tk, weight_tk, experts) + (
            jax.nn.silu(x_td @ sh["gate_proj"]) * (x_td @ sh["up_proj"])) @ sh["down_proj"]
        return y_td.reshape(x_btd.shape)

    model = moe.MoE(cfg)
    grads = {}
    for name, fn in (("dispatch", lambda p, x: model.apply({"params": p}, x)),
                     ("loop", reference)):
        loss = lambda p, x, fn=fn: jnp.sum(fn(p, x) * cot_btd)
        grads[name] = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x_btd)
    _, idx_tk, _ = ref_route(np.asarray(x_btd).reshape(-1, D), np.asarray(params["gate"]["kernel"]),
                             np.asarray(params["gate"][moe.BIAS]), cfg)
    counts = np.bincount(idx_tk.reshape(-1), minlength=cfg.n_routed_experts)
    assert counts.max() > 2 * cfg.moe_block_size and counts.min() == 0  # several blocks; empty
    flat_got = jax.tree_util.tree_leaves_with_path(grads["dispatch"])
    for (path, got), want in zip(flat_got, jax.tree.leaves(grads["loop"])):
        assert np.abs(want).max() > 0 or moe.BIAS in str(path), path  # b: selection only
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=str(path))


def random_experts(e, seed=0):
    rng = np.random.default_rng(seed)
    return dispatch_lib.ExpertParams(*(jnp.asarray(rng.normal(0, 0.5, s), jnp.float32)
                              for s in ((e, D, F), (e, D, F), (e, F, D))))


@pytest.mark.parametrize("case", ["empty_expert", "one_expert", "ragged"])
def test_dropless_block_padding_edge_cases(case):
    t, k, e, block = {"empty_expert": (12, 2, 6, 4), "one_expert": (10, 1, 4, 4),
                      "ragged": (7, 3, 5, 4)}[case]
    rng = np.random.default_rng(6)
    # "empty_expert": expert 2 gets no token; "one_expert": every token goes to expert 3.
    allowed = {"empty_expert": [0, 1, 3, 4, 5], "one_expert": [3], "ragged": list(range(e))}[case]
    idx_tk = np.stack([rng.choice(allowed, k, replace=False) for _ in range(t)]).astype(np.int32)
    assert case != "ragged" or idx_tk.size % block
    x_td = jnp.asarray(rng.normal(size=(t, D)), jnp.float32)
    weight_tk = jnp.asarray(rng.uniform(0.1, 1.0, (t, k)), jnp.float32)
    experts = random_experts(e)
    y_td = jax.jit(dropless_lib.dropless_dispatch, static_argnames="block_size")(
        x_td, jnp.asarray(idx_tk), weight_tk, experts, block_size=block)
    np.testing.assert_allclose(y_td, ref_routed(x_td, idx_tk, weight_tk, *experts),
                               rtol=2e-5, atol=2e-5)
    check_layout(idx_tk, e, block)


def random_dispatch_inputs(t, k, e, seed):
    rng = np.random.default_rng(seed)
    idx_tk = np.stack([rng.choice(e, k, replace=False) for _ in range(t)]).astype(np.int32)
    x_td = jnp.asarray(rng.normal(size=(t, D)), jnp.float32)
    weight_tk = jnp.asarray(rng.uniform(0.1, 1.0, (t, k)), jnp.float32)
    return x_td, idx_tk, weight_tk, random_experts(e, seed)


def dispatch_grads(dispatch, x_td, idx_tk, weight_tk, experts, cot_td):
    loss = lambda x, w, p: jnp.sum(dispatch(x, jnp.asarray(idx_tk), w, p) * cot_td)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(x_td, weight_tk, experts)


# (T, K, E): decode-sized (T = 1..4, the gather path) and the two sides of its T*K <= 2E rule.
@pytest.mark.parametrize("t,k,e", [(1, 1, 4), (1, 3, 8), (2, 2, 12), (3, 2, 6), (4, 2, 12),
                                   (4, 3, 6), (5, 2, 5), (7, 3, 5)])
def test_dropless_paths_match_loop_and_dense_forward_and_gradients(t, k, e):
    x_td, idx_tk, weight_tk, experts = random_dispatch_inputs(t, k, e, seed=10 + t * k)
    expected = ref_routed(x_td, idx_tk, weight_tk, *experts)
    dropless = functools.partial(dropless_lib.dropless_dispatch, block_size=4)
    paths = {"dropless": dropless, "gather": dispatch_lib.gather_dispatch,
             "dense": dispatch_lib.dense_dispatch}
    for name, dispatch in paths.items():
        y_td = jax.jit(dispatch)(x_td, jnp.asarray(idx_tk), weight_tk, experts)
        np.testing.assert_allclose(y_td, expected, rtol=2e-5, atol=2e-5, err_msg=name)
    cot_td = jax.random.normal(jax.random.key(t), x_td.shape)
    dense = dispatch_grads(dispatch_lib.dense_dispatch, x_td, idx_tk, weight_tk, experts, cot_td)
    for name in ("dropless", "gather"):
        grads = dispatch_grads(paths[name], x_td, idx_tk, weight_tk, experts, cot_td)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(dense)):
            np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=name)


# (T, K, E, cap): experts spanning many blocks, empty experts, a cap above T*K / E.
@pytest.mark.parametrize("t,k,e,cap,seed", [(40, 2, 4, 4, 30), (33, 3, 16, 4, 31),
                                            (64, 2, 8, 64, 32), (25, 1, 3, 2, 33)])
def test_blocked_gradients_match_loop_reference(t, k, e, cap, seed):
    """Values and gradients (input, gates, every expert weight) of the blocked path vs the
    JAX loop over experts on fresh random routing."""
    x_td, idx_tk, weight_tk, experts = random_dispatch_inputs(t, k, e, seed)
    assert not dropless_lib.uses_gather(t * k, e)
    dropless = functools.partial(dropless_lib.dropless_dispatch, block_size=cap)
    idx = jnp.asarray(idx_tk)
    np.testing.assert_allclose(jax.jit(dropless)(x_td, idx, weight_tk, experts),
                               ref_routed_jax(x_td, idx, weight_tk, experts), rtol=2e-5, atol=2e-5)
    cot_td = jax.random.normal(jax.random.key(seed), x_td.shape)
    want = dispatch_grads(ref_routed_jax, x_td, idx_tk, weight_tk, experts, cot_td)
    got = dispatch_grads(dropless, x_td, idx_tk, weight_tk, experts, cot_td)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    check_layout(idx_tk, e, dropless_lib.choose_block_size(t * k, e, cap))


@pytest.mark.parametrize("n,e,cap,block", [
    (1, 4, 64, 1), (8, 4, 64, 2), (9, 4, 64, 4), (24, 6, 4, 4), (2048, 64, 64, 32),
    (2048, 8, 64, 64), (2048, 64, 16, 16), (2049, 64, 64, 64), (10, 4, 3, 3), (3, 1, 64, 3),
    (16, 12, 64, 2)])
def test_choose_block_size(n, e, cap, block):
    assert dropless_lib.choose_block_size(n, e, cap) == block
    # Padding stays below 2 * (T*K + E) + block rows whatever the routing.
    assert dropless_lib.padded_rows(n, e, block) - n < 2 * (n + e) + block


@pytest.mark.parametrize("t,k,e,block", [(9, 2, 4, 64), (6, 3, 4, 3), (8, 2, 3, 64),
                                         (33, 2, 8, 64)])
def test_blocked_path_with_chosen_block_matches_loop_and_dense(t, k, e, block):
    """T*K > 2E: dropless takes the blocks, at a block below the cap, odd caps included."""
    assert not dropless_lib.uses_gather(t * k, e)
    x_td, idx_tk, weight_tk, experts = random_dispatch_inputs(t, k, e, seed=20 + t)
    dropless = functools.partial(dropless_lib.dropless_dispatch, block_size=block)
    y_td = jax.jit(dropless)(x_td, jnp.asarray(idx_tk), weight_tk, experts)
    np.testing.assert_allclose(y_td, ref_routed(x_td, idx_tk, weight_tk, *experts),
                               rtol=2e-5, atol=2e-5)
    cot_td = jax.random.normal(jax.random.key(t), x_td.shape)
    dense = dispatch_grads(dispatch_lib.dense_dispatch, x_td, idx_tk, weight_tk, experts, cot_td)
    grads = dispatch_grads(dropless, x_td, idx_tk, weight_tk, experts, cot_td)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(dense)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    check_layout(idx_tk, e, dropless_lib.choose_block_size(t * k, e, block))


# (T, K, E, allowed experts): uneven groups, some empty; every token on one expert.
@pytest.mark.parametrize("t,k,e,allowed,seed", [(33, 3, 8, [0, 1, 3, 4, 6], 40),
                                                 (10, 1, 4, [2], 41)])
def test_grouped_matches_loop_reference(t, k, e, allowed, seed):
    """Values and gradients (input, gates, every expert weight) of the grouped-matmul dispatch
    vs the JAX loop over experts; its groups are the experts' real rows, in expert order."""
    rng = np.random.default_rng(seed)
    idx_tk = np.stack([rng.choice(allowed, k, replace=False) for _ in range(t)]).astype(np.int32)
    x_td, _, weight_tk, experts = random_dispatch_inputs(t, k, e, seed)
    idx = jnp.asarray(idx_tk)
    np.testing.assert_allclose(jax.jit(grouped_lib.grouped_dispatch)(x_td, idx, weight_tk, experts),
                               ref_routed(x_td, idx_tk, weight_tk, *experts), rtol=2e-5, atol=2e-5)
    cot_td = jax.random.normal(jax.random.key(seed), x_td.shape)
    want = dispatch_grads(ref_routed_jax, x_td, idx_tk, weight_tk, experts, cot_td)
    got = dispatch_grads(grouped_lib.grouped_dispatch, x_td, idx_tk, weight_tk, experts, cot_td)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
    layout = grouped_lib.sort_by_expert(idx, e)
    np.testing.assert_array_equal(layout.group_sizes_e, np.bincount(idx_tk.reshape(-1), minlength=e))
    assert int(layout.group_sizes_e.sum()) == t * k  # no padding row joins a group
    expert_p = idx_tk.reshape(-1)[np.asarray(layout.order_p)]
    assert (np.diff(expert_p) >= 0).all()  # group e is the e-th run of rows
    np.testing.assert_array_equal(np.asarray(layout.order_p)[np.asarray(layout.rank_tk)],
                                  np.arange(t * k).reshape(t, k))


def test_dispatch_is_chosen_by_backend_and_validated():
    assert make_config().moe_dispatch == "auto"
    assert [layer_lib.resolve_dispatch("auto", b) for b in ("cpu", "gpu", "tpu")] == [
        "dropless", "grouped", "grouped"]
    assert layer_lib.resolve_dispatch("grouped", "cpu") == "grouped"
    assert layer_lib.resolve_dispatch("dropless", "tpu") == "dropless"
    with pytest.raises(ValueError, match="ModelConfig.moe_dispatch: got 'ragged'"):
        make_config(moe_dispatch="ragged")
    with pytest.raises(ValueError, match="moe_dispatch: got 'ragged'; allowed values are 'auto'"):
        layer_lib.resolve_dispatch("ragged")


def test_gather_rule_boundary():
    assert dropless_lib.uses_gather(24, 12) and not dropless_lib.uses_gather(25, 12)
    assert dropless_lib.uses_gather(1, 1) and not dropless_lib.uses_gather(3, 1)


def test_moe_decode_sized_batch_matches_loop_over_experts():
    """A whole MoE layer on one token per sequence (decoding): the gather path."""
    cfg = make_config(moe_dispatch="dropless")
    x_btd = jax.random.normal(jax.random.key(8), (4, 1, D))
    params = init_params(cfg, x_btd, bias_scale=0.3)
    assert dropless_lib.uses_gather(4 * cfg.num_experts_per_tok, cfg.n_routed_experts)
    y_btd = jax.jit(moe.MoE(cfg).apply)({"params": params}, x_btd)
    np.testing.assert_allclose(y_btd, ref_moe(params, x_btd, cfg), rtol=2e-5, atol=2e-5)


def check_layout(idx_tk, e, block):
    layout = jax.jit(dropless_lib.block_layout, static_argnums=(1, 2))(jnp.asarray(idx_tk), e,
                                                                        block)
    dest_n = np.asarray(layout.dest_nk).reshape(-1)
    rows = dropless_lib.padded_rows(idx_tk.size, e, block)
    assert len(np.unique(dest_n)) == idx_tk.size and dest_n.max() < rows
    assert layout.row_assign_r.shape == (rows,) and rows % block == 0
    np.testing.assert_array_equal(np.asarray(layout.row_assign_r)[dest_n], np.arange(idx_tk.size))
    # Every assignment sits in a block owned by its own expert.
    np.testing.assert_array_equal(np.asarray(layout.block_expert_g)[dest_n // block],
                                  idx_tk.reshape(-1))
    assert (np.asarray(layout.row_assign_r) == idx_tk.size).sum() == rows - idx_tk.size
    # The used blocks come first: exactly the blocks an expert's rows need.
    counts = np.bincount(idx_tk.reshape(-1), minlength=e)
    assert int(layout.num_blocks) == (-(-counts // block)).sum()
    assert dest_n.max() < int(layout.num_blocks) * block


def test_dense_dispatch_matches_loop_with_unnormalised_weights():
    rng = np.random.default_rng(7)
    idx_tk = np.stack([rng.choice(6, 2, replace=False) for _ in range(11)]).astype(np.int32)
    x_td = jnp.asarray(rng.normal(size=(11, D)), jnp.float32)
    weight_tk = jnp.asarray(rng.uniform(0.1, 3.0, (11, 2)), jnp.float32)
    experts = random_experts(6, seed=1)
    np.testing.assert_allclose(dispatch_lib.dense_dispatch(x_td, jnp.asarray(idx_tk), weight_tk,
                                                           experts),
                               ref_routed(x_td, idx_tk, weight_tk, *experts), rtol=2e-5, atol=2e-5)


# ---------------------------------------------------------------------------- balancing
def test_bias_gets_no_gradient_and_stats_match_reference():
    cfg = make_config(aux_loss_alpha=0.3)
    x_btd = jax.random.normal(jax.random.key(8), (3, 6, D))
    params = init_params(cfg, x_btd, bias_scale=0.3)
    model = moe.MoE(cfg)

    def loss(p):
        y, state = model.apply({"params": p}, x_btd, mutable=["intermediates"])
        return jnp.sum(y ** 2) + moe.total_aux_loss(state["intermediates"]), state

    grads, state = jax.jit(jax.grad(loss, has_aux=True))(params)
    assert np.all(np.asarray(grads["gate"][moe.BIAS]) == 0.0)
    assert np.abs(grads["gate"]["kernel"]).max() > 0
    x_td = np.asarray(x_btd).reshape(-1, D)
    scores, idx, _ = ref_route(x_td, np.asarray(params["gate"]["kernel"]),
                               np.asarray(params["gate"][moe.BIAS]), cfg)
    (load_e,) = state["intermediates"][moe.EXPERT_LOAD]
    np.testing.assert_allclose(load_e.sum(), 1.0, rtol=1e-6)
    np.testing.assert_allclose(load_e, np.bincount(idx.reshape(-1), minlength=8) / idx.size,
                               rtol=1e-6)
    (aux,) = state["intermediates"][moe.AUX_LOSS]
    np.testing.assert_allclose(aux, ref_aux_loss(scores.reshape(3, 6, 8), idx.reshape(3, 6, -1),
                                                 0.3), rtol=1e-5)
    off = moe.MoE(cfg.replace(aux_loss_alpha=0.0))
    _, state = jax.jit(functools.partial(off.apply, mutable=["intermediates"]))(
        {"params": params}, x_btd)
    assert float(state["intermediates"][moe.AUX_LOSS][0]) == 0.0


def test_aux_loss_is_alpha_for_perfect_balance():
    """Uniform scores and exactly uniform counts give sum_i f_i P_i = 1 (eqs. 17-20)."""
    scores_bte = jnp.full((2, 4, 4), 0.3)
    idx_btk = jnp.asarray([[[0, 1], [2, 3], [0, 1], [2, 3]]] * 2)
    np.testing.assert_allclose(balancing.sequence_balance_loss(scores_bte, idx_btk, 0.1), 0.1,
                               rtol=1e-6)


def test_update_bias_by_hand():
    bias_e = jnp.asarray([0.0, 0.1, -0.1, 0.0])
    load_e = jnp.asarray([0.5, 0.25, 0.25, 0.0])  # mean 0.25: over, equal, equal, under
    np.testing.assert_allclose(balancing.update_bias(bias_e, load_e, 0.01),
                               [-0.01, 0.1, -0.1, 0.01])
    stacked = balancing.update_bias(jnp.zeros((2, 4)), jnp.stack([load_e, load_e[::-1]]), 1.0)
    np.testing.assert_array_equal(stacked, [[-1, 0, 0, 1], [1, 0, 0, -1]])


class TwoLayers(nn.Module):
    config: config_lib.ModelConfig

    @nn.compact
    def __call__(self, x_btd):
        x_btd = x_btd + moe.MoE(self.config, name="layer_0")(x_btd)
        return nn.Dense(D, name="proj")(x_btd + moe.MoE(self.config, name="layer_1")(x_btd))


def test_update_all_biases_walks_every_layer():
    cfg = make_config()
    x_btd = jax.random.normal(jax.random.key(9), (2, 8, D))
    model = TwoLayers(cfg)
    params = nn.meta.unbox(jax.jit(model.init)(jax.random.key(0), x_btd))["params"]
    _, state = jax.jit(lambda p: model.apply({"params": p}, x_btd, mutable=["intermediates"]))(
        params)
    loads = moe.collect_expert_loads(state["intermediates"])
    assert sorted(loads) == ["layer_0", "layer_1"]
    new = moe.update_all_biases(params, state["intermediates"], 0.5)
    for layer in ("layer_0", "layer_1"):
        load_e = np.asarray(loads[layer])
        np.testing.assert_allclose(new[layer]["gate"][moe.BIAS],
                                   0.5 * np.sign(load_e.mean() - load_e))
        np.testing.assert_array_equal(new[layer]["gate"]["kernel"], params[layer]["gate"]["kernel"])
    assert (np.asarray(loads["layer_0"]) != np.asarray(loads["layer_0"]).mean()).any()
    np.testing.assert_array_equal(new["proj"]["kernel"], params["proj"]["kernel"])
    with pytest.raises(KeyError, match="layer_1"):
        moe.update_all_biases(params, {"layer_0": state["intermediates"]["layer_0"]}, 0.5)


def test_sharded_apply_matches_single_device():
    """Same numbers on a (fsdp, expert, tensor) = (2, 2, 2) mesh of simulated CPU devices."""
    if jax.device_count() < 8:
        pytest.skip("needs 8 (simulated) devices")
    cfg = make_config()
    x_btd = jax.random.normal(jax.random.key(10), (4, 6, D))
    params = init_params(cfg, x_btd, bias_scale=0.3)
    expected = jax.jit(moe.MoE(cfg).apply)({"params": params}, x_btd)
    mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
    with jax.set_mesh(mesh):
        y_btd = jax.jit(moe.MoE(cfg).apply)({"params": params}, x_btd)
    np.testing.assert_allclose(y_btd, expected, rtol=1e-5, atol=1e-5)
