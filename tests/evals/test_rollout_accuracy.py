"""Reward kinds: the logged accuracy and cosine's `correct` come from whichever weighted reward
declares `is_accuracy`, with no list of names to extend (issue 20)."""

import dataclasses

import numpy as np
import pytest

from r1jax.data import templates
from r1jax.evals import rollout
from r1jax.rewards import length, registry
from r1jax.rewards import pool as pool_lib

NAME = "test_says_correct"
# Both are well-formed R1-Zero answers of 7, so a math or numeric checker (or the generic
# "accuracy" fallback) calls both right; the registered checker below calls only the first right.
TEXTS = [" <think> 3 + 4 = 7, CORRECT </think> <answer> 7 </answer>",
         " <think> 3 + 4 = 7 </think> <answer> 7 </answer>"]


def says_correct(completion, answer):
    """A checker no built-in list knows: 1.0 when the completion says CORRECT."""
    del answer
    return float("CORRECT" in completion)


@pytest.fixture
def checker():
    fn = registry.RewardFn(NAME, says_correct, fields=("answer",), is_accuracy=True)
    registry.register(fn)
    try:
        yield fn
    finally:
        registry.unregister(NAME)


def test_a_registered_accuracy_reward_is_the_logged_accuracy(checker, monkeypatch):
    spec = registry.Spec.from_dict({"format_strict": 0.5, NAME: 1.0})
    assert spec.accuracy_name() == NAME
    assert not rollout.needs_pool(spec)  # the generic pooled "accuracy" is not needed
    ctx = rollout.Context(None, None, templates.get("r1_zero"), spec, None, None)
    batch = {"texts": TEXTS, "lengths": np.full([2], 12), "fields": {"answer": ["7", "7"]}}
    with monkeypatch.context() as m:  # falling back to the pooled generic checker would start one
        m.setattr(pool_lib.WorkerPool, "__init__", lambda *a, **k: pytest.fail("pool started"))
        scored = rollout.score(ctx, batch)
    np.testing.assert_array_equal(scored["accuracy"], [1.0, 0.0])
    np.testing.assert_array_equal(scored["components"][NAME], [1.0, 0.0])
    np.testing.assert_array_equal(scored["format"], [1.0, 1.0])


def test_a_registered_accuracy_reward_feeds_cosine_correct(checker):
    spec = registry.Spec.from_dict({"cosine": 1.0, NAME: 1.0},
                                   options={"cosine": {"max_length": 64}})
    lengths = [10, 10]
    combined = registry.combine(spec, TEXTS, answer=["7", "7"], lengths=lengths)
    want = length.cosine(lengths, np.array([True, False]), max_length=64)
    np.testing.assert_allclose(combined.components["cosine"], want)
    assert combined.components["cosine"][0] > 0 > combined.components["cosine"][1]


def test_accuracy_name_follows_the_attribute_and_the_weight_order(checker):
    assert registry.Spec.from_dict({NAME: 1.0, "numeric": 1.0}).accuracy_name() == NAME
    assert registry.Spec.from_dict({"numeric": 1.0, NAME: 1.0}).accuracy_name() == "numeric"
    assert registry.Spec.from_dict({"format_strict": 1.0}).accuracy_name() is None
    registry.register(dataclasses.replace(checker, is_accuracy=False), replace=True)
    assert registry.Spec.from_dict({NAME: 1.0}).accuracy_name() is None
    built_in = {n for n in registry.names() if registry.get(n).is_accuracy}
    assert built_in == {"accuracy", "countdown", "math", "numeric", "code"}


def test_register_names_missing_reward_attributes():
    class NoKind:
        name, fields, optional, low, high, pooled = "test_no_kind", (), (), 0.0, 1.0, False

        def with_options(self, **options):
            return self

        def __call__(self, completions, *, pool=None, **fields):
            return np.zeros(len(completions), np.float32)

    with pytest.raises(TypeError, match="is_accuracy"):
        registry.register(NoKind())
    assert "test_no_kind" not in registry.names()
