"""Code-execution reward: the fraction of unit tests a completion's program passes, sandboxed.

DeepSeek-R1 (Sec. 2.2.2) scores coding problems by running the program against predefined test
cases ("a compiler can be used to generate feedback"). The program is untrusted; it runs in a
separate process with these layers (what each one does on the machine it was checked on is in
the module tests and the report that came with this file):

- "bwrap" sandbox (bubblewrap, when installed and working): new user, PID, network, IPC, UTS and
  cgroup namespaces (`--unshare-all`): only loopback exists, so nothing on the host is reachable;
  killing bubblewrap kills every process in the sandbox (`--die-with-parent`, PID namespace); the
  file system is read-only system and Python directories, a fresh `/tmp` and the writable work dir.
- "rlimit" sandbox (fallback): a plain child process; the network is refused by replacing
  `socket.socket` / `_socket.socket` in the child before the program runs. That is a Python-level
  guard (ctypes can bypass it). Files outside the work dir are protected only by ordinary
  permissions: as root, the child drops to uid 65534 (nobody) when a world-executable Python
  exists (this one or /usr/bin/python3), which also makes RLIMIT_NPROC apply; otherwise it runs
  as the caller.

Both: `python -I` with an empty environment (no variable of the parent leaks), an empty temp
work dir, RLIMIT_CPU (wall timeout + 1 s), RLIMIT_AS (`memory_mb`), RLIMIT_FSIZE (16 MiB),
RLIMIT_NOFILE, no core dumps, RLIMIT_NPROC (enforced by the kernel only for non-root users;
root is exempt), process creation and signals (`os.fork`, `subprocess`, `os.system`, `exec*`,
`os.kill`) refused at the Python level, a wall-clock limit after which the whole process group
(new session) is SIGKILLed, and PR_SET_PDEATHSIG so the sandbox dies with the worker that
started it.

Results come back on a private pipe as lines tagged with a random nonce: printing or exiting
early cannot fake a pass. A program that deliberately introspects the harness's memory could
still forge its own results; that is reward hacking inside the interpreter, not an escape.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import json
import math
import os
import pathlib
import re
import resource
import secrets
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence

KINDS = ("bwrap", "rlimit")
_FENCE = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_FSIZE_BYTES = 16 << 20
_NOFILE = 64
_NPROC_HEADROOM = 32
_RESULT_CAP_BYTES = 1 << 16
_SANDBOX_DIR = "/sandbox"
_NOBODY = 65534

# Runs inside the sandbox. Reads its spec from stdin, so no argument or variable carries data.
_HARNESS = r"""
import json, os, sys
def _deny(*args, **kwargs):
    raise PermissionError("not allowed in the sandbox")
def _block_network():
    import _socket, socket
    class _NoSocket(_socket.socket):
        def __init__(self, *args, **kwargs):
            _deny()
    _socket.socket = _NoSocket
    socket.socket = type("socket", (socket.socket,), {"__init__": _NoSocket.__init__})
    socket.create_connection = socket.socketpair = socket.fromfd = _deny
def _block_processes():
    import _posixsubprocess
    _posixsubprocess.fork_exec = _deny
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve",
                 "spawnv", "spawnve", "popen", "kill", "killpg"):
        if hasattr(os, name):
            setattr(os, name, _deny)
def _main():
    spec = json.loads(sys.stdin.read())
    sys.stdin.close()
    out = os.fdopen(spec["fd"], "w")
    if spec["block_network"]:
        _block_network()
    _block_processes()
    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(spec["code"], "<solution>", "exec"), ns)
        ok = True
    except BaseException:
        ok = False
    for i, test in enumerate(spec["tests"]):
        passed = False
        if ok:
            try:
                exec(compile(test, "<test>", "exec"), ns)
                passed = True
            except BaseException:
                pass
        out.write("%s %d %d\n" % (spec["nonce"], i, passed))
        out.flush()
