"""Shardings of parameters and train states, from the model's logical axis names.

One helper for every trainer (issue 20): where each parameter lives is
`transformer.param_shardings` (from `sharding.boxed_shardings`), and where each leaf of a train
state lives is `sharding.like_params` (optimizer moments and reference copies follow their
parameter by path and exact shape, everything else is replicated). This module names them for
the trainers of `r1jax.train`. Nothing is allocated: everything works on `jax.eval_shape`
trees, so the same calls plan a 671B model on an abstract mesh.
"""

from __future__ import annotations

import jax
from jax.sharding import Mesh

from r1jax import sharding
from r1jax.models import transformer

#: (abstract params with shardings, NamedSharding tree) of a ModelConfig on a mesh.
param_shardings = transformer.param_shardings
#: The same for any boxed parameter tree (a model that adds heads to the transformer's tree).
boxed_shardings = sharding.boxed_shardings


def state_shardings(abstract_state, params_abstract, mesh: Mesh):
    """Shardings of a train state: `sharding.like_params` of it.

    Args:
      abstract_state: the state tree (arrays or ShapeDtypeStructs).
      params_abstract: the parameters as ShapeDtypeStructs with shardings (the first value of
        `param_shardings`).
      mesh: the mesh; leaves that follow no parameter are replicated on it.
    """
    return sharding.like_params(abstract_state, params_abstract, mesh)


def shard(tree, shardings):
    """Places host or device arrays with the given shardings (a global `device_put`)."""
    return jax.device_put(tree, shardings)
