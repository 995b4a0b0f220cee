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
Malformed means any of: bytes that are not UTF-8, invalid or too deeply nested JSON, a line
longer than `max_line_bytes`, newline not counted (read in bounded chunks, never whole), a missing, mistyped or
empty (blank) question/answer field, a GSM8K answer that is not a plain number ("#### five").
MATH-500 and AIME 2024 are benchmarks of DeepSeek-R1's evaluation (arXiv:2501.12948, Sec. 3).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

FORMATS = ("gsm8k", "math", "code")
MAX_LINE_BYTES = 8 << 20  # default line-size limit: far above any real problem, far below RAM
_CHUNK = 1 << 20  # the rest of an over-long line is skipped in reads of this size
_CALCULATOR = re.compile(r"<<[^>]*>>")
# A GSM8K final answer, commas already stripped: "72", "-3", "0.5", "3/4" ("$" and "%" allowed).
_GSM8K_NUMBER = re.compile(r"\$?[-+]?(\d+(\.\d*)?|\.\d+)(/\d+)?%?")


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


def _field(record: dict, name: str, types: type | tuple, *, optional: bool = False,
           nonempty: bool = False):
    if name not in record:
        if optional:
            return None
        raise ValueError(f"missing field {name!r}")
    value = record[name]
    if not isinstance(value, types) or isinstance(value, bool):
        raise ValueError(f"field {name!r} has type {type(value).__name__}, "
                         f"expected {getattr(types, '__name__', types)}")
    if nonempty and isinstance(value, str) and not value.strip():
        raise ValueError(f"field {name!r} is empty")  # an empty prompt/answer teaches nothing
    return value


def _gsm8k(record: dict) -> dict:
    question = _field(record, "question", str, nonempty=True)
    raw = _field(record, "answer", str)
    if "####" not in raw:
        raise ValueError("field 'answer' has no '#### <answer>' marker")
    rationale, _, answer = raw.rpartition("####")
    answer = answer.strip().replace(",", "")
    if not answer:
        raise ValueError("field 'answer' is empty after '####'")
    if not _GSM8K_NUMBER.fullmatch(answer):  # the numeric reward could never match it
        raise ValueError(f"field 'answer' after '####' is not a number: {answer[:40]!r}")
    rationale = _CALCULATOR.sub("", rationale).strip()
    worked = f"{rationale}\nThe answer is {answer}" if rationale else f"The answer is {answer}"
    return {"question": question, "answer": answer, "worked_solution": worked}


def _math(record: dict) -> dict:
    problem = _field(record, "problem", str, nonempty=True)
    answer = _field(record, "answer", (str, int), optional=True, nonempty=True)
    solution = _field(record, "solution", str, optional=True)
    if answer is None:
        if solution is None:
            raise ValueError("needs field 'answer' or 'solution'")
        answer = last_boxed(solution)
        if answer is None:
            raise ValueError("field 'solution' has no balanced \\boxed{...}")
        if not answer.strip():
            raise ValueError("field 'solution' has an empty \\boxed{}")
    answer = str(answer).strip()
    example = {"question": problem, "answer": answer,
               "worked_solution": f"{solution.strip()}\nThe answer is {answer}" if solution else ""}
    for name in ("level", "subject", "type"):
        if name in record:
            example["subject" if name == "type" else name] = str(record[name])
    return example


def _code(record: dict) -> dict:
    prompt = _field(record, "prompt", str, nonempty=True)
    tests = _field(record, "tests", list)
    if not tests or not all(isinstance(t, str) and t.strip() for t in tests):
        raise ValueError("field 'tests' must be a non-empty list of non-empty strings")
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
    except RecursionError:  # json's C scanner recurses once per nesting level
        raise ValueError("JSON nested too deeply") from None
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    example = _PARSERS[fmt](record)
    example.update(task=task or fmt, key=example["question"].strip(), split=split)
    return example


def _read_lines(fh: BinaryIO, max_line_bytes: int) -> Iterator[tuple[int, bytes | None]]:
    """Yields (line number, raw line, or None if it is longer than `max_line_bytes`).

    Memory stays bounded by `max_line_bytes`: the rest of an over-long line is consumed in
    `_CHUNK` reads, and only when the caller asks for the next line (a caller that raises on
    it never reads the rest).
    """
    for lineno in itertools.count(1):
        line = fh.readline(max_line_bytes + 1)
        if not line:
            return
        if len(line) <= max_line_bytes or line.endswith(b"\n"):
            yield lineno, line
        else:
            yield lineno, None
            _skip_line(fh)


def _skip_line(fh: BinaryIO) -> None:
    """Reads past the next newline in `_CHUNK` blocks (a memchr per block, not readline's
    byte-by-byte scan: 1 GiB in about 2 s here)."""
    buffer = bytearray(_CHUNK)
    while n := fh.readinto(buffer):
        end = buffer.find(b"\n", 0, n)
        if end >= 0:
            fh.seek(end + 1 - n, os.SEEK_CUR)
            return


def _decode(raw: bytes | None, lineno: int, max_line_bytes: int) -> str:
    """The line as text; ValueError (without location) if too long or not UTF-8."""
    if raw is None:
        raise ValueError(f"line is longer than the limit max_line_bytes={max_line_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at offset {e.start})") \
            from None
    return text.removeprefix("\ufeff") if lineno == 1 else text  # a BOM is not JSON


def load(
    path: str | os.PathLike,
    fmt: str,
    *,
    on_error: str = "raise",
    task: str | None = None,
    split: str = "train",
    max_line_bytes: int = MAX_LINE_BYTES,
) -> Loaded:
    """Reads a JSONL file of format `fmt` ("gsm8k", "math" or "code").

    Args:
      on_error: "raise" (ValueError naming file and line) or "skip" (count and go on); every
        per-line failure (encoding, JSON, size, fields) is handled the same way.
      task: the `task` field of the examples (default: `fmt`, e.g. "aime24" for AIME).
      split: the `split` field (a user file is one split).
      max_line_bytes: longer lines are malformed (and never read into memory whole).
    Returns:
      `Loaded`: the examples in file order, and the skipped lines with their reasons.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {FORMATS}")
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', got {on_error!r}")
    if not isinstance(max_line_bytes, int) or max_line_bytes <= 0:
        raise ValueError(f"max_line_bytes must be a positive int, got {max_line_bytes!r}")
    loaded = Loaded(examples=[])
    with open(path, "rb") as f:
        for lineno, raw in _read_lines(f, max_line_bytes):
            if raw is not None and not raw.strip():
                continue
            try:
                line = _decode(raw, lineno, max_line_bytes)
                loaded.examples.append(parse_line(line, fmt, task=task, split=split))
            except ValueError as e:
                message = f"{os.fspath(path)}:{lineno}: {e}"
                if on_error == "raise":
                    raise ValueError(message) from None
                loaded.skipped += 1
                loaded.errors.append(message)
    return loaded
