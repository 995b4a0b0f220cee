"""The memory planner (`r1jax.plan`) against the compiled GRPO update.

Compiles the real step (`step.jit_train_step`: the trainer's in/out shardings and donation)
for abstract inputs on a device mesh and reads XLA's buffer assignment
(`compile().memory_analysis()`, per device): arguments (the state and the batch), outputs
(the new state, aliased to the donated arguments) and temporaries (the peak of everything
else). The planner's `Plan.step_total` is compared with arguments + outputs - aliased +
temporaries. On CPU, `XLA_FLAGS=--xla_force_host_platform_device_count=8` gives 8 devices.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from r1jax import plan as plan_lib
from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.rl import config as rl_config
from r1jax.rl import step
from r1jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class Compiled:
    """Per-device bytes of the compiled step (`memory_analysis`)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int

    @property
    def total(self) -> int:
        return self.arguments + self.outputs - self.aliased + self.temporaries


def step_config(model: config_lib.ModelConfig, batch: int, completion: int,
                **grpo) -> step.StepConfig:
    """A GRPO StepConfig for `batch` rows (group size 4 unless `grpo` says otherwise)."""
    grpo = {"group_size": 4, **grpo}
    grpo.setdefault("prompts_per_step", batch // grpo["group_size"])
    return step.StepConfig(model, rl_config.GRPOConfig(**grpo), state_lib.OptimConfig(), 1.0,
                           completion)


def abstract_inputs(config: step.StepConfig, mesh, batch: int, prompt: int, completion: int):
    """(state, batch) as ShapeDtypeStructs carrying the step's shardings (nothing allocated)."""
    abstract = jax.eval_shape(lambda p: step.init_state(p, config, 0),
                              transformer.abstract_params(config.model))
    state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                         abstract, step.state_shardings(config, mesh))
    shapes = {"prompt_tokens": ((batch, prompt), jnp.int32),
              "prompt_lengths": ((batch,), jnp.int32),
              "completion_tokens": ((batch, completion), jnp.int32),
              "completion_mask": ((batch, completion), jnp.bool_),
              "old_logps": ((batch, completion), jnp.float32),
              "ref_logps": ((batch, completion), jnp.float32),
              "advantages": ((batch,), jnp.float32)}
    shardings = step.batch_shardings(mesh)
    return state, {k: jax.ShapeDtypeStruct(shape, dtype, sharding=shardings[k])
                   for k, (shape, dtype) in shapes.items()}


def compiled_memory(config: step.StepConfig, mesh_shape, batch: int, prompt: int,
                    completion: int, compiler_options=None) -> Compiled:
    """`memory_analysis()` of the jitted train step on a mesh of the local devices."""
    mesh = sharding.make_mesh(mesh_shape)
    state, batch_in = abstract_inputs(config, mesh, batch, prompt, completion)
    with jax.set_mesh(mesh):
        lowered = step.jit_train_step(config, mesh).lower(state, batch_in)
    stats = lowered.compile(compiler_options).memory_analysis()
    return Compiled(stats.argument_size_in_bytes, stats.output_size_in_bytes,
                    stats.alias_size_in_bytes, stats.temp_size_in_bytes)


def planned(config: step.StepConfig, mesh_shape, batch: int, prompt: int,
            completion: int) -> plan_lib.Plan:
    """The planner's figures for the same step: one micro-batch of batch / M rows."""
    g = config.grpo
    return plan_lib.make_plan(config.model, mesh_shape, batch // g.num_micro_batches,
                              prompt + completion, completion=completion,
                              logps_chunk=g.logps_chunk_size,
                              micro_batches=g.num_micro_batches)


def table_row(name: str, mesh_shape, plan: plan_lib.Plan, compiled: Compiled,
              remat: bool) -> str:
    """One line: planned vs compiled state, temporaries and total (MiB) and their error."""
    mib = 2.0**20
    mesh = ",".join(f"{k}={v}" for k, v in mesh_shape.items())
    err = plan.step_total(remat) / compiled.total - 1
    return (f"{name:<10} {mesh:<14} state {plan.state / mib:7.2f} / {compiled.arguments / mib:7.2f}"
            f"  temp {plan.temporaries(remat) / mib:7.2f} / {compiled.temporaries / mib:7.2f}"
            f"  total {plan.step_total(remat) / mib:7.2f} / {compiled.total / mib:7.2f} MiB"
            f"  {err:+.1%}")
