"""The rollout sampler against a slow, obvious reference: the teacher-forced full forward
(`Transformer.apply` on prompt + completion). Also padding independence, EOS / stop sequences
and early exit, G samples per prompt, 8-device sharding, context budget, cache size.

Tiny models (vocab 64, d 32, 2 layers): MLA + MoE (absorbed and naive decoding) and GQA.
Shared prompts: B = 3, P = 6, lengths (6, 2, 4), N = 8 new tokens; results are cached per
config so each sampler compiles once.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import sampling, sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.sampling import sampler as sampler_lib

MLA = config_lib.ModelConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=16, n_shared_experts=1, first_k_dense_replace=1,
    moe_dispatch="dense", max_position_embeddings=32, original_max_position_embeddings=32,
    mla_decode="absorbed")
MLA_NAIVE = MLA.replace(mla_decode="naive")
GQA = MLA.replace(attention_type="gqa", num_attention_heads=4, num_key_value_heads=2,
                  head_dim=8, attention_bias=True, rope_interleave=False, q_lora_rank=None,
                  n_routed_experts=0)
N = 8
PROMPTS = np.asarray([[5, 9, 2, 33, 17, 8], [41, 3, 0, 0, 0, 0], [12, 60, 7, 25, 0, 0]],
                     np.int32)
LENGTHS = np.asarray([6, 2, 4], np.int32)
RNG = jax.random.key(7)

params_of = functools.lru_cache(maxsize=None)(transformer.random_params)


@functools.cache
def run(config, temperature=0.0, **kwargs):
    return sampling.generate(config, params_of(config), PROMPTS, LENGTHS, RNG, max_new_tokens=N,
                             temperature=temperature, **kwargs)


@functools.cache
def _forward(config):
    def forward(params, tokens_bt, mask_bt):
        return transformer.Transformer(config).apply({"params": params}, tokens_bt, None, mask_bt)
    return jax.jit(forward)


def teacher_forced(config, prompts, lengths, result, temperature):
    """Per completion token: (argmax, log_softmax(logits / T) at the sampled token) of the full
    forward on prompt + completion, and the completion mask."""
    tokens, mask = np.asarray(result.tokens), np.asarray(result.mask)
    rows = [list(p[:n]) + list(t[m]) for p, n, t, m in zip(prompts, lengths, tokens, mask)]
    seq_bt = np.zeros((len(rows), prompts.shape[1] + N), np.int32)
    for b, row in enumerate(rows):
        seq_bt[b, :len(row)] = row
    mask_bt = np.arange(seq_bt.shape[1])[None] < np.asarray([len(r) for r in rows])[:, None]
    logits_btv = np.asarray(_forward(config)(params_of(config), seq_bt, mask_bt), np.float64)
    index_bn = np.minimum(lengths[:, None] - 1 + np.arange(N)[None], seq_bt.shape[1] - 1)
    logits_bnv = np.take_along_axis(logits_btv, index_bn[..., None], axis=1)
    logp_bnv = jax.nn.log_softmax(logits_bnv / (temperature or 1.0), axis=-1)
    logp_bn = np.take_along_axis(np.asarray(logp_bnv), tokens[..., None], axis=-1)[..., 0]
    return logits_bnv.argmax(-1), logp_bn, mask


@pytest.mark.parametrize("config", [MLA, MLA_NAIVE, GQA], ids=["absorbed", "naive", "gqa"])
def test_greedy_matches_teacher_forced_forward(config):
    result = run(config)
    argmax_bn, logp_bn, mask = teacher_forced(config, PROMPTS, LENGTHS, result, 0.0)
    assert mask.all() and result.tokens.shape == (3, N) and result.logps.dtype == jnp.float32
    np.testing.assert_array_equal(result.tokens, argmax_bn)
    np.testing.assert_allclose(result.logps, logp_bn, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(result.lengths, [N] * 3)
    assert result.finish_reason_names() == ["length"] * 3 and int(result.num_steps) == N


def test_absorbed_and_naive_mla_agree():
    absorbed, naive = run(MLA), run(MLA_NAIVE)
    np.testing.assert_array_equal(absorbed.tokens, naive.tokens)
    np.testing.assert_allclose(absorbed.logps, naive.logps, rtol=1e-5, atol=1e-5)


def test_sampled_logps_are_the_untruncated_policy_at_temperature():
    result = run(MLA, temperature=0.8, top_k=5)
    _, logp_bn, _ = teacher_forced(MLA, PROMPTS, LENGTHS, result, 0.8)
    np.testing.assert_allclose(result.logps, logp_bn, rtol=1e-5, atol=1e-5)
    assert not np.array_equal(result.tokens, run(MLA).tokens)  # really sampled


def test_completions_do_not_depend_on_padding():
    want = run(GQA)
    alone = sampling.generate(GQA, params_of(GQA), PROMPTS[1:2, :2], LENGTHS[1:2], RNG,
                              max_new_tokens=N, temperature=0.0)
    np.testing.assert_array_equal(alone.tokens[0], want.tokens[1])
    np.testing.assert_allclose(alone.logps[0], want.logps[1], rtol=1e-5, atol=1e-5)
    # Left-padded to a wider width: same completions.
    left = np.zeros((3, 9), np.int32)
    for b, n in enumerate(LENGTHS):
        left[b, 9 - n:] = PROMPTS[b, :n]
    wide = sampling.generate(GQA, params_of(GQA), left, LENGTHS, RNG, max_new_tokens=N,
                             temperature=0.0, pad_side="left")
    np.testing.assert_array_equal(wide.tokens, want.tokens)
    np.testing.assert_allclose(wide.logps, want.logps, rtol=1e-5, atol=1e-5)


def _first_stop(tokens, eos_id, stop_seqs):
    for i in range(len(tokens)):
        if tokens[i] == eos_id or any(tuple(tokens[max(0, i + 1 - len(s)):i + 1]) == s
                                      for s in stop_seqs):
            return i
    return None


def test_eos_and_stop_sequences_mask_the_rest_and_exit_early():
    free = np.asarray(run(MLA).tokens)
    eos_id = int(free[0, 2])
    stop_seqs = ((int(free[1, 2]), int(free[1, 3])), (int(free[2, 1]),))
    pad_id = 63
    result = run(MLA, eos_id=eos_id, stop_token_sequences=stop_seqs, pad_id=pad_id)
    stop_at = [_first_stop(list(map(int, row)), eos_id, stop_seqs) for row in free]
    assert all(s is not None and s <= 3 for s in stop_at), stop_at
    for b, s in enumerate(stop_at):
        np.testing.assert_array_equal(result.mask[b], np.arange(N) <= s)
        np.testing.assert_array_equal(result.tokens[b, :s + 1], free[b, :s + 1])
        assert (np.asarray(result.tokens[b, s + 1:]) == pad_id).all()
        assert (np.asarray(result.logps[b, s + 1:]) == 0).all()
    np.testing.assert_array_equal(result.lengths, np.asarray(stop_at) + 1)
    assert result.finish_reason_names() == ["stop"] * 3
    assert int(result.num_steps) == max(stop_at) + 1 < N  # the while_loop stopped early


def test_samples_per_prompt_sharded_match_repeated_prompts_on_one_device():
    """G = 2 samples of 4 prompts (8 rows) on a (data 2, fsdp 2, tensor 2) mesh of 8 devices
    equal 8 explicitly repeated prompts on one device (row b * G + g has the same key)."""
    prompts, lengths = np.concatenate([PROMPTS, PROMPTS[:1]]), np.concatenate([LENGTHS, [3]])
    kwargs = dict(max_new_tokens=N, temperature=1.0, top_p=0.9)
    params = params_of(MLA)
    one = sampling.generate(MLA, params, np.repeat(prompts, 2, 0), np.repeat(lengths, 2), RNG,
                            **kwargs)
    assert len(one.tokens.sharding.device_set) == 1
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    sharded = sampling.generate(MLA, params, prompts, lengths, RNG, num_samples=2, mesh=mesh,
                                **kwargs)
    assert len(sharded.tokens.sharding.device_set) == 8
    np.testing.assert_array_equal(sharded.tokens, one.tokens)
    np.testing.assert_allclose(sharded.logps, one.logps, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(sharded.mask, one.mask)
    assert not np.array_equal(one.tokens[0::2], one.tokens[1::2])  # the G samples differ
    # 3 prompts on 4 batch shards: padded to 4 (the same compiled sampler), first 6 rows kept.
    three = sampling.generate(MLA, params, prompts[:3], lengths[:3], RNG, num_samples=2,
                              mesh=mesh, **kwargs)
    assert three.tokens.shape == (6, N) and three.lengths.shape == (6,)
    np.testing.assert_array_equal(three.tokens, one.tokens[:6])
    np.testing.assert_allclose(three.logps, one.logps[:6], rtol=1e-5, atol=1e-5)


def test_overlong_prompts_raise_or_keep_their_last_tokens():
    prompts = np.zeros((2, 26), np.int32)
    prompts[0] = np.arange(26) % 60 + 1
    prompts[1, :3] = [4, 5, 6]
    lengths = np.asarray([26, 3])
    kwargs = dict(max_new_tokens=N, temperature=1.0)
    with pytest.raises(ValueError, match=r"prompt 0 has 26 tokens > prompt budget 24 \("
                                         r"max_position_embeddings=32 - max_new_tokens=8"):
        sampling.generate(MLA, params_of(MLA), prompts, lengths, RNG, **kwargs)
    cut = sampling.generate(GQA, params_of(GQA), prompts, lengths, RNG, overlong="truncate",
                            **kwargs)
    np.testing.assert_array_equal(cut.prompt_truncated, [True, False])
    last = np.stack([prompts[0, 2:], prompts[1, :24]])
    want = sampling.generate(GQA, params_of(GQA), last, [24, 3], RNG, **kwargs)
    np.testing.assert_array_equal(cut.tokens, want.tokens)
    np.testing.assert_allclose(cut.logps, want.logps, rtol=1e-5, atol=1e-5)
    assert not want.prompt_truncated.any() and len(set(np.asarray(cut.tokens[0]))) > 2
    with pytest.raises(ValueError, match="max_prompt_length=2"):
        sampling.generate(MLA, params_of(MLA), prompts, lengths, RNG, max_prompt_length=2,
                          **kwargs)
    with pytest.raises(ValueError, match=r"prompt_lengths\[1\]=0 is outside"):
        sampling.generate(MLA, params_of(MLA), prompts, [26, 0], RNG, **kwargs)
    # The compiled sampler sees only shapes: a too-wide prompt array is refused at trace time.
    sampler = sampling.make_sampler(MLA, sampling.SamplingConfig(max_new_tokens=N))
    with pytest.raises(ValueError, match="P=26 \\+ max_new_tokens=8 > max_position_embeddings=32"):
        sampler(params_of(MLA), prompts, lengths, RNG)


def test_sampler_reuses_one_compilation_across_params():
    """`generate`'s memoised `make_sampler`: new params and rng, same shapes, no recompile."""
    sampler = sampler_lib.cached_sampler(
        GQA, sampling.SamplingConfig(max_new_tokens=N, temperature=0.0), None)
    first = run(GQA)
    compiled = sampler._cache_size()  # other tests may have used other shapes
    other = sampler(transformer.random_params(GQA, seed=1), PROMPTS, LENGTHS, jax.random.key(1))
    assert not np.array_equal(first.tokens, other.tokens)
    assert compiled >= 1 and sampler._cache_size() == compiled


