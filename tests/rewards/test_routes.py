"""Reward routes (`registry.Spec.routes`): each reward scores only the rows of its tasks."""

import numpy as np
import pytest

from r1jax.data import tasks
from r1jax.rewards import registry


def test_routes_score_only_routed_rows():
    spec = registry.Spec.from_dict({"numeric": 1.0, "format_strict": 0.5},
                                   routes={"word_problems": ["numeric", "format_strict"],
                                           "preference": ["format_strict"]})
    good = "<think> 2 + 2 = 4 </think> <answer> 4 </answer>"
    out = registry.combine(spec, [good, good, good], answer=["4", "4", "4"],
                           task=["word_problems", "preference", "other"])
    np.testing.assert_allclose(out.components["numeric"], [1.0, 0.0, 1.0])
    np.testing.assert_allclose(out.components["format_strict"], [1.0, 1.0, 1.0])
    np.testing.assert_allclose(out.total, [1.5, 0.5, 1.5])
    plain = registry.combine(registry.Spec.from_dict({"numeric": 1.0}), [good], answer=["4"],
                             task=["preference"])
    np.testing.assert_allclose(plain.total, [1.0])  # no routes: every reward on every row


def test_routes_must_name_weighted_rewards():
    with pytest.raises(ValueError, match="not weighted"):
        registry.Spec.from_dict({"numeric": 1.0}, routes={"preference": ["format_strict"]})


def test_mixture_keeps_each_task_and_split():
    task = tasks.get("mixture", general_fraction=0.5)
    examples = [task.example("test", 0, i) for i in range(40)]
    kinds = {e["task"] for e in examples}
    assert kinds == {"word_problems", "preference"}
    assert all(e["split"] == "test" for e in examples)
    assert tasks.get("mixture", **task.knobs()).knobs() == task.knobs()


def _shout(completion: str) -> float:
    return float(completion.isupper())


def test_a_specs_extra_reward_is_passed_not_registered():
    # The R1 pipeline hands its learned reward model to the all-scenario stage this way.
    shout = registry.RewardFn("shout", score=_shout)
    before = registry.names()
    with pytest.raises(ValueError, match="unknown reward 'shout'"):
        registry.Spec.from_dict({"shout": 1.0, "format_strict": 1.0})
    spec = registry.Spec.from_dict({"shout": 1.0, "format_strict": 1.0}, extra=[shout])
    assert spec.reward("shout") is shout and spec.accuracy_name() is None
    scored = registry.combine(spec, ["HI", "hi"])
    np.testing.assert_array_equal(scored.components["shout"], [1.0, 0.0])
    assert registry.names() == before  # nothing registered along the way
    with pytest.raises(TypeError, match=r"Spec.extra: .* lacks the reward attribute"):
        registry.Spec.from_dict({"format_strict": 1.0}, extra=[object()])
