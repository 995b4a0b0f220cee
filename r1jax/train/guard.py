"""When to stop a run whose updates keep going non-finite (the trainers' host-side rule).

Each jitted step rejects an update whose loss, gradient norm, new parameters or new optimizer
state hold a NaN or an infinity (`state.guard_update`), so the state stays finite and one bad
batch costs one update. A run whose updates keep failing must still stop, with a reason:

  * `max_consecutive` skipped updates in a row (a broken state or learning rate), or
  * more than `max_fraction` of the last `window` updates skipped (a persistent partial failure,
    e.g. one poisoned group every step), checked once `window` updates have run.

`NonFiniteGuard.state()` goes into each checkpoint's meta, so a resumed run continues the
count exactly as an uninterrupted one would.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from typing import Any


class NonFiniteError(RuntimeError):
    """Too many updates had non-finite values (the message names the rule and the last
    checkpoint, which is finite: checkpoints are never written from a non-finite state)."""


def check_settings(owner: str, max_consecutive: int, window: int, max_fraction: float) -> None:
    """Raises ValueError naming `<owner>.<field>` for a bad setting of the rule."""
    if not isinstance(max_consecutive, int) or max_consecutive < 1:
        raise ValueError(f"{owner}.max_consecutive_nonfinite={max_consecutive!r}: must be an int "
                         ">= 1")
    if not isinstance(window, int) or window < 1:
        raise ValueError(f"{owner}.nonfinite_window={window!r}: must be an int >= 1")
    if not (isinstance(max_fraction, int | float) and math.isfinite(max_fraction)
            and 0.0 <= max_fraction <= 1.0):
        raise ValueError(f"{owner}.max_nonfinite_fraction={max_fraction!r}: must be in [0, 1] "
                         "(1 turns the rate rule off)")


@dataclasses.dataclass
class NonFiniteGuard:
    """Counts skipped updates; `reason()` says why the run must stop, or None.

    Args:
      max_consecutive: stop after this many skipped updates in a row.
      window: the rate rule looks at the last `window` updates.
      max_fraction: stop when more than this fraction of them were skipped.
    """

    max_consecutive: int
    window: int
    max_fraction: float
    consecutive: int = 0
    recent: list[int] = dataclasses.field(default_factory=list)  # 1 = skipped, oldest first

    def record(self, skipped: Iterable[Any]) -> None:
        """Adds the outcomes of the updates just run, in order (truthy = skipped)."""
        for flag in skipped:
            flag = int(bool(flag))
            self.consecutive = self.consecutive + 1 if flag else 0
            self.recent.append(flag)
        del self.recent[: max(0, len(self.recent) - self.window)]

    def reason(self) -> str | None:
        """Why the run must stop now (naming the rule that tripped), or None."""
        if self.consecutive >= self.max_consecutive:
            return (f"{self.consecutive} consecutive updates were non-finite "
                    f"(max_consecutive_nonfinite={self.max_consecutive})")
        skipped = sum(self.recent)
        if len(self.recent) >= self.window and skipped > self.max_fraction * self.window:
            return (f"{skipped} of the last {self.window} updates were non-finite "
                    f"(max_nonfinite_fraction={self.max_fraction})")
        return None

    def state(self) -> dict[str, Any]:
        """JSON for a checkpoint's meta."""
        return {"consecutive": self.consecutive, "recent": list(self.recent)}

    def check(self, what: str, step: int, ckpt, detail: str = "") -> None:
        """Raises `NonFiniteError` when the rule tripped, naming the run (`what`), the step,
        the rule, `detail` (e.g. the last loss) and `ckpt`'s newest checkpoint, after waiting
        for its pending save (so the checkpoint named is on disk)."""
        reason = self.reason()
        if reason is None:
            return
        ckpt.wait()
        latest = ckpt.latest_step()
        where = (f"the last checkpoint, step {latest} in {ckpt.directory}, is finite (a "
                 "non-finite state is never saved)" if latest is not None
                 else "no checkpoint was written yet")
        raise NonFiniteError(
            f"{what} stopped at step {step}: {reason}: a non-finite loss, gradient, parameter "
            f"or optimizer moment{f' ({detail})' if detail else ''}. Those updates were "
            f"skipped; {where}. Lower the learning rate, check the data, or raise "
            "max_consecutive_nonfinite / max_nonfinite_fraction.")

    def load(self, state: dict[str, Any]) -> None:
        """Continues from `state()` of a checkpoint."""
        self.consecutive = int(state["consecutive"])
        self.recent = [int(v) for v in state["recent"]][-self.window:]
