"""A rollout layout of its own: the weights resharded from the training mesh to a decode mesh.

Under the training layout (FSDP: every weight split along `embed` over 8+ devices) XLA gathers
each weight whole before the sampler's decode loop and keeps it for the whole loop, so every
device holds the whole model while decoding (measured on the suite's V3-shaped model, fsdp=8:
27 weight-shaped all-gathers, 239 KB of temporaries per device vs 23 KB of sharded arguments).
Decoding with the weights split over `tensor` instead (heads, MLP and expert hidden, vocab) needs
no weight gather: each step all-reduces activations (tensor=8 on the same model: no
weight-shaped all-gather at all, 68 KB of temporaries). With the CPU's default token-local MoE
dispatch, expert=8 still gathers the expert stacks (5 weight-shaped all-gathers): decode with
tensor parallelism, or expert parallelism with moe_dispatch="expert_parallel".

Once per RL step the trainer's params are moved to the decode shardings with `jax.device_put`
(shard-to-shard transfers between the two shardings of the same devices; no host copy), and the
time it took is the `reshard_s` metric.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import jax

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.sampling import sampler as sampler_lib


def decode_mesh(layout: Mapping[str, int], devices: Sequence | None = None) -> jax.sharding.Mesh:
    """The decode mesh over the training devices, e.g. {"tensor": 8} (`sharding.make_mesh`)."""
    return sharding.make_mesh(layout, devices)


def reshard(config: config_lib.ModelConfig, params, mesh: jax.sharding.Mesh):
    """params placed by the logical rules on `mesh`. Returns (params, seconds taken, measured
    until every shard has arrived)."""
    start = time.perf_counter()
    params = jax.block_until_ready(
        jax.device_put(params, sampler_lib.param_shardings(config, mesh)))
    return params, time.perf_counter() - start
