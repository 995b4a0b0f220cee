"""Checkpoints: orbax's `CheckpointManager`, with every array checksummed and verified.

Each step directory holds three items, written together:

    <workdir>/<step>/state      the train-state pytree (orbax StandardSave: sharded arrays,
                                each host writing its own shards)
    <workdir>/<step>/meta       a JSON dict (JsonSave): data-pipeline position, config, anything
                                needed to resume exactly where the run stopped
    <workdir>/<step>/checksums  JSON: per array its shape, dtype and a 64-bit checksum

Guarantees relied on by the trainers:
  * Nothing non-finite is saved: `save` computes every array's checksum and finiteness in one
    jitted pass over the state and refuses (`NonFiniteStateError`, nothing written) when a
    floating-point array holds a NaN or an infinity. So every checkpoint on disk was finite when
    written, and the newest one, which `max_to_keep` never rotates out, is the last finite one.
  * Verified restore: `restore` recomputes the checksums of the arrays orbax read and compares
    them with the saved ones; a mismatch, a missing item, or any error orbax or tensorstore
    raises becomes a `CorruptCheckpointError` naming the step directory and the reason.
    `restore_latest` then falls back to the next older step, says which step it skipped and
    why (`skipped`, and a warning), and never deletes the bad one: with `set_aside=True` (the
    trainers) it is renamed `<step>.rejected-<k>` once an older step has verified, so the run
    can write that step again. When no checkpoint verifies it raises `CheckpointError` listing
    each step and its reason, and moves nothing (a wrong abstract state, e.g. another model
    config, must not look like corruption).
  * Atomic: orbax writes `<step>.orbax-checkpoint-tmp-<ts>/` and renames it to `<step>/` only
    once every item is complete (on GCS a `commit_success.txt` marks it instead). A crash
    mid-write leaves a tmp directory that is never taken for a step; the next `Checkpointer` on
    the directory deletes it (orbax starts that when it opens and finishes it before the first
    save).
  * Async: `save` returns once the arrays are copied to host memory, so the caller may donate
    or overwrite the device buffers right after; writing continues in a background thread.
    `wait()` blocks until it is on disk.
  * Restore into any sharding: `restore_latest(abstract_state)` places each array as the
    `jax.ShapeDtypeStruct`'s sharding says, which need not be the sharding it was saved with;
    the checksum does not depend on the sharding.

The checksum of an array with bits b_i (its elements bit-cast to unsigned integers, flattened)
is the pair (sum_i b_i (2i + 1), sum_i ((b_i xor i * 0x9E3779B1) * 0x85EBCA77)) mod 2^32.
Integer sums modulo 2^32 are exact in any order, so a sharded or multi-host reduction gives the
same value everywhere, and a change of any single element always changes the first sum (2i + 1
is odd, hence invertible mod 2^32). It guards against accidental corruption, not tampering.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

CHECKSUMS_FORMAT = 1
REJECTED = ".rejected"
_ITEMS = ("state", "meta", "checksums")


class NonFiniteStateError(ValueError):
    """`save` was given a state with NaN or infinite values; nothing was written."""


class CorruptCheckpointError(RuntimeError):
    """One checkpoint failed to restore or to verify (`step`, `reason`)."""

    def __init__(self, step: int, directory: str, reason: str):
        super().__init__(f"checkpoint step {step} in {directory}: {reason}")
        self.step, self.reason = step, reason


class CheckpointError(RuntimeError):
    """No checkpoint of a directory could be restored; each one's reason is in the message."""


