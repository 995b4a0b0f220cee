"""Metrics JSONL/TensorBoard writer, resume truncation, crash leftovers, and plots."""

import glob
import json
import math
import struct

import jax.numpy as jnp
import numpy as np
import pytest
from tensorboardX.proto import event_pb2

from r1jax.train import metrics


def _tb_scalars(workdir):
    """(tag, step, value) of every scalar in the TFRecord event files, in write order."""
    out = []
    for path in sorted(glob.glob(str(workdir / "tensorboard" / "events.*"))):
        data = open(path, "rb").read()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            out += [(v.tag, event.step, v.simple_value) for v in event.summary.value]
    return out


def test_write_read_and_tensorboard(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        writer.write(1, {"reward": jnp.float32(0.5), "count": np.int64(3), "ok": True})
        writer.write(2, {"reward": 0.75, "loss": float("nan")})
    records = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert records[0] == {"step": 1, "reward": 0.5, "count": 3, "ok": 1}
    assert isinstance(records[0]["count"], int)
    assert records[1]["reward"] == 0.75 and math.isnan(records[1]["loss"])
    scalars = _tb_scalars(tmp_path)
    assert ("reward", 1, 0.5) in scalars and ("reward", 2, 0.75) in scalars


def test_reopening_appends_and_never_truncates(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as writer:
        writer.write(1, {"a": 1.0})
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as writer:
        writer.write(2, {"a": 2.0})
    assert [r["step"] for r in metrics.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    assert not (tmp_path / "tensorboard").exists()


def test_truncate_after_on_resume(tmp_path):
    with metrics.MetricsWriter(tmp_path) as writer:
        for step in range(1, 6):
            writer.write(step, {"a": float(step)})
    with metrics.MetricsWriter(tmp_path) as writer:  # resumed from the step-3 checkpoint
        writer.truncate_after(3)
        assert [r["step"] for r in metrics.read_jsonl(writer.path)] == [1, 2, 3]
        writer.write(4, {"a": 40.0})
    records = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [(r["step"], r["a"]) for r in records] == [(1, 1), (2, 2), (3, 3), (4, 40)]
    assert not list(tmp_path.glob("*.tmp"))
    # Earlier event files survive; the new one purges steps >= 4 and then logs step 4 again.
    scalars = _tb_scalars(tmp_path)
    assert scalars[:5] == [("a", s, float(s)) for s in range(1, 6)]
    assert scalars[-1] == ("a", 4, 40.0)


def test_partial_last_line_from_a_crash_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 1, "a": 1.0}) + '\n{"step": 2, "a"')
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as writer:
        writer.write(2, {"a": 2.0})
    assert metrics.read_jsonl(path) == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]


def test_bad_input_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        metrics.read_jsonl(bad)
    bad.write_text('{"step": 1}\n{oops\n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        metrics.read_jsonl(bad)
    writer = metrics.MetricsWriter(tmp_path, use_tensorboard=False)
    with pytest.raises(ValueError, match="'vec' is not a numeric scalar"):
        writer.write(1, {"vec": np.zeros(3)})
    with pytest.raises(ValueError, match="'step' is reserved"):
        writer.write(1, {"step": 3})


def test_only_process_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(metrics.jax, "process_index", lambda: 1)
    writer = metrics.MetricsWriter(tmp_path / "run")
    writer.write(1, {"a": 1.0})
    writer.truncate_after(0)
    writer.close()
    assert not (tmp_path / "run").exists()


def test_plot_metrics(tmp_path):
    with metrics.MetricsWriter(tmp_path, use_tensorboard=False) as writer:
        for step in range(20):
            writer.write(step, {"reward": step / 20, "response_length": 100 + step})
    out = tmp_path / "curves.png"
    metrics.plot_metrics(tmp_path / "metrics.jsonl", ["reward", "response_length", "absent"], out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob("*.tmp"))
    with pytest.raises(ValueError, match="at least one key"):
        metrics.plot_metrics(tmp_path / "metrics.jsonl", [], out)
