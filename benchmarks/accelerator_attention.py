"""Device check, attention section (issue 23), run by `benchmarks/accelerator.py
--sections=attention` (it reads that script's --small and --repeats flags).

Forward + backward of one causal GQA attention (16 query heads on 4 key/value heads of 128,
bfloat16; --small: 4 on 2 of 32, float32) at 4k / 8k / 16k tokens (--small: 256 / 512 / 1k,
blocks of 128), one sequence, with each `ModelConfig.attention_impl`: "cudnn" (GPU only) or
"splash" (TPU only), "blockwise" and "naive". Prints the median ms of the jitted
value-and-gradient and the temporary bytes of its compiled program (`memory_analysis`); a
setting that fails (e.g. out of memory) prints why.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from r1jax.models import attention, flash, layers
from r1jax.models import config as config_lib


def _setting() -> tuple[tuple[int, ...], config_lib.ModelConfig]:
    """(sequence lengths, the attention's config) at full or --small size."""
    if flags.FLAGS.small:
        heads, kv_heads, dim, dtype, block, lengths = 4, 2, 32, "float32", 128, (256, 512, 1024)
    else:
        heads, kv_heads, dim, dtype, block, lengths = 16, 4, 128, "bfloat16", 512, (4096, 8192,
                                                                                   16384)
    config = config_lib.ModelConfig(
        attention_type="gqa", num_attention_heads=heads, num_key_value_heads=kv_heads,
        head_dim=dim, q_lora_rank=None, dtype=dtype, max_position_embeddings=max(lengths),
        n_routed_experts=0, attention_block_size=block)
    return lengths, config


def _value_and_grad(config: config_lib.ModelConfig, impl: str):
    """jit(value_and_grad) over q, k, v of sum(attention output) with the named impl."""
    scale = layers.softmax_scale(config)

    def loss(q, k, v, mask):
        if impl == "naive":
            out = attention.gqa_core(q, k, v, mask.dense(), config)
        else:
            out = flash.IMPLS[impl](q, k, v, mask, scale, config)
        return out.astype(jnp.float32).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


def _measure(config: config_lib.ModelConfig, impl: str, length: int) -> str:
    dtype = jnp.dtype(config.dtype)
    keys = jax.random.split(jax.random.key(0), 3)
    h, g, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q = jax.random.normal(keys[0], (1, length, h, d), dtype)
    k = jax.random.normal(keys[1], (1, length, g, d), dtype)
    v = jax.random.normal(keys[2], (1, length, g, d), dtype)
    mask = flash.Mask.full(jnp.ones((1, length), bool), jnp.zeros((1, length), jnp.int32), True)
    try:
        compiled = _value_and_grad(config, impl).lower(q, k, v, mask).compile()
        temp = compiled.memory_analysis().temp_size_in_bytes
        jax.block_until_ready(compiled(q, k, v, mask))
        times = []
        for _ in range(flags.FLAGS.repeats):
            start = time.perf_counter()
            jax.block_until_ready(compiled(q, k, v, mask))
            times.append(time.perf_counter() - start)
    except Exception as error:  # noqa: BLE001 - report the failure (OOM, no kernel) and go on
        return f"failed: {str(error).splitlines()[0][:100]}"
    return f"{1e3 * float(np.median(times)):9.2f} ms  temp {temp / 2**20:9.1f} MiB"


def attention_section() -> None:
    lengths, config = _setting()
    fused = {"gpu": ("cudnn",), "tpu": ("splash",)}.get(jax.default_backend(), ())
    impls = fused + ("blockwise", "naive")
    print(f"attention fwd+bwd, {config.num_attention_heads} heads on "
          f"{config.num_key_value_heads} kv heads of {config.head_dim}, {config.dtype}, "
          f"block {config.attention_block_size}, one sequence:")
    for length in lengths:
        for impl in impls:
            print(f"  T={length:6d} {impl:10s} {_measure(config, impl, length)}")
