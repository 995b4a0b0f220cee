"""r1jax.peak_flops: the best over sizes, repeats and rounds, per dtype."""

import math

import pytest

from r1jax import peak_flops


def test_peak_is_the_best_of_every_size_and_round(monkeypatch):
    """A load burst slows all but one timed size/round; the peak is that one's FLOP/s, and
    each dtype keeps its own best (a slow bfloat16 does not lower float32's)."""
    calls = []

    def fake_seconds(fn, x, repeats):
        calls.append((str(x.dtype), x.shape[0], repeats))
        fast = (str(x.dtype), x.shape[0], len(calls)) == ("float32", 32, 6)  # round 2
        return 1e-6 if fast else (1e-3 if x.dtype.name == "float32" else 4e-3)

    monkeypatch.setattr(peak_flops, "_best_seconds", fake_seconds)
    peaks = peak_flops.measure(("float32", "bfloat16"), sizes=(16, 32), repeats=2, rounds=2)
    assert len(calls) == 8 and {c[2] for c in calls} == {2}
    assert peaks["float32"] == pytest.approx(2 * 32**3 / 1e-6)
    assert peaks["bfloat16"] == pytest.approx(2 * 32**3 / 4e-3)


def test_real_measurement_is_finite_and_described():
    peaks = peak_flops.measure(("float32", "bfloat16"), sizes=(64,), repeats=1, rounds=1)
    assert set(peaks) == {"float32", "bfloat16"}
    assert all(math.isfinite(v) and v > 0 for v in peaks.values())
    assert peak_flops.describe(peaks).startswith("float32 ")


def test_rejects_empty_measurement():
    with pytest.raises(ValueError, match="sizes=()"):
        peak_flops.measure(sizes=())
