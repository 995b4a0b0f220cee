"""Exit status of the entry points: finished 0, preempted 75 (EX_TEMPFAIL) with "preempted at
step N", failed non-zero; the SIGTERM handler is in place before the slow imports."""

import pathlib
import signal
import subprocess
import sys
import time

import cpu_env
import pytest

from r1jax import preemption

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a SIGTERM handler (Linux: the SigCgt mask in /proc)."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("SigCgt:"):
            return bool(int(line.split()[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def _start(base_dir, workdir, *flags):
    env = cpu_env.env(1)
    return subprocess.Popen(
        [sys.executable, "experiments/r1_zero.py", "--config=configs/r1_zero.py:smoke",
         f"--config.base_dir={base_dir}", f"--workdir={workdir}", *flags],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_sigterm_during_start_up_exits_75_saying_preempted_at_step_0(base_dir, tmp_path):
    process = _start(base_dir, tmp_path / "run")
    deadline = time.time() + 60
    while not _catches_sigterm(process.pid):  # the handler comes before `import jax`
        assert process.poll() is None and time.time() < deadline, process.communicate()[0]
        time.sleep(0.01)
    started = time.time()
    process.send_signal(signal.SIGTERM)  # during the imports or the model loading
    out, _ = process.communicate(timeout=300)
    assert process.returncode == preemption.EXIT_PREEMPTED == 75, out[-3000:]
    assert "preempted at step 0" in out and "| final |" not in out, out[-3000:]
    assert time.time() - started < 120  # no training step ran, nothing compiled for it
    assert not (tmp_path / "run" / "checkpoints" / "0").exists()  # nothing worth saving yet


def test_a_failed_run_exits_non_zero_naming_the_field(base_dir, tmp_path):
    process = _start(base_dir, tmp_path / "run", "--config.grpo.group_size=1")
    out, _ = process.communicate(timeout=300)
    assert process.returncode not in (0, 75) and "grpo.group_size=1" in out, out[-3000:]


def test_exit_status_wrapper(capsys):
    def preempted(argv):
        raise preemption.Preempted(7, "runs/x")

    with pytest.raises(SystemExit) as exit_:
        preemption.exit_status(preempted)([])
    assert exit_.value.code == 75
    assert "preempted at step 7 (runs/x); rerun the same command to resume" in \
        capsys.readouterr().out
    assert preemption.exit_status(lambda argv: "done")([]) == "done"
