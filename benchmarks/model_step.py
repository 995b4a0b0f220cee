"""Training-step speed of the model: forward + backward tokens/s, MoE expert-count scaling, and
the fraction of this machine's measured matmul peak that the step achieves.

  python benchmarks/model_step.py
  python benchmarks/model_step.py --presets=tiny --batch=8 --seq_len=256 --steps=10

Rows:
  <preset>: jitted value_and_grad of next-token cross-entropy (+ MoE aux loss), fastest step.
  experts 8 / 64: the tiny preset with 8 and 64 routed experts, same top-k and expert width,
    dropless dispatch under each `--moe_block_sizes` cap, timed in alternating rounds (so that
    load from other processes hits both alike); the ratio of their step times is printed
    (target <= 1.3x), with the load average.
Model FLOPs per step = 6 * activated params * tokens (without the input-embedding lookup) +
3 * 2 * B * T^2 * H * (d_qk + d_v) per layer for attention (full T x T: no causal skipping).
The peak is `r1jax.peak_flops.measure` in the same process (best of several matmul sizes,
repeats and rounds, float32 and bfloat16 both printed); a row divides by its compute dtype's.
"""

from __future__ import annotations

import os
import time

import jax
import numpy as np
import optax
from absl import app, flags

from r1jax import peak_flops
from r1jax.models import config as config_lib
from r1jax.models import moe, presets, summary, transformer

_PRESETS = flags.DEFINE_list("presets", ["tiny", "small_50m"], "Model presets to time.")
_BATCH = flags.DEFINE_integer("batch", 8, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 128, "Tokens per sequence.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps (after one compile step).")
_BLOCK_SIZES = flags.DEFINE_list(
    "moe_block_sizes", ["64", "16"],
    "config.moe_block_size caps for the 8 vs 64 experts comparison (64 = the tiny preset's); "
    "moe.dropless.choose_block_size picks the block under the cap (1024 tokens, top-2: 64 rows "
    "with 8 experts, 32 with 64).")


def _best_seconds(fn, *args, steps: int) -> float:
    """Fastest of `steps` calls after a compile call: the least disturbed by other processes
    on a shared machine."""
    jax.block_until_ready(fn(*args))  # compile
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return float(np.min(times))


def step_fn(config: config_lib.ModelConfig):
    model = transformer.Transformer(config)

    def loss(params, tokens_bt):
        logits, state = model.apply({"params": params}, tokens_bt, mutable=("intermediates",))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1], tokens_bt[:, 1:])
        return ce.mean() + moe.total_aux_loss(state["intermediates"])

    return jax.jit(jax.value_and_grad(loss))


def model_flops(config: config_lib.ModelConfig, batch: int, seq: int) -> float:
    active = summary.count_params(config)["activated"]
    d_qk, d_v = config.qk_head_dim, (config.v_head_dim if config.attention_type == "mla"
                                     else config.head_dim)
    attn = 3 * 2 * batch * seq ** 2 * config.num_attention_heads * (d_qk + d_v)
    return 6 * active * batch * seq + attn * config.num_hidden_layers


def step_timer(config: config_lib.ModelConfig, batch: int, seq: int):
    """A function of `steps` returning the fastest step's seconds (compiled once)."""
    params = transformer.random_params(config)
    tokens = jax.random.randint(jax.random.key(0), (batch, seq), 0, config.vocab_size)
    fn = step_fn(config)
    jax.block_until_ready(fn(params, tokens))
    return lambda steps: _best_seconds(fn, params, tokens, steps=steps)


def _print_row(name, config, seconds, batch, seq, peaks):
    flops = model_flops(config, batch, seq) / seconds
    print(f"{name:<24} {seconds * 1e3:9.1f} {batch * seq / seconds:10.0f} {flops / 1e9:9.2f} "
          f"{flops / peaks[config.dtype]:8.1%}")


def main(argv):
    del argv
    b, t, steps = _BATCH.value, _SEQ.value, _STEPS.value
    peak = peak_flops.measure()
    print(f"device: {jax.devices()[0].device_kind}; matmul peak {peak_flops.describe(peak)} "
          f"(load average {os.getloadavg()[0]:.1f}); batch {b} x {t} tokens")
    print(f"{'model':<24} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'of peak':>8}")
    for name in _PRESETS.value:
        config = config_lib.ModelConfig.from_dict(presets.get(name))
        _print_row(name, config, step_timer(config, b, t)(steps), b, t, peak)
    for block_size in _BLOCK_SIZES.value:
        _expert_scaling(int(block_size), b, t, steps, peak)


def _expert_scaling(block_size: int, b: int, t: int, steps: int, peak: float):
    tiny = config_lib.ModelConfig.from_dict(presets.tiny()).replace(
        n_group=1, topk_group=1, moe_dispatch="dropless", moe_block_size=block_size)
    configs = {e: tiny.replace(n_routed_experts=e) for e in (8, 64)}
    timers = {e: step_timer(c, b, t) for e, c in configs.items()}
    best = {e: float("inf") for e in configs}
    for _ in range(3):  # alternating rounds
        for e, timer in timers.items():
            best[e] = min(best[e], timer(steps))
    for e, config in configs.items():
        _print_row(f"tiny, {e} exp, cap {block_size}", config, best[e], b, t, peak)
    print(f"  step time 64 / 8 routed experts (top-{tiny.num_experts_per_tok}, dropless, block "
          f"cap {block_size}): {best[64] / best[8]:.2f}x (target <= 1.3x; load average "
          f"{os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    app.run(main)
