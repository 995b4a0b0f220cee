"""Hostile programs for the code reward (used by test_hostile.py).

Two kinds, each a `Hostile(name, code, tests)` whose reward must be 0:

- hacks: programs that solve nothing and try to make the verdict say otherwise (replace
  builtins, return objects that equal anything, reach the harness's frames/gc/memory to learn
  its nonce or rewrite its tests, forge result lines, exit early, ...). Each runs against
  converted assert tests, a fallback (unconvertible) test and, where it forges booleans, a
  truthy/falsy test set.
- probes: stdin/stdout programs (no Python-level jail in that mode, so they test the sandbox
  itself) that print ESCAPED if an attack on the machine worked: network (TCP/UDP to the host,
  127.0.0.1, Unix and abstract sockets, ctypes sockets), persistence (/tmp, /dev/shm, host
  dirs), survivors (setsid double fork), resource bounds (memory, processes, disk), seeing or
  killing other processes, reading the caller's environment. Their test expects "ESCAPED", so
  a pass means the attack worked; the test also checks the outside (listeners, files, procs).
"""

from __future__ import annotations

import dataclasses
import os
import textwrap

ADD_CONVERTED = ["assert add(1, 2) == 3", "assert add(-5, 5) == 0"]
ADD_FALLBACK = ["for a, b in [(1, 2), (3, 4)]:\n    assert add(a, b) == a + b"]
BOOLS = ["assert is_even(4)", "assert not is_even(3)", "assert is_even(0) is True"]
AREA_ISCLOSE = ["import math\nassert math.isclose(area(1.0), 3.141592653589793)"]
ESCAPED = [{"input": "", "output": "ESCAPED"}]


@dataclasses.dataclass(frozen=True)
class Hostile:
    name: str
    code: str
    tests: list


@dataclasses.dataclass(frozen=True)
class Context:
    """What the probes aim at (all set up by the test)."""

    token: str  # 8 hex digits, marks files and processes
    tcp_port: int  # host TCP listener on 0.0.0.0
    udp_port: int  # host UDP socket on 127.0.0.1
    host_ip: str
    unix_path: str  # host Unix listener
    abstract: str  # host abstract Unix listener name (without the leading NUL)
    host_dir: str  # a host directory the probes try to write into
    secret_path: str  # a host file the probes try to read
    secret: str
    repo: str


_FORGE = """
import os
def _forge(lines):
    for fd in range(0, 64):
        try:
            os.write(fd, lines)
        except OSError:
            pass
"""

