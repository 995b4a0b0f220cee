"""MoE routing replay (R3) for the training forward, and the routing-flip-rate metric (issue 24).

Sampler and trainer can route the same token to different experts (different kernels, batch
shapes, precision, or weights moved between sampling and training), so the trainer's log-probs
are those of another network than the one that sampled. Routing replay ("R3", rollout routing
replay) records the sampler's top-k selection of every token (`SamplingConfig.record_routing`,
`r1jax.sampling.routing_record`) and makes the training forward select the same experts; the
gate values are still computed by the current router from those experts' affinities, so the
router keeps its gradient (`routing.route`'s replay_tk).

The flip rate of a router is the share of recorded tokens whose set of K experts in the training
forward differs from the sampler's (0 under replay by construction; its value without replay is
what replay removes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from r1jax.models.moe import routing
from r1jax.sampling import routing_record


def to_replay(record: dict) -> dict:
    """The 'replay' collection for `Transformer.apply` of the update's [N, L] sequences.

    Args:
      record: {router path: int [N, L, K] or [N, L, layers, K]} (`SampleResult.routing`, cut to
        the update's rows and width L).
    Returns:
      {"replay": nested {..., "gate": {SELECTED: int32 [N*L, K] or [layers, N*L, K]}}}.
    """
    flat = {}
    for path, rec in record.items():
        n, length = rec.shape[:2]
        rec = rec.reshape((n * length,) + rec.shape[2:]).astype(jnp.int32)
        if rec.ndim == 3:  # scanned stack: the layer axis leads, as nn.scan slices it
            rec = jnp.moveaxis(rec, 1, 0)
        flat[tuple(path.split("/")) + (routing.SELECTED,)] = rec
    return {routing.REPLAY: traverse_util.unflatten_dict(flat)}


def flip_rates(record: dict, intermediates, name: str = routing.SELECTED
               ) -> dict[str, jax.Array]:
    """Share of recorded tokens whose top-k expert set in this forward differs from the record.

    Args:
      record: as `to_replay` ([N, L, (layers,) K]; -1 = not recorded, not counted).
      intermediates: the 'intermediates' of the training forward over the same [N, L] tokens.
      name: routing.SELECTED (the experts the forward used: 0 under replay) or
        routing.OWN_CHOICE (what each router selects by itself, sown under replay).
    Returns:
      {"<router path>" or "<router path>/<i>" for layer i of a scanned stack: float32 scalar}.
    """
    used = routing_record.selections(intermediates, name)
    rates = {}
    for path, rec in record.items():
        n, length = rec.shape[:2]
        used_nl = routing_record.tokens_first(used[path], n, length)
        differs = jnp.any(jnp.sort(used_nl, axis=-1) != jnp.sort(rec.astype(used_nl.dtype),
                                                                  axis=-1), axis=-1)
        recorded = rec[..., 0] >= 0
        rate = (jnp.sum(differs & recorded, axis=(0, 1)) /
                jnp.maximum(jnp.sum(recorded, axis=(0, 1)), 1)).astype(jnp.float32)
        if rate.ndim == 0:
            rates[path] = rate
        else:
            rates.update({f"{path}/{i}": rate[i] for i in range(rate.shape[0])})
    return rates
