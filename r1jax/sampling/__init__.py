"""Rollout sampling: batched generation with a KV cache (prefill + `lax.while_loop` decoding).

`generate` is the stable entry point; `make_sampler` returns the compiled function a trainer
reuses every step; `controls` holds the logit processors and `stops` the stop-sequence logic.
"""

from r1jax.sampling.sampler import (
    FINISH_LENGTH,
    FINISH_REASONS,
    FINISH_STOP,
    SampleResult,
    SamplingConfig,
    cache_bytes_per_token,
    generate,
    make_sampler,
)
from r1jax.sampling.stops import stop_token_sequences, truncate_at_stop_strings

__all__ = [
    "FINISH_LENGTH", "FINISH_REASONS", "FINISH_STOP", "SampleResult", "SamplingConfig",
    "cache_bytes_per_token", "generate", "make_sampler", "stop_token_sequences",
    "truncate_at_stop_strings",
]
