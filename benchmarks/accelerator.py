"""Device check: what r1jax's accelerator defaults buy on this card, as ratios.

  python benchmarks/accelerator.py            # on a GPU/TPU: small_50m-sized, a few minutes
  python benchmarks/accelerator.py --small    # on the CPU: tiny sizes, about a minute

Prints the device kind, then one section per concern (`--sections` picks; other issues add
theirs to `SECTIONS`). The precision section (issue 21):

  update retention  fraction of the trainable weights that one AdamW step at lr 3e-6 changes,
                    under the `accelerator` policy (float32 master weights and moments, bf16
                    compute) and the old `bfloat16_params` one (bf16 weights and moments);
  log-prob gap      |sampler log-prob - trainer log-prob| of the same sampled tokens (mean and
                    max), bf16 compute, float32 vs bf16 matmul results, and float32 compute;
  step time         median seconds of the jitted GRPO update (`rl.step.make_train_step`) with
                    float32 compute vs the accelerator policy, and their ratio.
"""

from __future__ import annotations

import time

import accelerator_attention  # benchmarks/ is the script's directory, on sys.path
import accelerator_moe
import accelerator_rl
import accelerator_sampling
import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from r1jax.models import config as config_lib
from r1jax.models import presets, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import step
from r1jax.sampling import sampler
from r1jax.train import state as state_lib

_SMALL = flags.DEFINE_bool("small", False, "CPU-sized models and batches.")
_SECTIONS = flags.DEFINE_list("sections", ["precision"], "Sections to run.")
_REPEATS = flags.DEFINE_integer("repeats", 5, "Timed steps per setting.")


def _model(policy: str, **changes) -> config_lib.ModelConfig:
    """small_50m (MLA + MoE) under a precision policy; shrunk with --small."""
    values = presets.small_50m().to_dict()
    if _SMALL.value:
        values.update(vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                      num_attention_heads=2, q_lora_rank=32, kv_lora_rank=32,
                      qk_nope_head_dim=16, qk_rope_head_dim=16, v_head_dim=16,
                      n_routed_experts=4, moe_intermediate_size=64, moe_block_size=16,
                      max_position_embeddings=256, original_max_position_embeddings=256)
    values.update(config_lib.precision(policy))
    values.update(changes)
    return config_lib.ModelConfig(**values)


def _sizes() -> dict[str, int]:
    if _SMALL.value:
        return {"rows": 4, "prompt": 16, "new": 16}
    return {"rows": 32, "prompt": 128, "new": 256}


# ---------------------------------------------------------------------------------------------
# Precision
# ---------------------------------------------------------------------------------------------


def update_retention(config: config_lib.ModelConfig, lr: float = 3e-6) -> float:
    """Fraction of trainable weights (init's N(0, 0.02)) changed by one AdamW step at `lr` on
    a language-model loss over random tokens."""
    model = transformer.Transformer(config)
    s = _sizes()
    tokens = jax.random.randint(jax.random.key(1), (s["rows"], s["prompt"] + s["new"]), 0,
                                config.vocab_size)
    params = jax.jit(lambda: model.init(jax.random.key(0), tokens[:1, :8])["params"])()
    params = jax.tree.map(lambda x: getattr(x, "value", x), params,
                          is_leaf=lambda x: hasattr(x, "value"))
    optim = state_lib.OptimConfig(learning_rate=lr)
    optimizer = state_lib.make_optimizer(optim)

    def loss(p):
        logp = jax.nn.log_softmax(model.apply({"params": p}, tokens)[:, :-1])
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    @jax.jit
    def one_step(p):
        state = state_lib.create_train_state(p, optim, jax.random.key(0))
        new, _ = state_lib.apply_gradients(state, jax.grad(loss)(p), optimizer)
        masks = state_lib.trainable_mask(p)
        changed = sum(jnp.sum(a != b) for a, b, m in zip(
            jax.tree.leaves(p), jax.tree.leaves(new["params"]), jax.tree.leaves(masks)) if m)
        total = sum(a.size for a, m in zip(jax.tree.leaves(p), jax.tree.leaves(masks)) if m)
        return changed / total

    return float(one_step(params))


def _step_config(model: config_lib.ModelConfig) -> step.StepConfig:
    return step.StepConfig(model=model, grpo=rl_config.GRPOConfig(),
                           optim=state_lib.OptimConfig(learning_rate=3e-6), temperature=1.0,
                           max_new_tokens=_sizes()["new"])


