"""Per-run cgroups: one bound on the total memory and process count of a sandboxed run.

RLIMIT_AS is per process and RLIMIT_NPROC is per user (root is exempt), so five children of one
program could hold five times `memory_mb` and a fork bomb is bounded only by the user's
processes. A cgroup made for each run counts everything the program starts, whatever it does
(new sessions, double forks, new namespaces), is killed as a whole at the end, and must then be
empty before it is removed: that is the check that nothing survived.

cgroup v2 (one unified hierarchy with the memory and pids controllers) is used where the
process may create groups that have them; otherwise cgroup v1 (separate memory and pids
hierarchies, as on hosts that still mount them). Groups are made under the caller's own cgroup,
so they stay inside whatever limits the caller already has. Without a writable hierarchy
`create` returns None and the sandbox falls back to per-process limits (documented there).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import os
import secrets
import signal
import time

_COUNTER = itertools.count()
_DRAIN_S = 2.0


class SandboxError(RuntimeError):
    """The sandbox itself failed (set-up, or something survived the run): an error of the run."""


@dataclasses.dataclass
class Cgroup:
    """A cgroup in one hierarchy (v2) or one per controller (v1: memory, pids).

    Attributes:
      dirs: the group's directories, one per hierarchy.
      version: 1 or 2.
    """

    dirs: tuple[str, ...]
    version: int

    def enter(self) -> None:
        """Moves the calling process into the group (called in the child before exec)."""
        pid = str(os.getpid())
        for path in self.dirs:
            with open(os.path.join(path, "cgroup.procs"), "w") as f:
                f.write(pid)

    def pids(self) -> set[int]:
        """The processes now in the group."""
        found = set()
        for path in self.dirs:
            try:
                with open(os.path.join(path, "cgroup.procs")) as f:
                    found.update(int(line) for line in f if line.strip())
            except FileNotFoundError:
                pass
        return found

    def kill(self) -> None:
        """SIGKILLs every process in the group; no process in it can start another meanwhile."""
        for path in self.dirs:
            _try_write(os.path.join(path, "pids.max"), "0")  # forks now fail with EAGAIN
            _try_write(os.path.join(path, "cgroup.kill"), "1")  # v2, Linux >= 5.14
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def destroy(self) -> None:
        """Kills what is left, waits until the group is empty, and removes it.

        Raises:
          SandboxError: a process is still in the group after the drain time.
        """
        deadline = time.monotonic() + _DRAIN_S
        while True:
            self.kill()
            left = self.pids()
            if not left:
                break
            if time.monotonic() > deadline:
                raise SandboxError(f"processes {sorted(left)} survived the sandbox kill in "
                                   f"{self.dirs[0]}")
            time.sleep(0.005)
        for path in self.dirs:
            _rmdir(path, deadline)


def create(memory_bytes: int, max_pids: int) -> Cgroup | None:
    """Makes a fresh group bounding total memory (no swap) and processes; None if none can be
    made here (no writable hierarchy with the memory and pids controllers)."""
    found = layout()
    if found is None:
        return None
    version, bases = found
    _sweep(bases)
    name = f"r1jax-{os.getpid()}-{next(_COUNTER)}-{secrets.token_hex(3)}"
    dirs = tuple(os.path.join(base, name) for base in bases)
    made = []
    try:
        for path in dirs:
            os.mkdir(path, 0o700)
            made.append(path)
        group = Cgroup(dirs, version)
        _limit(group, memory_bytes, max_pids)
    except OSError as e:
        for path in made:
            _rmdir(path, time.monotonic() + _DRAIN_S)
        raise SandboxError(f"cannot set up cgroup {dirs[0]}: {e}") from e
    return group


@functools.cache
def _sweep(bases: tuple[str, ...]) -> None:
    """Once per process: removes groups left by processes that died before cleaning up (e.g.
    a reward worker SIGKILLed by its pool), killing anything still in them."""
    names = set()
    for base in bases:
        names.update(n for n in os.listdir(base) if n.startswith("r1jax-"))
    for name in names:
        try:
            os.kill(int(name.split("-")[1]), 0)
            continue  # its creator is alive and owns it
        except (ProcessLookupError, ValueError, IndexError):
            pass
        except PermissionError:
            continue
        try:
            Cgroup(tuple(os.path.join(b, name) for b in bases), 1).destroy()
        except SandboxError:
            pass  # still busy; a later process will retry


def _limit(group: Cgroup, memory_bytes: int, max_pids: int) -> None:
    if group.version == 2:
        (path,) = group.dirs
        _write(os.path.join(path, "memory.max"), str(memory_bytes))
        _try_write(os.path.join(path, "memory.swap.max"), "0")
        _write(os.path.join(path, "pids.max"), str(max_pids))
        return
    memory, pids = group.dirs
    _write(os.path.join(memory, "memory.limit_in_bytes"), str(memory_bytes))
    _try_write(os.path.join(memory, "memory.memsw.limit_in_bytes"), str(memory_bytes))
    _write(os.path.join(pids, "pids.max"), str(max_pids))


@functools.cache
def layout() -> tuple[int, tuple[str, ...]] | None:
    """Returns (version, parent dirs) where this process can make limited groups, or None."""
    mounts = _mounts()
    own = _own_paths()
    if "cgroup2" in mounts and "" in own:
        for base in _v2_candidates(mounts["cgroup2"], own[""]):
            if _v2_usable(base):
                return 2, (base,)
    bases = []
    for controller in ("memory", "pids"):
        if controller not in mounts or controller not in own:
            return None
        base = mounts[controller] + own[controller]
        if not os.access(base, os.W_OK):
            return None
        bases.append(base)
    return 1, tuple(bases)


def _mounts() -> dict[str, str]:
    """{"cgroup2": mount point, "<v1 controller>": mount point} from /proc/self/mountinfo."""
    found = {}
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fstype, _, options = right.split()[:3]
            point = left.split()[4]
            if fstype == "cgroup2":
                found.setdefault("cgroup2", point)
            elif fstype == "cgroup":
                for option in options.split(","):
                    found.setdefault(option, point)
    return found


def _own_paths() -> dict[str, str]:
    """{controller: this process's cgroup path}; "" is the v2 hierarchy."""
    found = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, controllers, path = line.rstrip("\n").split(":", 2)
            for controller in controllers.split(",") if controllers else [""]:
                found[controller] = "" if path == "/" else path
    return found


def _v2_candidates(mount: str, own: str) -> list[str]:
    # Our own group usually holds processes, and v2 lets a group with processes have no
    # children with controllers (except the root): try it, then its parents up to the mount.
    parts = own.strip("/").split("/") if own.strip("/") else []
    return [os.path.join(mount, *parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_usable(base: str) -> bool:
    try:
        with open(os.path.join(base, "cgroup.subtree_control")) as f:
            enabled = set(f.read().split())
        if not {"memory", "pids"} <= enabled:
            _write(os.path.join(base, "cgroup.subtree_control"), "+memory +pids")
        return os.access(base, os.W_OK)
    except OSError:
        return False


def _write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _try_write(path: str, value: str) -> None:
    try:
        _write(path, value)
    except OSError:
        pass


def _rmdir(path: str, deadline: float) -> None:
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as e:  # EBUSY while the kernel finishes tearing processes down
            if time.monotonic() > deadline:
                raise SandboxError(f"cannot remove cgroup {path}: {e}") from e
            time.sleep(0.005)
