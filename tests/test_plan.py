"""The memory planner against hand counts, and lowering of the V3 train step and sampler on an
abstract pod-size mesh (`jax.sharding.AbstractMesh`: no devices, nothing allocated).

Lowering targets TPU (`lowering_platforms`), which an AbstractMesh needs and which works on a
CPU-only machine: the 256-device mesh is never backed by real devices.
"""

import dataclasses
import pathlib
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import config_utils, plan, sharding
from r1jax.models import config as config_lib
from r1jax.models import hf, presets, residuals, summary, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import plan_check, step
from r1jax.sampling import sampler
from r1jax.train import state as state_lib


def test_parse_mesh_names_bad_items():
    assert plan.parse_mesh("data=1,fsdp=64,expert=8,tensor=1") == \
        {"data": 1, "fsdp": 64, "expert": 8, "tensor": 1}
    with pytest.raises(ValueError, match="'pipe=2'"):
        plan.parse_mesh("fsdp=4,pipe=2")


def tiny():
    return config_lib.ModelConfig.from_dict(presets.tiny())


def test_parameter_bytes_match_hand_counts():
    cfg = tiny()
    abstract = transformer.abstract_params(cfg)
    total = sum(int(np.prod(x.shape)) * 4 for x in jax.tree.leaves(abstract))
    frozen = sum(int(np.prod(x.shape)) * 4 for p, x in jax.tree_util.tree_leaves_with_path(abstract)
                 if plan.FROZEN in jax.tree_util.keystr(p))
    assert frozen > 0  # the MoE balancing bias: state, not a parameter Adam moves
    one = plan.make_plan(cfg, {"fsdp": 1}, batch=8, seq=16)
    assert one.parameters == one.reference == one.gradients == total
    assert one.optimizer == 2 * (total - frozen)  # float32 params: two float32 moments
    # fsdp=2 halves every leaf with an 'embed' axis; the rest (norms, biases, the latent
    # projections' other axes) stays whole.
    two = plan.make_plan(cfg, {"fsdp": 2}, batch=8, seq=16)
    shards = plan.param_shards(plan.boxed_params(cfg), plan.abstract_mesh({"fsdp": 2}))
    by_hand = sum(p.global_elements * 4 // (2 if "fsdp" in str(p.spec) else 1) for p in shards)
    assert two.parameters == by_hand < total
    expert = [p for p in shards if "gate_proj" in p.path and "experts" in p.path][0]
    assert expert.elements * 2 == expert.global_elements
    assert plan.make_plan(cfg, {"fsdp": 2}, 8, 16, micro_batches=2).accumulator == \
        4 * sum(p.elements for p in shards)


def test_layer_residuals_are_weights_plus_linear_activations():
    """A dense layer's traced residuals: its parameters (in the compute dtype) and its
    activations; tensor sharding halves the per-device widths."""
    cfg = tiny().replace(n_routed_experts=0, first_k_dense_replace=2, num_hidden_layers=2)
    layer = transformer.abstract_params(cfg)["layers_1"]
    elements = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(layer))
    one = residuals.layer_residuals(cfg, False, 16)
    # float32: the parameters themselves, plus the final norm's scale and a few saved scalars
    assert 0 <= one.weights - 4 * elements <= 4 * cfg.hidden_size + 16
    assert one.activations > 16 * cfg.hidden_size * 4 * 4  # at least 4 [S, d] float32 values
    assert residuals.residual_bytes(cfg, 1, 16)[1] == sum(
        int(np.prod(x.shape)) for x in jax.tree.leaves(transformer.abstract_params(cfg)))
    half = residuals.per_device_widths(cfg, 2)
    assert (half.num_attention_heads, half.intermediate_size) == (
        cfg.num_attention_heads // 2, cfg.intermediate_size // 2)


def test_plan_totals_follow_their_terms():
    cfg = tiny().replace(scan_layers=True)
    p = plan.make_plan(cfg, {"fsdp": 2, "tensor": 2}, batch=8, seq=16, completion=8,
                       logps_chunk=4)
    n = 8 // 2  # sequences per device: act_batch shards over fsdp only here
    assert p.kv_cache == n * 16 * cfg.kv_cache_values_per_token * cfg.num_hidden_layers * 4
    assert p.logits == 4 * cfg.vocab_size / 2 * (2 * n * 4 + cfg.hidden_size)
    res = {k: residuals.layer_residuals(residuals.per_device_widths(cfg, 2), k, 16)
           for k in (False, True)}
    kinds = [cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers)]
    assert p.activations_no_remat == n * (sum(res[k].activations for k in kinds) + res[True].base)
    assert p.activations_remat < p.activations_no_remat
    unrolled = plan.make_plan(tiny(), {"fsdp": 2, "tensor": 2}, batch=8, seq=16, completion=8,
                              logps_chunk=4)  # remat saves nothing on unrolled layers
    assert unrolled.activations_remat == unrolled.activations_no_remat == p.activations_no_remat
    assert p.weight_copies_no_remat == sum(res[k].weights for k in kinds) + \
        cfg.vocab_size * cfg.hidden_size / 2 * 4
    backward = p.weight_copies_no_remat + p.activations_no_remat + p.logits
    assert p.temporaries(False) == p.gradients + max(backward, p.parameters + p.optimizer)
    assert p.step_total(False) == p.state + p.temporaries(False)
    assert p.total(False) == max(p.step_total(False), p.state + p.kv_cache)
    assert plan.weight_copy_bytes(cfg, plan.abstract_mesh({"data": 2}), 8, 16, False) == 0
    # expert_parallel's receive buffer: n_ep * min(K, N_r / n_ep) rows of d in and out per token
    # and MoE layer (3 of the 4 layers here), bf16 or float32 like the compute
    ep = cfg.replace(moe_dispatch="expert_parallel")
    assert plan._exchange_per_seq(ep, plan.abstract_mesh({"expert": 2}), 16) == \
        3 * 16 * 2 * min(cfg.num_experts_per_tok, 4) * 2 * cfg.hidden_size * 4
    assert plan._exchange_per_seq(cfg, plan.abstract_mesh({"expert": 2}), 16) == 0