def logp_gap(config: config_lib.ModelConfig) -> np.ndarray:
    """|sampler log-prob - trainer log-prob| of each sampled token, same params and tokens."""
    s = _sizes()
    params = transformer.random_params(config, 0)
    prompts = jax.random.randint(jax.random.key(2), (s["rows"], s["prompt"]), 0,
                                 config.vocab_size)
    lengths = jax.random.randint(jax.random.key(3), (s["rows"],), 2, s["prompt"] + 1)
    out = sampler.generate(config, params, prompts, lengths, jax.random.key(4),
                           max_new_tokens=s["new"], temperature=1.0)
    batch = {"prompt_tokens": prompts, "prompt_lengths": lengths,
             "completion_tokens": out.tokens, "completion_mask": out.mask}
    trainer_logps = jax.jit(step.make_score_fn(_step_config(config)))(params, batch)
    mask = np.asarray(out.mask, bool)
    return np.abs(np.asarray(out.logps) - np.asarray(trainer_logps))[mask]


def step_time(config: config_lib.ModelConfig) -> float:
    """Median seconds of one jitted GRPO update on random completions (compile excluded)."""
    s = _sizes()
    rng = np.random.default_rng(0)
    rows, p, t = s["rows"], s["prompt"], s["new"]
    batch = {
        "prompt_tokens": rng.integers(0, config.vocab_size, (rows, p)).astype(np.int32),
        "prompt_lengths": rng.integers(p // 2, p + 1, rows).astype(np.int32),
        "completion_tokens": rng.integers(0, config.vocab_size, (rows, t)).astype(np.int32),
        "completion_mask": np.ones((rows, t), bool),
        "old_logps": np.full((rows, t), -3.0, np.float32),
        "ref_logps": np.full((rows, t), -3.0, np.float32),
        "advantages": rng.standard_normal(rows).astype(np.float32),
    }
    cfg = _step_config(config)
    train_step = jax.jit(step.make_train_step(cfg), donate_argnums=0)
    carry = [step.init_state(transformer.random_params(config, 0), cfg, 0)]

    def one_update() -> float:
        start = time.perf_counter()
        carry[0], metrics = train_step(carry[0], batch)
        jax.block_until_ready(metrics)
        return time.perf_counter() - start

    one_update()  # compilation
    return float(np.median([one_update() for _ in range(_REPEATS.value)]))


def precision_section() -> None:
    new = update_retention(_model("accelerator"))
    old = update_retention(_model("bfloat16_params"))
    print(f"update retention (one AdamW step, lr 3e-6): accelerator {new:.2%}, "
          f"bf16 params + moments {old:.2%}, ratio {new / max(old, 1e-9):.1f}x")
    gaps = {"bf16 compute, float32 accumulation": _model("accelerator"),
            "bf16 compute, bf16 matmul results": _model("accelerator", accum_dtype="bfloat16"),
            "bf16 compute, naive MLA decoding": _model("accelerator", mla_decode="naive"),
            "float32 compute": _model("float32")}
    for name, config in gaps.items():
        gap = logp_gap(config)
        print(f"log-prob gap sampler vs trainer, {name}: mean {gap.mean():.2e}, "
              f"max {gap.max():.2e} ({gap.size} tokens)")
    f32, bf16 = step_time(_model("float32")), step_time(_model("accelerator"))
    print(f"GRPO step time: float32 compute {f32 * 1e3:.1f} ms, bf16 compute (accelerator "
          f"policy) {bf16 * 1e3:.1f} ms, ratio float32 / bf16 {f32 / bf16:.2f}")


SECTIONS = {"precision": precision_section,
            "attention": accelerator_attention.attention_section,
            "moe": accelerator_moe.moe_section,
            "rl": accelerator_rl.rl_section,
            "sampling": accelerator_sampling.sampling_section}


def main(argv):
    del argv
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, "
          f"jax {jax.__version__}, sizes {_sizes()}, model small_50m"
          f"{' (shrunk: --small)' if _SMALL.value else ''}")
    for name in _SECTIONS.value:
        if name not in SECTIONS:
            raise app.UsageError(f"--sections: unknown {name!r}; known: {sorted(SECTIONS)}")
        print(f"== {name}")
        start = time.perf_counter()
        SECTIONS[name]()
        print(f"({name}: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    app.run(main)
