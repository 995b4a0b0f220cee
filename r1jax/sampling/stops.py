"""Stopping on stop strings: token-id suffix matching on device, exact string cut on the host.

R1-Zero's template ends a completion at "</answer>" (`r1jax.data.templates`). Text is not
available inside the jitted decoding loop, so the sampler matches *token sequences*: each step
it compares the last K generated tokens with every stop sequence (right-aligned, shorter ones
padded on the left with a wildcard) and stops a row when one matches; the stop tokens are kept
in the completion (mask 1), everything after is masked out.

`stop_token_sequences(tokenizer, strings)` derives the sequences from a tokenizer: the string's
own encoding, its encodings after a space and after a newline, and, when the string is one vocabulary piece (the trained tokenizers keep "</answer>"
and the chat markers whole), that piece. Its limit: a model can spell the same text with other
tokens (e.g. a token "x</" followed by "answer>"), which the device check misses and the row then
runs on to EOS or max_new_tokens. `truncate_at_stop_strings` on the decoded texts is exact; use it
(and re-encode, or mask by the cut's token count) where exactness matters.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

#: Entries of the stop table that match any token (left padding of shorter stop sequences), and
#: the initial content of the recent-token window (never equal to a real token id).
WILDCARD = -1


def stop_table(sequences: Sequence[Sequence[int]]) -> np.ndarray:
    """Stop sequences as an int32 table [M, K], right-aligned, left-padded with WILDCARD.

    K is the longest sequence's length; M = 0 gives a [0, 1] table (nothing ever matches)."""
    sequences = [tuple(int(t) for t in s) for s in sequences]
    for i, seq in enumerate(sequences):
        if not seq:
            raise ValueError(f"stop_token_sequences[{i}] is empty")
        if min(seq) < 0:
            raise ValueError(f"stop_token_sequences[{i}] = {seq} has a negative token id")
    width = max((len(s) for s in sequences), default=1)
    table_mk = np.full((len(sequences), width), WILDCARD, np.int32)
    for i, seq in enumerate(sequences):
        table_mk[i, width - len(seq):] = seq
    return table_mk


def push(recent_bk: jax.Array, tokens_b: jax.Array) -> jax.Array:
    """Shifts the window of the last K generated tokens [B, K] left and appends tokens [B]."""
    return jnp.concatenate([recent_bk[:, 1:], tokens_b[:, None].astype(recent_bk.dtype)], axis=1)


def matches(recent_bk: jax.Array, table_mk: np.ndarray) -> jax.Array:
    """bool [B]: the window ends with one of the stop sequences."""
    if table_mk.shape[0] == 0:
        return jnp.zeros(recent_bk.shape[:1], jnp.bool_)
    table_mk = jnp.asarray(table_mk)
    equal_bmk = (recent_bk[:, None, :] == table_mk[None]) | (table_mk[None] == WILDCARD)
    return jnp.any(jnp.all(equal_bmk, axis=-1), axis=-1)


def stop_token_sequences(tokenizer, stop_strings: Iterable[str]) -> tuple[tuple[int, ...], ...]:
    """Token sequences that spell each stop string (see the module docstring for the limits).

    Args:
      tokenizer: an `r1jax.data.tokenizer.Tokenizer` (`encode`, `id_of`).
      stop_strings: e.g. `templates.get("r1_zero").stop_strings`.
    Returns:
      Distinct non-empty id tuples, for `generate(..., stop_token_sequences=...)`.
    """
    found: list[tuple[int, ...]] = []
    for text in stop_strings:
        if not text:
            raise ValueError("stop strings must be non-empty")
        # Its own spelling, and after a space or a newline (a tokenizer may merge the separator
        # into the first piece, e.g. " </" in "42 </answer>").
        candidates = [tuple(tokenizer.encode(sep + text)) for sep in ("", " ", "\n")]
        try:
            candidates.append((int(tokenizer.id_of(text)),))
        except KeyError:
            pass  # Not a single vocabulary piece.
        found.extend(c for c in candidates if c and c not in found)
    return tuple(found)


def truncate_at_stop_strings(texts: Sequence[str], stops: Sequence[str]
                             ) -> tuple[list[str], list[bool]]:
    """Cuts each text just after the earliest occurrence of any stop string (inclusive).

    Returns (cut texts, whether a stop string was found in each)."""
    if any(not s for s in stops):
        raise ValueError("stop strings must be non-empty")
    cut, found = [], []
    for text in texts:
        ends = [text.find(s) + len(s) for s in stops if s in text]
        end = min(ends) if ends else len(text)
        cut.append(text[:end])
        found.append(bool(ends))
    return cut, found
