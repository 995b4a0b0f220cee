"""Compile time of a training step, layers scanned (`scan_layers=True`) vs unrolled.

  python benchmarks/scan_compile.py
  python benchmarks/scan_compile.py --layers=4,16,32

For each depth, a small DeepSeek-V3-shaped model (MLA, one dense layer then MoE layers) is
compiled for a jitted value_and_grad of next-token cross-entropy, once unrolled and once with
the layers under `nn.scan`; printed: `lower` and `compile` seconds (a fresh jit each time, the
persistent compilation cache off) and the step time after compiling, with the ratio. An
unrolled program holds a copy of every layer; a scanned one holds one layer body per stack
(dense, MoE) inside a while loop, whose compile may cost more per body. Measured on the 2-core
development CPU shared with other jobs (load average 3.6-5.6), lower + compile seconds,
unrolled vs scanned: 4 layers 8.5 vs 9.5; 16 layers 11.2 vs 15.3 and, rerun, 11.1 vs 12.3;
32 layers 88.8 vs 29.7 (3.0x). Compiled step times, unrolled vs scanned: 24 vs 15 ms (4 layers),
92 vs 73 and 112 vs 136 ms (16), 205 vs 397 ms (32). V3 has 61 layers.
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from r1jax.models import config as config_lib
from r1jax.models import transformer

_LAYERS = flags.DEFINE_list("layers", ["4", "16"], "Depths to compile.")
_BATCH = flags.DEFINE_integer("batch", 4, "Sequences per step.")
_SEQ = flags.DEFINE_integer("seq_len", 64, "Tokens per sequence.")


def model(layers: int, scan: bool) -> config_lib.ModelConfig:
    return config_lib.ModelConfig(
        vocab_size=512, hidden_size=64, num_hidden_layers=layers, intermediate_size=128,
        num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
        moe_intermediate_size=32, first_k_dense_replace=1, max_position_embeddings=256,
        original_max_position_embeddings=256, scan_layers=scan)


def measure(config: config_lib.ModelConfig, tokens_bt) -> dict[str, float]:
    """Seconds to lower and to compile the step, and the fastest of 3 compiled steps."""
    params = transformer.random_params(config, 0)

    def loss(p, tokens):
        logits = transformer.Transformer(config).apply({"params": p}, tokens[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.take_along_axis(logp, tokens[:, 1:, None], -1).mean()

    step = jax.jit(jax.value_and_grad(loss))
    start = time.perf_counter()
    lowered = step.lower(params, tokens_bt)
    lowered_s = time.perf_counter() - start
    start = time.perf_counter()
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        jax.block_until_ready(compiled(params, tokens_bt))
        best = min(best, time.perf_counter() - start)
    return {"lower": lowered_s, "compile": compile_s, "step": best}


def main(argv):
    del argv
    jax.config.update("jax_enable_compilation_cache", False)  # measure real compiles
    tokens_bt = jnp.asarray(np.random.default_rng(0).integers(0, 512, (_BATCH.value,
                                                                         _SEQ.value + 1)))
    print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"load average {os.getloadavg()[0]:.1f}; batch {_BATCH.value} x {_SEQ.value}")
    print("| layers | layout | lower s | compile s | step ms |")
    print("|---|---|---|---|---|")
    for layers in map(int, _LAYERS.value):
        rows = {}
        for scan in (False, True):
            rows[scan] = r = measure(model(layers, scan), tokens_bt)
            print(f"| {layers} | {'scanned' if scan else 'unrolled'} | {r['lower']:.1f} | "
                  f"{r['compile']:.1f} | {1e3 * r['step']:.1f} |", flush=True)
        total = {s: rows[s]["lower"] + rows[s]["compile"] for s in rows}
        print(f"| {layers} | unrolled / scanned (lower + compile) | "
              f"{total[False] / total[True]:.1f}x | | |", flush=True)


if __name__ == "__main__":
    app.run(main)
