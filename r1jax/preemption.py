"""Preemption: SIGTERM becomes a request to checkpoint and exit with status 75 (EX_TEMPFAIL).

Schedulers (Slurm, Kubernetes, TPU maintenance events) send SIGTERM, wait a grace period and
then SIGKILL. The entry points in `experiments/` call `install()` before their slow imports, so
a SIGTERM at any moment sets a flag instead of killing the process; the trainers poll the flag
between steps, save a checkpoint of the last completed step, and stop (the GRPO trainer returns
`preempted`, SFT and reward-model training raise `Preempted`). The entry point then prints
"preempted at step N" and exits with `EXIT_PREEMPTED`, so a scheduler can tell a preempted run
(rerun the same command to resume) from a finished one (0) and a failed one (1, or any other
non-zero status).

This module imports nothing heavy: it must be importable in the first milliseconds.
"""

from __future__ import annotations

import contextlib
import functools
import signal
import sys
import threading

EXIT_PREEMPTED = 75  # EX_TEMPFAIL (sysexits.h): temporary failure, the caller may retry

_requested = threading.Event()
_installed = False


class Preempted(Exception):
    """A trainer stopped on SIGTERM after checkpointing `step` (its work resumes on rerun)."""

    def __init__(self, step: int, where: str):
        super().__init__(f"preempted at step {step} ({where}); rerun the same command to resume")
        self.step, self.where = step, where


def _handler(signum, frame) -> None:
    del signum, frame
    _requested.set()


def install() -> None:
    """Routes SIGTERM to the preemption flag for the rest of the process (main thread only;
    elsewhere a no-op, since Python delivers signals to the main thread)."""
    global _installed
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _handler)
        _installed = True


def clear() -> None:
    """Forgets a SIGTERM already received (a test, or a notebook that carries on)."""
    _requested.clear()


def requested() -> bool:
    """Whether SIGTERM has arrived since `install()`."""
    return _requested.is_set()


@contextlib.contextmanager
def handling():
    """Yields the preemption flag (a `threading.Event`), with SIGTERM routed to it meanwhile.

    When an entry point already called `install()`, its handler stays (a SIGTERM that came
    during start-up is still set); otherwise the handler is installed for the block and the
    previous one restored after it.
    """
    if _installed or threading.current_thread() is not threading.main_thread():
        yield _requested
        return
    previous = signal.signal(signal.SIGTERM, _handler)
    try:
        yield _requested
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_status(main):
    """Wraps an entry point's `main(argv)`: `Preempted` prints "preempted at step N (...)" and
    exits with `EXIT_PREEMPTED`; a normal return exits 0 and an exception 1 as usual."""

    @functools.wraps(main)
    def wrapped(argv):
        try:
            return main(argv)
        except Preempted as e:
            print(f"\n{e}", flush=True)
            sys.exit(EXIT_PREEMPTED)

    return wrapped