HACKS = {
    "exec_replaced": "import builtins\nbuiltins.exec = lambda *a, **k: None",
    "compile_replaced": "import builtins\n_c = compile\n"
                        "builtins.compile = lambda *a, **k: _c('pass', '<x>', 'exec')",
    "eq_always_true": "class T:\n    def __eq__(self, other):\n        return True\n"
                      "    __hash__ = object.__hash__\n    def __bool__(self):\n        return True\n"
                      "def add(*a):\n    return T()\ndef is_even(n):\n    return T()\n"
                      "def area(r):\n    return T()",
    "int_subclass_eq": "class I(int):\n    def __eq__(self, o):\n        return True\n"
                       "    __hash__ = int.__hash__\ndef add(*a):\n    return I(0)\n"
                       "def is_even(n):\n    return I(1) if n % 2 else I(0)\n"
                       "class F(float):\n    def __eq__(self, o):\n        return True\n"
                       "def area(r):\n    return F(0)",
    "getframe_locals": _FORGE + """import sys
try:
    f = sys._getframe(0)
    while f is not None:
        for v in list(f.f_locals.values()):
            if isinstance(v, dict) and "nonce" in v:
                _forge(f"{v['nonce']} 1\\n{v['nonce']} [0, 3]\\n".encode())
            if isinstance(v, bytes) and len(v) == 32:
                _forge(v + b" 1\\n" + v + b" [0, 3]\\n")
        f = f.f_back
except BaseException:
    pass
""",
    "gc_objects": _FORGE + """import gc
try:
    for o in gc.get_objects():
        if isinstance(o, dict) and "nonce" in o:
            _forge(f"{o['nonce']} 1\\n{o['nonce']} [0, 3]\\n".encode())
            o["test"] = "pass"
        if isinstance(o, list) and o and all(isinstance(t, str) for t in o):
            o[:] = ["pass"] * len(o)
except BaseException:
    pass
""",
    "traceback_frames": _FORGE + """try:
    raise ValueError
except ValueError as e:
    try:
        f = e.__traceback__.tb_frame
        while f is not None:
            for v in list(f.f_locals.values()):
                if isinstance(v, bytes) and len(v) == 32:
                    _forge(v + b" 1\\n" + v + b" [0, 3]\\n")
            f = f.f_back
    except BaseException:
        pass
""",
    "proc_self_mem": _FORGE + """import re
try:
    maps = open("/proc/self/maps").read().splitlines()
    mem = open("/proc/self/mem", "rb")
    for line in maps:
        lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
        if "r" in line.split()[1] and hi - lo < (64 << 20):
            mem.seek(lo)
            for nonce in set(re.findall(rb"[0-9a-f]{32}", mem.read(hi - lo))):
                _forge(nonce + b" 1\\n" + nonce + b" [0, 3]\\n")
except BaseException:
    pass
""",
    "forge_every_fd": _FORGE + "_forge(b'[0, 3]\\n[1, 0]\\n0 1\\n1 1\\nx 0 1\\n')",
    "ctypes_memory": "import ctypes\nctypes.string_at(id(object()), 64)",
    "sys_exit": "import sys\nsys.exit(0)",
    "os_exit": "import os\nos._exit(0)",
    "atexit_marker": "import atexit\natexit.register(lambda: print('0 1'))\n"
                     "def add(a, b):\n    raise ValueError",
    "fake_markers": "for i in range(10):\n    print(i, 1)\n    print(f'x {i} 1')",
    "assertion_override": "import builtins\n"
                          "builtins.AssertionError = type('AssertionError', (Exception,), {})\n"
                          "def add(a, b):\n    return -1\ndef is_even(n):\n    return n % 2 == 1",
    "systemexit_in_call": "def add(a, b):\n    raise SystemExit(0)\n"
                          "def is_even(n):\n    raise SystemExit(0)",
    "signal_frame": _FORGE + """import signal
def handler(sig, frame):
    while frame is not None:
        for v in list(frame.f_locals.values()):
            if isinstance(v, bytes) and len(v) == 32:
                _forge(v + b" 1\\n" + v + b" [0, True]\\n")
        frame = frame.f_back
signal.signal(signal.SIGALRM, handler)
signal.setitimer(signal.ITIMER_REAL, 0.01, 0.01)
def add(a, b):
    import time; time.sleep(0.1); raise ValueError
is_even = add
""",
    "thread_forger": _FORGE + """import threading, time
def late():
    time.sleep(0.05)
    _forge(b"[0, True]\\n[1, False]\\n[2, True]\\n")
threading.Thread(target=late).start()
def is_even(n):
    time.sleep(0.2); raise ValueError
add = is_even
""",
    "fd_takeover": _FORGE + """import os, posix
for dup2 in (os.dup2, posix.dup2):
    try:
        dup2(1, 3)
    except BaseException:
        pass
try:
    import fcntl
    fcntl.fcntl(3, fcntl.F_DUPFD, 10)
except BaseException:
    pass
def is_even(n):
    raise ValueError
add = is_even
""",
    "repr_replaced": "import builtins\nbuiltins.repr = lambda x: '[0, 3]'\n"
                     "def add(a, b):\n    return None\nis_even = add",
    "codec_replaced": "import __main__\n__main__.encode = lambda v, d=0: 3\n"
                      "__main__.make_codec = lambda: (lambda v, d=0: True,) * 3\n"
                      "def add(a, b):\n    return None\nis_even = add",
    "forge_bools": _FORGE + "_forge(b'[0, True]\\n[1, False]\\n[2, True]\\n')\n"
                   "def is_even(n):\n    raise ValueError",
    "truthy_object": "class B:\n    def __bool__(self):\n        return True\n"
                     "def is_even(n):\n    return B()\nadd = is_even",
    "math_isclose_patched": "import math\nmath.isclose = lambda *a, **k: True\n"
                            "def area(r):\n    return 0.0",
    "modules_patched": "import sys\nclass M:\n    def __getattr__(self, n):\n"
                       "        return lambda *a, **k: True\nsys.modules['math'] = M()\n"
                       "def area(r):\n    return 0.0",
    "deep_result": "def add(a, b):\n    x = []\n    for _ in range(100000):\n        x = [x]\n"
                   "    return x",
    "huge_result": "def add(a, b):\n    return 'x' * (50 << 20)",
    "recursion_limit": "import sys\nsys.setrecursionlimit(20)\ndef add(a, b):\n    return a - b",
}  # fmt: skip
_BOOL_HACKS = ("eq_always_true", "int_subclass_eq", "getframe_locals", "gc_objects",
               "signal_frame", "thread_forger", "fd_takeover", "repr_replaced", "codec_replaced",
               "forge_bools", "truthy_object", "assertion_override")