@pytest.mark.parametrize("config", [MLA, GQA, MLA.replace(scan_layers=True)],
                         ids=["mla", "gqa", "mla-scan"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_cache_bytes_per_token_equal_the_cache_arrays(config, dtype):
    per_token = sampling.cache_bytes_per_token(config, dtype)
    itemsize = jnp.dtype(dtype).itemsize
    if config.attention_type == "mla":
        assert per_token == (8 + 4) * 2 * itemsize  # (d_c + d_h^R) * layers * bytes
    else:
        assert per_token == 2 * 2 * 8 * 2 * itemsize  # 2 * n_kv * d_h * layers * bytes
    cache = transformer.init_cache(config, batch_size=3, max_length=5, dtype=dtype)
    nbytes = sum(leaf.nbytes for leaf in jax.tree.leaves(cache.layers))
    assert nbytes == per_token * 3 * 5


def test_sampling_config_names_the_bad_field():
    with pytest.raises(ValueError, match="SamplingConfig.top_p"):
        sampling.SamplingConfig(max_new_tokens=4, top_p=0.0)
    with pytest.raises(ValueError, match="SamplingConfig.pad_side"):
        sampling.SamplingConfig(max_new_tokens=4, pad_side="middle")
    with pytest.raises(ValueError, match="no room"):
        sampler_lib.SamplingConfig(max_new_tokens=40).prompt_budget(MLA)
