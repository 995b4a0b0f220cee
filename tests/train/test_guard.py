"""The rule that stops a run whose updates keep going non-finite."""

import pytest

from r1jax.train import guard


class _Ckpt:
    directory = "/runs/x/checkpoints"

    def __init__(self, latest):
        self.latest, self.waited = latest, False

    def wait(self):
        self.waited = True

    def latest_step(self):
        return self.latest


def test_consecutive_rule():
    g = guard.NonFiniteGuard(max_consecutive=3, window=100, max_fraction=1.0)
    g.record([1, 1, 0, 1, 1])
    assert g.reason() is None and g.consecutive == 2
    g.record([1])
    assert "3 consecutive updates" in g.reason()


def test_rate_rule_trips_on_a_persistent_partial_failure():
    """One poisoned update in every step of two (the issue's 8 of 20 skipped) never makes
    three in a row, but it is 40% of the window."""
    g = guard.NonFiniteGuard(max_consecutive=3, window=20, max_fraction=0.25)
    for step in range(10):
        assert g.reason() is None, step
        g.record([1, 0] if step % 5 < 4 else [0, 0])
    assert g.consecutive == 0
    assert g.reason() == "8 of the last 20 updates were non-finite (max_nonfinite_fraction=0.25)"
    # Checked only over a full window, and only the last `window` updates count.
    g = guard.NonFiniteGuard(max_consecutive=99, window=4, max_fraction=0.5)
    g.record([1, 1, 0])
    assert g.reason() is None
    g.record([0, 0, 0, 1])
    assert g.recent == [0, 0, 0, 1] and g.reason() is None
    g.record([1, 1])
    assert g.reason().startswith("3 of the last 4")


def test_state_round_trip_continues_the_counts_exactly():
    a = guard.NonFiniteGuard(max_consecutive=3, window=5, max_fraction=0.5)
    a.record([0, 1, 1])
    b = guard.NonFiniteGuard(max_consecutive=3, window=5, max_fraction=0.5)
    b.load(a.state())
    for g in (a, b):
        g.record([1, 0, 1])
    assert a.state() == b.state() and a.reason() == b.reason()


def test_check_names_the_rule_and_the_finite_checkpoint():
    g = guard.NonFiniteGuard(max_consecutive=2, window=10, max_fraction=1.0)
    ckpt = _Ckpt(40)
    g.record([1])
    g.check("sft", 41, ckpt)
    assert not ckpt.waited
    g.record([1])
    with pytest.raises(guard.NonFiniteError,
                       match=r"sft stopped at step 42: 2 consecutive updates.*\(loss=nan\).*"
                             r"step 40 in /runs/x/checkpoints, is finite"):
        g.check("sft", 42, ckpt, "loss=nan")
    assert ckpt.waited
    with pytest.raises(guard.NonFiniteError, match="no checkpoint was written yet"):
        g.check("sft", 42, _Ckpt(None))


@pytest.mark.parametrize("kwargs,field", [
    ({"max_consecutive": 0}, "max_consecutive_nonfinite"),
    ({"window": 0}, "nonfinite_window"),
    ({"max_fraction": float("nan")}, "max_nonfinite_fraction"),
    ({"max_fraction": 1.5}, "max_nonfinite_fraction"),
])
def test_settings_are_checked_by_name(kwargs, field):
    settings = dict(max_consecutive=5, window=20, max_fraction=0.25) | kwargs
    with pytest.raises(ValueError, match=f"grpo.{field}="):
        guard.check_settings("grpo", *settings.values())
