"""Training metrics: a JSONL log, TensorBoard scalars, and plots of both against step.

`<workdir>/metrics.jsonl` holds one JSON object per logged step, `{"step": s, "reward": ...}`,
appended and flushed line by line, so a crash loses at most the line being written. The file is
never truncated on open. On resume the trainer calls `truncate_after(resumed_step)` (-1 when it
starts from scratch), which drops the lines logged after the checkpoint it resumed from (they
will be logged again) by writing a new file and `os.replace`-ing it, so the log is never half
rewritten. A partial last line left
by a crash is dropped when a writer opens the file. TensorBoard event files go to
`<workdir>/tensorboard/` (tensorboardX); after `truncate_after` the next event file purges the
later steps too.

Only process 0 (`jax.process_index() == 0`) writes; on other hosts every method is a no-op.
Plots use matplotlib's object API with the Agg canvas, so the global backend (e.g. Colab's
inline one) is left untouched.
"""

from __future__ import annotations

import json
import math
import numbers
import os
import pathlib
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` through a synced temporary file in the same directory and
    `os.replace`, so readers see the old file or the new one, never a partial write."""
    path = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _drop_partial_last_line(path: str) -> None:
    with open(path, "rb") as f:
        data = f.read()
    if data and not data.endswith(b"\n"):
        atomic_write_bytes(path, data[: data.rfind(b"\n") + 1])


def _to_scalar(key: str, value: Any) -> int | float:
    """A Python number from a Python/NumPy/JAX scalar; ints stay ints (counts), bools become 0/1."""
    array = np.asarray(value)
    if array.size != 1 or not (
        np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.bool_)
    ):
        raise ValueError(f"metric {key!r} is not a numeric scalar: {value!r}")
    item = array.reshape(()).item()
    return int(item) if isinstance(item, numbers.Integral) else float(item)


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL metrics file, in file order.

    Raises ValueError naming the file and line for a line that is not a JSON object.
    """
    records = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from e
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object, got {line.strip()!r}")
            records.append(record)
    return records


def truncate_jsonl(path: str | os.PathLike, step: int) -> None:
    """Drops the records of a JSONL log with "step" > `step` (`step` = -1 drops all), by an
    atomic rewrite; a missing file is left missing."""
    if os.path.exists(path):
        kept = [r for r in read_jsonl(path) if r["step"] <= step]
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in kept).encode())


class MetricsWriter:
    """Appends per-step scalar dicts to `<workdir>/metrics.jsonl` and to TensorBoard.

    Args:
      workdir: the run's directory (created if missing).
      use_tensorboard: also write TensorBoard event files under `<workdir>/tensorboard/`.
    """

    def __init__(self, workdir: str | os.PathLike, use_tensorboard: bool = True):
        self.path = os.path.join(os.fspath(workdir), JSONL_NAME)
        self._tb_dir = os.path.join(os.fspath(workdir), TENSORBOARD_DIR)
        self._use_tensorboard = use_tensorboard
        self._tb = None
        self._purge_step: int | None = None
        self._active = jax.process_index() == 0
        if self._active:
            os.makedirs(workdir, exist_ok=True)
            if os.path.exists(self.path):
                _drop_partial_last_line(self.path)

    def write(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Logs `scalars` (Python, NumPy or JAX scalars) at `step`."""
        if not self._active:
            return
        if "step" in scalars:
            raise ValueError("'step' is reserved for the step argument; rename the metric")
        record = {"step": int(step)}
        record.update((k, _to_scalar(k, v)) for k, v in scalars.items())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._use_tensorboard:
            tb = self._tensorboard()
            for key, value in record.items():
                if key != "step":
                    tb.add_scalar(key, value, global_step=record["step"])

    def truncate_after(self, step: int) -> None:
        """Drops logged records with step > `step` (call on resume from checkpoint `step`, or
        with -1 when there is no checkpoint: a run restarted from scratch logs anew)."""
        if not self._active:
            return
        truncate_jsonl(self.path, step)
        self._close_tensorboard()
        self._purge_step = max(step + 1, 0)

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        self._close_tensorboard()

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _tensorboard(self):
        if self._tb is None:
            import tensorboardX  # imported lazily: only process 0 with TensorBoard on needs it

            # Event file names carry whole seconds only; a unique suffix stops a reopened writer
            # from overwriting the previous file written in the same second.
            self._tb = tensorboardX.SummaryWriter(
                self._tb_dir,
                purge_step=self._purge_step,
                flush_secs=10,
                filename_suffix=f".{time.time_ns()}",
            )
            self._purge_step = None
        return self._tb

    def _close_tensorboard(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def plot_metrics(
    jsonl_path: str | os.PathLike, keys: Sequence[str], out_png: str | os.PathLike
) -> None:
    """Draws each metric in `keys` against step, one subplot per key, into `out_png`.

    A key with no finite values gets an empty panel saying so. The PNG is written to a temporary
    file and renamed, so a reader never sees a half-written image.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not keys:
        raise ValueError("plot_metrics needs at least one key")
    records = read_jsonl(jsonl_path)
    fig = Figure(figsize=(7, 2.2 * len(keys)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
    for ax, key in zip(axes, keys):
        points = [
            (r["step"], r[key])
            for r in records
            if isinstance(r.get(key), int | float) and math.isfinite(r[key])
        ]
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, linewidth=1.2)
        else:
            ax.text(
                0.5, 0.5, f"no data for {key!r}", ha="center", va="center", transform=ax.transAxes
            )
    axes[-1].set_xlabel("step")
    tmp = f"{os.fspath(out_png)}.tmp"
    fig.savefig(tmp, format="png", dpi=100)
    os.replace(tmp, out_png)
