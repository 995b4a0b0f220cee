"""The sandbox itself: kind selection, the interpreter under /tmp, the per-run cgroup, nothing
surviving, and failures that are errors of the run (never a silent zero reward)."""

import os
import secrets
import subprocess
import sys
import time

import hostile_programs
import pytest

from r1jax import rewards
from r1jax.rewards import cgroups, code, sandbox

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WHY_NOT = {k: sandbox.probe(k) for k in sandbox.ISOLATING}
ISOLATING = [pytest.param(k, marks=pytest.mark.skipif(why is not None, reason=f"{k}: {why}"))
             for k, why in WHY_NOT.items()]  # fmt: skip
NO_CGROUP = pytest.mark.skipif(cgroups.layout() is None,
                               reason="no writable cgroup hierarchy with memory and pids here")
ALL = ISOLATING + ["rlimit"]


def raw(kind, program, **kwargs):
    """Runs raw Python (no harness, so os.fork etc. are intact) in the sandbox."""
    source = f"import os\nos.write(1, {sandbox.READY!r})\n{program}"
    return sandbox.run(["-c", source], b"", kind=kind, **{"timeout_s": 10.0, **kwargs})


@pytest.mark.skipif(WHY_NOT["bwrap"] is not None, reason=f"bwrap: {WHY_NOT['bwrap']}")
@pytest.mark.parametrize("layout", ["venv", "symlink"])
def test_interpreter_under_tmp_chooses_bwrap(tmp_path, layout):
    assert str(tmp_path).startswith("/tmp/")
    if layout == "venv":
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "env")],
                       check=True)
        python = tmp_path / "env" / "bin" / "python"
    else:
        python = tmp_path / "python3"
        python.symlink_to(os.path.realpath(sys.executable))
    site = [p for p in sys.path if p.endswith("site-packages")]
    script = (f"import sys; sys.path[:0] = {[REPO] + site!r}\n"
              "from r1jax.rewards import code, sandbox\n"
              "print(sys.prefix, sandbox.kind(), code.pass_rate('def f(x):\\n return x + 1', "
              "['assert f(1) == 2', {'input': '', 'output': ''}], timeout_s=20.0))")
    env = {"PATH": os.environ["PATH"]}
    out = subprocess.run([str(python), "-c", script], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    prefix, kind, rate = out.stdout.split()
    if layout == "venv":
        assert prefix.startswith("/tmp/")
    assert (kind, rate) == ("bwrap", "1.0")


@pytest.mark.parametrize("kind", ISOLATING)
def test_no_writable_parent_of_an_interpreter_under_tmp(tmp_path, kind):
    """A venv under /tmp is bound into the sandbox's fresh /tmp: the directories above it (the
    host's repository, say) must not accept writes there, while /tmp itself stays writable."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "repo" / "env")],
                   check=True)
    site = [p for p in sys.path if p.endswith("site-packages")]
    program = (f"import os\nos.write(1, {sandbox.READY!r})\n"
               f"for path in ({str(tmp_path / 'repo' / 'x')!r}, {str(tmp_path / 'x')!r}, "
               "'/tmp/x'):\n"
               "    try:\n        open(path, 'w').write('x'); print('wrote', path)\n"
               "    except OSError as e:\n        print('denied', e.errno)")
    script = (f"import sys; sys.path[:0] = {[REPO] + site!r}\n"
              "from r1jax.rewards import sandbox\n"
              f"print(sandbox.run(['-c', {program!r}], b'', timeout_s=20.0, kind={kind!r})"
              ".stdout.decode())")
    out = subprocess.run([str(tmp_path / "repo" / "env" / "bin" / "python"), "-c", script],
                         capture_output=True, text=True, env={"PATH": os.environ["PATH"]},
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["denied 30", "denied 30", "wrote /tmp/x"]
    assert os.listdir(tmp_path / "repo") == ["env"] and not os.path.exists(tmp_path / "x")


@pytest.mark.parametrize("kind", ISOLATING)
def test_interpreter_paths_cover_the_sandbox(kind):
    done = raw(kind, "import sys\nprint(sys.prefix, sys.executable)")
    assert done.returncode == 0 and done.stdout.split()[0] == sys.prefix.encode()


@NO_CGROUP
@pytest.mark.parametrize("kind", ALL)
def test_cgroup_bounds_total_memory(kind):
    # Three children of 200 MiB each fit RLIMIT_AS (400 MiB per process) but not the 400 MiB
    # cgroup together: at most one can be alive holding its memory after they all tried.
    program = f"import ctypes, time\n{hostile_programs.MEMORY_HOLDERS}print(memory_holders(200))"
    done = raw(kind, program, memory_mb=400)
    assert int(done.stdout) <= 1, done


@NO_CGROUP
@pytest.mark.parametrize("kind", ALL)
def test_cgroup_bounds_processes_and_nothing_survives(kind):
    token = f"r1jax-survivor-{secrets.token_hex(4)}"
    program = f"""import ctypes, time
# {token}
libc = ctypes.CDLL(None)
made = 0
for _ in range(200):
    pid = libc.fork()
    if pid == 0:
        libc.setsid()
        if libc.fork() == 0:
            time.sleep(60)
        os._exit(0)
    made += pid > 0
time.sleep(0.3)
print(made)"""
    done = raw(kind, program, max_pids=32)
    assert 0 < int(done.stdout) < 32
    assert hostile_programs.processes_with(token) == []


def test_survivor_is_an_error(monkeypatch):
    group = cgroups.create(64 << 20, 8)
    if group is None:
        pytest.skip("no writable cgroup hierarchy with memory and pids here")
    proc = subprocess.Popen(["sleep", "30"], preexec_fn=group.enter)
    try:
        monkeypatch.setattr(cgroups, "_DRAIN_S", 0.2)
        monkeypatch.setattr(cgroups.os, "kill", lambda pid, sig: None)  # the kill "fails"
        monkeypatch.setattr(cgroups, "_try_write", lambda path, value: None)
        with pytest.raises(sandbox.SandboxError, match="survived"):
            group.destroy()
    finally:
        monkeypatch.undo()
        group.destroy()
        proc.wait()
    assert proc.returncode == -9 and not any(os.path.exists(d) for d in group.dirs)


def test_kind_refuses_without_isolation(monkeypatch):
    monkeypatch.setattr(sandbox, "probe", lambda which: "not here (test)")
    monkeypatch.delenv("R1JAX_SANDBOX", raising=False)
    sandbox.kind.cache_clear()
    try:
        with pytest.raises(sandbox.SandboxError, match="R1JAX_SANDBOX=rlimit"):
            sandbox.kind()
        with pytest.raises(sandbox.SandboxError):
            code.pass_rate("x = 1", ["assert x == 1"])
        sandbox.kind.cache_clear()
        monkeypatch.setenv("R1JAX_SANDBOX", "rlimit")
        assert sandbox.kind() == "rlimit"
        assert code.pass_rate("x = 1", ["import sys; assert x == 1"]) == 1.0
    finally:
        sandbox.kind.cache_clear()


@pytest.mark.parametrize("kind", ISOLATING)
def test_broken_sandbox_is_an_error(kind, monkeypatch):
    monkeypatch.setattr(sandbox, "interpreter_paths", lambda: ["/nonexistent/r1jax-python"])
    with pytest.raises(sandbox.SandboxError, match="did not start"):
        code.pass_rate("x = 1", ["assert x == 1"], kind=kind)


def test_sandbox_error_is_an_error_of_the_batch():
    with rewards.WorkerPool(1, grace_s=0.5) as pool:
        with pytest.raises(sandbox.SandboxError, match="sandbox kind"):
            rewards.get("code", kind="nope")(["```python\nx = 1\n```"], pool=pool,
                                             tests=[["assert x == 1"]])
        values = rewards.get("code")(["```python\nx = 1\n```"], pool=pool,
                                     tests=[["assert x == 1"]])
        assert values.tolist() == [1.0]  # the pool still works after the error


@pytest.mark.parametrize("kind", ALL)
def test_timeout_ends_the_run(kind):
    start = time.monotonic()
    done = raw(kind, "import time\ntime.sleep(30)", timeout_s=0.5)
    assert done.timed_out and time.monotonic() - start < 3.0
