"""pass@k, pass@1 and cons@k against brute-force enumeration."""

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from r1jax.evals import passk


def brute_pass_at_k(n, c, k):
    """Average over all k-subsets of n samples (the first c correct) of 'any correct'."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_enumeration_vectorised():
    cases = [(n, c, k) for n in range(1, 8) for c in range(n + 1) for k in range(1, n + 1)]
    n, c, k = (np.array(x) for x in zip(*cases))
    got = passk.pass_at_k(n, c, k)
    want = [brute_pass_at_k(*case) for case in cases]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_pass_at_k_large_n_matches_exact_binomials():
    n, c = np.array([200, 64, 1000]), np.array([3, 10, 1])
    got = passk.pass_at_k(n, c, 50)
    want = [float(1 - Fraction(math.comb(a - b, 50), math.comb(a, 50))) for a, b in zip(n, c)]
    np.testing.assert_allclose(got, want, rtol=1e-10)
    assert float(passk.pass_at_k(10, 3, 1)) == pytest.approx(0.3)
    assert passk.pass_at_k(10, 3, 1).shape == ()


def test_pass_at_k_validation():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        passk.pass_at_k(4, 5, 1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        passk.pass_at_k(4, 1, 5)


def test_pass_at_1_mean_equals_pass_at_k_with_k_1():
    correct = np.random.default_rng(0).random((6, 16)) < 0.3
    want = passk.pass_at_k(16, correct.sum(1), 1).mean()
    assert passk.pass_at_1_mean(correct) == pytest.approx(want)
    assert passk.pass_at_1_mean([[1, 0], [0, 0]]) == 0.25
    with pytest.raises(ValueError, match="correct_nk"):
        passk.pass_at_1_mean([1, 0])


def brute_majority(answers):
    """The answer that beats every other one on (count, earlier first occurrence)."""
    candidates = [a for a in answers if a is not None]
    for a in candidates:
        if all(
            answers.count(a) > answers.count(b)
            or (answers.count(a) == answers.count(b) and answers.index(a) <= answers.index(b))
            for b in candidates
        ):
            return a
    return None


def test_majority_vote_matches_brute_force_on_random_rows():
    rng = np.random.default_rng(1)
    for _ in range(300):
        row = [None if x == 0 else str(x) for x in rng.integers(0, 4, rng.integers(1, 9))]
        assert passk.majority_vote(row) == brute_majority(row), row


def test_majority_vote_ties_and_none():
    assert passk.majority_vote(["7", "3", "3", "7"]) == "7"  # tie: "7" came first
    assert passk.majority_vote(["3", "7", "7", "3"]) == "3"
    assert passk.majority_vote([None, None, "5"]) == "5"  # None never wins
    assert passk.majority_vote([None, None]) is None


def test_cons_at_k():
    answers = [["4", "4", "5"], ["1", "2", "2"], [None, None, None], ["9", "8"]]
    truth = ["4", "1", "0", "8"]
    calls = []

    def correct(i, a):
        calls.append((i, a))
        return truth[i] == a

    # Votes: "4" (right), "2" (wrong), None (wrong, correct_fn not called), "9" (tie, wrong).
    assert passk.cons_at_k(answers, correct) == 0.25
    assert calls == [(0, "4"), (1, "2"), (3, "9")]
    with pytest.raises(ValueError, match="at least one problem"):
        passk.cons_at_k([], correct)
