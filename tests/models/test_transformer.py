"""Transformer: shapes and parameter tree, causality, padding and packing masks, MoE layers,
multi-token prediction, remat and scanned layers, on tiny random models.

Cached decoding is tested in test_attention.py. Every forward here has tokens [2, 6] and all
keyword arguments given, so each config compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer

MLA = config_lib.ModelConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=0, rope_type="yarn", rope_factor=4.0,
    original_max_position_embeddings=8, max_position_embeddings=32, mscale=1.0,
    mscale_all_dim=0.5)
GQA = MLA.replace(attention_type="gqa", num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                  attention_bias=True, rope_interleave=False, q_lora_rank=None,
                  rope_type="llama3", rope_factor=8.0, tie_word_embeddings=True)
# Dense dispatch compiles fastest; the dispatch functions have their own parity tests.
MOE = MLA.replace(num_hidden_layers=3, n_routed_experts=4, num_experts_per_tok=2,
                  moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1,
                  n_group=2, topk_group=1, q_lora_rank=None, moe_dispatch="dense")
ARANGE = jnp.broadcast_to(jnp.arange(6), (2, 6))
ONES = jnp.ones((2, 6), bool)
ZEROS = jnp.zeros((2, 6), jnp.int32)

params_of = functools.lru_cache(maxsize=None)(transformer.random_params)


@functools.cache
def _jitted(config):
    def forward(params, tokens, positions, mask, segments):
        return transformer.Transformer(config).apply(
            {"params": params}, tokens, positions, mask, segments, mutable=("intermediates",))
    return jax.jit(forward)


def forward(config, tokens, positions=ARANGE, mask=ONES, segments=ZEROS, params=None):
    """(logits [2, 6, V], intermediates)."""
    params = params_of(config) if params is None else params
    logits, state = _jitted(config)(params, tokens, positions, mask, segments)
    return logits, state.get("intermediates", {})


def _tokens(seed=1):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 64, (2, 6)), jnp.int32)


def _close(a, b, tol=1e-5):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_logits_shape_dtype_and_param_tree():
    logits, _ = forward(MLA, _tokens())
    assert logits.shape == (2, 6, 64) and logits.dtype == jnp.float32
    params = params_of(MLA)
    assert set(params) == {"embed_tokens", "layers_0", "layers_1", "norm", "lm_head"}
    attn = params["layers_0"]["self_attn"]
    assert attn["kv_b_proj"]["kernel"].shape == (8, 2 * (8 + 8))
    assert attn["kv_a_proj_with_mqa"]["kernel"].shape == (32, 8 + 4)
    assert attn["q_b_proj"]["kernel"].shape == (16, 2 * 12)
    gqa = params_of(GQA)
    assert "lm_head" not in gqa  # tied
    assert gqa["layers_0"]["self_attn"]["k_proj"]["bias"].shape == (2 * 8,)
    assert "bias" not in gqa["layers_0"]["self_attn"]["o_proj"]


def test_every_param_has_logical_axis_names():
    variables = jax.eval_shape(transformer.Transformer(MOE).init, jax.random.key(0), _tokens())
    boxes = jax.tree.leaves(variables["params"], is_leaf=lambda x: hasattr(x, "names"))
    assert boxes and all(len(b.names) == b.value.ndim for b in boxes)
    names = {n for b in boxes for n in b.names}
    assert {"vocab", "embed", "heads", "kv_lora", "mlp", "expert", "norm"} <= names
    assert names <= {rule[0] for rule in sharding.RULES} | {None}


def test_future_tokens_do_not_change_past_logits():
    for config in (MLA, GQA):
        tokens = _tokens()
        changed = tokens.at[:, 4:].set((tokens[:, 4:] + 7) % 64)
        a, b = forward(config, tokens)[0], forward(config, changed)[0]
        _close(a[:, :4], b[:, :4])
        assert np.abs(np.asarray(a[:, 4:] - b[:, 4:])).max() > 1e-3


def test_padding_keys_are_ignored():
    tokens = _tokens()
    # Row 0 left-padded by 2 (positions restart at the first real token); row 1 unpadded.
    padded_tokens = tokens.at[0, 2:].set(tokens[0, :4]).at[0, :2].set(5)
    positions = ARANGE.at[0].set(jnp.asarray([0, 0, 0, 1, 2, 3]))
    mask = ONES.at[0, :2].set(False)
    padded, _ = forward(MLA, padded_tokens, positions, mask)
    bare, _ = forward(MLA, tokens)
    _close(padded[0, 2:], bare[0, :4])
    _close(padded[1], bare[1])


def test_packed_segments_equal_separate_sequences():
    tokens = _tokens()
    packed_tokens = tokens.at[1].set(jnp.concatenate([tokens[0, :2], tokens[1, :4]]))
    segments = ZEROS.at[1].set(jnp.asarray([1, 1, 2, 2, 2, 2]))
    positions = ARANGE.at[1].set(jnp.asarray([0, 1, 0, 1, 2, 3]))
    packed, _ = forward(GQA, packed_tokens, positions, ONES, segments)
    separate, _ = forward(GQA, tokens)
    _close(packed[1, :2], separate[0, :2])
    _close(packed[1, 2:], separate[1, :4])


def test_moe_layers_follow_first_k_dense_replace_and_sow_router_stats():
    params = params_of(MOE)
    assert "gate_proj" in params["layers_0"]["mlp"]  # dense prefix
    assert {"experts", "gate", "shared_experts"} <= set(params["layers_1"]["mlp"])
    logits, inter = forward(MOE, _tokens())
    assert np.isfinite(np.asarray(logits)).all()
    assert "layers_0" not in inter
    loads = inter["layers_2"]["mlp"]["expert_load"][0]
    assert loads.shape == (4,) and np.isclose(float(loads.sum()), 1.0)


def test_mtp_logits_loss_and_causality():
    config = MOE.replace(num_nextn_predict_layers=2)
    params = params_of(config)
    assert set(params["mtp_0"]) == {"enorm", "hnorm", "eh_proj", "block", "norm"}
    assert "experts" in params["mtp_0"]["block"]["mlp"]
    tokens = _tokens()
    logits, inter = forward(config, tokens)
    mtp_logits = inter["mtp_logits"][0]
    assert mtp_logits.shape == (2, 2, 6, 64)
    # The main logits are those of the same model without MTP modules.
    no_mtp = {k: v for k, v in params.items() if not k.startswith("mtp_")}
    _close(logits, forward(MOE, tokens, params=no_mtp)[0], 1e-6)
    # Depth k at position i sees tokens up to i + k only.
    changed = tokens.at[:, 4:].set((tokens[:, 4:] + 5) % 64)
    other = forward(config, changed)[1]["mtp_logits"][0]
    _close(other[0, :, :3], mtp_logits[0, :, :3])
    _close(other[1, :, :2], mtp_logits[1, :, :2])
    assert np.abs(np.asarray(other[1, :, 2] - mtp_logits[1, :, 2])).max() > 1e-3
    # L_MTP against a loop over positions.
    mask = jnp.asarray([[1] * 6, [1] * 4 + [0] * 2], bool)
    want = 0.0
    for k in (1, 2):
        logp = jax.nn.log_softmax(mtp_logits[k - 1], -1)
        want += np.mean([-float(logp[b, i, tokens[b, i + k + 1]]) for b in range(2)
                         for i in range(6 - k - 1) if mask[b, i + k + 1]])
    _close(transformer.mtp_loss(mtp_logits, tokens, mask, weight=0.3), 0.3 / 2 * want)


def test_remat_keeps_gradients():
    config = MLA.replace(num_hidden_layers=1)
    tokens = _tokens()
    policies = ("none", "full", "dots")

    @jax.jit
    def grads(params):
        def loss(p, policy):
            model = transformer.Transformer(config.replace(remat_policy=policy))
            return model.apply({"params": p}, tokens).sum()
        return [jax.grad(loss)(params, policy) for policy in policies]

    want, *others = grads(params_of(config))
    for got in others:
        for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
            _close(a, b)


def test_scanned_layers_match_unrolled():
    config = MOE.replace(scan_layers=True)
    params = params_of(MOE)

    def stack(names):
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[params[n] for n in names])

    scanned = {k: v for k, v in params.items() if not k.startswith("layers_")}
    scanned["dense_layers"] = stack(["layers_0"])
    scanned["moe_layers"] = stack(["layers_1", "layers_2"])
    shapes = transformer.abstract_params(config)
    assert jax.tree.map(jnp.shape, scanned) == jax.tree.map(lambda a: a.shape, shapes)
    tokens = _tokens()
    logits, inter = forward(config, tokens, params=scanned)
    want, want_inter = forward(MOE, tokens)
    _close(logits, want)
    _close(inter["moe_layers"]["mlp"]["expert_load"][0][1],
           want_inter["layers_2"]["mlp"]["expert_load"][0])
