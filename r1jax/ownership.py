"""Directories that r1jax owns: created by r1jax and marked, the only ones it writes into.

Rule (DESIGN principle 10): r1jax deletes, replaces or writes into a directory only when it
created that directory and wrote the marker file `.r1jax` into it at creation (a small JSON
record of what created it). Every other directory is read-only to r1jax: a user's HF
checkpoint, a home directory passed by mistake as `--workdir`, a folder of unrelated files.
An existing empty directory may be claimed (marked) because there is nothing in it to lose.

    run_dir = ownership.claim("runs/r1_zero_tiny", "rl.trainer run")   # create or reuse
    ownership.remove(stale_dir)                                         # only if marked

Directories that r1jax wrote before markers existed carry none: the error says how to mark
one by hand when the user knows it is r1jax's.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import shutil
import tempfile

MARKER = ".r1jax"


class NotOwnedError(FileExistsError):
    """A directory r1jax would write into or delete holds files, but no r1jax marker."""


def is_marked(directory: str | os.PathLike) -> bool:
    """True when `directory` carries the r1jax marker file."""
    return (pathlib.Path(directory) / MARKER).is_file()


def describe(directory: str | os.PathLike, limit: int = 8) -> str:
    """What is in `directory`, for error messages: 'missing', 'a file', 'empty' or the
    first `limit` entries (sorted) and how many there are."""
    path = pathlib.Path(directory)
    if not path.exists():
        return "nothing (the path does not exist)"
    if not path.is_dir():
        return "a file, not a directory"
    try:
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    except OSError as e:
        return f"an unreadable directory ({e.strerror})"
    if not names:
        return "an empty directory"
    shown = ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")
    return f"{len(names)} entr{'y' if len(names) == 1 else 'ies'}: {shown}"


def mark(directory: str | os.PathLike, created_by: str) -> None:
    """Writes the marker into `directory` (which r1jax has just created)."""
    record = {"created_by": created_by,
              "created": datetime.datetime.now(datetime.UTC).isoformat(),
              "note": "created by r1jax, which may write into and delete this directory"}
    (pathlib.Path(directory) / MARKER).write_text(json.dumps(record, indent=2) + "\n")


def temp_dir(parent: str | os.PathLike, name: str, created_by: str) -> pathlib.Path:
    """A fresh, marked temporary directory `.<name>.tmp-*` in `parent` (created), with the
    permissions of an ordinary new directory (mkdtemp's are owner-only), to be filled and
    renamed to its final name."""
    os.makedirs(parent, exist_ok=True)
    path = pathlib.Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent))
    path.chmod(0o777 & ~_umask())
    mark(path, created_by)
    return path


def ordinary_permissions(directory: str | os.PathLike) -> None:
    """Gives the files directly in `directory` the permissions of ordinary new files
    (safetensors writes owner-only files), so an export is readable like any checkpoint."""
    for path in pathlib.Path(directory).iterdir():
        if path.is_file():
            path.chmod(0o666 & ~_umask())


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def check_owned(directory: str | os.PathLike, action: str) -> None:
    """Raises NotOwnedError unless `directory` is missing, empty or marked.

    Args:
      directory: the directory about to be written into, replaced or removed.
      action: what r1jax was about to do, for the message ("write a GRPO run into").
    """
    path = pathlib.Path(directory).absolute()
    if not path.exists() or is_marked(path):
        return
    if path.is_dir() and not any(path.iterdir()):
        return
    raise NotOwnedError(
        f"refusing to {action} {path}: r1jax did not create it (no {MARKER} marker file), and "
        f"it holds {describe(path)}. r1jax only writes into directories it created. Choose a "
        f"new or empty directory; if this is an r1jax directory from before markers existed, "
        f"mark it with: echo '{{}}' > {path / MARKER}")


def claim(directory: str | os.PathLike, created_by: str) -> pathlib.Path:
    """Creates and marks `directory`, or reuses it when it is already marked or empty.

    Args:
      directory: the directory r1jax will write into (parents are created).
      created_by: what creates it, recorded in the marker ("rl.trainer run").
    Returns:
      The absolute path.
    Raises:
      NotOwnedError: it exists with files but no marker (nothing is written).
    """
    path = pathlib.Path(directory).absolute()
    check_owned(path, f"use as the {created_by} directory")
    path.mkdir(parents=True, exist_ok=True)
    if not is_marked(path):
        mark(path, created_by)
    return path


def remove(directory: str | os.PathLike) -> None:
    """Deletes a marked directory tree; refuses (NotOwnedError) anything unmarked and
    non-empty; a missing directory is a no-op."""
    path = pathlib.Path(directory).absolute()
    if not path.exists():
        return
    check_owned(path, "delete")
    shutil.rmtree(path)