def test_replicated_parameters_are_flagged():
    cfg = tiny()
    flagged = plan.make_plan(cfg, {"fsdp": 2}, 8, 16, replicated_threshold=0).replicated
    paths = {p.path for p in flagged}
    assert any("norm" in p for p in paths)  # replicated by the rules, flagged at threshold 0
    assert not any("embed_tokens" in p or "experts" in p for p in paths)
    assert not plan.make_plan(cfg, {"fsdp": 2}, 8, 16).replicated  # default threshold
    assert not plan.make_plan(cfg, {"fsdp": 1}, 8, 16, replicated_threshold=0).replicated


def test_propose_finds_the_smallest_fitting_mesh():
    cfg = tiny()
    need = plan.make_plan(cfg, {"fsdp": 1}, 8, 16).total()
    one = plan.propose(cfg, need / plan.HEADROOM * 1.01, 8, 16)
    assert one.chips == 1
    more = plan.propose(cfg, need / plan.HEADROOM / 3, 8, 16)
    assert more.chips > 1 and more.total() <= need / 3
    assert "fits" in plan.format_report(cfg, more, "h100", 8, 16)


# ---------------------------------------------------------------------------------------------
# Lowering on an abstract mesh
# ---------------------------------------------------------------------------------------------


def shrunken_v3(**changes):
    """DeepSeek-V3's structure (MLA with q/kv latents, n_group routing, shared + routed experts,
    a dense prefix, MTP, YaRN, bfloat16) with small dims, scanned layers and full remat."""
    values = presets.deepseek_v3_671b().to_dict()
    values.update(num_hidden_layers=4, first_k_dense_replace=1, hidden_size=256,
                  intermediate_size=512, moe_intermediate_size=64, n_routed_experts=32,
                  n_group=8, topk_group=4, num_experts_per_tok=4, vocab_size=1024,
                  num_attention_heads=8, q_lora_rank=64, kv_lora_rank=32, qk_nope_head_dim=16,
                  qk_rope_head_dim=16, v_head_dim=16, scan_layers=True, remat_policy="full",
                  moe_dispatch="expert_parallel")
    values.update(changes)
    return config_lib.ModelConfig(**values)


