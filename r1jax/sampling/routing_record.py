"""MoE routing record of a rollout, for routing replay (R3, issue 24).

Each MoE router sows its top-k selection (`routing.SELECTED`) when the 'intermediates'
collection is mutable. The sampler collects them, per MoE layer (or scanned stack), in the
training forward's layout: row r of the update sequence [prompt (P slots) ; completion (N)], so
that `r1jax.rl.replay` can hand the record to the training forward.

Record layout per router path: int16 [R, P + N, K], or [R, P + N, layers, K] for a scanned
stack; -1 where nothing was recorded (prompt padding, the last completion token, which the
sampler never feeds back, and slots after a row stopped). Slot s of row r holds the routing of
the token at that slot: prompt tokens 0..len-2 from the prefill, the last prompt token (slot
len - 1) from decoding step 0, completion token t - 1 (slot P + t - 1) from step t.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import traverse_util

from r1jax.models.moe import routing

DTYPE = jnp.int16  # E < 32768 experts; -1 = not recorded


def selections(intermediates, name: str = routing.SELECTED) -> dict[str, jax.Array]:
    """{router path "a/b/gate": selection int [(layers,) T, K]} from one forward's
    'intermediates' (the first call of each router). name: SELECTED (the experts used) or
    OWN_CHOICE (the router's own top-k, sown while replaying)."""
    flat = traverse_util.flatten_dict(dict(intermediates))
    return {"/".join(path[:-1]): value[0] for path, value in flat.items() if path[-1] == name}


def tokens_first(sel, b: int, t: int) -> jax.Array:
    """[(layers,) B*T, K] -> [B, T, (layers,) K]."""
    if sel.ndim == 2:
        return sel.reshape(b, t, sel.shape[-1])
    return jnp.moveaxis(sel.reshape(sel.shape[0], b, t, sel.shape[-1]), 0, 2)


def from_prefill(sel: dict, lengths_b: jax.Array, prompt_width: int, max_new_tokens: int,
                 num_samples: int) -> dict:
    """The record after the prefill: prompt tokens 0..len-2 of each prompt, each row b*G + g.

    Args:
      sel: `selections` of the prefill over [B, P] prompts. lengths_b: int [B].
    Returns:
      {path: int16 [B*G, P + N, (layers,) K]}.
    """
    b = lengths_b.shape[0]
    out = {}
    for path, s in sel.items():
        s_bp = tokens_first(s, b, prompt_width).astype(DTYPE)
        written = jnp.arange(prompt_width)[None, :] < (lengths_b - 1)[:, None]
        written = written.reshape(written.shape + (1,) * (s_bp.ndim - 2))
        s_bp = jnp.where(written, s_bp, -1)
        pad = [(0, 0)] * s_bp.ndim
        pad[1] = (0, max_new_tokens)
        out[path] = jnp.repeat(jnp.pad(s_bp, pad, constant_values=-1), num_samples, axis=0)
    return out


def put_step(record: dict, sel: dict, slot_r: jax.Array, active_r: jax.Array) -> dict:
    """Writes one decoding step's selections (one token per row) at each active row's slot.

    Args:
      record: from `from_prefill`. sel: `selections` of the step ([(layers,) R, K] each).
      slot_r: int [R], the fed token's slot: len - 1 at step 0, P + step - 1 after.
      active_r: bool [R], rows still running.
    """
    rows = jnp.arange(slot_r.shape[0])
    out = {}
    for path, buf in record.items():
        new = tokens_first(sel[path], rows.shape[0], 1)[:, 0].astype(DTYPE)
        keep = active_r.reshape((-1,) + (1,) * (new.ndim - 1))
        out[path] = buf.at[rows, slot_r].set(jnp.where(keep, new, buf[rows, slot_r]))
    return out
