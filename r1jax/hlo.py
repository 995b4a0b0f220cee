"""Reading an optimized (compiled) HLO module: its loops and the collectives inside them.

`jax.jit(f).lower(...).compile().as_text()` is the program after XLA's SPMD partitioner, so it
shows what a device really runs: where the collectives are and whether one sits inside a loop
(a collective per iteration: the scaling bug that StableHLO, before partitioning, never shows).
Text format assumed: one computation per block, `%name (...) -> ... {` (or `ENTRY %name ...`)
through a line `}`; an instruction `%x = type opcode(operands), attr=...`; callees named by
`calls=`, `to_apply=`, `body=`, `condition=`, `branch_computations={...}`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

COLLECTIVES = ("all-reduce", "all-gather", "reduce-scatter", "all-to-all", "ragged-all-to-all",
               "collective-permute", "collective-broadcast")

_HEADER = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_OPCODE = re.compile(r"=\s*(?:\([^=]*\)|\S+)\s+([\w\-]+)\(")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)"
                     r"=%?([\w.\-]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_COMMENT = re.compile(r"/\*.*?\*/")


def computations(text: str) -> dict[str, list[str]]:
    """Computation name -> its instruction lines."""
    comps: dict[str, list[str]] = {}
    name = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith((" ", "\t")):
            name = header.group(1)
            comps[name] = []
        elif name is not None and line.strip() not in ("", "}"):
            comps[name].append(line.strip())
    return comps


def opcode(line: str) -> str | None:
    """The opcode of an instruction line, without an async `-start` / `-done` suffix."""
    # Tuple types of 5+ elements carry `/*index=5*/` comments, whose '=' hid the opcode (every
    # while loop with a big carry went uncounted, and so did the collectives inside it).
    match = _OPCODE.search(_COMMENT.sub("", line))
    if not match:
        return None
    return match.group(1).removesuffix("-start").removesuffix("-done")


def _callees(lines: list[str]) -> set[str]:
    names = set()
    for line in lines:
        names.update(_CALLEE.findall(line))
        for group in _BRANCHES.findall(line):
            names.update(n.strip().lstrip("%") for n in group.split(","))
    return names


def _reachable(comps: dict[str, list[str]], roots: set[str]) -> set[str]:
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name not in comps:
            continue
        seen.add(name)
        stack.extend(_callees(comps[name]))
    return seen


class LoopReport(NamedTuple):
    """Counts over one compiled module."""

    loops: int                         # while instructions, nested ones included
    collectives: int                   # collective instructions anywhere
    in_loops: list[tuple[str, str]]    # (computation, instruction) of each collective in a loop


def loop_report(text: str) -> LoopReport:
    """Finds every while loop of a compiled HLO module and any collective its body runs
    (directly, or through fusions, calls, conditionals and nested loops).

    Args:
      text: `compiled.as_text()`.
    Returns:
      The `LoopReport`.
    """
    comps = computations(text)
    bodies = {body for lines in comps.values() for line in lines if opcode(line) == "while"
              for body in _BODY.findall(line)}
    in_loops = [(name, line) for name in sorted(_reachable(comps, bodies))
                for line in comps[name] if opcode(line) in COLLECTIVES]
    collectives = sum(opcode(line) in COLLECTIVES for lines in comps.values() for line in lines)
    loops = sum(opcode(line) == "while" for lines in comps.values() for line in lines)
    return LoopReport(loops, collectives, in_loops)
