"""Sampling-based evaluation metrics: pass@k, pass@1 over k samples, cons@k (majority vote).

DeepSeek-R1 (arXiv:2501.12948, Sec. 3, "Evaluation Setup") samples k responses per question
(temperature 0.6, top-p 0.95) and reports pass@1 = 1/k sum_i p_i, with p_i the correctness of
response i, and cons@64, the accuracy of the majority-vote answer over 64 samples.
pass@k uses the unbiased estimator of Chen et al. 2021 (Codex, arXiv:2107.03374, eq. 1): from
n samples of which c are correct,

    pass@k = 1 - C(n - c, k) / C(n, k) = 1 - prod_{i = n - c + 1}^{n} (1 - k / i),

the probability that a random k-subset of the n samples holds at least one correct one. The
product form avoids the huge binomials.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np


def pass_at_k(n, c, k) -> np.ndarray:
    """Unbiased pass@k per problem (Chen et al. 2021, eq. 1), vectorised with broadcasting.

    Args:
      n: samples per problem (int or int array).
      c: correct samples per problem, 0 <= c <= n.
      k: the k of pass@k, 1 <= k <= n.

    Returns:
      float64 array of the broadcast shape of (n, c, k) (0-d for scalar inputs).
    """
    n, c, k = np.broadcast_arrays(*(np.asarray(x, dtype=np.int64) for x in (n, c, k)))
    if np.any(c < 0) or np.any(c > n):
        raise ValueError("pass_at_k needs 0 <= c <= n for every problem")
    if np.any(k < 1) or np.any(k > n):
        raise ValueError("pass_at_k needs 1 <= k <= n for every problem")
    i = np.arange(1, int(n.max(initial=1)) + 1)  # [I], the i of the product
    in_product = (i > (n - c)[..., None]) & (i <= n[..., None])
    # When n - c < k one factor is i = k, i.e. exactly 0: every k-subset holds a correct sample.
    factors = np.where(in_product, 1.0 - k[..., None] / i, 1.0)
    return 1.0 - factors.prod(axis=-1)


def pass_at_1_mean(correct_nk) -> float:
    """pass@1 = mean over problems of (1/k) sum_i p_i, from a [num_problems, k] 0/1 array."""
    correct_nk = np.asarray(correct_nk, dtype=np.float64)
    if correct_nk.ndim != 2 or correct_nk.shape[1] == 0:
        raise ValueError(f"correct_nk must be [num_problems, k>0], got shape {correct_nk.shape}")
    return float(correct_nk.mean())


def majority_vote(answers: Sequence[Hashable | None]) -> Hashable | None:
    """The most frequent answer, ignoring None (no answer extracted); None if there is none.

    Ties go to the tied answer whose first occurrence comes earliest in `answers`: deterministic
    (no dependence on hashing or set order) and reproducible from the sample order alone.
    Answers are compared with ==, so normalise them (e.g. strip, canonical numbers) beforehand.
    """
    counts: dict[Hashable, int] = {}
    for answer in answers:
        if answer is not None:
            counts[answer] = counts.get(answer, 0) + 1
    if not counts:
        return None
    # dicts keep insertion order, i.e. first occurrence, and max keeps the first maximum.
    return max(counts, key=counts.__getitem__)


def cons_at_k(
    answers_nk: Sequence[Sequence[Hashable | None]],
    correct_fn: Callable[[int, Hashable], bool],
) -> float:
    """cons@k: the fraction of problems whose majority-vote answer is correct.

    Args:
      answers_nk: for each problem, the k extracted answers (None where none was found).
      correct_fn: (problem_index, answer) -> whether `answer` is correct for that problem.
        A problem with no extracted answer counts as wrong.

    Returns:
      accuracy in [0, 1].
    """
    if not answers_nk:
        raise ValueError("cons_at_k needs at least one problem")
    votes = [majority_vote(row) for row in answers_nk]
    return float(np.mean([v is not None and bool(correct_fn(i, v)) for i, v in enumerate(votes)]))
