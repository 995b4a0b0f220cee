"""Loaders for user JSONL files: GSM8K, MATH-style (MATH, MATH-500, AIME) and code problems.

Formats (one JSON object per line; blank lines are ignored):

  gsm8k  {"question": str, "answer": str with "#### <n>"}; answer = text after the last
         "####", commas stripped; the rationale before it (calculator annotations <<...>>
         removed) becomes the worked solution.
  math   {"problem": str, "answer": str|int} or {"problem": str, "solution": str with
         \\boxed{...}}; the answer is the field if present, else the last \\boxed{} of the
         solution (nested braces handled). Optional `level`, `subject`/`type` are kept.
  code   {"prompt": str, "tests": [str, ...], "entry_point": str (optional),
          "solution"/"canonical_solution": str (optional)}; `tests` are Python statements.

Examples are dicts with the fields of generated tasks (`task`, `question`, `answer`,
`worked_solution`, `key`, `split`) plus `tests`/`entry_point` for code. A malformed line
raises ValueError("<file>:<line>: ...") or, with on_error="skip", is skipped and counted.
MATH-500 and AIME 2024 are benchmarks of DeepSeek-R1's evaluation (arXiv:2501.12948, Sec. 3).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable
from typing import Any

FORMATS = ("gsm8k", "math", "code")
_CALCULATOR = re.compile(r"<<[^>]*>>")


@dataclasses.dataclass
class Loaded:
    """The parsed examples, how many lines were skipped, and why (as "file:line: reason")."""

    examples: list[dict[str, Any]]
    skipped: int = 0
    errors: list[str] = dataclasses.field(default_factory=list)


def last_boxed(text: str) -> str | None:
    """Contents of the last \\boxed{...} (or \\fbox{...}) in `text`, braces matched; None if
    there is none or it is unbalanced. Escaped braces \\{ \\} do not count."""
    start = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if start < 0:
        return None
    command = "\\boxed" if text.startswith("\\boxed", start) else "\\fbox"
    rest = text[start + len(command):]
    if rest.startswith(" "):  # the "\\boxed 5" form
        tokens = rest.split("$")[0].split()
        return tokens[0] if tokens else None
    if not rest.startswith("{"):
        return None
    depth, j = 0, 0
    while j < len(rest):
        if rest[j] == "\\":
            j += 2
            continue
        depth += {"{": 1, "}": -1}.get(rest[j], 0)
        if depth == 0:
            return rest[1:j]
        j += 1
    return None


def _field(record: dict, name: str, types: type | tuple, *, optional: bool = False):
    if name not in record:
        if optional:
            return None
        raise ValueError(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"field {name!r} has type {type(value).__name__}, "
                         f"expected {getattr(types, '__name__', types)}")
    return value


def _gsm8k(record: dict) -> dict:
    question, raw = _field(record, "question", str), _field(record, "answer", str)
    if "####" not in raw:
        raise ValueError("field 'answer' has no '#### <answer>' marker")
    rationale, _, answer = raw.rpartition("####")
    answer = answer.strip().replace(",", "")
    if not answer:
        raise ValueError("field 'answer' is empty after '####'")
    rationale = _CALCULATOR.sub("", rationale).strip()
    worked = f"{rationale}\nThe answer is {answer}" if rationale else f"The answer is {answer}"
    return {"question": question, "answer": answer, "worked_solution": worked}


def _math(record: dict) -> dict:
    problem = _field(record, "problem", str)
    answer = _field(record, "answer", (str, int), optional=True)
    solution = _field(record, "solution", str, optional=True)
    if answer is None:
        if solution is None:
            raise ValueError("needs field 'answer' or 'solution'")
        answer = last_boxed(solution)
        if answer is None:
            raise ValueError("field 'solution' has no balanced \\boxed{...}")
    answer = str(answer).strip()
    example = {"question": problem, "answer": answer,
               "worked_solution": f"{solution.strip()}\nThe answer is {answer}" if solution else ""}
    for name in ("level", "subject", "type"):
        if name in record:
            example["subject" if name == "type" else name] = str(record[name])
    return example


def _code(record: dict) -> dict:
    prompt, tests = _field(record, "prompt", str), _field(record, "tests", list)
    if not tests or not all(isinstance(t, str) for t in tests):
        raise ValueError("field 'tests' must be a non-empty list of strings")
    solution = (_field(record, "canonical_solution", str, optional=True)
                or _field(record, "solution", str, optional=True) or "")
    return {"question": prompt, "answer": "", "tests": list(tests),
            "entry_point": _field(record, "entry_point", str, optional=True) or "",
            "worked_solution": solution}


_PARSERS: dict[str, Callable[[dict], dict]] = {"gsm8k": _gsm8k, "math": _math, "code": _code}


def parse_line(line: str, fmt: str, *, task: str | None = None, split: str = "train") -> dict:
    """One JSONL line -> example dict; ValueError (without location) if malformed."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    example = _PARSERS[fmt](record)
    example.update(task=task or fmt, key=example["question"].strip(), split=split)
    return example


def load(
    path: str | os.PathLike,
    fmt: str,
    *,
    on_error: str = "raise",
    task: str | None = None,
    split: str = "train",
) -> Loaded:
    """Reads a JSONL file of format `fmt` ("gsm8k", "math" or "code").

    Args:
      on_error: "raise" (ValueError naming file and line) or "skip" (count and go on).
      task: the `task` field of the examples (default: `fmt`, e.g. "aime24" for AIME).
      split: the `split` field (a user file is one split).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    loaded = Loaded(examples=[])
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                loaded.examples.append(parse_line(line, fmt, task=task, split=split))
            except ValueError as e:
                message = f"{os.fspath(path)}:{lineno}: {e}"
                if on_error == "raise":
                    raise ValueError(message) from None
                loaded.skipped += 1
                loaded.errors.append(message)
    return loaded
