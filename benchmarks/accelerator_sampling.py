"""Device check, sampler section (issue 24), run by `benchmarks/accelerator.py
--sections=sampling` (it reads that script's --small and --repeats flags).

1. ms per decode step vs cache fill: the static sampler (`sampler.make_sampler`, greedy, no EOS)
   on small_50m in bfloat16 (--small: a 2-layer d=64 model in float32), batch 32, prompts of
   P = 1k / 4k tokens (--small: 64 / 256); the step time is the difference between N = 48 and
   N = 16 new tokens divided by 32, so the prefill cancels out.
2. tokens/s of the static sampler vs continuous batching on the long-tail workload of
   benchmarks/sampling.py (`long_tail`: 10% of the rows run to N, the others stop at N/8), and
   rows x decode steps of each.
"""

from __future__ import annotations

import statistics
import time
import types

import jax
import numpy as np
import sampling as sampling_bench  # benchmarks/sampling.py (benchmarks/ is on sys.path)
from absl import flags

from r1jax.models import config as config_lib
from r1jax.models import presets, transformer
from r1jax.sampling import sampler


def _model() -> config_lib.ModelConfig:
    if flags.FLAGS.small:
        return config_lib.ModelConfig.from_dict(presets.get("tiny")).replace(
            num_hidden_layers=2, max_position_embeddings=512,
            original_max_position_embeddings=512)
    return config_lib.ModelConfig.from_dict(presets.get("small_50m")).replace(
        dtype="bfloat16", max_position_embeddings=8192)


def _seconds(config, params, prompt_bp, new_tokens: int) -> float:
    """Median seconds of a greedy sampler call (after one compiling call)."""
    run = sampler.make_sampler(config, sampler.SamplingConfig(max_new_tokens=new_tokens,
                                                              temperature=0.0))
    lengths_b = np.full(len(prompt_bp), prompt_bp.shape[1], np.int32)
    key = jax.random.key(0)
    jax.block_until_ready(run(params, prompt_bp, lengths_b, key).tokens)
    times = []
    for _ in range(flags.FLAGS.repeats):
        start = time.perf_counter()
        jax.block_until_ready(run(params, prompt_bp, lengths_b, key).tokens)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _step_vs_fill(config) -> None:
    params = transformer.random_params(config)
    fills = (64, 256) if flags.FLAGS.small else (1024, 4096)
    rng = np.random.default_rng(0)
    for fill in fills:
        prompt_bp = rng.integers(1, config.vocab_size, (32, fill)).astype(np.int32)
        try:
            short, long_ = (_seconds(config, params, prompt_bp, n) for n in (16, 48))
            print(f"   cache fill {fill:5d}: {(long_ - short) / 32 * 1e3:7.2f} ms per decode step "
                  f"(batch 32; N=16 call {short * 1e3:.0f} ms)", flush=True)
        except Exception as err:  # noqa: BLE001 -- report (e.g. out of memory), go on
            print(f"   cache fill {fill:5d}: failed: {type(err).__name__}: {str(err)[:200]}")


def sampling_section() -> None:
    config = _model()
    print(f"decode step time vs cache fill ({config.dtype})")
    _step_vs_fill(config)
    small = flags.FLAGS.small
    args = types.SimpleNamespace(
        prompt_len=32, repeats=flags.FLAGS.repeats, tail_prompts=8 if small else 64,
        tail_samples=4, tail_new_tokens=32 if small else 256, tail_slots=8 if small else 64)
    sampling_bench.long_tail("tiny" if small else "small_50m", args)