def abstract_tree(tree, shardings=None) -> Any:
    """A pytree of `jax.ShapeDtypeStruct`s for `tree`, with `shardings` (a matching pytree) or
    each array's own sharding. Works on the output of `jax.eval_shape` as well as on arrays."""
    if shardings is None:
        shardings = jax.tree.map(lambda x: getattr(x, "sharding", None), tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, shardings
    )


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def _bits_n(x: jax.Array) -> jax.Array:
    """The elements of `x` as uint32 words [N] (8-byte elements give two words each)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    x = x.reshape(-1)
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    size = x.dtype.itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32).reshape(-1)
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _leaf_summary(x: jax.Array) -> jax.Array:
    """uint32 [3]: the two checksum sums and 1 if every element is finite (else 0)."""
    bits_n = _bits_n(x)
    i_n = jnp.arange(bits_n.shape[0], dtype=jnp.uint32)
    first = jnp.sum(bits_n * (2 * i_n + 1), dtype=jnp.uint32)
    mixed_n = (bits_n ^ (i_n * jnp.uint32(0x9E3779B1))) * jnp.uint32(0x85EBCA77)
    second = jnp.sum(mixed_n, dtype=jnp.uint32)
    floating = jnp.issubdtype(x.dtype, jnp.floating) or jnp.issubdtype(x.dtype, jnp.complexfloating)
    finite = jnp.all(jnp.isfinite(x)) if floating else jnp.bool_(True)
    return jnp.stack([first, second, finite.astype(jnp.uint32)])


_summaries = jax.jit(lambda leaves: [_leaf_summary(x) for x in leaves])


def _summaries_by_devices(leaves: list) -> list:
    """`_leaf_summary` of each leaf: one jitted call per set of devices the leaves live on
    (a jitted computation takes arrays of one device set only)."""
    groups: dict[Any, list[int]] = {}
    for i, x in enumerate(leaves):
        devices = frozenset(d.id for d in x.sharding.device_set) \
            if isinstance(x, jax.Array) else None
        groups.setdefault(devices, []).append(i)
    if None in groups and len(groups) > 1:  # host arrays follow any committed group
        groups[next(k for k in groups if k is not None)] += groups.pop(None)
    out = [None] * len(leaves)
    for indices in groups.values():
        for i, summary in zip(indices, _summaries([leaves[i] for i in indices])):
            out[i] = summary
    return out


def _host(tree):
    """Host copies of small global arrays (gathered when this process cannot address them)."""
    if any(isinstance(x, jax.Array) and not x.is_fully_addressable for x in jax.tree.leaves(tree)):
        return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)


def fingerprint(tree) -> dict[str, dict[str, Any]]:
    """{leaf path: {"shape", "dtype", "checksum" (16 hex digits), "finite"}} of a pytree of
    arrays (sharded or not, any number of processes), computed in one jitted pass."""
    with_path = jax.tree_util.tree_leaves_with_path(tree)
    summaries = _host(_summaries_by_devices([leaf for _, leaf in with_path]))
    out = {}
    for (path, leaf), s in zip(with_path, summaries):
        first, second, finite = (int(v) for v in np.asarray(s))
        out[jax.tree_util.keystr(path)] = {
            "shape": list(np.shape(leaf)), "dtype": str(leaf.dtype),
            "checksum": f"{first:08x}{second:08x}", "finite": bool(finite)}
    return out


def _mismatch(saved: Any, restored: dict[str, dict[str, Any]]) -> str | None:
    """Why `restored` (a fingerprint) does not match the saved checksums, or None."""
    if not isinstance(saved, dict) or saved.get("format") != CHECKSUMS_FORMAT \
            or not isinstance(saved.get("leaves"), dict):
        return f"the checksums item is not an r1jax checksum record (format {CHECKSUMS_FORMAT})"
    leaves = saved["leaves"]
    if set(leaves) != set(restored):
        missing = sorted(set(leaves) ^ set(restored))[:3]
        return f"the saved arrays and the expected state differ in {missing}"
    bad = [path for path, r in restored.items()
           if {k: leaves[path].get(k) for k in ("shape", "dtype", "checksum")}
           != {k: r[k] for k in ("shape", "dtype", "checksum")}]
    if bad:
        return f"checksum mismatch in {len(bad)} array(s): {', '.join(bad[:3])}"
    nonfinite = [path for path, r in restored.items() if not r["finite"]]
    if nonfinite:
        return f"non-finite values in {', '.join(nonfinite[:3])}"
    return None


def _first_line(e: BaseException, limit: int = 300) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text[:limit]}"


# ---------------------------------------------------------------------------------------------
# Checkpointer
# ---------------------------------------------------------------------------------------------


class Checkpointer:
    """Saves and restores verified (train state, JSON meta) pairs under one directory.

    Args:
      directory: where step directories live (created if missing).
      max_to_keep: how many of the newest checkpoints to keep.
      save_interval_steps: `save` only writes when step % save_interval_steps == 0, unless forced.
      async_save: write in a background thread (see the module docstring).

    After `restore_latest`, `skipped` lists the (step, reason) of the newer checkpoints that
    failed and `restored_step` is the step restored (None when there was none).
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
        self.skipped: list[tuple[int, str]] = []
        self.restored_step: int | None = None
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            save_interval_steps=save_interval_steps,
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options, item_names=_ITEMS)

    def save(self, step: int, state, meta: dict[str, Any], force: bool = False) -> bool:
        """Starts saving `state` and `meta` as `step`; returns whether a save was started.

        `meta` must be JSON-serialisable and every floating-point array of `state` finite; both
        are checked here, before anything is written (ValueError / NonFiniteStateError).
        """
        try:
            json.dumps(meta)
        except TypeError as e:
            raise ValueError(
                f"checkpoint meta for step {step} is not JSON-serialisable: {e}"
            ) from e
        if not force and not self._manager.should_save(int(step)):
            return False
        prints = fingerprint(state)
        nonfinite = [path for path, p in prints.items() if not p["finite"]]
        if nonfinite:
            raise NonFiniteStateError(
                f"refusing to checkpoint step {step} in {self.directory}: NaN or infinite values "
                f"in {len(nonfinite)} array(s) ({', '.join(nonfinite[:5])}); the checkpoints "
                f"already there are kept (newest: {self.latest_step()})")
        checksums = {"format": CHECKSUMS_FORMAT, "leaves": prints}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state),
                                  meta=ocp.args.JsonSave(meta),
                                  checksums=ocp.args.JsonSave(checksums))
        return self._manager.save(int(step), args=args, force=force)

    def latest_step(self) -> int | None:
        """The newest finalised step, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """All finalised steps, ascending."""
        return sorted(self._manager.all_steps())

    def restore(self, step: int, abstract_state) -> tuple[Any, dict[str, Any]]:
        """(state, meta) of `step`, arrays placed per `abstract_state`'s shardings and verified
        against the saved checksums, finiteness included; raises `CorruptCheckpointError`
        naming the reason."""
        step_dir = os.path.join(self.directory, str(step))
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore(),
            checksums=ocp.args.JsonRestore())
        try:
            restored = self._manager.restore(int(step), args=args)
            state, meta, saved = restored.state, restored.meta, restored.checksums
        except Exception as e:  # orbax, tensorstore and JSON raise many types; all mean "bad"
            raise CorruptCheckpointError(step, step_dir, f"unreadable ({_first_line(e)})") from e
        if not isinstance(meta, dict):
            raise CorruptCheckpointError(step, step_dir, f"meta is {type(meta).__name__}, "
                                         "not a JSON object")
        reason = _mismatch(saved, fingerprint(state))
        if reason:
            raise CorruptCheckpointError(step, step_dir, reason)
        return state, meta

    def restore_latest(self, abstract_state, *, set_aside: bool = False
                       ) -> tuple[Any, dict[str, Any]] | None:
        """(state, meta) of the newest step that restores and verifies, or None when the
        directory holds no step at all.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `sharding` (see
            `abstract_tree`), the structure of the saved state.
          set_aside: rename the newer steps that failed to `<step>.rejected-<k>` (kept, never
            deleted) once an older one verified, so that a resumed run can save them anew.

        Raises:
          CheckpointError: there are steps but none restores and verifies (nothing is moved).
        """
        self.skipped, self.restored_step = [], None
        for step in reversed(self.all_steps()):
            try:
                restored = self.restore(step, abstract_state)
            except CorruptCheckpointError as e:
                warnings.warn(f"{e}; skipping it and trying the previous checkpoint",
                              stacklevel=2)
                self.skipped.append((step, e.reason))
                continue
            self.restored_step = step
            if set_aside and self.skipped:
                self._set_aside([s for s, _ in self.skipped])
            return restored
        if self.skipped:
            listing = "; ".join(f"step {s}: {why}" for s, why in self.skipped)
            raise CheckpointError(
                f"no checkpoint in {self.directory} restores and verifies ({listing}). Nothing "
                "was moved or deleted; if the run's config changed, restore it, or start the "
                "run in a new workdir.")
        return None

    def _set_aside(self, steps: list[int]) -> None:
        """Renames step directories to `<step>.rejected-<k>` (process 0, then a barrier)."""
        if jax.process_index() == 0:
            for step in steps:
                source = os.path.join(self.directory, str(step))
                k = 0
                while os.path.exists(f"{source}{REJECTED}-{k}"):
                    k += 1
                os.rename(source, f"{source}{REJECTED}-{k}")
                warnings.warn(f"checkpoint step {step} failed verification; kept as "
                              f"{source}{REJECTED}-{k}", stacklevel=3)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"r1jax_checkpoint_set_aside_{steps}")
        self._manager.reload()

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
