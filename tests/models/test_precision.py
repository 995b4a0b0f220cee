"""The precision policy (issue 21): float32 master weights and moments, bf16 compute, float32
accumulation, float32 logits and log-probs."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import step as step_lib
from r1jax.sampling import sampler
from r1jax.train import state as state_lib

VOCAB = 64


def model_config(policy: str, **changes) -> config_lib.ModelConfig:
    """A 2-layer MLA + MoE model (dense prefix, 4 routed experts top-2, a shared one)."""
    return config_lib.ModelConfig(
        vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=4, num_experts_per_tok=2,
        moe_intermediate_size=64, first_k_dense_replace=1, max_position_embeddings=128,
        original_max_position_embeddings=128, moe_block_size=16,
        **{**config_lib.precision(policy), **changes})


def _lm_loss(model, params, tokens_bt):
    logits_btv = model.apply({"params": params}, tokens_bt)
    logp_btv = jax.nn.log_softmax(logits_btv[:, :-1], axis=-1)
    return -jnp.take_along_axis(logp_btv, tokens_bt[:, 1:, None], axis=-1).mean()


def updated_fraction(config: config_lib.ModelConfig, lr: float = 3e-6) -> float:
    """Fraction of the trainable weights that one AdamW step at `lr` changes.

    The weights are `init`'s (N(0, 0.02) kernels, unit norm scales), the batch holds every
    token of the vocabulary (so every embedding row gets a gradient), and the optimizer is the
    trainers' (`state.make_optimizer`: clipping, AdamW with weight decay, frozen MoE bias)."""
    model = transformer.Transformer(config)
    tokens_bt = jnp.tile(jax.random.permutation(jax.random.key(1), VOCAB), 2).reshape(4, 32)
    # Jitted init and gradient: the same computation, compiled once instead of run op by op.
    params = jax.jit(model.init)(jax.random.key(0), tokens_bt)["params"]
    params = jax.tree.map(lambda x: x.value if hasattr(x, "value") else x, params,
                          is_leaf=lambda x: hasattr(x, "value"))
    optimizer = state_lib.make_optimizer(state_lib.OptimConfig(learning_rate=lr))
    state = state_lib.create_train_state(params, state_lib.OptimConfig(learning_rate=lr),
                                         jax.random.key(0))
    grads = jax.jit(jax.grad(lambda p: _lm_loss(model, p, tokens_bt)))(params)
    new_state, _ = jax.jit(lambda s, g: state_lib.apply_gradients(s, g, optimizer))(state, grads)
    changed = total = 0
    trainable = jax.tree.leaves(state_lib.trainable_mask(params))
    for old, new, train in zip(jax.tree.leaves(params), jax.tree.leaves(new_state["params"]),
                               trainable):
        if train:
            changed += int(jnp.sum(old != new))
            total += old.size
    return changed / total


def test_accelerator_policy_keeps_a_3e_6_adamw_update():
    """The default accelerator policy: bf16 compute, float32 master weights and Adam moments;
    one AdamW step at R1's lr 3e-6 changes more than 99% of the master weights."""
    config = model_config("accelerator")
    assert (config.dtype, config.param_dtype, config.accum_dtype) == (
        "bfloat16", "float32", "float32")
    fraction = updated_fraction(config)
    print(f"accelerator policy: {fraction:.2%} of the weights changed")
    assert fraction > 0.99


def test_bfloat16_params_and_moments_lose_the_update():
    """The presets' old policy (bf16 params and bf16 moments): the same step rounds away."""
    fraction = updated_fraction(model_config("bfloat16_params"))
    print(f"bf16 params + bf16 moments: {fraction:.2%} of the weights changed")
    assert fraction < 0.99
    assert fraction < 0.5  # issue 21 measured 4-13%


def test_moments_follow_the_float32_master_weights():
    config = model_config("accelerator")
    params = transformer.random_params(config)
    assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    opt_state = state_lib.make_optimizer(state_lib.OptimConfig()).init(params)
    floats = [x for x in jax.tree.leaves(opt_state) if jnp.issubdtype(x.dtype, jnp.floating)]
    assert floats and all(x.dtype == jnp.float32 for x in floats)


def _dot_generals(jaxpr):
    """Every dot_general equation of a (closed) jaxpr, sub-jaxprs (scan, loops, custom VJP
    bodies, pjit) included."""
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            yield eqn
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _dot_generals(inner)


