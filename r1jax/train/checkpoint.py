"""Checkpoints: a thin wrapper over orbax's `CheckpointManager`.

Each step directory holds two items, written together:

    <workdir>/<step>/state   the train-state pytree (orbax StandardSave: sharded arrays,
                             each host writing its own shards)
    <workdir>/<step>/meta    a JSON dict (JsonSave): data-pipeline position, config, anything
                             needed to resume exactly where the run stopped

Guarantees relied on by the trainers:
  * Atomic: orbax writes `<step>.orbax-checkpoint-tmp-<ts>/` and renames it to `<step>/` only
    once every item is complete (on GCS a `commit_success.txt` marks it instead). A crash
    mid-write leaves a tmp directory that is never taken for a step; the next `Checkpointer` on
    the directory deletes it (orbax starts that when it opens and finishes it before the first
    save).
  * Async: `save` returns once the arrays are copied to host memory, so the caller may donate
    or overwrite the device buffers right after; writing continues in a background thread.
    `wait()` blocks until it is on disk.
  * Keep N: only the newest `max_to_keep` steps survive.
  * Restore into any sharding: `restore_latest(abstract_state)` places each array as the
    `jax.ShapeDtypeStruct`'s sharding says, which need not be the sharding it was saved with.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def abstract_tree(tree, shardings=None) -> Any:
    """A pytree of `jax.ShapeDtypeStruct`s for `tree`, with `shardings` (a matching pytree) or
    each array's own sharding. Works on the output of `jax.eval_shape` as well as on arrays."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


class Checkpointer:
    """Saves and restores (train state, JSON meta) pairs under one directory.

    Args:
      directory: where step directories live (created if missing).
      max_to_keep: how many of the newest checkpoints to keep.
      save_interval_steps: `save` only writes when step % save_interval_steps == 0, unless forced.
      async_save: write in a background thread (see the module docstring).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int = 3,
        save_interval_steps: int = 1,
        async_save: bool = True,
    ):
        if max_to_keep < 1:
            raise ValueError(f"max_to_keep={max_to_keep} must be >= 1")
        self.directory = os.path.abspath(os.fspath(directory))
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def save(self, step: int, state, meta: dict[str, Any], force: bool = False) -> bool:
        """Starts saving `state` and `meta` as `step`; returns whether a save was started.

        `meta` must be JSON-serialisable; it is checked here, before anything is written.
        """
        try:
            json.dumps(meta)
        except TypeError as e:
            raise ValueError(
                f"checkpoint meta for step {step} is not JSON-serialisable: {e}"
            ) from e
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self._manager.save(int(step), args=args, force=force)

    def latest_step(self) -> int | None:
        """The newest finalised step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All finalised steps, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of `step`, arrays placed per `abstract_state`'s shardings."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        restored = self._manager.restore(int(step), args=args)
        return restored.state, restored.meta

    def restore_latest(self, abstract_state) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest finalised step, or None when there is none.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `sharding` (see
            `abstract_tree`), the structure of the saved state.
        """
        step = self.latest_step()
        if step is None:
            return None
        return self.restore(step, abstract_state)

    def wait(self) -> None:
        """Blocks until pending asynchronous saves are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases the manager's threads."""
        self._manager.wait_until_finished()
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
