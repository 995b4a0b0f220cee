"""Parallel reward scoring in worker processes, with a per-item timeout.

Rule-based rewards (DeepSeek-R1, Sec. 2.2.2) run on untrusted model output: a symbolic checker
can hang on a pathological expression and sandboxed code can hang or crash its host. `WorkerPool`
scores a batch over long-lived worker processes and guarantees an answer for every item:

- soft limit: each item runs under `ITIMER_REAL`; a Python-level hang raises inside the worker,
  the item scores the failure value and the worker carries on;
- hard limit: a worker silent for `timeout_s + grace_s` (stuck in C code) or dead (segfault,
  `os._exit`, OOM kill) is SIGKILLed and replaced. Its unreported items are re-run one per
  message, so the culprit is identified and scores the failure value; the others are unharmed;
- batch budget (`budget_s`): when the whole batch runs past it, the items not yet scored score
  the failure value and are counted (`over_budget`); busy workers are replaced.

Items travel in chunks and results come back in batches at least every `FLUSH_S` (amortising
IPC), so the timeout stays per item. Workers start with "forkserver": forking a parent that runs JAX threads is unsafe.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import math
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from multiprocessing import connection
from typing import Any

import numpy as np

from r1jax.rewards import sandbox

PRELOAD = ("r1jax.rewards.registry", "math_verify")


class _ItemTimeout(BaseException):
    """Raised by SIGALRM inside a worker; BaseException so `except Exception` can't swallow it."""


def _on_alarm(signum, frame):
    raise _ItemTimeout()


@dataclasses.dataclass(frozen=True)
class _RunError:
    """Sent back instead of a score when the scorer's sandbox broke; `map` re-raises it."""

    message: str


def _score_one(fn: Callable[..., float], kwargs: Mapping[str, Any], timeout_s: float) -> float:
    """Runs fn(**kwargs) under a soft timeout; any failure gives NaN (scored by the caller),
    except a broken sandbox, which is an error of the run (never a silent zero reward)."""
    signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        value = float(fn(**kwargs))
    except sandbox.SandboxError as e:
        value = _RunError(str(e))
    except BaseException:  # noqa: BLE001 - untrusted input: every failure is a zero reward
        value = math.nan
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return value


FLUSH_S = 0.02


def _worker_main(conn: connection.Connection, preload: Sequence[str]) -> None:
    """Worker loop: receive (fn, timeout_s, [(index, kwargs), ...]); ack with an empty list,
    then send lists of (index, value), at least every FLUSH_S and at the end of the chunk."""
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    for module in preload:  # slow imports (sympy) here, not under the first item's timer
        try:
            importlib.import_module(module)
        except ImportError:
            pass
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        fn, timeout_s, chunk = message
        conn.send([])  # the item clock starts now, not while we were importing
        done, last_flush = [], time.monotonic()
        for index, kwargs in chunk:
            done.append((index, _score_one(fn, kwargs, timeout_s)))
            if time.monotonic() - last_flush > FLUSH_S:
                conn.send(done)
                done, last_flush = [], time.monotonic()
        conn.send(done)


@dataclasses.dataclass
class _Worker:
    process: Any
    conn: connection.Connection
    pending: collections.deque = dataclasses.field(default_factory=collections.deque)
    deadline: float = math.inf


