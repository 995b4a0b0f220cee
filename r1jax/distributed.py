"""Multi-host runs on JAX's own multi-controller runtime (`jax.distributed`), and the few
host <-> global-array moves the GRPO trainer needs.

Every process runs the same program; together they drive one global mesh (DESIGN.md
principle 4). `initialize` joins the processes:

  * TPU pods (and other clusters JAX detects, e.g. SLURM): `initialize(auto=True)` calls
    `jax.distributed.initialize()` with no arguments; JAX finds the coordinator itself.
  * Elsewhere: the coordinator address, process count and process id come from the arguments
    (the entry point's flags) or the environment: R1JAX_COORDINATOR ("host:port"),
    R1JAX_NUM_PROCESSES, R1JAX_PROCESS_ID.
  * One process: a no-op.

Data movement (all no-ops but for a copy on one process):
  `gather_prompts`  each host loads its own prompt batch (`data.pipeline` deals the global
                    stream round-robin); the hosts exchange them so that every host holds the
                    global batch in the order a single-host loader would produce (prompts are
                    small; this keeps sampling identical to a one-process run).
  `host_rows`       the contiguous block of rows this host works on (e.g. scores).
  `allgather`       per-host rows -> the global rows on every host (arrays and lists).
  `fetch`           global jax.Arrays -> NumPy on every host.
  `global_batch`    host NumPy rows -> batch-sharded global arrays, each host contributing
                    the rows of its own devices (`jax.make_array_from_process_local_data`).
  `put_global`      a host pytree equal on every host -> global arrays of any sharding.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

ENV_COORDINATOR = "R1JAX_COORDINATOR"
ENV_NUM_PROCESSES = "R1JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "R1JAX_PROCESS_ID"


@dataclasses.dataclass(frozen=True)
class Settings:
    """Where this process joins: coordinator "host:port", process count and id (None = unset)."""

    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def resolve(coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> Settings:
    """Explicit values win; missing ones are read from the R1JAX_* environment variables."""
    settings = Settings(
        coordinator_address or os.environ.get(ENV_COORDINATOR) or None,
        num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES),
        process_id if process_id is not None else _env_int(ENV_PROCESS_ID))
    if settings.num_processes is not None and settings.num_processes < 1:
        raise ValueError(f"num_processes={settings.num_processes}: must be >= 1")
    if settings.process_id is not None and settings.num_processes is not None and not (
            0 <= settings.process_id < settings.num_processes):
        raise ValueError(f"process_id={settings.process_id}: must be in [0, num_processes="
                         f"{settings.num_processes})")
    return settings


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, *, auto: bool = False) -> bool:
    """Joins this process to the others; call before any other JAX call. Returns whether
    `jax.distributed.initialize` was called.

    Args:
      coordinator_address, num_processes, process_id: explicit settings (see `resolve`).
      auto: with nothing set, let JAX detect the cluster (TPU pods, SLURM).
    Raises:
      ValueError naming the missing setting when a multi-process run is only partly set up.
    """
    s = resolve(coordinator_address, num_processes, process_id)
    if s.num_processes == 1:
        return False
    if s == Settings():
        if auto:
            jax.distributed.initialize()
            return True
        return False
    missing = [f"{name} ({env})" for name, env, value in (
        ("coordinator_address", ENV_COORDINATOR, s.coordinator_address),
        ("num_processes", ENV_NUM_PROCESSES, s.num_processes),
        ("process_id", ENV_PROCESS_ID, s.process_id)) if value is None]
    if missing:
        raise ValueError(f"multi-process run is missing {', '.join(missing)}; got {s}")
    jax.distributed.initialize(coordinator_address=s.coordinator_address,
                               num_processes=s.num_processes, process_id=s.process_id)
    return True


# ---------------------------------------------------------------------------------------------
# Rows across hosts
# ---------------------------------------------------------------------------------------------


def host_rows(n: int) -> slice:
    """This host's contiguous block of `n` global rows (n must divide by the process count)."""
    count, index = jax.process_count(), jax.process_index()
    if n % count:
        raise ValueError(f"{n} rows cannot be split evenly over {count} processes")
    size = n // count
    return slice(index * size, (index + 1) * size)


