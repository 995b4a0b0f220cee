"""Command-line configs: every dataclass field declared in the ConfigDict, one-line key errors,
and what changed between two configs.

The experiments' configs are `ml_collections.ConfigDict`s that `config_flags` lets the command
line override (`--config.sampling.top_p=0.9`), but only for keys that exist and whose value has
a type. So the configs are built from the frozen dataclasses themselves (`from_dataclass`):
every field is present, and a field whose default is None becomes a typed placeholder
(`ml_collections.config_dict.placeholder(int)`), so `--config.sampling.top_k=40` works. Maps
that name optional entries (`model_overrides`, `rewards`) declare every possible entry as an
unset placeholder; `set_entries` drops those before the dataclass sees them.

A misspelled key on the command line (`--config.data.trian_jsonl=x`) is a one-line error that
names the key and the closest valid ones (`run`, a drop-in for `absl.app.run`).

This module imports nothing from r1jax: every layer may use it.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import pathlib
import sys
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections
from ml_collections import config_dict

_SCALARS = (bool, int, float, str)


# ---------------------------------------------------------------------------------------------
# dataclass -> ConfigDict
# ---------------------------------------------------------------------------------------------


def scalar_type(annotation) -> type | None:
    """The scalar type of a field annotation (`int | None` -> int), or None when it is not one
    scalar type (tuples, dicts, nested dataclasses)."""
    if annotation in _SCALARS:
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1 and args[0] in _SCALARS:
            return args[0]
    return None


def _is_pairs(annotation) -> bool:
    """True for `tuple[tuple[str, X], ...]`: a {name: value} map frozen as sorted pairs."""
    if typing.get_origin(annotation) is not tuple:
        return False
    args = typing.get_args(annotation)
    return len(args) == 2 and args[1] is Ellipsis and typing.get_origin(args[0]) is tuple


def typed(value, annotation):
    """A ConfigDict entry for `value`: a typed FieldReference when the field's scalar type is
    known (so None stays overridable), the value itself otherwise."""
    kind = scalar_type(annotation)
    if kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    return config_dict.FieldReference(value, field_type=kind)


def unset_fields(cls) -> ml_collections.ConfigDict:
    """Every scalar field of dataclass `cls` as an unset typed placeholder (for override maps:
    `model_overrides`, where an entry left None means "keep the loaded value")."""
    hints = typing.get_type_hints(cls)
    out = ml_collections.ConfigDict()
    for field in dataclasses.fields(cls):
        kind = scalar_type(hints[field.name])
        if kind is None:
            raise TypeError(f"{cls.__name__}.{field.name}: {hints[field.name]} is not a scalar")
        out[field.name] = config_dict.placeholder(kind)
    return out


def from_dataclass(cls, **values) -> ml_collections.ConfigDict:
    """A ConfigDict with every field of dataclass `cls`, set to `values` or the default.

    Nested dataclass fields become nested ConfigDicts; `tuple[tuple[str, X], ...]` fields
    become dicts; scalar fields are typed (a None default is a typed placeholder); a field
    without a default and not in `values` is an unset placeholder.

    Raises:
      ValueError: a key of `values` is not a field of `cls` (naming the closest fields).
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in names:
            raise ValueError(unknown_key_message(f"{cls.__name__}.{key}", key, names))
    out = ml_collections.ConfigDict()
    for field in dataclasses.fields(cls):
        annotation = hints[field.name]
        if field.name in values:
            value = values[field.name]
        elif field.default is not dataclasses.MISSING:
            value = field.default
        elif field.default_factory is not dataclasses.MISSING:
            value = field.default_factory()
        else:
            value = None
        if DECLARE in field.metadata:
            out[field.name] = field.metadata[DECLARE](value)
        elif dataclasses.is_dataclass(annotation):
            out[field.name] = from_dataclass(annotation, **_as_mapping(value))
        elif _is_pairs(annotation):
            out[field.name] = dict(value or ())
        else:
            out[field.name] = typed(value, annotation)
    return out


def _as_mapping(value) -> dict[str, Any]:
    """A section's given values: a mapping, a dataclass instance (a default such as
    `OptimConfig(learning_rate=3e-6)`) or None."""
    if value is None:
        return {}
    if dataclasses.is_dataclass(value):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    return dict(value)