_ISCLOSE_HACKS = ("math_isclose_patched", "modules_patched", "eq_always_true", "int_subclass_eq")


def hacks() -> list[Hostile]:
    """Every hack against converted and fallback assert tests, plus the bool/isclose sets."""
    out = []
    for name, source in HACKS.items():
        out.append(Hostile(f"hack:{name}", source, ADD_CONVERTED))
        out.append(Hostile(f"hack:{name}:fallback", source, ADD_FALLBACK))
        if name in _BOOL_HACKS:
            out.append(Hostile(f"hack:{name}:bools", source, BOOLS))
        if name in _ISCLOSE_HACKS:
            out.append(Hostile(f"hack:{name}:isclose", source, AREA_ISCLOSE))
    return out


_GUARD = """
def foreign():
    # Processes that are not this sandbox's (the test runner, the reward workers).
    seen = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                seen.append(open(f"/proc/{p}/cmdline", "rb").read())
            except OSError:
                pass
    return any(b"pytest" in c or b"multiprocessing" in c or b"forkserver" in c for c in seen)
"""


def _probe_bodies(c: Context) -> dict[str, str]:
    t = c.token
    return {
        "tcp_127": f"socket.create_connection(('127.0.0.1', {c.tcp_port}), timeout=1)\nreturn True",
        "tcp_localhost": f"socket.create_connection(('localhost', {c.tcp_port}), 1)\nreturn True",
        "tcp_host_ip": f"socket.create_connection(({c.host_ip!r}, {c.tcp_port}), 1)\nreturn True",
        "tcp_mro_socket": "import _socket\ns = _socket.socket.__mro__[0]()\ns.settimeout(1)\n"
                          f"s.connect(('127.0.0.1', {c.tcp_port}))\nreturn True",
        "udp_127": "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                   f"s.sendto(b'{t}', ('127.0.0.1', {c.udp_port}))\nreturn False",
        "unix_path": f"s = socket.socket(socket.AF_UNIX)\ns.settimeout(1)\ns.connect({c.unix_path!r})"
                     "\nreturn True",
        "unix_abstract": f"s = socket.socket(socket.AF_UNIX)\ns.connect('\\0{c.abstract}')\n"
                         "return True",
        "ctypes_tcp": f"""import struct
libc = ctypes.CDLL(None)
fd = libc.socket(2, 1, 0)
addr = struct.pack('!HH4s8x', 2, {c.tcp_port}, bytes([127, 0, 0, 1]))
addr = addr[:2][::-1] + addr[2:]  # sa_family is host order
return fd >= 0 and libc.connect(fd, addr, len(addr)) == 0""",
        "outside_address": "socket.create_connection(('1.1.1.1', 53), timeout=1)\nreturn True",
        "other_interfaces": "return any(n != 'lo' for _, n in socket.if_nameindex())",
        "packet_socket": "socket.socket(socket.AF_PACKET, socket.SOCK_RAW)\nreturn True",
        "tmp_persist": f"open('/tmp/{t}-tmp', 'w').write('x')\nreturn False",
        "shm_persist": f"open('/dev/shm/{t}-shm', 'w').write('x')\nreturn False",
        "shm_fill": f"with open('/dev/shm/{t}-fill', 'wb') as f:\n"
                    "    for _ in range(160):\n        f.write(bytes(1 << 20))\nreturn False",
        "host_dir_write": f"open({c.host_dir!r} + '/escaped-{t}', 'w').write('x')\nreturn True",
        "repo_write": f"open({c.repo!r} + '/{t}-repo', 'w').write('x')\nreturn True",
        "prefix_write": f"open(sys.prefix + '/{t}-prefix', 'w').write('x')\nreturn True",
        "usr_write": f"open('/usr/{t}', 'w').write('x')\nreturn True",
        "root_home_write": f"open('/root/{t}', 'w').write('x')\nreturn True",
        "secret_read": f"return open({c.secret_path!r}).read() == {c.secret!r}",
        "etc_passwd_read": "return 'root:' in open('/etc/passwd').read()",
        "proc1_root_read": "return 'root:' in open('/proc/1/root/etc/passwd').read()",
        "chmod_interpreter": "os.chmod(os.path.realpath(sys.executable), 0o777)\nreturn True",
        "utime_interpreter": "os.utime(os.path.realpath(sys.executable))\nreturn True",
        "other_sandboxes": f"import glob\nfor d in glob.glob('/tmp/r1jax-sbx-*'):\n"
                           f"    open(d + '/{t}-x', 'w').write('x')\n    return True\nreturn False",
        "sysfs_cgroup": "return os.path.exists('/sys/fs/cgroup')",
        "cgroup_escape": "open('/sys/fs/cgroup/pids/cgroup.procs', 'w').write(str(os.getpid()))"
                         "\nreturn True",
        "dev_kmsg": "open('/dev/kmsg', 'rb')\nreturn True",
        "dev_mem": "open('/dev/mem', 'rb')\nreturn True",
        "nested_userns": "return ctypes.CDLL(None).unshare(0x10000000) == 0",
        "mount_tmpfs": "return ctypes.CDLL(None).mount(b'none', b'/tmp', b'tmpfs', 0, None) == 0",
        "chroot": "return ctypes.CDLL(None).chroot(b'/tmp') == 0",
        "raise_rlimit": "import resource\ninf = resource.RLIM_INFINITY\n"
                        "resource.setrlimit(resource.RLIMIT_AS, (inf, inf))\nreturn True",
        "see_caller": "return foreign()",
        "caller_environ": """for p in os.listdir('/proc'):
    try:
        env = open(f'/proc/{p}/environ', 'rb').read().split(b'\\0')
    except OSError:
        continue
    if {e.split(b'=')[0] for e in env if e} - {b'PATH', b'HOME', b'LANG', b'PWD'}:
        return True
return False""",
        "kill_all_visible": """if foreign():
    return True
libc = ctypes.CDLL(None)
for p in os.listdir('/proc'):
    if p.isdigit() and int(p) != os.getpid():
        libc.kill(int(p), 9)
return False""",
        "kill_minus_one": "if foreign():\n    return True\nprint('held', flush=True)\n"
                          "ctypes.CDLL(None).kill(-1, 9)\nreturn False",
        "kill_parent": "if foreign():\n    return True\nprint('held', flush=True)\n"
                       "ctypes.CDLL(None).kill(os.getppid(), 9)\nreturn False",
        "setsid_survivor": f"""libc = ctypes.CDLL(None)
if libc.fork() == 0:
    libc.setsid()
    if libc.fork() == 0:
        argv = (ctypes.c_char_p * 4)(b'sh', b'-c', b'sleep 30; : {t}', None)
        libc.execv(b'/bin/sh', argv)
    os._exit(0)
time.sleep(0.2)
return False""",
        "fork_bomb": f"""libc = ctypes.CDLL(None)
libc.prctl(15, b'r1x{t}', 0, 0, 0)
while True:
    libc.fork()""",
        "memory_total": "return memory_holders(400) == 3",
        "process_count": """libc = ctypes.CDLL(None)
made = 0
for _ in range(100):
    pid = libc.fork()
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    made += pid > 0
return made >= 64""",
        "thread_count": """import threading
started = 0
for _ in range(100):
    try:
        threading.Thread(target=time.sleep, args=(3,), daemon=True).start()
        started += 1
    except RuntimeError:
        break
return started >= 64""",
        "one_huge_block": "bytearray(4 << 30)\nreturn True",
        "disk_fill": "for i in range(10):\n    open(f'f{i}', 'wb').write(bytes(15 << 20))\nreturn True",
        "tmp_fill": "with open('/tmp/fill', 'wb') as f:\n    for _ in range(100):\n"
                    "        f.write(bytes(1 << 20))\nreturn True",
        "cpu_forever": "while True:\n    pass",
        "sleep_forever": "time.sleep(3600)",
        "output_flood": "sys.stdout.write('ESCAPED\\n' * (16 << 20))\nreturn True",
    }  # fmt: skip


