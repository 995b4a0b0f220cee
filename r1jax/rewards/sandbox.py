"""Process isolation for untrusted programs: namespaces, a per-run cgroup, and a clean end.

`run(args, stdin, ...)` starts the Python interpreter with `args` in a sandbox and returns what
it wrote to stdout. The sandbox kinds, strongest first:

- "bwrap" (bubblewrap): new user, PID, network, IPC, UTS and cgroup namespaces, no capabilities,
  no further user namespaces (`--disable-userns`). The root file system is a fresh tmpfs with
  read-only binds of /usr, /lib*, /bin, /sbin and the interpreter's directories (bound after the
  tmpfs on /tmp, so an interpreter under /tmp works, with no writable directory above it), the
  empty work dir at /sandbox, fresh /tmp, /dev and /proc. Only a loopback device exists, so no host address (127.0.0.1 included) and no
  host Unix socket can be reached; the sandbox sees only its own processes.
- "unshare" (util-linux, for machines without bubblewrap): the same namespaces made by
  `unshare`, then a trusted boot step (`_jail.py`) builds the same file-system view with mount
  syscalls, pivots into it and drops every capability before the program starts.
- "rlimit" (weak, opt-in only with `R1JAX_SANDBOX=rlimit`): a plain child process. It shares
  the host's network, file system and process table; use it only for trusted code.

Every kind: `python -I` with an empty environment, an empty work dir, RLIMIT_CPU/AS/FSIZE/
NOFILE/CORE, and a per-run cgroup (when one can be made; see `cgroups.py`) that bounds the total
memory and the process count of everything the program starts and is killed as a whole at the
end. After the kill the cgroup must be empty; if anything survives, or the sandbox cannot be
set up after the probe said it works, `SandboxError` is raised: an error of the run, never a
silently zero reward. When no isolating kind works and the weak one was not chosen,
`kind()` raises `SandboxError` with one line naming what is missing.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import logging
import math
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

from r1jax.rewards import cgroups

KINDS = ("bwrap", "unshare", "rlimit")
ISOLATING = ("bwrap", "unshare")
SANDBOX_DIR = "/sandbox"
_FSIZE_BYTES = 16 << 20
_NOFILE = 64
_OUTPUT_CAP_BYTES = 1 << 20
_PR_SET_PDEATHSIG = 1
_TMPFS_BYTES = str(64 << 20)  # /tmp and /sandbox: fresh, memory-backed (cgroup), gone at exit
# The first bytes every sandboxed program writes to stdout, before any untrusted code runs: their
# absence (without a timeout) means the sandbox or the interpreter in it failed to start.
READY = b"\0r1jax-ready\n"
_JAIL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_jail.py")


SandboxError = cgroups.SandboxError


@dataclasses.dataclass(frozen=True)
class Completed:
    """One sandboxed process run.

    Attributes:
      stdout: what it wrote to stdout (at most 1 MiB; more ends the run as `overflow`).
      returncode: exit status of the sandbox launcher (None if it was killed by the deadline).
      timed_out: the wall-clock limit was hit.
      overflow: it wrote more than the output cap.
      kind: the sandbox kind that ran it.
      wall_s: seconds from start until everything it started was gone.
    """

    stdout: bytes
    returncode: int | None
    timed_out: bool
    overflow: bool
    kind: str
    wall_s: float


@functools.cache
def kind() -> str:
    """Returns the sandbox kind for this process: `R1JAX_SANDBOX` if set, else the first
    isolating kind whose probe passes.

    Raises:
      SandboxError: no isolating kind works and the weak "rlimit" kind was not chosen.
    """
    forced = os.environ.get("R1JAX_SANDBOX")
    if forced:
        if forced not in KINDS:
            raise SandboxError(f"R1JAX_SANDBOX={forced!r}: choose one of {KINDS}")
        if forced == "rlimit":
            logging.warning("R1JAX_SANDBOX=rlimit: untrusted code runs WITHOUT network, file or "
                            "process isolation (weak sandbox chosen by the user)")
        return forced
    reasons = [f"{k}: {why}" for k in ISOLATING if (why := probe(k)) is not None]
    if len(reasons) < len(ISOLATING):
        return next(k for k in ISOLATING if probe(k) is None)
    raise SandboxError("no isolating sandbox works here (" + "; ".join(reasons) + "); code "
                       "rewards refused. Install bubblewrap, or set R1JAX_SANDBOX=rlimit to "
                       "accept the weak sandbox")


_PROBE = f"""import os, socket
os.write(1, {READY!r})
try:
    socket.create_connection(("127.0.0.1", 9), 1)
