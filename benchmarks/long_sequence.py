"""Long sequences (issue 23): the GRPO step's compiled memory at 32k tokens, and decode cost
against cache fill.

  python benchmarks/long_sequence.py            # 32,768 tokens, vocab 32k: minutes of compiling
  python benchmarks/long_sequence.py --small    # 4,096 tokens, vocab 4k, 4k cache: quick

1. GRPO step memory: temporary bytes (`memory_analysis`, nothing runs) of the compiled
   `rl.step.jit_train_step` for one sequence of T tokens on one device, 2-layer MLA model
   (d = 64, full remat), with today's defaults (attention_impl "auto" = blockwise at this T,
   log-probs in chunks of `GRPOConfig.logps_chunk_size`) and with the old paths (naive
   attention: [H, T, T] float32 scores; one log-prob chunk = the whole [T, V] float32 logits).
2. Decode: median ms of one decode step (`Transformer.decode` of one token per row, 8 rows)
   with the cache filled to 1k and 8k slots of a 16k cache, bounded (reads the filled chunks)
   vs naive (reads every slot). The bounded cost grows with the fill; the naive one does not.
"""

from __future__ import annotations

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.rl import plan_check

_SMALL = flags.DEFINE_bool("small", False, "4k tokens, 4k vocab, 4k cache (CPU, quick).")
_REPEATS = flags.DEFINE_integer("repeats", 20, "Timed decode steps per setting.")


def _model(vocab: int, max_len: int, **changes) -> config_lib.ModelConfig:
    return config_lib.ModelConfig(
        vocab_size=vocab, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32, qk_nope_head_dim=16,
        qk_rope_head_dim=16, v_head_dim=16, n_routed_experts=0, max_position_embeddings=max_len,
        remat_policy="full", **changes)


def step_temp_bytes(model: config_lib.ModelConfig, length: int, logps_chunk: int | None,
                    prompt: int = 64) -> int:
    """Temporary bytes of the compiled GRPO update of one `length`-token sequence on one device
    (`rl.plan_check`; nothing runs). logps_chunk: GRPOConfig.logps_chunk_size (None: default)."""
    n = length - prompt
    chunk = {} if logps_chunk is None else {"logps_chunk_size": logps_chunk}
    config = plan_check.step_config(model, 1, n, group_size=2, prompts_per_step=1, **chunk)
    return plan_check.compiled_memory(config, {"fsdp": 1}, 1, prompt, n).temporaries


def grpo_step_memory(length: int, vocab: int) -> None:
    new = _model(vocab, length)
    old = new.replace(attention_impl="naive")
    print(f"GRPO step, T={length}, vocab {vocab}, 2-layer MLA, one sequence, temp memory:")
    for name, model, chunk in (("defaults (blockwise, chunked log-probs)", new, None),
                               ("old paths (naive attention, full logits)", old, length)):
        start = time.perf_counter()
        temp = step_temp_bytes(model, length, chunk)
        print(f"  {name:42s} {temp / 2**30:8.2f} GiB   (compiled in "
              f"{time.perf_counter() - start:.0f} s)")


def _filled_cache(config, rows: int, slots: int, fill: int) -> transformer.Cache:
    """A cache of `slots` slots whose first `fill` hold random values (next write at `fill`)."""
    cache = transformer.init_cache(config, rows, slots)
    rng = np.random.default_rng(0)
    layers = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), a.dtype),
                          cache.layers)
    valid = jnp.broadcast_to(jnp.arange(slots) < fill, (rows, slots))
    return transformer.Cache(layers, valid, jnp.asarray(fill, jnp.int32))


def decode_ms(config, params, rows: int, slots: int, fill: int) -> float:
    """Median ms of one decode step at cache fill `fill` (the cache is donated and the index
    rewound each step, so no step copies the cache)."""
    model = transformer.Transformer(config)
    decode = jax.jit(functools.partial(model.apply, method=transformer.Transformer.decode),
                     donate_argnums=3)
    cache = _filled_cache(config, rows, slots, fill)
    tokens = jnp.ones((rows, 1), jnp.int32)
    positions = jnp.full((rows, 1), fill, jnp.int32)
    times = []
    for _ in range(_REPEATS.value + 2):
        start = time.perf_counter()
        logits, cache = decode({"params": params}, tokens, positions, cache)
        logits.block_until_ready()
        times.append(time.perf_counter() - start)
        cache = cache.replace(index=jnp.asarray(fill, jnp.int32))
    return 1e3 * float(np.median(times[2:]))


def decode_cost(slots: int, fills: tuple[int, ...]) -> None:
    config = _model(4096, slots, attention_block_size=512)
    params = transformer.random_params(config)
    print(f"decode step, 8 rows, {slots}-slot cache, median ms:")
    for impl in ("auto", "naive"):
        ms = [decode_ms(config.replace(attention_impl=impl), params, 8, slots, f) for f in fills]
        label = "bounded (auto)" if impl == "auto" else "naive (every slot)"
        cells = "   ".join(f"fill {f}: {m:7.2f}" for f, m in zip(fills, ms))
        print(f"  {label:20s} {cells}   ratio {ms[-1] / ms[0]:.2f}x")


def main(argv):
    del argv
    device = jax.devices()[0]
    print(f"device: {device.platform} {device.device_kind}, jax {jax.__version__}")
    if _SMALL.value:
        grpo_step_memory(4096, 4096)
        decode_cost(4096, (256, 2048))
    else:
        grpo_step_memory(32768, 32768)
        decode_cost(16384, (1024, 8192))


if __name__ == "__main__":
    app.run(main)