MEMORY_HOLDERS = """
def memory_holders(mb):
    # Three children each touch `mb` MiB; returns how many are alive holding it 1.5 s later.
    libc, kids = ctypes.CDLL(None), []
    for i in range(3):
        pid = libc.fork()
        if pid == 0:
            block = bytearray(mb << 20)
            block[::4096] = b"x" * len(block[::4096])
            open(f"ok{i}", "w").close()
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    time.sleep(1.5)
    alive = [os.waitpid(p, os.WNOHANG) == (0, 0) for p in kids]
    return sum(a and os.path.exists(f"ok{i}") for i, a in enumerate(alive))
"""


def processes_with(token: str) -> list[int]:
    """Host processes whose command line or name contains `token`."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        for name in ("cmdline", "comm"):
            try:
                with open(f"/proc/{pid}/{name}", "rb") as f:
                    if token.encode() in f.read():
                        found.append(int(pid))
            except OSError:
                pass
    return sorted(set(found))


def probes(context: Context) -> list[Hostile]:
    out = []
    for name, body in _probe_bodies(context).items():
        source = ("import ctypes, os, socket, sys, time\n" + _GUARD + MEMORY_HOLDERS
                  + "\ndef attack():\n"
                  + textwrap.indent(body, "    ") + "\n\ntry:\n    escaped = bool(attack())\n"
                  "except BaseException:\n    escaped = False\n"
                  "print('ESCAPED' if escaped else 'held')\n")
        out.append(Hostile(f"probe:{name}", source, ESCAPED))
    return out


VICTIMS = [
    Hostile("victim:calls", "import time\ndef add(a, b):\n    time.sleep(0.3)\n    return a + b",
            ADD_CONVERTED),
    Hostile("victim:fallback", "def add(a, b):\n    return a + b", ADD_FALLBACK),
    Hostile("victim:stdio", """import os, sys, time
open('mine', 'w').write('victim')
open('/tmp/mine', 'w').write('victim')
time.sleep(0.5)
assert open('mine').read() == open('/tmp/mine').read() == 'victim'
a, b = map(int, sys.stdin.read().split())
print(a + b)""", [{"input": "1 2\n", "output": "3"}]),
]  # fmt: skip


def pool_item(mode):
    """A pool item that dies, hangs in Python or in C, or returns 1 (test_hostile). It lives here,
    not in the test module, so that workers unpickle it without importing the test module."""
    if mode == "die":
        os._exit(3)
    if mode == "hang":
        while True:
            pass
    if mode == "c_hang":  # signals can't interrupt a single long C call: the hard limit must
        return float(sum(range(10**13)) > 0)
    return 1.0
