"""Resume, checkpoint and preemption steps shared by the SFT and reward-model trainers.

Both trainers keep their train state in a `checkpoint.Checkpointer` under `<workdir>/checkpoints`
with meta {"step": steps run, "nonfinite": `guard.NonFiniteGuard.state()`}, and their metrics
in `<workdir>/metrics.jsonl`, truncated on resume to the step resumed from.
"""

from __future__ import annotations

import os

from r1jax import preemption
from r1jax.train import checkpoint, guard, metrics


def resume(ckpt: checkpoint.Checkpointer, abstract_state, workdir, nonfinite: guard.NonFiniteGuard):
    """(state or None, start step, a `MetricsWriter` truncated to that step) from the newest
    checkpoint that verifies (newer ones that fail are named and set aside)."""
    restored = ckpt.restore_latest(abstract_state, set_aside=True)
    state, start = None, 0
    if restored is not None:
        state, meta = restored
        start = int(meta["step"])  # steps run; state["step"] counts the applied updates
        nonfinite.load(meta["nonfinite"])
    writer = metrics.MetricsWriter(workdir)
    writer.truncate_after(start)
    return state, start, writer


def save(ckpt: checkpoint.Checkpointer, state, step: int, nonfinite: guard.NonFiniteGuard):
    """Checkpoints `state` as `step` with the non-finite counts (once per step)."""
    if ckpt.latest_step() != step:
        ckpt.save(step, state, {"step": step, "nonfinite": nonfinite.state()}, force=True)


def stop_if_preempted(preempt, ckpt, state, step: int, nonfinite, workdir) -> None:
    """On SIGTERM: checkpoints the `step` completed steps and raises `preemption.Preempted`."""
    if not preempt.is_set():
        return
    if step > 0:
        save(ckpt, state, step, nonfinite)
    ckpt.wait()
    raise preemption.Preempted(step, os.fspath(workdir))