@pytest.mark.parametrize("dispatch", ["dropless", "dense"])
def test_every_matmul_accumulates_in_float32_with_bf16_compute(dispatch):
    """Forward and backward of the training loss, and a cached decoding step: every matmul
    (projections, attention scores and outputs, experts, logits, and their gradients) sums in
    float32 and returns float32 (`preferred_element_type`; on the CPU the bf16 operands are
    widened first, `layers.accumulating_einsum`); the logits are float32."""
    config = model_config("accelerator", moe_dispatch=dispatch)
    model = transformer.Transformer(config)
    params = transformer.random_params(config)
    tokens_bt = jnp.arange(64).reshape(2, 32) % VOCAB
    train = jax.make_jaxpr(jax.grad(lambda p: _lm_loss(model, p, tokens_bt)))(params)
    cache = transformer.init_cache(config, 2, 8)
    decode = jax.make_jaxpr(lambda p: model.apply(
        {"params": p}, tokens_bt[:, :1], jnp.zeros((2, 1), jnp.int32), cache,
        method=transformer.Transformer.decode))(params)
    for jaxpr in (train.jaxpr, decode.jaxpr):
        eqns = list(_dot_generals(jaxpr))
        assert len(eqns) > 20
        for e in eqns:
            assert e.params["preferred_element_type"] == jnp.float32, e
            assert e.outvars[0].aval.dtype == jnp.float32, e
    assert decode.out_avals[0].dtype == jnp.float32
    bf16 = model_config("accelerator", moe_dispatch=dispatch, accum_dtype="bfloat16")
    old = jax.make_jaxpr(jax.grad(lambda p: _lm_loss(transformer.Transformer(bf16), p,
                                                     tokens_bt)))(params)
    assert any(e.outvars[0].aval.dtype == jnp.bfloat16 for e in _dot_generals(old.jaxpr))


def test_accumulation_dtype_is_validated():
    with pytest.raises(ValueError, match="accum_dtype"):
        config_lib.ModelConfig(dtype="float32", accum_dtype="bfloat16")
    with pytest.raises(ValueError, match="precision policy"):
        config_lib.precision("fp8")


def logp_gap(config: config_lib.ModelConfig, seed: int = 0) -> np.ndarray:
    """|sampler log-prob - trainer log-prob| of each sampled token: the sampler's cached
    decoding vs the GRPO step's full forward (`step.make_score_fn`), same params and tokens."""
    params = transformer.random_params(config, seed)
    prompts_bp = jax.random.randint(jax.random.key(seed), (4, 6), 0, VOCAB)
    lengths_b = jnp.array([6, 3, 5, 2])
    out = sampler.generate(config, params, prompts_bp, lengths_b, jax.random.key(seed + 1),
                           max_new_tokens=12, temperature=1.0)
    step_config = step_lib.StepConfig(model=config, grpo=rl_config.GRPOConfig(),
                                      optim=state_lib.OptimConfig(), temperature=1.0,
                                      max_new_tokens=12)
    batch = {"prompt_tokens": prompts_bp, "prompt_lengths": lengths_b,
             "completion_tokens": out.tokens, "completion_mask": out.mask}
    trainer_bt = jax.jit(step_lib.make_score_fn(step_config))(params, batch)
    mask = np.asarray(out.mask, bool)
    return np.abs(np.asarray(out.logps) - np.asarray(trainer_bt))[mask]


def test_sampler_and_trainer_logps_gap_in_bf16():
    """bf16 compute: the sampler and the trainer take float32 log-probs of float32 logits.

    With the same attention form in both (naive MLA decoding over the whole cache with
    attention_impl="naive", the training forward's form) they agree to float32 rounding: the
    log-prob computation is the same (the default decoding reads the cache in chunks with an
    online softmax, `r1jax.models.flash.bounded`, another bf16 rounding: 5.6e-3/1.8e-2 mean/max
    with naive MLA). What is left with the default absorbed decoding is the re-association of
    MLA over bf16 keys and values (the training form rounds K and V to bf16, the absorbed form
    never builds them); float32 accumulation does not remove it (measured here, mean/max:
    0.0064/0.017 with float32 accumulation, 0.0073/0.022 with bf16 matmul results;
    `benchmarks/accelerator.py --small`: 0.0053/0.023 vs 0.0052/0.017), so the
    bound is the issue's budget, far below its measured 0.36 max."""
    if os.environ.get("R1JAX_PRODUCTION_CODEGEN") != "1":
        # The claims below are about the code XLA generates in production. The suite compiles
        # with cheap CPU codegen (tests/conftest.py), which rounds bf16 intermediates at other
        # places, so the check runs in a child process with the default XLA flags.
        test = f"{pathlib.Path(__file__).resolve()}::test_sampler_and_trainer_logps_gap_in_bf16"
        env = dict(os.environ, R1JAX_PRODUCTION_CODEGEN="1", JAX_PLATFORMS="cpu",
                   XLA_FLAGS="--xla_force_host_platform_device_count=8")
        out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:xdist",
                              "-p", "no:cacheprovider", "-s", test],
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
        return
    # The bf16-results variant quoted above was only printed, never asserted: not rerun here.
    new = logp_gap(model_config("accelerator"))
    same_form = logp_gap(model_config("accelerator", mla_decode="naive", attention_impl="naive"))
    exact = logp_gap(model_config("float32"))
    print(f"log-prob gap mean/max: "
          f"float32 accumulation {new.mean():.4f}/{new.max():.4f}, naive decoding "
          f"{same_form.mean():.1e}/{same_form.max():.1e}, float32 {exact.mean():.1e}/"
          f"{exact.max():.1e}")
    assert exact.max() < 1e-5 and same_form.max() < 1e-5
    assert new.mean() < 0.02 and new.max() < 0.1