except OSError:
    os.write(1, b"ok")
"""


@functools.cache
def probe(which: str) -> str | None:
    """Returns None if sandbox `which` runs a program and contains it here, else the reason."""
    tool = {"bwrap": "bwrap", "unshare": "unshare"}.get(which)
    if tool is not None and shutil.which(tool) is None:
        return f"{tool} is not installed"
    try:
        done = run(["-c", _PROBE], b"", timeout_s=20.0, kind=which)
    except (OSError, SandboxError) as e:
        return f"{type(e).__name__}: {e}"
    return None if done.stdout == b"ok" else f"probe failed (exit {done.returncode})"


def run(
    args: Sequence[str],
    stdin: bytes,
    *,
    timeout_s: float,
    memory_mb: int = 1024,
    max_pids: int = 32,
    kind: str | None = None,
) -> Completed:
    """Runs `python -I <args>` in a sandbox with `stdin`; returns its stdout and status.

    The program must write `READY` to stdout first (it is removed from `Completed.stdout`).

    Args:
      args: interpreter arguments after `-I` (e.g. ["-c", program]).
      stdin: bytes fed to the program's stdin (then closed).
      timeout_s: wall-clock limit; the CPU limit is one second more.
      memory_mb: total memory of all its processes (cgroup), and each one's address space.
      max_pids: processes and threads it may have at once (cgroup), launcher included.
      kind: a member of `KINDS`; default `kind()`.

    Raises:
      SandboxError: the sandbox could not be made or something it started survived.
    """
    which = kind or globals()["kind"]()
    if which not in KINDS:  # a configuration error: it must stop the run, not score zero
        raise SandboxError(f"sandbox kind must be one of {KINDS}, got {which!r}")
    workdir = tempfile.mkdtemp(prefix="r1jax-sbx-")
    try:
        group = cgroups.create(memory_mb << 20, max_pids)
        try:
            return _run(which, list(args), stdin, timeout_s, memory_mb, workdir, group)
        finally:
            if group is not None:
                group.destroy()  # raises SandboxError if anything survived the kill
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _run(which, args, stdin, timeout_s, memory_mb, workdir, group) -> Completed:
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _argv(which, workdir) + args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL, cwd=workdir, env=_clean_env(workdir),
            start_new_session=True,
            preexec_fn=functools.partial(_child_setup, timeout_s, memory_mb, group))
    except OSError as e:
        raise SandboxError(f"cannot start the {which} sandbox: {e}") from e
    try:
        stdout, timed_out, overflow = _exchange(proc, stdin, start + timeout_s)
    finally:
        _kill(proc, group)
    if not stdout.startswith(READY):
        if timed_out:  # too slow to start (a loaded machine): the program scores nothing
            return Completed(b"", None, True, False, which, time.monotonic() - start)
        raise SandboxError(f"the {which} sandbox did not start Python (exit {proc.returncode})")
    return Completed(stdout[len(READY):], None if timed_out else proc.returncode, timed_out,
                     overflow, which, time.monotonic() - start)


def _argv(which: str, workdir: str) -> list[str]:
    """The launcher command. `workdir` is an empty host directory: the launcher's working
    directory, and the mount point of the unshare jail's root (in its own mount namespace)."""
    python = [sys.executable, "-I"]
    if which == "rlimit":
        return python
    if which == "unshare":
        return ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--kill-child",
                "--mount", "--net", "--ipc", "--uts", "--cgroup", "--",
                *python, _JAIL, workdir, *read_only_shields(interpreter_paths()), "--",
                *interpreter_paths(), "--", *python]
    binds = []
    for path in ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin"):
        binds += ["--ro-bind-try", path, path]
    shields = read_only_shields(interpreter_paths())
    for path in shields:
        binds += ["--size", "1048576", "--tmpfs", path]
    for path in interpreter_paths():  # after the tmpfs on /tmp: the interpreter may live there
        binds += ["--ro-bind", path, path]
    for path in shields:
        binds += ["--remount-ro", path]
    return [
        "bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent",
        "--new-session", "--clearenv", "--cap-drop", "ALL", "--uid", "65534", "--gid", "65534",
        "--proc", "/proc", "--dev", "/dev", "--size", _TMPFS_BYTES, "--tmpfs", "/tmp",
        *binds,
        "--size", _TMPFS_BYTES, "--tmpfs", SANDBOX_DIR, "--chdir", SANDBOX_DIR,
        "--setenv", "HOME", SANDBOX_DIR, "--setenv", "PATH", "/usr/bin:/bin",
        "--remount-ro", "/",
        *python,
    ]  # fmt: skip


