"""Length rewards on completion token counts (batched numpy; no text needed).

- `overlong`: DAPO's soft overlong punishment (Yu et al. 2025, Eq. 13), with L_max the generation
  limit and L_cache the buffer before it:
      R(L) = 0                              if L <= L_max - L_cache
           = ((L_max - L_cache) - L) / L_cache  if L_max - L_cache < L <= L_max
           = -1                             if L > L_max
- `cosine`: cosine length scaling (Yeo et al. 2025, "Demystifying Long Chain-of-Thought
  Reasoning in LLMs", Sec. 4.1): for L < L_max,
      R = r_L + (r_0 - r_L) * (1 + cos(pi * L / L_max)) / 2
  with (r_0, r_L) = (r0_correct, rL_correct) for correct answers (shorter is rewarded more) and
  (r0_wrong, rL_wrong) for wrong ones (longer is penalised less); L >= L_max gets `exceed`.
  Defaults are the paper's (2, 1, -10, 0, -10). It replaces, not adds to, the accuracy reward.
"""

from __future__ import annotations

import numpy as np


def overlong(lengths, *, max_length: int, cache_length: int) -> np.ndarray:
    """Returns float32 [N] in [-1, 0]: DAPO soft overlong punishment of token counts [N]."""
    if not 0 < cache_length <= max_length:
        raise ValueError(f"need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
    length_n = np.asarray(lengths, np.float64)
    soft = ((max_length - cache_length) - length_n) / cache_length
    return np.clip(soft, -1.0, 0.0).astype(np.float32)


def cosine(
    lengths,
    correct,
    *,
    max_length: int,
    r0_correct: float = 2.0,
    rL_correct: float = 1.0,
    r0_wrong: float = -10.0,
    rL_wrong: float = 0.0,
    exceed: float = -10.0,
) -> np.ndarray:
    """Returns float32 [N]: cosine-scaled correctness reward of token counts [N], bools [N]."""
    if max_length <= 0:
        raise ValueError(f"max_length must be positive, got {max_length}")
    length_n = np.asarray(lengths, np.float64)
    correct_n = np.asarray(correct, bool)
    r0 = np.where(correct_n, r0_correct, r0_wrong)
    rL = np.where(correct_n, rL_correct, rL_wrong)
    progress = np.clip(length_n / max_length, 0.0, 1.0)
    value = rL + 0.5 * (r0 - rL) * (1.0 + np.cos(np.pi * progress))
    return np.where(length_n >= max_length, exceed, value).astype(np.float32)


def cosine_range(**options) -> tuple[float, float]:
    """Returns (low, high) of `cosine` under the given options."""
    defaults = {"r0_correct": 2.0, "rL_correct": 1.0, "r0_wrong": -10.0, "rL_wrong": 0.0}
    values = [options.get(k, v) for k, v in defaults.items()] + [options.get("exceed", -10.0)]
    return min(values), max(values)
