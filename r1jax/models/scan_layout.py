"""Converting a parameter tree between the unrolled and the scanned layer layouts.

`transformer.Transformer` keeps its decoder layers either as `layers_{i}` subtrees
(scan_layers=False) or as two stacks, `dense_layers` (the first `first_k_dense_replace` layers
of a MoE model, or every layer of a dense one) and `moe_layers`, each leaf with a leading layer
axis (scan_layers=True). Checkpoints (HF, base directories) hold the unrolled tree; these
functions let a model loaded unrolled run scanned, and back. Everything else (embedding, final
norm, head, MTP modules) is the same in both.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import traverse_util

from r1jax.models import config as config_lib
from r1jax.models import transformer

STACKS = ("dense_layers", "moe_layers")


def stack_offset(stack: str, config: config_lib.ModelConfig) -> int:
    """The index of the first layer of `stack` in the unrolled model."""
    if stack == "dense_layers":
        return 0
    return config.first_k_dense_replace if config.is_moe else config.num_hidden_layers


def is_scanned(params) -> bool:
    """Whether a parameter tree has the scanned layout (no `layers_{i}` subtrees)."""
    return not any(str(key).startswith("layers_") for key in params)


def to_scanned(config: config_lib.ModelConfig, params) -> dict:
    """The scan_layers=True tree of `params` (returned as is when already scanned).

    Args:
      config: the model (its scan_layers field is ignored).
      params: the unrolled tree: `layers_{i}/...` leaves of shape S.
    Returns:
      The scanned tree: `{dense,moe}_layers/...` leaves of shape [L_stack, *S].
    """
    if is_scanned(params):
        return params
    flat = traverse_util.flatten_dict(params)
    scanned = transformer.abstract_params(config.replace(scan_layers=True))
    out = {}
    for path, leaf in traverse_util.flatten_dict(scanned).items():
        if path[0] in STACKS:
            first = stack_offset(path[0], config)
            out[path] = jnp.stack([flat[(f"layers_{first + i}",) + path[1:]]
                                   for i in range(leaf.shape[0])])
        else:
            out[path] = flat[path]
    return traverse_util.unflatten_dict(out)


def to_unrolled(config: config_lib.ModelConfig, params) -> dict:
    """The scan_layers=False tree of `params` (returned as is when already unrolled)."""
    if not is_scanned(params):
        return params
    out = {}
    for path, leaf in traverse_util.flatten_dict(params).items():
        if path[0] in STACKS:
            first = stack_offset(path[0], config)
            for i in range(leaf.shape[0]):
                out[(f"layers_{first + i}",) + path[1:]] = leaf[i]
        else:
            out[path] = leaf
    return traverse_util.unflatten_dict(out)
