"""Real-length GRPO updates: the completion width cut to the batch's longest real completion,
and sequence packing (several [prompt ; completion] sequences in one row, told apart by
segment ids).

The sampler returns completions padded to `max_new_tokens`; an update at that width pays for
the longest response the budget allows, not the longest one sampled. Two remedies, both host
side (NumPy, before the arrays are placed on the devices), both leaving the loss unchanged:

  * `update_width` / `trim`: cut the completion arrays to the longest real completion rounded
    up to a multiple (a few distinct widths, so a few compiled programs). Padding is masked in
    the loss and causal attention never lets a real token see the padding after it, so the
    per-token log-probs, hence loss and gradients, are those of the full width.
  * `pack`: put the real tokens of several sequences one after another in rows of width W
    (first-fit decreasing), positions restarting at 0 for each sequence and attention confined
    to its segment (`Transformer.hidden(..., segment_ids_bt)`), so short responses do not pay
    for the longest one's width. The per-sequence arrays (completion tokens and mask, old and
    reference log-probs, advantages) keep their [N, T] layout; `pack_row` / `pack_start` say
    where each sequence's completion is predicted in the packed rows. Packing is done per
    micro-batch (`state.accumulate_gradients` gives micro-batch j the rows j, j + M, ...), so
    each micro-batch's sequences live in its own packed rows.

With a MoE model the expert-load statistics and the sequence-wise balance loss are computed
over rows, padding included (as without packing), so they change with the layout; the GRPO
loss and its gradient do not.
"""

from __future__ import annotations

import numpy as np

PACKED_KEYS = ("packed_tokens", "packed_positions", "packed_segments", "packed_mask")
INDEX_KEYS = ("pack_row", "pack_start")
_COMPLETION_KEYS = ("completion_tokens", "completion_mask", "old_logps", "ref_logps")


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


def update_width(completion_mask_nt: np.ndarray, max_new_tokens: int, multiple: int) -> int:
    """The completion width of the update: the longest real completion rounded up to
    `multiple`, at most `max_new_tokens` (0 disables: max_new_tokens)."""
    if multiple == 0:
        return max_new_tokens
    longest = int(np.asarray(completion_mask_nt).sum(axis=1).max(initial=0))
    return min(max_new_tokens, _round_up(max(longest, 1), multiple))


def trim(batch: dict, width: int) -> dict:
    """The batch with its per-token completion arrays cut to `width` columns."""
    return {k: (v[:, :width] if k in _COMPLETION_KEYS else v) for k, v in batch.items()}


def first_fit(lengths_n: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows for sequences of the given lengths, first-fit decreasing into rows of `width`.

    Returns (row_n, offset_n, number of rows): sequence i occupies row row_n[i], columns
    offset_n[i] .. offset_n[i] + lengths_n[i] - 1.
    """
    if len(lengths_n) and int(np.max(lengths_n)) > width:
        raise ValueError(f"a sequence of {int(np.max(lengths_n))} tokens does not fit a packed "
                         f"row of width {width}")
    row_n = np.zeros(len(lengths_n), np.int32)
    offset_n = np.zeros(len(lengths_n), np.int32)
    used = []  # tokens already placed in each row
    for i in np.argsort(-np.asarray(lengths_n), kind="stable"):
        row = next((r for r, u in enumerate(used) if u + lengths_n[i] <= width), len(used))
        if row == len(used):
            used.append(0)
        row_n[i], offset_n[i] = row, used[row]
        used[row] += int(lengths_n[i])
    return row_n, offset_n, len(used)


def _completion_lengths(mask_nt: np.ndarray) -> np.ndarray:
    """Real tokens per completion; the mask must be a prefix of ones (as the sampler makes it:
    real tokens up to and including the stop token), since packing keeps only those."""
    mask_nt = np.asarray(mask_nt) > 0
    lengths_n = mask_nt.sum(axis=1).astype(np.int32)
    if not np.array_equal(mask_nt, np.arange(mask_nt.shape[1])[None] < lengths_n[:, None]):
        raise ValueError("completion_mask must be a prefix of ones in every row to be packed")
    return lengths_n


def pack(batch: dict, num_micro: int = 1, width_multiple: int = 64,
         rows_multiple: int = 1) -> dict:
    """The packed model inputs of one update's minibatch (module docstring), host side.

    Args:
      batch: NumPy arrays: prompt_tokens [N, P] (right-padded), prompt_lengths [N],
        completion_tokens [N, T], completion_mask [N, T], and any other per-sequence arrays
        (old_logps, ref_logps, advantages), which are passed through.
      num_micro: M, the update's micro-batches (N divisible by M).
      width_multiple: the row width W is the longest sequence rounded up to this, at most
        P + T (0: P + T).
      rows_multiple: rows per micro-batch rounded up to this (e.g. the batch shards).

    Returns:
      The per-sequence arrays (prompt_tokens and prompt_lengths dropped) plus packed_tokens,
      packed_positions, packed_segments (0 = padding) [R * M, W] int32, packed_mask bool, and
      pack_row [N] (the sequence's row among its micro-batch's R rows) and pack_start [N] (the
      column whose hidden state predicts completion token 0; token t: pack_start + t).
    """
    prompts_np, plen_n = np.asarray(batch["prompt_tokens"]), np.asarray(batch["prompt_lengths"])
    completions_nt = np.asarray(batch["completion_tokens"])
    clen_n = _completion_lengths(batch["completion_mask"])
    n, p = prompts_np.shape
    if n % num_micro:
        raise ValueError(f"the minibatch ({n} rows) is not divisible by num_micro={num_micro}")
    lengths_n = plen_n + clen_n
    width = p + completions_nt.shape[1]
    if width_multiple:
        width = min(_round_up(int(lengths_n.max(initial=1)), width_multiple), width)
    plans = [first_fit(lengths_n[j::num_micro], width) for j in range(num_micro)]
    rows = _round_up(max(plan[2] for plan in plans), rows_multiple)
    packed = {k: np.zeros((rows * num_micro, width), np.int32) for k in PACKED_KEYS}
    row_n, start_n = np.zeros(n, np.int32), np.zeros(n, np.int32)
    for j, (row_k, offset_k, _) in enumerate(plans):
        for k, i in enumerate(range(j, n, num_micro)):
            r, o = row_k[k] * num_micro + j, offset_k[k]  # micro j holds rows j, j + M, ...
            seq = np.concatenate([prompts_np[i, :plen_n[i]], completions_nt[i, :clen_n[i]]])
            span = slice(o, o + len(seq))
            packed["packed_tokens"][r, span] = seq
            packed["packed_positions"][r, span] = np.arange(len(seq))
            packed["packed_segments"][r, span] = k + 1
            packed["packed_mask"][r, span] = 1
            row_n[i], start_n[i] = row_k[k], o + plen_n[i] - 1
    packed["packed_mask"] = packed["packed_mask"].astype(bool)
    out = {k: v for k, v in batch.items() if k not in ("prompt_tokens", "prompt_lengths")}
    return dict(out, **packed, pack_row=row_n, pack_start=start_n)