def interpreter_paths() -> list[str]:
    """The directories and files the interpreter needs, outermost first, without repeats:
    sys.prefix, sys.base_prefix, and every link on the way from sys.executable to its target."""
    paths = [os.path.abspath(sys.prefix), os.path.abspath(sys.base_prefix)]
    link = os.path.abspath(sys.executable)
    for _ in range(40):  # a symlink chain, e.g. /tmp/venv/bin/python -> /usr/bin/python3.11
        paths.append(link)
        if not os.path.islink(link):
            break
        link = os.path.join(os.path.dirname(link), os.readlink(link))
    paths.append(os.path.realpath(sys.executable))
    unique = []
    for path in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not any(path == u or path.startswith(u.rstrip("/") + "/") for u in unique):
            unique.append(path)
    return unique


WRITABLE_MOUNTS = ("/tmp", "/dev/shm")


def read_only_shields(paths: Sequence[str]) -> list[str]:
    """The directories to cover with a read-only tmpfs so that binding `paths` under a writable
    sandbox mount leaves no writable directory on the way.

    Binding /tmp/a/repo/.venv into the sandbox's fresh /tmp creates /tmp/a and /tmp/a/repo there,
    writable by the program. The writes stay in the sandbox's memory, but the program would see
    a directory that looks like the host's repository accept a write. A read-only tmpfs on
    /tmp/a (made before the binds, remounted read-only after them) closes that view; /tmp itself
    stays writable.
    """
    shields = []
    for path in paths:
        for mount in WRITABLE_MOUNTS:
            rest = os.path.relpath(path, mount)
            if rest.startswith("..") or rest == "." or "/" not in rest:
                continue  # not under `mount`, or bound directly in it (read-only already)
            top = os.path.join(mount, rest.split("/")[0])
            if top not in shields:
                shields.append(top)
    return shields


def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"}


def _child_setup(timeout_s: float, memory_mb: int, group: cgroups.Cgroup | None) -> None:
    """Runs in the child between fork and exec: join the cgroup, then the resource limits."""
    if group is not None:
        group.enter()
    cpu_s = math.ceil(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    memory = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE_BYTES, _FSIZE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, _NOFILE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # If the worker that started the launcher is killed (the pool's hard timeout), the launcher
    # dies too, and with it the namespace (bwrap --die-with-parent, unshare --kill-child).
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _exchange(proc, stdin: bytes, deadline: float) -> tuple[bytes, bool, bool]:
    """Feeds stdin and reads stdout until EOF, the deadline or the output cap.

    Returns:
      (stdout, timed_out, overflow).
    """
    chunks, size, view = [], 0, memoryview(stdin)
    os.set_blocking(proc.stdin.fileno(), False)
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if view:
            sel.register(proc.stdin, selectors.EVENT_WRITE)
        else:
            proc.stdin.close()
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return b"".join(chunks), True, False
            for key, _ in sel.select(remaining):
                if key.fileobj is proc.stdin:
                    view = _write_some(proc, sel, view)
                    continue
                chunk = os.read(proc.stdout.fileno(), 1 << 16)
                if not chunk:
                    sel.unregister(proc.stdout)
                    continue
                chunks.append(chunk)
                size += len(chunk)
                if size > _OUTPUT_CAP_BYTES:
                    return b"".join(chunks)[:_OUTPUT_CAP_BYTES], False, True
    return b"".join(chunks), False, False


def _write_some(proc, sel, view: memoryview) -> memoryview:
    try:
        view = view[os.write(proc.stdin.fileno(), view[: 1 << 16]):]
    except (BrokenPipeError, OSError):
        view = view[:0]  # the program stopped reading: it gets no more input
    if not view:
        sel.unregister(proc.stdin)
        proc.stdin.close()
    return view


def _kill(proc: subprocess.Popen, group: cgroups.Cgroup | None) -> None:
    """Kills everything the run started: the cgroup if there is one, and the process group."""
    if group is not None:
        group.kill()
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # before reaping: the leader keeps the group id
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream is not None and not stream.closed:
            stream.close()