_main()
"""


@dataclasses.dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run reported.

    Attributes:
      passed: one flag per test (tests not reported before the end count as failed).
      kind: the sandbox that ran ("bwrap" or "rlimit").
      timed_out: the wall-clock limit was hit.
      wall_s: seconds from start to the end of the process group.
    """

    passed: tuple[bool, ...]
    kind: str
    timed_out: bool
    wall_s: float

    @property
    def pass_rate(self) -> float:
        return sum(self.passed) / len(self.passed) if self.passed else 0.0


def extract_code(completion: str) -> str | None:
    """Returns the last ```python (or bare ```) fenced block of a completion, or None."""
    if not isinstance(completion, str):
        return None
    blocks = _FENCE.findall(completion)
    return blocks[-1] if blocks else None


def pass_rate(code: str, tests: Sequence[str], *, timeout_s: float = 5.0) -> float:
    """Returns the fraction of `tests` (Python statements, e.g. asserts) that pass after `code`.

    The code runs once, then each test in the same namespace, in the sandbox of `sandbox_kind()`;
    `timeout_s` bounds the whole run. Never raises on any code or test text.
    """
    try:
        return run_tests(code, tests, timeout_s=timeout_s).pass_rate
    except Exception:  # noqa: BLE001 - a broken run scores zero, never breaks training
        return 0.0


def reward(completion: str, tests: Sequence[str], timeout_s: float = 5.0) -> float:
    """Per-item reward: pass rate of the completion's last fenced code block (0 if none)."""
    code = extract_code(completion)
    return 0.0 if code is None else pass_rate(code, tests, timeout_s=timeout_s)


@functools.cache
def sandbox_kind() -> str:
    """Returns the strongest sandbox that works here: "bwrap" if a probe passes, else "rlimit".

    `R1JAX_SANDBOX=rlimit` (or `bwrap`) forces one. Probed once per process.
    """
    forced = os.environ.get("R1JAX_SANDBOX")
    if forced in KINDS:
        return forced
    if shutil.which("bwrap") is None:
        return "rlimit"
    try:
        probe = run_tests("x = 1", ["assert x == 1"], timeout_s=10.0, kind="bwrap")
    except OSError:
        return "rlimit"
    return "bwrap" if probe.passed == (True,) else "rlimit"


def run_tests(
    code: str,
    tests: Sequence[str],
    *,
    timeout_s: float = 5.0,
    kind: str | None = None,
    memory_mb: int = 1024,
) -> SandboxResult:
    """Runs `code` then each of `tests` in a sandbox; returns the per-test outcomes.

    Args:
      code: the program (untrusted).
      tests: Python statements; a test passes if it runs without raising.
      timeout_s: wall-clock limit for the whole run; CPU limit is one second more.
      kind: "bwrap" or "rlimit"; default `sandbox_kind()`.
      memory_mb: address-space limit of each sandboxed process.
    """
    kind = kind or sandbox_kind()
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    tests = [str(t) for t in tests]
    with tempfile.TemporaryDirectory(prefix="r1jax-sbx-", ignore_cleanup_errors=True) as workdir:
        return _run(str(code), tests, timeout_s, kind, memory_mb, workdir)


def _run(code, tests, timeout_s, kind, memory_mb, workdir) -> SandboxResult:
    nonce = secrets.token_hex(16)
    read_fd, write_fd = os.pipe()
    spec = {"code": code, "tests": tests, "nonce": nonce, "fd": write_fd}
    spec["block_network"] = kind == "rlimit"
    python, drop_uid = (sys.executable, None) if kind == "bwrap" else _rlimit_identity()
    if drop_uid is not None:
        os.chown(workdir, drop_uid, drop_uid)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            _argv(kind, workdir, python),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=workdir,
            env=_clean_env(workdir),
            pass_fds=(write_fd,),
            start_new_session=True,
            preexec_fn=functools.partial(_child_limits, timeout_s, memory_mb, drop_uid),
        )
    finally:
        os.close(write_fd)
    try:
        _feed(proc, json.dumps(spec).encode())
        data, timed_out = _read_until(read_fd, start + timeout_s)
    finally:
        _kill_group(proc)
        os.close(read_fd)
    passed = _parse(data, nonce, len(tests))
    return SandboxResult(passed, kind, timed_out, time.monotonic() - start)