def lower_train_step(model, mesh_shape, batch, prompt_len, completion_len):
    """StableHLO text of the jitted GRPO step on an AbstractMesh (TPU lowering)."""
    mesh = plan.abstract_mesh(mesh_shape)
    grpo_cfg = rl_config.GRPOConfig(group_size=4, prompts_per_step=batch // 4)
    step_config = step.StepConfig(model, grpo_cfg, state_lib.OptimConfig(), 1.0,
                                  completion_len)
    state, batch_in = plan_check.abstract_inputs(step_config, mesh, batch, prompt_len,
                                                 completion_len)
    jitted = step.jit_train_step(step_config, mesh)
    with jax.sharding.use_abstract_mesh(mesh):
        return jitted.trace(state, batch_in).lower(lowering_platforms=("tpu",)).as_text()


POD = {"fsdp": 32, "expert": 8}  # 256 devices


def test_shrunken_v3_train_step_lowers_on_a_256_device_abstract_mesh():
    text = lower_train_step(shrunken_v3(), POD, batch=256, prompt_len=16, completion_len=16)
    assert "all_to_all" in text  # expert-parallel exchange
    assert "num_partitions = 256" in text


def test_shrunken_v3_sampler_lowers_on_a_256_device_abstract_mesh():
    model = shrunken_v3()
    mesh = plan.abstract_mesh(POD)
    settings = sampler.SamplingConfig(max_new_tokens=8, num_samples=2, eos_id=1)
    params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          transformer.abstract_params(model),
                          sampler.param_shardings(model, mesh))
    batch = sharding.batch_sharding(mesh, 2)
    args = (params, jax.ShapeDtypeStruct((256, 16), jnp.int32, sharding=batch),
            jax.ShapeDtypeStruct((256,), jnp.int32, sharding=sharding.batch_sharding(mesh, 1)),
            jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=sharding.replicated(mesh)))
    jitted = sampler.make_sampler(model, settings, mesh).jitted
    with jax.sharding.use_abstract_mesh(mesh):
        text = jitted.trace(*args).lower(lowering_platforms=("tpu",)).as_text()
    assert "all_to_all" in text and "num_partitions = 256" in text


def test_deepseek_v3_671b_train_step_lowers_on_a_pod_mesh():
    """The full preset (61 layers, 256 experts) with scanned layers, full remat and expert
    parallelism on 1,024 abstract chips (about 7 s on 2 CPU cores)."""
    model = config_lib.ModelConfig.from_dict(presets.deepseek_v3_671b()).replace(
        scan_layers=True, remat_policy="full", moe_dispatch="expert_parallel")
    text = lower_train_step(model, {"fsdp": 128, "expert": 8}, batch=1024, prompt_len=256,
                            completion_len=256)
    assert "all_to_all" in text and "num_partitions = 1024" in text


@pytest.mark.slow
def test_deepseek_v3_671b_preset_as_is_lowers_on_a_pod_mesh():
    """The preset unchanged (61 unrolled layers, dropless, no remat): about 45 s."""
    model = config_lib.ModelConfig.from_dict(presets.deepseek_v3_671b())
    start = time.perf_counter()
    text = lower_train_step(model, {"fsdp": 128, "expert": 8}, batch=1024, prompt_len=256,
                            completion_len=256)
    print(f"deepseek_v3_671b train step lowered in {time.perf_counter() - start:.1f} s")
    assert "num_partitions = 1024" in text


# ---------------------------------------------------------------------------------------------
# Remat and scan in the GRPO step
# ---------------------------------------------------------------------------------------------


def stacked(params, model):
    """Unrolled `layers_i` params -> the scanned tree (`dense_layers`, `moe_layers`)."""
    out = {k: v for k, v in params.items() if not k.startswith("layers_")}
    start = 0
    for name, n, _ in transformer._stacks(model):
        layers = [params[f"layers_{i}"] for i in range(start, start + n)]
        out[name] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
        start += n
    return out


SMALL = config_lib.ModelConfig(
    vocab_size=128, hidden_size=32, num_hidden_layers=3, intermediate_size=64,
    num_attention_heads=2, q_lora_rank=16, kv_lora_rank=16, qk_nope_head_dim=8,
    qk_rope_head_dim=8, v_head_dim=8, n_routed_experts=4, num_experts_per_tok=2, n_group=2,
    topk_group=1, moe_intermediate_size=32, first_k_dense_replace=1)


# LLVM's backend optimisation is most of the CPU compile time of these GRPO steps and has no
# bearing on what remat or scan compute; every update compared below is built with the same
# options (about half the compile time).
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def grpo_update(model, params):
    grpo_cfg = rl_config.GRPOConfig(group_size=4, prompts_per_step=2, beta=0.04,
                                    num_micro_batches=2)
    batch = {k: jnp.asarray(v) for k, v in _random_batch(8, 8, 8, 128).items()}
    config = step.StepConfig(model, grpo_cfg, state_lib.OptimConfig(), 1.0, 8)
    state = step.init_state(params, config, 0)
    compiled = jax.jit(step.make_train_step(config)).lower(state, batch).compile(FAST_COMPILE)
    return compiled(state, batch)[1]


