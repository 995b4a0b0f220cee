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


def _config_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_tables",
                                                  ROOT / "scripts" / "config_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_architecture_doc_tables_match_the_code():
    """docs/architecture.md's preset tables are generated (scripts/config_tables.py); a
    preset or default changed without regenerating them fails here."""
    tables = _config_tables()
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert tables.stale_tables(text) == [], "run python scripts/config_tables.py --write"
    drifted = text.replace("| `grpo.beta` | 0.001 |", "| `grpo.beta` | 0.002 |")
    assert drifted != text and tables.stale_tables(drifted) == ["r1_zero"]


def test_architecture_doc_is_not_stale():
    text = (ROOT / "docs" / "architecture.md").read_text()
    assert "Not implemented yet" not in text
    for module in ("r1jax/r1/pipeline.py", "r1jax/r1/rejection.py", "r1jax/r1/distill.py",
                   "r1jax/train/reward_model.py", "r1jax/evals/rollout.py", "r1jax/models/moe/",
                   "r1jax/rl/runs.py", "r1jax/rl/export.py", "r1jax/ownership.py",
                   "r1jax/preemption.py", "r1jax/rewards/sandbox.py", "r1jax/config_utils.py"):
        assert f"`{module}" in text, module


#: Top-level directories whose paths the docs name.
_REPO_DIRS = ("r1jax", "configs", "experiments", "benchmarks", "tests", "scripts", "notebooks",
              "docs", ".ci")


def named_paths(text: str) -> list[str]:
    """Repository paths a Markdown text names in backticks (`r1jax/rl/runs.py`, `r1jax/r1/`,
    `configs/r1.py:tiny` -> configs/r1.py); templates with <...> or * are left out."""
    import re

    out = []
    for token in re.findall(r"`([^`\s]+)`", text):
        path = token.split(":")[0].rstrip("/")
        if path.split("/")[0] in _REPO_DIRS and "/" in path and not re.search(r"[<*]", path):
            out.append(path)
    return out


def test_every_path_the_docs_name_exists():
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    missing = [f"{doc.relative_to(ROOT)}: {path}" for doc in docs
               for path in named_paths(doc.read_text()) if not (ROOT / path).exists()]
    assert missing == []
    assert named_paths("see `r1jax/r1/` and `configs/r1.py:tiny`, not `x/y` or `<dir>/a`") == \
        ["r1jax/r1", "configs/r1.py"]


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


def _commands(markdown: str) -> list[list[str]]:
    """The shell commands of the fenced blocks, continuation lines joined, comments dropped."""
    import re
    import shlex

    commands = []
    for block in re.findall(r"```\n(.*?)```", markdown, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("  #")[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands


def test_readme_own_model_and_data_section():
    """The schemas, every reward, the GPU/TPU installs, export and evaluation are documented,
    and every config command in the section parses and freezes with the real config code."""
    from r1jax import config_utils
    from r1jax.data.tasks import jsonl
    from r1jax.rewards import registry
    from r1jax.rl import config as rl_config

    section = _readme_section("Your own model and data")
    for name in list(jsonl.FORMATS) + list(registry.names()):
        assert f"`{name}`" in section, name
    for text in ('pip install -U "jax[cuda12]"', 'pip install -U "jax[tpu]"',
                 "experiments/export.py --checkpoint=", "--dtype=bfloat16",
                 "experiments/eval.py --checkpoint=", "countdown", "jsonl_on_error"):
        assert text in section, text
    checked = 0
    for command in _commands(section):
        sources = [a.split("=", 1)[1] for a in command if a.startswith("--config=")]
        if not sources:
            continue
        overrides = [a[len("--config."):] for a in command if a.startswith("--config.")]
        config = config_utils.parse_config_file(str(ROOT / sources[0]), *overrides)
        if "experiments/r1_zero.py" in command:
            rl_config.from_config_dict(config)  # the values validate, not only the keys
        checked += 1
    assert checked >= 2
