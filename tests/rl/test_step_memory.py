"""The compiled GRPO train step holds no [B, T, V] float32 logits (issue 23): its optimized HLO
has no float32 buffer with a vocabulary axis and T or more positions, and its temporaries are
smaller than with the whole completion in one chunk."""

import math
import re

import jax
import jax.numpy as jnp
import pytest
import tiny_models

from r1jax import sharding
from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import step
from r1jax.train import state as state_lib

B, P, T, V = 2, 8, 128, 2048


def _config(chunk: int) -> step.StepConfig:
    model = tiny_models.dense(V, 1)
    grpo = rl_config.GRPOConfig(group_size=2, prompts_per_step=1, logps_chunk_size=chunk)
    return step.StepConfig(model, grpo, state_lib.OptimConfig(), temperature=1.0,
                           max_new_tokens=T)


def _compiled(chunk: int):
    config = _config(chunk)
    mesh = sharding.make_mesh({"data": 1}, jax.devices()[:1])
    state = jax.eval_shape(lambda p: step.init_state(p, config, 0),
                           transformer.abstract_params(config.model))
    shapes = {"prompt_tokens": ((B, P), jnp.int32), "prompt_lengths": ((B,), jnp.int32),
              "completion_tokens": ((B, T), jnp.int32), "completion_mask": ((B, T), jnp.bool_),
              "old_logps": ((B, T), jnp.float32), "ref_logps": ((B, T), jnp.float32),
              "advantages": ((B,), jnp.float32)}
    batch = {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()}
    with jax.set_mesh(mesh):
        return step.jit_train_step(config, mesh).lower(state, batch).compile()


def _vocab_buffers(hlo: str) -> set[tuple[int, ...]]:
    """float32 shapes in the HLO with a vocabulary-sized axis and >= T elements elsewhere."""
    found = set()
    for dims in re.findall(r"f32\[([\d,]+)\]", hlo):
        shape = tuple(int(x) for x in dims.split(","))
        if V in shape and math.prod(shape) // V >= T:
            found.add(shape)
    return found


@pytest.fixture(scope="module")
def compiled():
    return {chunk: _compiled(chunk) for chunk in (16, T)}


def test_compiled_step_has_no_full_logits(compiled):
    chunked, whole = compiled[16], compiled[T]
    # The detector sees the logits when the whole completion is one chunk ...
    assert _vocab_buffers(whole.as_text()), "expected [B, T, V] logits with chunk_size=T"
    # ... and none remain (forward or backward) with chunks of 16 positions.
    assert not _vocab_buffers(chunked.as_text())
    small = chunked.memory_analysis().temp_size_in_bytes
    large = whole.memory_analysis().temp_size_in_bytes
    print(f"train step temp: chunk 16 {small / 2**20:.2f} MiB, chunk {T} {large / 2**20:.2f} MiB")
    assert small < 0.5 * large