def set_entries(mapping: Mapping[str, Any] | None) -> dict[str, Any]:
    """The entries of an override map that were set (placeholders left None are dropped)."""
    return {k: v for k, v in dict(mapping or {}).items() if v is not None}


def mesh_pairs(mesh: Mapping[str, int | None] | Sequence[tuple[str, int]]
               ) -> tuple[tuple[str, int], ...]:
    """A {axis: size} mesh map (every axis declared, so the command line can set any) frozen
    as pairs: unset axes are dropped, and so are size-1 axes beside a -1 axis (the same mesh:
    a missing axis has size 1 and the -1 axis takes the rest), which keeps the recorded form
    of a plain `{"fsdp": -1}` mesh unchanged."""
    sizes = set_entries(dict(mesh))
    if -1 in sizes.values():
        sizes = {axis: size for axis, size in sizes.items() if size != 1}
    return tuple(sizes.items())


def assign(section: ml_collections.ConfigDict, values: Mapping[str, Any], *,
           declare: bool = False) -> None:
    """Sets a map of declared optional entries (e.g. `rewards`) to exactly `values`: every
    other declared entry goes back to unset, so a preset replaces the map without dropping
    the keys the command line may set.

    Args:
      section: the map (a ConfigDict of typed entries).
      values: the entries to set.
      declare: add keys of `values` that `section` lacks (typed by their value), e.g. a
        reward registered at run time; otherwise they are an error naming the closest keys.
    """
    for key, value in values.items():
        if key not in section:
            if not declare:
                raise ValueError(unknown_key_message(key, key, list(section)))
            section[key] = config_dict.placeholder(type(value))
    for key in list(section):
        section[key] = values.get(key)


# ---------------------------------------------------------------------------------------------
# ConfigDict -> frozen dataclass (the one converter every stage's entry point uses)
# ---------------------------------------------------------------------------------------------

#: Field metadata key: a function that freezes the field's ConfigDict value (see `converted`).
FREEZE = "r1jax.freeze"
#: Field metadata key: a function that gives the field's ConfigDict entry for a value (the
#: map that declares every key the command line may set; see `from_dataclass`).
DECLARE = "r1jax.declare"


def converted(default: Any, convert: Callable[[Any], Any]) -> Any:
    """A dataclass field whose ConfigDict value `freeze` passes through `convert` (a value
    that is already frozen must come out unchanged) instead of the type-driven rules."""
    return dataclasses.field(default=default, metadata={FREEZE: convert})


def mesh_field(axes: Sequence[str], default: tuple[tuple[str, int], ...] = (("fsdp", -1),)
               ) -> Any:
    """The device-mesh field of every stage: ((axis, size), ...). In the ConfigDict it is an
    {axis: size} map declaring every one of `axes` (size 1 unless set: the same mesh as
    leaving it out), so the command line can set any; `freeze` turns it back into pairs by
    `mesh_pairs`. The one place a mesh is declared and frozen."""
    def declare(value) -> dict[str, int]:
        sizes = dict.fromkeys(axes, 1)
        sizes.update(dict(value or ()))
        return sizes

    return dataclasses.field(default=default, metadata={FREEZE: mesh_pairs, DECLARE: declare})


def overrides_field(cls) -> Any:
    """A field of overrides of dataclass `cls`'s scalar fields, ((field, value), ...), empty
    by default. In the ConfigDict it declares every field of `cls` unset (`unset_fields`), so
    the command line can set any; `freeze` keeps the set ones."""
    def declare(value) -> ml_collections.ConfigDict:
        section = unset_fields(cls)
        assign(section, dict(value or ()))
        return section

    return dataclasses.field(default=(), metadata={
        FREEZE: lambda value: tuple(set_entries(dict(value)).items()), DECLARE: declare})


def sorted_pairs(value: Mapping[str, Any] | Sequence[tuple[str, Any]]) -> tuple:
    """A {name: value} map (or pairs) as pairs sorted by name (task knobs: the same knobs in
    any order are the same config)."""
    return tuple(sorted(dict(value).items()))


def _plain(values: Any) -> dict[str, Any]:
    """A section's values as a dict: a ConfigDict, a mapping, a dataclass instance or None."""
    if hasattr(values, "to_dict"):
        return values.to_dict()
    return _as_mapping(values)


def _union_arg(annotation) -> Any:
    """`X | None` -> X; None when `annotation` is no union (several non-None args: Any)."""
    if typing.get_origin(annotation) not in (typing.Union, types.UnionType):
        return None
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    return args[0] if len(args) == 1 else Any