def _rlimit_identity() -> tuple[str, int | None]:
    """Returns (interpreter, uid to drop to): as root, nobody with a Python nobody can run."""
    if os.getuid() != 0:
        return sys.executable, None
    for python in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        if _world_executable(python):
            return python, _NOBODY
    return sys.executable, None


def _world_executable(path: str) -> bool:
    """True if any user may run `path`: o+x on the file and on every directory above it."""
    real = os.path.realpath(path)
    if not os.path.isfile(real):
        return False
    parts = [real] + [str(p) for p in pathlib.Path(real).parents]
    return all(os.stat(p).st_mode & stat.S_IXOTH for p in parts)


def _argv(kind: str, workdir: str, python: str) -> list[str]:
    python = [python, "-I", "-c", _HARNESS]
    if kind == "rlimit":
        return python
    binds = []
    for path in ("/usr", "/lib", "/lib64", "/bin", "/sbin"):
        binds += ["--ro-bind-try", path, path]
    for path in sorted({sys.prefix, sys.base_prefix, os.path.realpath(sys.executable)}):
        binds += ["--ro-bind", path, path]
    return [
        "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--clearenv",
        *binds,
        "--bind", workdir, _SANDBOX_DIR, "--chdir", _SANDBOX_DIR,
        "--setenv", "HOME", _SANDBOX_DIR, "--setenv", "PATH", "/usr/bin:/bin",
        "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
        *python,
    ]  # fmt: skip


def _clean_env(workdir: str) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "LANG": "C.UTF-8"}


def _child_limits(timeout_s: float, memory_mb: int, drop_uid: int | None) -> None:
    """Runs in the child between fork and exec: resource limits, identity, die with parent."""
    cpu_s = math.ceil(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))
    memory = memory_mb << 20
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (_FSIZE_BYTES, _FSIZE_BYTES))
    resource.setrlimit(resource.RLIMIT_NOFILE, (_NOFILE, _NOFILE))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    uid = os.getuid() if drop_uid is None else drop_uid
    if uid != 0:  # counted per user and root is exempt, so only meaningful otherwise
        nproc = _user_process_count(uid) + _NPROC_HEADROOM
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if drop_uid is not None:
        os.setgroups([])
        os.setgid(drop_uid)
        os.setuid(drop_uid)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _user_process_count(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                count += os.stat(f"/proc/{entry}").st_uid == uid
            except OSError:
                pass
    return count


def _feed(proc: subprocess.Popen, payload: bytes) -> None:
    try:
        proc.stdin.write(payload)
        proc.stdin.close()
    except (BrokenPipeError, OSError):
        pass


def _read_until(fd: int, deadline: float) -> tuple[bytes, bool]:
    """Reads fd until EOF, the byte cap, or the deadline; returns (data, timed_out)."""
    chunks, size = [], 0
    while size < _RESULT_CAP_BYTES:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return b"".join(chunks), True
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, _RESULT_CAP_BYTES - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks), False


def _kill_group(proc: subprocess.Popen) -> None:
    # Kill before reaping: the unreaped leader keeps the group id from being reused.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _parse(data: bytes, nonce: str, num_tests: int) -> tuple[bool, ...]:
    passed = [False] * num_tests
    for line in data.decode("ascii", "replace").splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == nonce and parts[1].isdigit():
            index = int(parts[1])
            if index < num_tests:
                passed[index] = parts[2] == "1"
    return tuple(passed)
