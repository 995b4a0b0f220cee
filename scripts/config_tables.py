"""Regenerates the preset tables of docs/architecture.md from the code (or checks them).

    python scripts/config_tables.py           # exit 1 and name the stale tables
    python scripts/config_tables.py --write   # rewrite them in place

Each table sits between `<!-- begin generated: NAME -->` and `<!-- end generated: NAME -->`:
`model_presets` (`r1jax.models.presets.markdown_table`), `r1_zero` (configs/r1_zero.py, every
preset) and `pretrain_base` (configs/pretrain_base.py). tests/test_repo.py fails when a table
no longer matches the code.
"""

from __future__ import annotations

import importlib.util
import pathlib
import re
import sys

from r1jax import config_utils
from r1jax.models import presets

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SAME = "="  # a value unchanged from the table's first column


def load_config_module(name: str):
    """configs/<name>.py as a module (the config files are not a package)."""
    path = ROOT / "configs" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_tables_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_SET_ONLY = ("rewards", "model_overrides", "model")  # declared maps: only set entries shown
_WHOLE = ("task_knobs", "reward_routes")  # maps shown as one cell


def _shown(values: dict, prefix: str = "") -> dict:
    """A preset's `to_dict()` as {dotted field: value}: the declared-but-unset entries of the
    override maps are left out and a mesh is shown as it is frozen (`mesh_pairs`)."""
    out = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key in _SET_ONLY:
            out[name] = config_utils.set_entries(value)
        elif key == "reward_options":  # {reward: {option: value}}, the set options only
            set_options = {k: config_utils.set_entries(v) for k, v in value.items()}
            out[name] = {k: v for k, v in set_options.items() if v}
        elif key == "mesh":
            out[name] = dict(config_utils.mesh_pairs(value))
        elif isinstance(value, dict) and key not in _WHOLE:
            out.update(_shown(value, f"{name}."))
        else:
            out[name] = value
    return out


def _cell(value) -> str:
    if isinstance(value, dict):
        value = dict(sorted(value.items()))
    return str(value).replace("|", "\\|")


def comparison_table(columns: dict[str, dict]) -> str:
    """Rows: every field of any column, sorted; cells: the value, or `=` where it equals the
    first column's."""
    names = list(columns)
    first = columns[names[0]]
    fields = sorted(set().union(*columns.values()))
    lines = ["| field | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for field in fields:
        cells = [_cell(first.get(field))]
        for name in names[1:]:
            value = columns[name].get(field)
            cells.append(SAME if value == first.get(field) else _cell(value))
        lines.append(f"| `{field}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def r1_zero_table() -> str:
    module = load_config_module("r1_zero")
    columns = {"_base": _shown(module._base().to_dict())}  # the presets' shared start
    columns.update({name: _shown(module.get_config(name).to_dict()) for name in module.PRESETS})
    return comparison_table(columns)


def pretrain_table() -> str:
    module = load_config_module("pretrain_base")
    return comparison_table({name: _shown(module.get_config(name).to_dict())
                             for name in ("tiny", "smoke")})


TABLES = {"model_presets": presets.markdown_table, "r1_zero": r1_zero_table,
          "pretrain_base": pretrain_table}


def _block(name: str) -> re.Pattern:
    return re.compile(rf"(<!-- begin generated: {name} -->\n)(.*?)(\n<!-- end generated: "
                      rf"{name} -->)", re.S)


def render(text: str) -> str:
    """`text` with every generated block replaced by the table the code gives now."""
    for name, make in TABLES.items():
        pattern = _block(name)
        if not pattern.search(text):
            raise ValueError(f"{DOC}: no '<!-- begin generated: {name} -->' block")
        table = make()
        text = pattern.sub(lambda m, t=table: m.group(1) + t + m.group(3), text)
    return text


def stale_tables(text: str) -> list[str]:
    """Names of the generated blocks of `text` that differ from what the code gives now."""
    fresh = render(text)
    return [name for name in TABLES
            if _block(name).search(text).group(2) != _block(name).search(fresh).group(2)]


def main(argv: list[str]) -> int:
    text = DOC.read_text()
    if argv == ["--write"]:
        DOC.write_text(render(text))
        return 0
    stale = stale_tables(text)
    if stale:
        print(f"{DOC}: stale tables {stale}; run python scripts/config_tables.py --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
