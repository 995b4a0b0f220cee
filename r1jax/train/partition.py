"""Shardings of parameters and train states, from the model's logical axis names.

One function per question: where does each parameter live (`param_shardings`), and where does
each leaf of a train state live (`state_shardings`: optimizer moments follow their parameter,
scalars are replicated). Nothing is allocated: everything works on `jax.eval_shape` trees, so
the same calls plan a 671B model on an abstract mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer


def _boxed_abstract_params(config: config_lib.ModelConfig):
    def init():
        return transformer.Transformer(config).init(
            jax.random.key(0), jnp.zeros((1, 1), jnp.int32))["params"]

    return jax.eval_shape(init)


def param_shardings(config: config_lib.ModelConfig, mesh: Mesh):
    """(abstract params as ShapeDtypeStructs with shardings, NamedSharding tree)."""
    return boxed_shardings(_boxed_abstract_params(config), mesh)


def boxed_shardings(boxed, mesh: Mesh):
    """`param_shardings` of any parameter tree with logical-axis boxes (from `jax.eval_shape`
    of a linen `init`), e.g. a model that adds heads to the transformer's tree."""
    shardings = sharding.logical_shardings(nn.get_partition_spec(boxed), mesh)
    abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                            nn.unbox(boxed), shardings)
    return abstract, shardings


def _dict_keys(path) -> tuple[str, ...]:
    return tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))


def state_shardings(abstract_state, params_shardings, mesh: Mesh):
    """Shardings for any pytree whose array leaves are parameters or follow one.

    A leaf whose dict-key path ends with a parameter's path and has that parameter's shape
    (Adam's mu and nu, a reference copy of the params) takes the parameter's sharding; every
    other leaf (step, counts, RNG keys) is replicated.
    """
    by_path = {}
    for path, s in jax.tree_util.tree_flatten_with_path(params_shardings)[0]:
        by_path[_dict_keys(path)] = s
    replicated = NamedSharding(mesh, PartitionSpec())

    def pick(path, leaf):
        keys = _dict_keys(path)
        for start in range(len(keys)):
            s = by_path.get(keys[start:])
            if s is not None and len(s.spec) <= len(getattr(leaf, "shape", ())):
                return s
        return replicated

    return jax.tree_util.tree_map_with_path(pick, abstract_state)


def shard(tree, shardings):
    """Places host or device arrays with the given shardings (a global `device_put`)."""
    return jax.device_put(tree, shardings)
