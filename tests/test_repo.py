"""Repository contract: lint clean, and the README's test command is what CI runs."""

import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _ruff() -> list[str]:
    exe = shutil.which("ruff") or str(pathlib.Path(sys.executable).with_name("ruff"))
    return [exe]


def test_ruff_clean():
    result = subprocess.run(_ruff() + ["check", str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text().splitlines()
    commands = [line for line in readme[:20] if line.startswith("pip install")]
    assert len(commands) == 2, commands
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def _install_requires() -> dict[str, str]:
    """{distribution name: version specifier} of setup.cfg's install_requires."""
    import configparser
    import re

    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = [s.strip() for s in cfg["options"]["install_requires"].splitlines() if s.strip()]
    return dict(re.match(r"([A-Za-z0-9_.\-]+)\s*(.*)", line).groups() for line in lines)


def test_plain_install_can_load_hf_checkpoints_and_admits_current_jax():
    """`pip install -e .` brings what loading an HF directory needs, and the jax pin admits
    the 0.11 releases that GPU/TPU images ship (and the 0.10 this machine has)."""
    from packaging.specifiers import SpecifierSet

    requires = _install_requires()
    assert {"safetensors", "tokenizers"} <= set(requires), requires
    jax_pin = SpecifierSet(requires["jax"])
    for version in ("0.10.2", "0.11.0", "0.11.9"):
        assert version in jax_pin, (version, jax_pin)
