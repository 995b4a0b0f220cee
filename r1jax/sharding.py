"""Sharding by name: the one logical-axis rules table, mesh construction, pytree helpers.

Every parameter and large activation carries logical axis names (declared below). `RULES`
maps each name to mesh axes of the 4-axis mesh (`data`, `fsdp`, `expert`, `tensor`); the same
model code then runs on one CPU, on 8 simulated devices and on a pod. Parameter names and
activation names are distinct (`embed` vs `act_embed`) so that a weight can be FSDP-sharded
along `embed` while activations are batch-sharded over the same mesh axis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "expert", "tensor")

# Logical axis names.
# Parameters:
#   vocab      token vocabulary                     embed   model width d
#   heads      attention heads (q and o)            kv_heads K/V heads (GQA)
#   head_dim   per-head width                       q_lora  query latent d_c'
#   kv_lora    KV latent d_c (+ d_h^R)              mlp     MLP hidden f
#   expert     routed experts                       layers  stacked layers (scan)
#   norm       norm scales / biases (replicated)
# Activations: act_batch, act_length, act_embed, act_heads, act_kv, act_mlp, act_vocab,
#   act_expert (tokens routed to experts).
RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    # The latent dims shard over fsdp too: otherwise q_b_proj / kv_b_proj ([latent, heads x dim])
    # are replicated whenever tensor == 1 (4.3 + 1.9 GiB per device for V3). Where the same
    # kernel also has `embed`, that comes first and the latent dim stays whole.
    ("q_lora", "fsdp"),
    ("kv_lora", "fsdp"),
    ("mlp", "tensor"),
    ("expert", "expert"),
    ("layers", None),
    ("norm", None),
    ("act_batch", ("data", "fsdp", "expert")),
    ("act_length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv", None),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("act_expert", "expert"),
)


def make_mesh(shape: Mapping[str, int] | None = None, devices: Sequence | None = None) -> Mesh:
    """Builds the (`data`, `fsdp`, `expert`, `tensor`) mesh; a -1 entry takes the rest.

    Args:
      shape: axis name -> size; missing axes are 1; at most one -1. None means {fsdp: -1}
        (plain FSDP, the best default for training on one host).
      devices: defaults to `jax.devices()`.
    Returns:
      A Mesh whose axes are Auto (flax logical constraints need Auto axes in this JAX).
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = dict(shape or {"fsdp": -1})
    unknown = sorted(set(shape) - set(MESH_AXES))
    if unknown:
        raise ValueError(f"mesh: unknown axis name(s) {unknown}; allowed: {MESH_AXES}")
    sizes = [int(shape.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh: at most one axis may be -1, got {shape}")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh: {len(devices)} devices are not divisible by {known} ({shape})")
        sizes[sizes.index(-1)] = len(devices) // known
    if int(np.prod(sizes)) != len(devices):
        raise ValueError(f"mesh: {dict(zip(MESH_AXES, sizes))} needs {int(np.prod(sizes))} "
                         f"devices, have {len(devices)}")
    device_array = np.asarray(devices).reshape(sizes)
    return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def logical_to_spec(logical_axes: Sequence[str | None]) -> PartitionSpec:
    """PartitionSpec for one array's logical axis names under `RULES`."""
    return nn.logical_to_mesh_axes(tuple(logical_axes), RULES)


def logical_shardings(logical_tree, mesh: Mesh):
    """Maps a pytree of `PartitionSpec`s of logical names (from `nn.get_partition_spec`)
    to NamedShardings on `mesh`."""
    specs = nn.logical_to_mesh(logical_tree, RULES)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Shards the leading (batch) dimension over the data axes, the rest replicated."""
    return NamedSharding(mesh, logical_to_spec(("act_batch",) + (None,) * (ndim - 1)))


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op when no mesh is set."""
    return nn.with_logical_constraint(x, tuple(logical_axes), rules=RULES)


# ---------------------------------------------------------------------------------------------
# Parameter and optimizer-state shardings: the one helper every trainer, sampler and scorer uses.


def boxed_shardings(boxed, mesh: Mesh):
    """Shardings of a parameter tree whose leaves carry logical-axis boxes.

    Args:
      boxed: the tree of `jax.eval_shape` of a linen `init` (leaves `nn.LogicallyPartitioned`
        around ShapeDtypeStructs); nothing is allocated.
      mesh: the device mesh (a concrete or an abstract one).
    Returns:
      (abstract, shardings): the unboxed tree as ShapeDtypeStructs that carry their sharding,
      and the same tree of NamedShardings.
    """
    shardings = logical_shardings(nn.get_partition_spec(boxed), mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def _dict_keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def like_params(tree, params_abstract, mesh: Mesh):
    """Shardings for a pytree whose array leaves are parameters or follow one.

    The one rule: a leaf whose dict-key path ends with a parameter's path and whose shape is
    that parameter's shape takes the parameter's sharding (Adam's mu and nu, a reference copy,
    a gradient accumulator); every other leaf (step, counts, RNG keys, a factored statistic of
    another shape) is replicated on `mesh`.

    Args:
      tree: a pytree of arrays or ShapeDtypeStructs (e.g. `jax.eval_shape` of `optimizer.init`).
      params_abstract: the parameter tree as ShapeDtypeStructs with shardings (`boxed_shardings`).
      mesh: the mesh whose replicated sharding the other leaves get.
    Returns:
      A pytree of NamedShardings with `tree`'s structure.
    """
    by_path = {_dict_keys(path): leaf for path, leaf in
               jax.tree_util.tree_flatten_with_path(params_abstract)[0]}
    depth = max(map(len, by_path), default=0)
    replicated_sharding = replicated(mesh)

    def pick(path, leaf):
        keys = _dict_keys(path)
        for n in range(min(depth, len(keys)), 0, -1):  # the longest matching suffix wins
            param = by_path.get(keys[-n:])
            if param is not None and tuple(param.shape) == tuple(getattr(leaf, "shape", ())):
                return param.sharding
        return replicated_sharding

    return jax.tree_util.tree_map_with_path(pick, tree)