@pytest.fixture(scope="module")
def plain_update():
    return grpo_update(SMALL, transformer.random_params(SMALL))


@pytest.mark.parametrize("scan,remat", [(False, "full"), (True, "none"), (True, "dots")])
def test_remat_and_scan_give_the_same_grpo_update(plain_update, scan, remat):
    params = transformer.random_params(SMALL)
    out = grpo_update(SMALL.replace(scan_layers=scan, remat_policy=remat),
                      stacked(params, SMALL) if scan else params)
    for key in ("loss", "grad_norm", "kl"):
        np.testing.assert_allclose(out[key], plain_update[key], rtol=1e-5, err_msg=key)


def _random_batch(rows, p, t, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "prompt_tokens": rng.integers(0, vocab, (rows, p)).astype(np.int32),
        "prompt_lengths": rng.integers(p // 2, p + 1, rows).astype(np.int32),
        "completion_tokens": rng.integers(0, vocab, (rows, t)).astype(np.int32),
        "completion_mask": np.arange(t)[None] < rng.integers(t // 2, t + 1, rows)[:, None],
        "old_logps": (-3 * rng.random((rows, t))).astype(np.float32),
        "ref_logps": (-3 * rng.random((rows, t))).astype(np.float32),
        "advantages": rng.standard_normal(rows).astype(np.float32),
    }


# ---------------------------------------------------------------------------------------------
# Planning an experiment's own settings (an HF directory + configs/r1_zero.py preset)
# ---------------------------------------------------------------------------------------------


ROOT = pathlib.Path(__file__).resolve().parents[1]


def _experiment(preset: str, *overrides: str):
    return config_utils.parse_config_file(f"{ROOT / 'configs' / 'r1_zero'}.py:{preset}",
                                          *overrides)


def test_experiment_settings_are_the_runs_micro_batch_length_remat_and_mesh():
    model = tiny()
    qwen = plan.experiment_settings(_experiment("qwen2_5_3b_countdown"), model)
    # 32 prompts x G 8 over 4 minibatches x 4 micro-batches; 256 prompt + 1024 new tokens.
    assert (qwen.batch, qwen.seq, qwen.remat, qwen.mesh) == (16, 1280, False, None)
    remat = plan.experiment_settings(_experiment("qwen2_5_3b_countdown"),
                                     model.replace(remat_policy="full"))
    assert remat.remat is True
    v3 = plan.experiment_settings(_experiment("deepseek_v3_671b"), model)
    assert (v3.batch, v3.seq, v3.mesh) == (4, 2048 + 32768, None)  # fsdp=-1: proposed
    smoke = plan.experiment_settings(_experiment("smoke", "mesh.fsdp=2"), model)
    assert smoke.mesh == {"data": 1, "fsdp": 2, "expert": 1, "tensor": 1}
    assert plan.with_flags(qwen, 8, None, "fsdp=4") == dataclasses.replace(
        qwen, batch=8, mesh={"fsdp": 4})


def test_cli_plans_an_experiment_on_an_hf_directory(tmp_path):
    """The HF model's own dtype and the preset's micro-batch reach the plan."""
    model = config_lib.ModelConfig.from_dict(presets.qwen2_5_0_5b()).replace(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=2048)
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), transformer.random_params(model, 0))
    hf.save_hf(model, params, str(tmp_path / "qwen"))
    result = subprocess.run(
        [sys.executable, "-m", "r1jax.plan", "--config=configs/r1_zero.py:qwen2_5_3b_countdown",
         f"--config.base_dir={tmp_path / 'qwen'}", "--config.model_overrides.remat_policy=full",
         "--accelerator=h100", "--mesh=fsdp=1"],
        capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "micro-batch 16 x 1280 tokens from the experiment config" in out
    assert "dtype bfloat16, remat_policy full" in out
    assert "with rematerialisation (the run's remat_policy)" in out
    # The preset's accelerator precision: bf16 compute, float32 master weights and moments.
    experiment = _experiment("qwen2_5_3b_countdown", f"base_dir={tmp_path / 'qwen'}",
                             "model_overrides.remat_policy=full")
    resolved = summary.resolve_model(experiment)
    assert (resolved.dtype, resolved.param_dtype) == ("bfloat16", "float32")
    settings = plan.experiment_settings(experiment, resolved)
    expected = plan.make_plan(resolved, {"fsdp": 1}, settings.batch, settings.seq,
                              **settings.plan_options)
    assert f"{expected.total(True) / plan.GIB:10.2f} GiB" in out