class WorkerPool:
    """A fixed set of worker processes that score items in parallel.

    Use as a context manager, or call `close()`. Not thread-safe: one `map` at a time.

    Args:
      num_workers: processes; default `os.cpu_count()`.
      grace_s: extra wall time past an item's soft timeout before its worker is killed.
      start_method: multiprocessing start method ("forkserver" is safe with JAX threads).
      preload: modules each worker imports at start (before any item's timer runs).
      startup_s: how long a worker may take to pick up its first message.
    """

    def __init__(
        self,
        num_workers: int | None = None,
        *,
        grace_s: float = 1.0,
        start_method: str = "forkserver",
        preload: Sequence[str] = PRELOAD,
        startup_s: float = 120.0,
    ):
        self.num_workers = max(1, num_workers or os.cpu_count() or 1)
        self.grace_s = grace_s
        self.preload = tuple(preload)
        self.startup_s = startup_s
        self._ctx = mp.get_context(start_method)
        self._workers: list[_Worker] = [self._spawn() for _ in range(self.num_workers)]
        self.restarts = 0
        self.over_budget = 0  # items of the last `map` left unscored when its budget ran out

    def _spawn(self) -> _Worker:
        parent_conn, child_conn = self._ctx.Pipe()
        process = self._ctx.Process(
            target=_worker_main, args=(child_conn, self.preload), daemon=True
        )
        process.start()
        child_conn.close()
        return _Worker(process=process, conn=parent_conn)

    def _replace(self, worker: _Worker) -> _Worker:
        worker.process.kill()
        worker.process.join(timeout=5)
        worker.conn.close()
        self.restarts += 1
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def map(
        self,
        fn: Callable[..., float],
        kwargs_list: Sequence[Mapping[str, Any]],
        *,
        timeout_s: float,
        failure: float = 0.0,
        chunk_size: int | None = None,
        budget_s: float | None = None,
    ) -> np.ndarray:
        """Returns float32 [N]: fn(**kwargs_list[i]), or `failure` on error, NaN or timeout.

        Args:
          fn: a module-level (picklable) function returning a float.
          kwargs_list: one keyword dict per item.
          timeout_s: soft wall-clock limit per item.
          failure: the score of an item that fails, times out or kills its worker.
          chunk_size: items sent per message; default spreads the batch ~4 chunks per worker.
          budget_s: wall-clock limit for the whole batch (None: none). Items not scored by then
            score `failure`, their workers are replaced, and `self.over_budget` counts them.
        """
        self.over_budget = 0
        deadline = math.inf if budget_s is None else time.monotonic() + budget_s
        n = len(kwargs_list)
        out = np.full([n], np.nan, np.float64)
        if chunk_size is None:
            chunk_size = max(1, min(256, n // (4 * self.num_workers)))
        queue = collections.deque(
            [(i, kwargs_list[i]) for i in range(s, min(s + chunk_size, n))]
            for s in range(0, n, chunk_size)
        )
        hard_s = timeout_s + self.grace_s + FLUSH_S
        while queue or any(w.pending for w in self._workers):
            if time.monotonic() >= deadline:
                self.over_budget = self._abandon(queue)
                break
            for worker in list(self._workers):
                if queue and not worker.pending:
                    self._send(worker, fn, timeout_s, queue.popleft(), hard_s)
            busy = {w.conn: w for w in self._workers if w.pending}
            wake = min([deadline, *(w.deadline for w in busy.values())])
            wait_s = max(0.0, wake - time.monotonic())
            for conn in connection.wait(list(busy), timeout=wait_s):
                self._receive(busy[conn], out, queue, failure, hard_s)
            now = time.monotonic()
            for worker in [w for w in self._workers if w.pending and w.deadline < now]:
                self._recover(worker, out, queue, failure)
        out[~np.isfinite(out)] = failure
        return out.astype(np.float32)

    def _abandon(self, queue) -> int:
        """The batch budget ran out: drops the queued items and replaces every busy worker (its
        late results must not reach the next batch). Returns how many items were unscored."""
        count = sum(map(len, queue))
        queue.clear()
        for worker in [w for w in self._workers if w.pending]:
            count += len(worker.pending)
            worker.pending.clear()
            self._replace(worker)
        return count

    def _send(self, worker, fn, timeout_s, chunk, hard_s) -> None:
        if not worker.process.is_alive():  # died while idle: don't blame the next item
            worker = self._replace(worker)
        try:
            worker.conn.send((fn, timeout_s, chunk))
        except (OSError, ValueError):  # a dead worker's pipe: retry the chunk on a fresh one
            worker = self._replace(worker)
            worker.conn.send((fn, timeout_s, chunk))
        worker.pending.extend(chunk)
        worker.deadline = time.monotonic() + self.startup_s + hard_s

    def _receive(self, worker, out, queue, failure, hard_s) -> None:
        try:
            done = worker.conn.recv()
        except (EOFError, OSError):
            self._recover(worker, out, queue, failure)
            return
        for index, value in done:  # in chunk order
            if isinstance(value, _RunError):
                self._drop_pending()
                raise sandbox.SandboxError(value.message)
            out[index] = value
            worker.pending.popleft()
        worker.deadline = time.monotonic() + hard_s

    def _drop_pending(self) -> None:
        """Replaces every busy worker, so no late result reaches the next `map`."""
        for worker in [w for w in self._workers if w.pending]:
            worker.pending.clear()
            self._replace(worker)

    def _recover(self, worker, out, queue, failure) -> None:
        """The worker hung or died. Results are flushed in batches, so the culprit is only
        known when one item was pending: score it as a failure. Otherwise re-queue every
        pending item as its own chunk, which pins the culprit down on the next round."""
        if len(worker.pending) == 1:
            index, _ = worker.pending.popleft()
            out[index] = failure
        else:
            queue.extendleft([item] for item in reversed(worker.pending))
        worker.pending.clear()
        self._replace(worker)

    def close(self) -> None:
        """Stops the workers (idempotent)."""
        for worker in self._workers:
            try:
                worker.conn.send(None)
            except (OSError, ValueError):
                pass
        for worker in self._workers:
            worker.process.join(timeout=1)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
        self._workers = []

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