def _convert(annotation, value, path: str):
    """`value` frozen to `annotation`: nested dataclasses by `freeze`, {name: value} maps of
    pairs fields as (name, value) pairs (placeholders left None dropped), lists as tuples,
    dicts converted entry by entry; scalars as they are."""
    if value is None or annotation is Any:
        return value
    inner = _union_arg(annotation)
    if inner is not None:
        return _convert(inner, value, path)
    if dataclasses.is_dataclass(annotation):
        return freeze(annotation, value, path)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if _is_pairs(annotation):
        items = set_entries(value).items() if isinstance(value, Mapping) else value
        (_, value_type) = typing.get_args(args[0])
        return tuple((k, _convert(value_type, v, f"{path}.{k}")) for k, v in items)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if origin is tuple:
        return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        return {k: _convert(args[1], v, f"{path}.{k}") for k, v in dict(value).items()}
    return value


def freeze(cls, values: Any, path: str, **extra):
    """The frozen dataclass `cls` built from a ConfigDict section, recursively.

    The type hints drive it: nested dataclass fields are frozen from their sections,
    `tuple[tuple[str, X], ...]` fields from {name: value} maps (entries left None dropped),
    other tuples from lists, `X | None` as X unless None; a field with `converted` metadata
    (the mesh) uses its own function. Fields absent from `values` keep their dataclass
    default, so every default is written once, in the dataclass; each class validates itself
    in `__post_init__`.

    Args:
      cls: the dataclass.
      values: its section: a ConfigDict, a mapping, an instance of `cls` (returned as is)
        or None (all defaults).
      path: the section's name in errors (`grpo`, `cold_start.sft`).
      extra: fields already built by the caller (they replace `values`' entries).
    Returns:
      An instance of `cls`.
    Raises:
      ValueError: an unknown key ("<path>: unknown field 'x'; did you mean ...?") or what
        the dataclass' validation says.
    """
    if isinstance(values, cls) and not extra:
        return values
    values = _plain(values)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ValueError(f"{path}: unknown field {key!r}; {closest_hint(key, list(fields))}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        convert = fields[name].metadata.get(FREEZE)
        kwargs[name] = (convert(value) if convert is not None and value is not None
                        else _convert(hints[name], value, f"{path}.{name}"))
    return cls(**{**kwargs, **extra})


# ---------------------------------------------------------------------------------------------
# Errors and differences
# ---------------------------------------------------------------------------------------------


def closest_hint(key: str, valid: Sequence[str]) -> str:
    """"did you mean a, b?" with the valid keys closest to `key` (difflib), or the list of
    valid keys when none is close."""
    close = difflib.get_close_matches(key, list(valid), n=3, cutoff=0.5)
    if close:
        return f"did you mean {', '.join(close)}?"
    listed = ", ".join(sorted(valid)[:20])
    return f"valid keys: {listed}{' ...' if len(valid) > 20 else ''}"


def unknown_key_message(path: str, key: str, valid: Sequence[str]) -> str:
    """One line: `path` names an unknown `key`; the closest valid keys follow."""
    return f"unknown config key {path!r}: {closest_hint(key, valid)}"


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """A nested dict as {"a.b.c": leaf}; lists and tuples are leaves."""
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name))
        else:
            out[name] = value
    return out


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Sorted "key: old -> new" lines of the leaves that differ between two nested dicts
    ("<absent>" for a key only one side has)."""
    a, b = flatten(old), flatten(new)
    absent = "<absent>"
    return [f"{k}: {a.get(k, absent)!r} -> {b.get(k, absent)!r}"
            for k in sorted(set(a) | set(b)) if a.get(k, absent) != b.get(k, absent)]


def report_changes(path: str | os.PathLike, new: Mapping[str, Any], what: str = "run") -> list[str]:
    """Prints what changed between the JSON config an earlier run wrote at `path` and `new`
    (a resumed run whose config was edited or overridden), one line per key; prints nothing
    when there is no earlier config or nothing changed. Returns the change lines."""
    path = pathlib.Path(path)
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        print(f"note: {path} (the {what}'s earlier config) is unreadable ({e}); not compared")
        return []
    changes = differences(old, new)
    if changes:
        print(f"note: resuming the {what} in {path.parent} with a config that differs from the "
              f"one it started with ({len(changes)} change(s)):")
        for line in changes:
            print(f"  {line}")
    return changes


# ---------------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------------


def _override_args(argv: Sequence[str], flag: str) -> list[str]:
    """Dotted paths of the `--flag.a.b=...` / `-flag.a.b v` overrides in argv, in order."""
    paths = []
    for arg in argv:
        name = arg.lstrip("-").split("=", 1)[0]
        if arg.startswith("-") and name.startswith(f"{flag}."):
            paths.append(name[len(flag) + 1:])
    return paths


def find_unknown(config: Any, path: str) -> tuple[str, str, list[str]] | None:
    """The first key of dotted `path` missing from `config`: (path so far, key, the valid
    keys there); None when every key exists."""
    node, walked = config, []
    for key in path.split("."):
        keys = list(node.keys()) if isinstance(node, Mapping | ml_collections.ConfigDict) else []
        if key not in keys:
            return ".".join(walked + [key]), key, keys
        node, walked = node[key], walked + [key]
    return None


def _config_flags(flag_values) -> list[str]:
    """Names of the config-file flags defined in `flag_values`."""
    from ml_collections.config_flags import config_flags

    return [name for name in flag_values if config_flags.is_config_flag(flag_values[name])]


def unknown_override(argv: Sequence[str], flag: str, source: str | None) -> str | None:
    """The one-line error for the first `--flag.<path>` override in `argv` that names no key
    of the config that `source` ("file.py:preset") builds, or None."""
    from ml_collections.config_flags import config_flags

    if source is None:
        return None
    config = config_flags.ConfigFileFlagParser(name=flag).parse(source)
    for path in _override_args(argv[1:], flag):
        found = find_unknown(config, path)
        if found is not None:
            where, key, keys = found
            return unknown_key_message(f"--{flag}.{where}", key, [str(k) for k in keys])
    return None


def check_overrides(argv: Sequence[str], flag_values) -> str | None:
    """The one-line error for the first command-line override, of any config-file flag in
    `flag_values`, that names no config key; None when there is none."""
    for flag in _config_flags(flag_values):
        message = unknown_override(argv, flag, _flag_source(argv, flag,
                                                           flag_values[flag].default_as_str))
        if message is not None:
            return message
    return None


def _flag_source(argv: Sequence[str], flag: str, default: str | None) -> str | None:
    for i, arg in enumerate(argv):
        if arg.startswith(f"--{flag}="):
            return arg.split("=", 1)[1]
        if arg == f"--{flag}" and i + 1 < len(argv):
            return argv[i + 1]
    return default.strip("'\"") if default else default


def _exit_with(message: str) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def define_config_file(name: str, default: str, help_string: str = "Config file:preset."):
    """`config_flags.DEFINE_config_file`, except that an override naming an unknown key (which
    absl applies here, at import, when the config comes from `default`) exits with one line
    and status 2 instead of a traceback."""
    from ml_collections.config_flags import config_flags

    try:
        return config_flags.DEFINE_config_file(name, default, help_string)
    except (KeyError, AttributeError):
        message = unknown_override(sys.argv, name, _flag_source(sys.argv, name, default))
        if message is None:  # not a misspelled key (e.g. a bug in the config file): traceback
            raise
        _exit_with(message)


def parse_config_file(source: str, *overrides: str) -> ml_collections.ConfigDict:
    """The config that `--config=<source> --config.<override> ...` gives, through the real
    absl parser (its own FlagValues: nothing global changes). `source` is "file.py[:preset]",
    each override "dotted.key=value"."""
    from absl import flags
    from ml_collections.config_flags import config_flags

    argv = ["prog", f"--config={source}", *(f"--config.{o}" for o in overrides)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", source, flag_values=values, sys_argv=argv)
    values(argv)
    return values.config


def run(main: Callable[[list[str]], Any], argv: Sequence[str] | None = None) -> None:
    """`absl.app.run(main)`, except that a config override naming an unknown key exits with
    status 2 and one line (the key and the closest valid keys) instead of a traceback."""
    from absl import app, flags

    def parse(args):
        try:
            return flags.FLAGS(args)
        except (KeyError, AttributeError):
            message = check_overrides(args, flags.FLAGS)
            if message is None:  # not a misspelled key (e.g. a bug in the config file)
                raise
            _exit_with(message)

    app.run(main, argv=list(argv) if argv is not None else None, flags_parser=parse)
