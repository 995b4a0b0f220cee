"""Real-length updates (r1jax.rl.packing): a packed or width-trimmed GRPO update equals the
update over the full, unpacked batch (float32, 1e-5: loss, metrics, gradients)."""

import jax
import numpy as np
import pytest
import tiny_models

from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import packing, step
from r1jax.train import state as state_lib

N, P, T, VOCAB, MICRO = 8, 6, 12, 97, 2


def _config(packed: bool) -> step.StepConfig:
    model = tiny_models.dense(VOCAB, 1, 64)
    grpo = rl_config.GRPOConfig(group_size=2, prompts_per_step=4, num_micro_batches=MICRO,
                                beta=0.04, clip_eps_low=0.2, clip_eps_high=0.28,
                                logps_chunk_size=5, packing=packed, update_width_multiple=4)
    return step.StepConfig(model, grpo, state_lib.OptimConfig(), temperature=0.8,
                           max_new_tokens=T)


def _batch(seed: int) -> dict:
    """Random prompts (right-padded), completions whose real lengths leave the last columns
    empty in every row, and per-token inputs holding junk where masked."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T - 3, N)
    return {
        "prompt_tokens": rng.integers(0, VOCAB, (N, P)).astype(np.int32),
        "prompt_lengths": rng.integers(1, P + 1, N).astype(np.int32),
        "completion_tokens": rng.integers(0, VOCAB, (N, T)).astype(np.int32),
        "completion_mask": np.arange(T)[None] < lengths[:, None],
        "old_logps": (-3 * rng.random((N, T))).astype(np.float32),
        "ref_logps": (-3 * rng.random((N, T))).astype(np.float32),
        "advantages": rng.standard_normal(N).astype(np.float32),
    }


def _loss_and_grads(config, params, batch):
    loss_fn = step.make_loss_fn(config)
    fn = jax.jit(lambda p, b: state_lib.accumulate_gradients(loss_fn, p, b, MICRO))
    loss, aux, grads = fn(params, batch)
    return jax.device_get((loss, aux["metrics"], grads))


@pytest.fixture(scope="module")
def reference():
    config = _config(False)
    params = transformer.random_params(config.model, 4)
    batch = _batch(5)
    return params, batch, _loss_and_grads(config, params, batch)


def _assert_same(got, want):
    (loss, metrics, grads), (loss0, metrics0, grads0) = got, want
    np.testing.assert_allclose(loss, loss0, rtol=1e-5, atol=1e-6)
    assert abs(float(loss0)) > 1e-3
    for key in metrics0:
        np.testing.assert_allclose(metrics[key], metrics0[key], rtol=1e-5, atol=1e-6, err_msg=key)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 grads, grads0)


def test_packed_update_equals_unpacked(reference):
    params, batch, want = reference
    packed = packing.pack(batch, MICRO, width_multiple=4)
    rows, width = packed["packed_tokens"].shape
    assert rows < N and width < P + T  # the packed forward is smaller
    _assert_same(_loss_and_grads(_config(True), params, packed), want)


def test_trimmed_width_update_equals_full_width(reference):
    params, batch, want = reference
    width = packing.update_width(batch["completion_mask"], T, 4)
    assert width < T
    _assert_same(_loss_and_grads(_config(False), params, packing.trim(batch, width)), want)


def test_pack_layout():
    batch = _batch(6)
    out = packing.pack(batch, MICRO, width_multiple=1)
    plen, clen = batch["prompt_lengths"], batch["completion_mask"].sum(1)
    for i in range(N):
        j = i % MICRO
        row = out["pack_row"][i] * MICRO + j
        start = out["pack_start"][i] - plen[i] + 1
        span = slice(start, start + plen[i] + clen[i])
        want = np.concatenate([batch["prompt_tokens"][i, :plen[i]],
                               batch["completion_tokens"][i, :clen[i]]])
        np.testing.assert_array_equal(out["packed_tokens"][row, span], want)
        np.testing.assert_array_equal(out["packed_positions"][row, span], np.arange(len(want)))
        segment = out["packed_segments"][row, span]
        assert segment[0] > 0 and (segment == segment[0]).all()
    # Every real token placed once; padding is segment 0 and masked.
    assert out["packed_mask"].sum() == (plen + clen).sum()
    np.testing.assert_array_equal(out["packed_segments"] > 0, out["packed_mask"])
    with pytest.raises(ValueError, match="prefix of ones"):
        packing.pack(dict(batch, completion_mask=batch["completion_mask"][:, ::-1]), MICRO)
    assert packing.update_width(batch["completion_mask"], T, 0) == T


def test_micro_batched_reference_scorer(reference):
    """The reference scorer in 4 micro-batches (lax.map) returns each row's log-probs in
    place, equal to one pass over the whole batch."""
    params, batch, _ = reference
    config = _config(False)
    keys = ("prompt_tokens", "prompt_lengths", "completion_tokens", "completion_mask")
    inputs = {k: batch[k] for k in keys}
    whole = jax.jit(step.make_score_fn(config))(params, inputs)
    micro = jax.jit(step.make_score_fn(config, 4))(params, inputs)
    np.testing.assert_allclose(micro, whole, rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(whole)[~batch["completion_mask"]] == 0)
    assert np.all(np.asarray(whole)[batch["completion_mask"]] < 0)
