"""Continuous batching (`r1jax.sampling.continuous`) against the static sampler: the same rows
(tokens, log-probs, masks, finish reasons) from a pool of fewer decode slots, on any mesh, and
at most half the static sampler's rows x decode steps on a long-tailed workload.

test_sampler's tiny GQA model (vocab 64, 2 layers), unrolled and scanned; each sampler
compiles once.
"""

import functools

import numpy as np
import pytest
from test_sampler import GQA, LENGTHS, PROMPTS, RNG, N, params_of, run

from r1jax import sharding
from r1jax.models import scan_layout
from r1jax.sampling import continuous
from r1jax.sampling import sampler as sampler_lib

# Long tail: 10 prompts x G = 2 rows; rows 3 and 12 (10%) run to 24 tokens, the rest stop at 3.
TAIL_N, TAIL_G, TAIL_SLOTS, LONG_ROWS = 24, 2, 4, (3, 12)
TAIL_PROMPTS = np.random.default_rng(0).integers(1, 64, (10, 4)).astype(np.int32)
SCANNED = GQA.replace(scan_layers=True)
TAIL_LENGTHS = np.asarray([4, 2, 3, 4, 1, 4, 3, 2, 4, 4], np.int32)


def assert_same_rows(got, want):
    for field in ("tokens", "mask", "lengths", "finish_reason", "prompt_truncated"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    # Same math per row; only the order of the attention's float32 sums differs (cache layout).
    np.testing.assert_allclose(got.logps, want.logps, rtol=1e-5, atol=1e-5)


def test_greedy_on_a_mesh_equals_the_static_sampler_for_any_number_of_prompts():
    """3 prompts (not a multiple of the mesh's 4 batch shards) and 3 slots (rounded up to 4) on
    data 2 x fsdp 2 x tensor 2: the static sampler's rows on one device (which test_sampler
    checks against the full forward)."""
    mesh = sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
    settings = sampler_lib.SamplingConfig(max_new_tokens=N, temperature=0.0)
    sampler = continuous.make_continuous_sampler(GQA, settings, 3, mesh)
    got = sampler(params_of(GQA), PROMPTS, LENGTHS, RNG)
    assert sampler.num_slots == 4 and len(got.tokens.sharding.device_set) == 8
    assert_same_rows(got, run(GQA))
    assert int(got.num_steps) == N  # all 3 rows at once


@functools.cache
def long_tail():
    """(static result, continuous result) at temperature 1 on the long-tailed workload, GQA
    with scanned layers (the caches' layer axis leads)."""
    params = scan_layout.to_scanned(SCANNED, params_of(GQA))
    free = sampler_lib.make_sampler(SCANNED, sampler_lib.SamplingConfig(
        max_new_tokens=TAIL_N, num_samples=TAIL_G))(params, TAIL_PROMPTS, TAIL_LENGTHS, RNG)
    targets = [TAIL_N if r in LONG_ROWS else 3 for r in range(len(TAIL_PROMPTS) * TAIL_G)]
    settings = sampler_lib.SamplingConfig(
        max_new_tokens=TAIL_N, num_samples=TAIL_G,
        stop_token_sequences=continuous.stops_for_lengths(np.asarray(free.tokens), targets))
    static = sampler_lib.make_sampler(SCANNED, settings)(params, TAIL_PROMPTS, TAIL_LENGTHS, RNG)
    pool = continuous.make_continuous_sampler(SCANNED, settings, TAIL_SLOTS)
    return static, pool(params, TAIL_PROMPTS, TAIL_LENGTHS, RNG)


def test_long_tail_same_rows_at_temperature_one():
    static, got = long_tail()
    assert_same_rows(got, static)


def test_long_tail_computes_at_most_half_the_static_rows_x_steps():
    static, got = long_tail()
    lengths = np.asarray(static.lengths)
    median = np.median(lengths)
    assert np.mean(lengths >= 8 * median) >= 0.1, lengths  # the workload is long-tailed
    static_work = lengths.size * int(static.num_steps)
    continuous_work = TAIL_SLOTS * int(got.num_steps)
    assert continuous_work <= static_work / 2, (continuous_work, static_work)
    # Never fewer steps than the busiest schedule allows: all tokens over the slots.
    assert int(got.num_steps) >= lengths.sum() / TAIL_SLOTS


def test_slot_count_is_checked():
    with pytest.raises(ValueError, match="num_slots=0"):
        continuous.make_continuous_sampler(GQA, sampler_lib.SamplingConfig(max_new_tokens=N), 0)
