"""r1_zero.py and r1.py never delete or modify a file in a directory r1jax did not create: given
an HF directory, an empty directory, a directory of unrelated files or a missing path as the
base (or as the run directory), each tree hashes the same before and after, and a base_dir
that holds no model fails within seconds instead of starting a pretraining.
(R1-Zero *training* from an HF directory, read-only, is checked in test_real_model.py.)"""

import pathlib
import subprocess
import sys
import time

import hf_dirs
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SECONDS = 60  # a process start (JAX import) on a busy CPU; a pretraining takes far longer


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    hf_dirs.build_hf_dir(root / "hf")
    (root / "empty").mkdir()
    (root / "unrelated" / "sub").mkdir(parents=True)
    (root / "unrelated" / "notes.txt").write_text("precious")
    (root / "unrelated" / "sub" / "data.csv").write_text("a,b\n1,2\n")
    return root


def _cases(root):
    """{name: (command, expected error text or None for success)}; every process runs in
    `root`, so the presets' relative default paths land there too."""
    r1_zero = [sys.executable, str(ROOT / "experiments" / "r1_zero.py"),
               f"--config={ROOT}/configs/r1_zero.py:smoke",
               f"--pretrain_config={ROOT}/configs/pretrain_base.py:smoke"]
    r1 = [sys.executable, str(ROOT / "experiments" / "r1.py"), f"--config={ROOT}/configs/r1.py:smoke",
          "--until=base"]
    cases = {}
    for name, needle in (("empty", "an empty directory"), ("unrelated", "2 entries: notes.txt"),
                         ("missing", "the path does not exist")):
        cases[f"r1_zero-{name}"] = (r1_zero + [f"--config.base_dir={name}",
                                               f"--workdir=run_zero_{name}"], needle)
        cases[f"r1-{name}"] = (r1 + [f"--config.base_dir={name}", f"--workdir=run_r1_{name}"],
                               needle)
    refused = "r1jax did not create it"
    cases["r1_zero-toy-unrelated"] = (r1_zero + ["--config.base_dir=unrelated",
                                                 "--config.toy_base_dir=unrelated",
                                                 "--workdir=run_zero_toy"], refused)
    cases["r1-toy-unrelated"] = (r1 + ["--config.base_dir=unrelated",
                                       "--config.toy_base_dir=unrelated",
                                       "--workdir=run_r1_toy"], refused)
    cases["r1_zero-workdir-hf"] = (r1_zero + ["--config.base_dir=hf", "--workdir=hf"], refused)
    cases["r1-workdir-unrelated"] = (r1 + ["--config.base_dir=hf", "--workdir=unrelated"],
                                     refused)
    cases["r1-hf"] = (r1 + ["--config.base_dir=hf", "--workdir=run_r1_hf"], None)
    return cases


@pytest.mark.slow
def test_entry_points_never_touch_directories_they_did_not_create(dirs):
    watched = ("hf", "empty", "unrelated", "missing")
    before = {name: hf_dirs.tree_hash(dirs / name) for name in watched}
    procs = {}
    for name, (command, needle) in _cases(dirs).items():  # concurrently: each mostly waits
        procs[name] = (subprocess.Popen(command, cwd=dirs, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True),
                       needle, time.monotonic())
    failures = []
    for name, (proc, needle, start) in procs.items():
        out, _ = proc.communicate(timeout=600)
        elapsed = time.monotonic() - start
        ok = proc.returncode == 0 if needle is None else (
            proc.returncode != 0 and needle in out and elapsed < SECONDS)
        if not ok:
            failures.append(f"{name}: rc={proc.returncode} after {elapsed:.0f} s\n{out[-1500:]}")
    assert not failures, "\n\n".join(failures)
    assert {name: hf_dirs.tree_hash(dirs / name) for name in watched} == before
    assert not (dirs / "missing").exists() and not (dirs / "missing.work").exists()
    assert not (dirs / "unrelated.work").exists()  # no pretraining started beside it


def test_the_trainer_itself_refuses_a_directory_it_did_not_create(tmp_path):
    """Library callers of `trainer.train` (notebooks) get the same guarantee, before anything
    is loaded or written."""
    from conftest import config_preset

    from r1jax import ownership
    from r1jax.rl import trainer

    user = tmp_path / "user"
    user.mkdir()
    (user / "config.json").write_text('{"mine": true}')
    before = hf_dirs.tree_hash(user)
    config = config_preset("r1_zero", "smoke")
    config.base_dir = str(tmp_path / "no-model-needed")
    with pytest.raises(ownership.NotOwnedError, match="config.json"):
        trainer.train(config, str(user))
    assert hf_dirs.tree_hash(user) == before
