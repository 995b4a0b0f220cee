"""Boot step of the "unshare" sandbox: build a minimal read-only root, then exec the program.

Run by `sandbox.py` as PID 1 of fresh user, PID, mount, network, IPC, UTS and cgroup
namespaces made by util-linux `unshare`:

    python -I _jail.py MOUNTPOINT SHIELD... -- PATH... -- PROGRAM ARGS...

It is trusted code and runs before anything untrusted: it mounts a tmpfs on MOUNTPOINT (an
empty directory, visible only in this mount namespace), binds /usr, /lib*, /bin, /sbin and each
PATH (the interpreter's) read-only into it, covers each SHIELD (a directory above a PATH inside
a writable mount, see `sandbox.read_only_shields`) with a read-only tmpfs, adds a fresh /dev
(null, zero, full, random, urandom), /proc of the new PID namespace, writable tmpfs /tmp,
/dev/shm and /sandbox, pivots into it, drops the old root, forbids further user namespaces where
the kernel lets it, empties the capability bounding set with no_new_privs (so the exec leaves no
capability), and execs PROGRAM with /sandbox as its working directory. Any failure exits with
status 125 before the program starts, which the caller reports as a sandbox error.
"""

import ctypes
import os
import platform
import sys

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MNT_DETACH = 2
PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 24, 38
SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/bin", "/sbin")
DEVICES = ("null", "zero", "full", "random", "urandom")
TMPFS_SIZE = "size=64m"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount(source, target, fstype, flags, data=None) -> None:
    enc = [None if x is None else x.encode() for x in (source, target, fstype, data)]
    _check(_libc.mount(enc[0], enc[1], enc[2], ctypes.c_ulong(flags), enc[3]),
           f"mount {source} on {target}")


def bind_ro(source: str, target: str) -> None:
    """Binds `source` (a directory or a file) read-only at `target` (made to match)."""
    if os.path.isdir(source):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    mount(source, target, None, MS_BIND | MS_REC)
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)


def build_root(root: str, shields: list[str], paths: list[str]) -> None:
    """Builds the sandbox's file system under `root` (see the module docstring)."""
    mount(None, "/", None, MS_REC | MS_PRIVATE)  # nothing we mount leaks back to the host
    mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755," + TMPFS_SIZE)
    os.makedirs(root + "/dev")
    mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "mode=755,size=1m")
    for name in DEVICES:
        open(f"{root}/dev/{name}", "a").close()
        mount(f"/dev/{name}", f"{root}/dev/{name}", None, MS_BIND)
    for name, fd in (("stdin", 0), ("stdout", 1), ("stderr", 2)):
        os.symlink(f"/proc/self/fd/{fd}", f"{root}/dev/{name}")
    os.symlink("/proc/self/fd", f"{root}/dev/fd")
    for name in ("/tmp", "/dev/shm", "/sandbox"):  # before the binds: the interpreter may be
        os.makedirs(root + name)                     # under /tmp
        mount("tmpfs", root + name, "tmpfs", MS_NOSUID | MS_NODEV, "mode=1777," + TMPFS_SIZE)
    for path in SYSTEM_DIRS:
        if os.path.islink(path):  # merged /usr: keep the link, its target is bound anyway
            os.symlink(os.readlink(path), root + path)
        elif os.path.exists(path):
            bind_ro(path, root + path)
    for path in shields:  # see sandbox.read_only_shields: no writable parent of a bind
        os.makedirs(root + path, exist_ok=True)
        mount("tmpfs", root + path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=755,size=1m")
    for path in paths:
        bind_ro(path, root + path)
    for path in shields:
        mount(None, root + path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.makedirs(root + "/proc")
    mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def enter_root(root: str) -> None:
    os.chdir(root)
    number = SYS_PIVOT_ROOT.get(platform.machine())
    if number is None:
        raise OSError(f"pivot_root: unknown syscall number on {platform.machine()}")
    _check(_libc.syscall(number, b".", b"."), "pivot_root")  # old root now stacked on "."
    _check(_libc.umount2(b".", MNT_DETACH), "umount old root")
    mount(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV)
    os.chdir("/sandbox")


def drop_privileges() -> None:
    try:  # this user namespace may own no child user namespace
        with open("/proc/sys/user/max_user_namespaces", "w") as f:
            f.write("0")
    except OSError:
        pass
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    for cap in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 and cap < 41:
            _check(-1, f"drop capability {cap}")


def main(argv: list[str]) -> None:
    first = argv.index("--")
    second = argv.index("--", first + 1)
    root, shields, paths = argv[1], argv[2:first], argv[first + 1:second]
    program = argv[second + 1:]
    try:
        build_root(root, shields, paths)
        enter_root(root)
        drop_privileges()
    except OSError as e:
        os.write(2, f"r1jax jail: {e}\n".encode())
        os._exit(125)
    os.execve(program[0], program, {"PATH": "/usr/bin:/bin", "HOME": "/sandbox",
                                    "LANG": "C.UTF-8"})


if __name__ == "__main__":
    main(sys.argv)
