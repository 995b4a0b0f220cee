"""The run manifest of a multi-stage experiment, and the loop that runs stages resumably.

`<workdir>/manifest.json` holds, per stage: status ("running" or "complete"), attempts, start
and finish times (Unix seconds), the wall time of the attempt that finished it, its output
paths (relative to the workdir) and its metrics. It is rewritten atomically (temporary file,
fsync, rename) at every change, so a kill at any moment leaves the previous or the next version.

`run_stages` runs stages in order: a stage whose entry is complete (and whose outputs exist) is
skipped; an unfinished one runs again in its own directory, where its trainer resumes from its
checkpoints. `start=NAME` requires every earlier stage to be complete and reruns NAME and every
later stage: a complete stage's directory is first moved aside to `<name>.replaced-<k>` (never
deleted), since its outputs are stale once an earlier stage changes.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from r1jax import ownership
from r1jax.train import metrics

NAME = "manifest.json"
#: A stage: fn(stage_dir) -> (outputs {name: path}, metrics {name: JSON value}).
StageFn = Callable[[pathlib.Path], tuple[dict[str, str], dict[str, Any]]]


def _atomic_write_json(path: pathlib.Path, value: dict) -> None:
    metrics.atomic_write_bytes(
        path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())


class Manifest:
    """manifest.json of `workdir` (created empty when missing)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = pathlib.Path(workdir).absolute()
        self.path = self.workdir / NAME
        self.data = json.loads(self.path.read_text()) if self.path.exists() else {"stages": {}}

    def entry(self, name: str) -> dict[str, Any]:
        return self.data["stages"].get(name, {})

    def is_complete(self, name: str) -> bool:
        """Complete in the manifest, and every recorded output still exists."""
        entry = self.entry(name)
        return entry.get("status") == "complete" and all(
            (self.workdir / p).exists() for p in entry.get("outputs", {}).values())

    def output(self, name: str, key: str) -> pathlib.Path:
        """The absolute path of a complete stage's output `key`."""
        if not self.is_complete(name):
            raise RuntimeError(f"{self.path}: stage {name!r} is not complete; run it first")
        return self.workdir / self.entry(name)["outputs"][key]

    def _save(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        _atomic_write_json(self.path, self.data)

    def start(self, name: str) -> None:
        previous = self.entry(name)
        self.data["stages"][name] = {"status": "running", "started": time.time(),
                                     "attempts": previous.get("attempts", 0) + 1}
        self._save()

    def finish(self, name: str, outputs: dict[str, str | os.PathLike],
               metrics: dict[str, Any], wall_s: float) -> None:
        entry = self.data["stages"][name]
        rel = {k: os.path.relpath(pathlib.Path(v).absolute(), self.workdir)
               for k, v in outputs.items()}
        entry.update(status="complete", finished=time.time(), wall_s=wall_s, outputs=rel,
                     metrics=metrics)
        self._save()

    def replace(self, name: str) -> pathlib.Path | None:
        """Moves the stage's directory aside and forgets its entry; returns where it went."""
        self.data["stages"].pop(name, None)
        self._save()
        directory = self.workdir / name
        if not directory.exists():
            return None
        k = 1
        while (self.workdir / f"{name}.replaced-{k}").exists():
            k += 1
        target = self.workdir / f"{name}.replaced-{k}"
        os.replace(directory, target)
        return target


def run_stages(stages: Sequence[tuple[str, StageFn]], manifest: Manifest,
               start: str | None = None, log: Callable[[str], None] = print) -> Manifest:
    """Runs (or resumes, or skips) each stage in order, recording into `manifest` (which the
    stage functions may read for earlier stages' outputs); see the module docstring."""
    names = [name for name, _ in stages]
    ownership.claim(manifest.workdir, "r1 pipeline run")  # never someone else's directory
    if start is not None and start not in names:
        raise ValueError(f"--stage={start!r}: unknown stage; stages are {names}")
    rerun_from = names.index(start) if start is not None else len(names)
    for i, (name, fn) in enumerate(stages):
        if i < rerun_from and start is not None and not manifest.is_complete(name):
            raise RuntimeError(f"--stage={start}: earlier stage {name!r} is not complete in "
                               f"{manifest.path}; run without --stage (or --stage={name})")
        if i >= rerun_from and manifest.is_complete(name):
            moved = manifest.replace(name)
            log(f"[{name}] rerun: previous outputs moved to {moved}")
        if manifest.is_complete(name):
            log(f"[{name}] complete ({manifest.entry(name)['wall_s']:.0f} s): skipped")
            continue
        resumed = manifest.entry(name).get("status") == "running"
        log(f"[{name}] {'resuming' if resumed else 'starting'}")
        manifest.start(name)
        t0 = time.time()
        stage_dir = manifest.workdir / name
        stage_dir.mkdir(parents=True, exist_ok=True)
        outputs, metrics = fn(stage_dir)
        manifest.finish(name, outputs, metrics, time.time() - t0)
        log(f"[{name}] done in {time.time() - t0:.0f} s")
    return manifest
