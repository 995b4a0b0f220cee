"""MoE routing replay (R3): the sampler's record of every token's experts, replayed by the
training forward. The balancing bias b (selection only, moved by every RL step) is perturbed
between sampling and training: without replay some routing flips and the trainer's log-probs
differ from the sampler's; with replay no routing flips and they are equal (float32, 1e-5).

A tiny MLA + MoE model (vocab 64, d 32, 2 layers: one dense, one MoE with 4 experts, top-2) and
the same with scanned layers.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from r1jax.models import config as config_lib
from r1jax.models import moe, scan_layout, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import replay, step
from r1jax.sampling import sampler as sampler_lib
from r1jax.train import state as state_lib

MODEL = config_lib.ModelConfig(
    vocab_size=64, hidden_size=32, num_hidden_layers=2, intermediate_size=48,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=8, qk_nope_head_dim=8,
    qk_rope_head_dim=4, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2,
    moe_intermediate_size=16, first_k_dense_replace=1, moe_dispatch="dense",
    max_position_embeddings=32, original_max_position_embeddings=32)
N, G, TEMPERATURE = 8, 2, 1.0
PROMPTS = np.asarray([[5, 9, 2, 33, 17, 8], [41, 3, 0, 0, 0, 0], [12, 60, 7, 25, 0, 0]],
                     np.int32)
LENGTHS = np.asarray([6, 2, 4], np.int32)


def _perturb_bias(params):
    """b += N(0, 1) in every router: a big move of the selection-only bias."""
    flat = traverse_util.flatten_dict(params)
    rng = np.random.default_rng(1)
    for path, value in flat.items():
        if path[-1] == moe.BIAS:
            flat[path] = value + jnp.asarray(rng.standard_normal(value.shape), value.dtype)
    return traverse_util.unflatten_dict(flat)


@functools.cache
def sampled(scan_layers: bool):
    """(model config, sampling params, SampleResult with its routing record)."""
    config = MODEL.replace(scan_layers=scan_layers)
    params = transformer.random_params(MODEL)
    if scan_layers:
        params = scan_layout.to_scanned(config, params)
    settings = sampler_lib.SamplingConfig(max_new_tokens=N, temperature=TEMPERATURE,
                                          num_samples=G, record_routing=True)
    result = sampler_lib.make_sampler(config, settings)(params, PROMPTS, LENGTHS,
                                                        jax.random.key(3))
    return config, params, result


@functools.cache
def _trainer_logps(config):
    step_config = step.StepConfig(config, rl_config.GRPOConfig(group_size=G, prompts_per_step=3),
                                  state_lib.OptimConfig(), TEMPERATURE, N)
    return jax.jit(lambda params, batch: step.completion_logps(step_config, params, batch))


def trainer_view(scan_layers: bool, use_replay: bool):
    """(trainer log-probs [R, N], flip rates of the experts used, of the routers' own choices)
    under the perturbed bias."""
    config, params, result = sampled(scan_layers)
    batch = {"prompt_tokens": np.repeat(PROMPTS, G, 0), "prompt_lengths": np.repeat(LENGTHS, G),
             "completion_tokens": result.tokens, "completion_mask": result.mask}
    # Always a record (one compiled forward); all -1 rows select with the router's own choice.
    batch["routing"] = result.routing if use_replay else jax.tree.map(
        lambda r: np.full(r.shape, -1, r.dtype), result.routing)
    logps, _, intermediates = _trainer_logps(config)(_perturb_bias(params), batch)
    flips = [replay.flip_rates(result.routing, intermediates, name)
             for name in (moe.routing.SELECTED, moe.routing.OWN_CHOICE)]
    return np.asarray(logps), *jax.device_get(flips)


@pytest.mark.parametrize("scan_layers", [False, True], ids=["unrolled", "scanned"])
def test_replay_removes_flips_and_the_logp_gap(scan_layers):
    _, _, result = sampled(scan_layers)
    mask = np.asarray(result.mask)
    record = next(iter(result.routing.values()))
    assert record.shape[:2] == (len(PROMPTS) * G, PROMPTS.shape[1] + N)
    # Recorded: prompt tokens but the last, the last prompt token, completion tokens but the
    # last one of a row (never fed back).
    recorded = np.asarray(record)[:, :, ..., 0] >= 0
    recorded = recorded if recorded.ndim == 2 else recorded[:, :, 0]
    assert recorded.sum() == LENGTHS.sum() * G + mask.sum() - len(mask)

    logps, flips, _ = trainer_view(scan_layers, use_replay=False)
    assert max(flips.values()) > 0, flips
    assert np.abs(logps - result.logps)[mask].max() > 1e-3

    logps, used, own = trainer_view(scan_layers, use_replay=True)
    assert all(rate == 0 for rate in used.values()), used
    # The metric the trainer logs under replay: the routers' own choices still flip (the one
    # MoE layer sees the same input with and without replay, so exactly as often).
    assert own == flips, (own, flips)
    np.testing.assert_allclose(logps[mask], np.asarray(result.logps)[mask], rtol=1e-5, atol=1e-5)