def _gather_strings(values: Sequence[Any]) -> list[Any]:
    """Every host's list of JSON-serialisable values, concatenated in process order."""
    encoded = [json.dumps(v).encode() for v in values]
    width = int(np.max(multihost_utils.process_allgather(
        np.array([max(map(len, encoded), default=0)]))))
    codes = np.zeros((len(encoded), width + 1), np.uint8)
    for i, e in enumerate(encoded):
        codes[i, :len(e)] = np.frombuffer(e, np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(codes, tiled=True))
    return [json.loads(bytes(row[:np.argmin(row)]).decode()) for row in gathered]


def allgather(tree):
    """Per-host rows (arrays with equal shapes on every host, or lists) -> the rows of every
    host, concatenated in process order along the leading axis. A no-op on one process."""
    if jax.process_count() == 1:
        return tree

    def gather(x):
        if isinstance(x, list):
            return _gather_strings(x)
        return np.asarray(multihost_utils.process_allgather(np.asarray(x), tiled=True))

    return jax.tree.map(gather, tree, is_leaf=lambda x: isinstance(x, list))


def _interleave(tree, count: int):
    """Process-major rows [h0: 0..B), [h1: 0..B), ... -> round-robin order h0[0], h1[0], ..."""
    def reorder(x):
        if isinstance(x, list):
            per = len(x) // count
            return [x[h * per + i] for i in range(per) for h in range(count)]
        x = np.asarray(x)
        return x.reshape((count, -1) + x.shape[1:]).swapaxes(0, 1).reshape(x.shape)

    return jax.tree.map(reorder, tree, is_leaf=lambda x: isinstance(x, list))


def gather_prompts(batch: dict[str, Any], pad_id: int) -> dict[str, Any]:
    """This host's prompt batch -> the global batch, identical on every host, in the order of
    a single-host loader (`data.pipeline` deals the stream round-robin). Prompts are padded
    on the right to the widest host's width."""
    count = jax.process_count()
    if count == 1:
        return batch
    tokens = np.asarray(batch["prompt_tokens"])
    width = int(np.max(multihost_utils.process_allgather(np.array([tokens.shape[1]]))))
    padded = np.pad(tokens, ((0, 0), (0, width - tokens.shape[1])), constant_values=pad_id)
    return _interleave(allgather(dict(batch, prompt_tokens=padded)), count)


# ---------------------------------------------------------------------------------------------
# Host data <-> global arrays
# ---------------------------------------------------------------------------------------------


def fetch(tree):
    """Global jax.Arrays (any sharding) -> NumPy arrays with the full value, on every host."""
    def get(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(get, tree)


def _local_rows(sharding: jax.sharding.Sharding, shape: tuple[int, ...]) -> slice:
    """The rows (leading axis) that this process's devices hold under `sharding`."""
    starts, stops = [], []
    for index in sharding.addressable_devices_indices_map(shape).values():
        rows = index[0] if index else slice(None)
        start, stop, _ = rows.indices(shape[0])
        starts.append(start)
        stops.append(stop)
    return slice(min(starts), max(stops))


def global_batch(tree, shardings):
    """Host arrays holding the global rows (equal on every host) -> global jax.Arrays sharded
    on their leading axis; each host hands over only the rows of its own devices."""
    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(s, x[_local_rows(s, x.shape)], x.shape)

    return jax.tree.map(put, tree, shardings)


def put_global(tree, shardings):
    """A host pytree, equal on every host -> global arrays with `shardings` (each device reads
    its own shard; works for any sharding, replicated included)."""
    def put(x, s):
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda index: x[index])

    return jax.tree.map(put, tree, shardings)
