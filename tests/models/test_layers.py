"""Layers: YaRN and Llama 3 frequencies and scales against float64 NumPy references, RoPE
layouts, embedding."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from r1jax.models import config as config_lib
from r1jax.models import layers, presets

V3 = config_lib.ModelConfig.from_dict(presets.deepseek_v3_671b())
V2_LITE = config_lib.ModelConfig.from_dict(presets.deepseek_v2_lite())
LLAMA = config_lib.ModelConfig.from_dict(presets.llama3_2_1b())


def _yarn_reference(dim, base, factor, original_len, beta_fast, beta_slow):
    """YaRN (arXiv:2309.00071 as in DeepSeek's code), one frequency at a time, float64."""
    def correction_dim(rotations):  # dimension whose wavelength fits `rotations` times
        return dim * math.log(original_len / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(correction_dim(beta_fast)), 0)
    high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
    out = []
    for i in range(dim // 2):
        theta = base ** (-2.0 * i / dim)
        ramp = min(max((i - low) / (high - low), 0.0), 1.0)  # 0 = extrapolate, 1 = interpolate
        out.append(theta * (1 - ramp) + theta / factor * ramp)
    return np.array(out)


def test_yarn_frequencies_match_reference_for_v3_and_a_small_config():
    small = config_lib.ModelConfig(qk_rope_head_dim=16, rope_type="yarn", rope_factor=8.0,
                                   original_max_position_embeddings=64, rope_theta=500.0,
                                   beta_fast=16.0, beta_slow=2.0)
    for cfg in (V3, small):
        want = _yarn_reference(cfg.qk_rope_head_dim, cfg.rope_theta, cfg.rope_factor,
                               cfg.original_max_position_embeddings, cfg.beta_fast, cfg.beta_slow)
        np.testing.assert_allclose(layers.rope_frequencies(cfg), want, rtol=1e-12)
    # V3 anchors: correction range [floor(10.47), ceil(22.51)] = [10, 23].
    inv = layers.rope_frequencies(V3)
    theta = 1e4 ** (-np.arange(0, 64, 2) / 64)
    np.testing.assert_allclose(inv[:11], theta[:11], rtol=1e-12)
    np.testing.assert_allclose(inv[23:], theta[23:] / 40, rtol=1e-12)
    assert np.all((inv[11:23] < theta[11:23]) & (inv[11:23] > theta[11:23] / 40))


def test_yarn_mscale_and_softmax_scale():
    def mscale(s, m):
        return 0.1 * m * math.log(s) + 1.0

    # V3: mscale == mscale_all_dim == 1, so cos/sin are unscaled and the logits get mscale^2.
    assert layers.rope_attention_factor(V3) == 1.0
    np.testing.assert_allclose(layers.softmax_scale(V3), mscale(40, 1) ** 2 / math.sqrt(192))
    np.testing.assert_allclose(layers.softmax_scale(V2_LITE),
                               mscale(40, 0.707) ** 2 / math.sqrt(192))
    cfg = V3.replace(rope_factor=4.0, mscale=1.0, mscale_all_dim=0.5)
    np.testing.assert_allclose(layers.rope_attention_factor(cfg), mscale(4, 1) / mscale(4, 0.5))
    cos, sin = layers.rope_cos_sin(cfg, jnp.arange(5)[None])
    np.testing.assert_allclose(cos ** 2 + sin ** 2, (mscale(4, 1) / mscale(4, 0.5)) ** 2,
                               rtol=1e-5)
    # mscale_all_dim == 0 (the HF default): cos/sin get mscale(s, 1); logits unscaled.
    cfg = V3.replace(rope_factor=4.0, mscale_all_dim=0.0)
    np.testing.assert_allclose(layers.rope_attention_factor(cfg), mscale(4, 1))
    np.testing.assert_allclose(layers.softmax_scale(cfg), 192 ** -0.5)
    assert layers.softmax_scale(LLAMA) == 64 ** -0.5
    assert layers.rope_attention_factor(LLAMA) == 1.0


def test_llama3_frequencies_match_reference():
    base, dim, factor, old = 5e5, 64, 32.0, 8192
    want = []
    for i in range(dim // 2):
        f = base ** (-2.0 * i / dim)
        wavelength = 2 * math.pi / f
        if wavelength < old / 4.0:
            want.append(f)
        elif wavelength > old / 1.0:
            want.append(f / factor)
        else:
            smooth = (old / wavelength - 1.0) / (4.0 - 1.0)
            want.append((1 - smooth) * f / factor + smooth * f)
    got = layers.rope_frequencies(LLAMA)
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[0] == 1.0 and np.isclose(got[-1], base ** (-62 / 64) / 32)


def test_default_frequencies():
    cfg = config_lib.ModelConfig(qk_rope_head_dim=8, rope_theta=100.0)
    np.testing.assert_allclose(layers.rope_frequencies(cfg), 100.0 ** (-np.arange(0, 8, 2) / 8))


def _angles(n_pos, r, seed=0):
    rng = np.random.default_rng(seed)
    angles = rng.uniform(0, 10, (1, n_pos, r // 2))
    return jnp.asarray(np.cos(angles), jnp.float32), jnp.asarray(np.sin(angles), jnp.float32), \
        angles


def test_interleaved_rope_is_a_pair_rotation_and_a_permuted_half_split():
    x = jnp.asarray(np.random.default_rng(1).standard_normal((1, 3, 2, 8)), jnp.float32)
    cos, sin, angles = _angles(3, 8)
    got = layers.apply_rope(x, cos, sin, interleave=True)
    # Reference: (x_2i + i x_2i+1) * exp(i angle_i), returned de-interleaved (reals, then imags).
    z = (np.asarray(x[..., 0::2]) + 1j * np.asarray(x[..., 1::2])) * np.exp(1j * angles[:, :, None])
    np.testing.assert_allclose(got, np.concatenate([z.real, z.imag], -1), rtol=1e-5, atol=1e-6)
    perm = np.array([0, 2, 4, 6, 1, 3, 5, 7])
    np.testing.assert_allclose(got, layers.apply_rope(x[..., perm], cos, sin, interleave=False),
                               rtol=1e-6, atol=1e-6)
    # Half-split: pair i is (x_i, x_{i + 4}).
    half = layers.apply_rope(x, cos, sin, interleave=False)
    z = (np.asarray(x[..., :4]) + 1j * np.asarray(x[..., 4:])) * np.exp(1j * angles[:, :, None])
    np.testing.assert_allclose(half, np.concatenate([z.real, z.imag], -1), rtol=1e-5, atol=1e-6)


def test_rope_scores_depend_on_relative_position_only():
    cfg = config_lib.ModelConfig(qk_rope_head_dim=16)
    rng = np.random.default_rng(2)
    q = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(rng.standard_normal((1, 1, 1, 16)), jnp.float32)

    def score(m, n):
        rq = layers.apply_rope(q, *layers.rope_cos_sin(cfg, jnp.asarray([[m]])), True)
        rk = layers.apply_rope(k, *layers.rope_cos_sin(cfg, jnp.asarray([[n]])), True)
        return float(jnp.sum(rq * rk))

    np.testing.assert_allclose(score(7, 3), score(104, 100), rtol=1e-4)
    assert abs(score(7, 3) - score(7, 5)) > 1e-3


def test_embed_lookup_and_tied_head():
    cfg = config_lib.ModelConfig(vocab_size=10, hidden_size=4)
    table = jnp.asarray(np.random.default_rng(3).standard_normal((10, 4)), jnp.float32)
    embed = layers.Embed(cfg)
    tokens = jnp.asarray([[1, 9, 1]])
    x = embed.apply({"params": {"embedding": table}}, tokens)
    np.testing.assert_array_equal(x, table[tokens])
    logits = embed.apply({"params": {"embedding": table}}, x, method=layers.Embed.attend)
    assert logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, x @ table.T, rtol=1e-6)
    shapes = jax.eval_shape(embed.init, jax.random.key(0), tokens)["params"]
    assert shapes["embedding"].names == ("vocab", "embed")
