"""The toy preference task: disjoint splits by problem, one defect per rejected response."""

import pytest

from r1jax.data.tasks import preference


def test_splits_never_share_a_problem_and_streams_are_deterministic():
    task = preference.Preference(test_percent=20)
    train = [task.example("train", 0, i) for i in range(600)]
    test = [task.example("test", 0, i) for i in range(150)]
    assert not {e["key"] for e in train} & {e["key"] for e in test}
    assert {e["split"] for e in train} == {"train"} and {e["split"] for e in test} == {"test"}
    assert train[:5] == [task.example("train", 0, i) for i in range(5)]
    assert {e["kind"] for e in test} == set(preference.KINDS)


def test_pairs_differ_by_one_defect():
    task = preference.Preference()
    for i in range(300):
        ex = task.example("train", 1, i)
        assert ex["chosen"] != ex["rejected"] and ex["answer"] in ex["chosen"]
        assert ex["worked_solution"] == ex["chosen"]
        if ex["defect"] == "rude":
            assert ex["answer"] in ex["rejected"]
        if ex["defect"] == "wrong":  # a polite wrapping, but not of the answer
            assert ex["rejected"] not in {w.format(a=ex["answer"]) for w in preference.POLITE}
        if ex["kind"] == "sort":
            digits = ex["answer"].split()
            assert digits == sorted(digits)


def test_knobs_are_checked():
    assert preference.Preference(kinds=("sort",)).example("test", 0, 0)["kind"] == "sort"
    with pytest.raises(ValueError, match="kinds"):
        preference.Preference(kinds=("poetry",))
    with pytest.raises(ValueError, match="defects"):
        preference.Preference(defects=())
