"""Code tests whose verdicts the trusted parent forms, and their conversion from assert tests.

A test is one of (DeepSeek-R1 Sec. 2.2.2 runs programs "against predefined test cases"):

- a call spec `{"call": "f", "args": [...], "kwargs": {...}, "expected": value}`: the result
  of `f(*args, **kwargs)` crosses the process boundary as plain data (exact built-in types:
  None, bool, int, float, complex, str, bytes, list, tuple, dict, set, frozenset) and is
  compared with `expected` here; JSON has no tuples, so tuples in the result compare as lists;
- a stdin/stdout spec `{"input": "...", "output": "..."}` (competitive-programming sets): the
  program runs as `__main__` with `input` on stdin and must exit with status 0; its stdout
  passes if it equals `output` line by line, ignoring trailing whitespace on each line and
  trailing blank lines;
- either spec as JSON text (a string starting with "{"), so a JSONL record whose `tests` are
  strings can hold them;
- Python test code: assert statements, or a HumanEval-style `def check(candidate): ...`
  followed by `check(f)`. When every assert (with `candidate` read as `f`) has the form
  `assert f(<literals>) == <literal>` (either side), `assert f(...)`, `assert not f(...)`,
  `assert f(...) is None|True|False`, `assert abs(f(...) - <literal>) < <literal>` or
  `assert math.isclose(f(...), <literal>[, rel_tol=..., abs_tol=...])`, the test
  is converted to call checks, compared here with Python's own `==`.

Any other test code runs in the weaker fallback: a fresh process per test, the candidate loaded
after the harness has bound its own exec, codec and a snapshot of the built-ins, with frame
(`sys._getframe`, traceback/generator frames), gc, ctypes, trace/profile and /proc access refused
by an audit hook, and every candidate function's results copied into fresh plain data before the
test sees them. The verdict is a nonce line the candidate never sees. It is weaker because it is
still formed in the process that ran the candidate: a Python-level jail has gaps (e.g. a module
the test imports can be patched by the candidate), so prefer call or stdin/stdout specs.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
from collections.abc import Sequence
from typing import Any

from r1jax.rewards import _child

_PREDICATES = ("eq", "truthy", "falsy", "is", "close", "isclose", "json_eq")


@dataclasses.dataclass(frozen=True)
class Call:
    """One function call and the check on its result.

    Attributes:
      name: the candidate's function.
      args, kwargs: plain-data arguments (kwargs as ((name, value), ...)).
      predicate: "eq" (== expected), "json_eq" (== expected with tuples read as lists),
        "truthy", "falsy", "is" (is expected: None, True or False), "close" (|r - x| < tol,
        expected = (x, tol, strict)), "isclose" (math.isclose, expected = (x, rel, abs)).
      expected: what the predicate compares with.
    """

    name: str
    args: tuple
    kwargs: tuple
    predicate: str
    expected: Any = None


@dataclasses.dataclass(frozen=True)
class Stdio:
    input: str
    output: str


@dataclasses.dataclass(frozen=True)
class Script:
    source: str


def parse(test: Any) -> tuple[Call, ...] | Stdio | Script:
    """Returns the checkable form of one test (see the module docstring).

    Raises:
      ValueError: a malformed spec (the test then fails; it is not an error of the run).
    """
    if isinstance(test, str) and test.lstrip().startswith("{"):
        try:
            test = json.loads(test)
        except json.JSONDecodeError as e:
            raise ValueError(f"test spec is not valid JSON: {e.msg}") from None
    if isinstance(test, dict):
        return _spec(test)
    if not isinstance(test, str):
        raise ValueError(f"a test is a string or a dict, got {type(test).__name__}")
    calls = convert(test)
    return Script(test) if calls is None else calls


def _spec(spec: dict) -> tuple[Call, ...] | Stdio:
    if set(spec) == {"input", "output"}:
        if not all(isinstance(spec[k], str) for k in spec):
            raise ValueError("stdin/stdout spec: 'input' and 'output' must be strings")
        return Stdio(spec["input"], spec["output"])
    if "call" in spec and set(spec) <= {"call", "args", "kwargs", "expected"}:
        args, kwargs = spec.get("args", []), spec.get("kwargs", {})
        if not isinstance(spec["call"], str) or not isinstance(args, list):
            raise ValueError("call spec: 'call' must be a name and 'args' a list")
        if not isinstance(kwargs, dict) or "expected" not in spec:
            raise ValueError("call spec: 'kwargs' must be an object and 'expected' given")
        return (Call(spec["call"], tuple(args), tuple(sorted(kwargs.items())), "json_eq",
                     spec["expected"]),)
    raise ValueError(f"unknown test spec keys {sorted(spec)}; expected input/output or "
                     "call/args/kwargs/expected")


def convert(source: str) -> tuple[Call, ...] | None:
    """Converts assert test code into call checks; None if any part cannot be converted."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    body = [s for s in tree.body if not _harmless(s)]
    if len(body) == 2 and isinstance(body[0], ast.FunctionDef):  # def check(candidate) + call
        body = _inline_check(body[0], body[1])
        if body is None:
            return None
    calls = []
    for statement in body:
        call = _assert_call(statement)
        if call is None:
            return None
        calls.extend(call)
    return tuple(calls) if calls else None


def _harmless(statement: ast.stmt) -> bool:
    """Docstrings, `pass`, `assert True, "..."`, literal constants like HumanEval METADATA, and
    `import math` (the parent evaluates `math.isclose` itself)."""
    if isinstance(statement, ast.Pass):
        return True
    if isinstance(statement, ast.Import):
        return [alias.name for alias in statement.names] == ["math"]
    if isinstance(statement, ast.Expr) and isinstance(statement.value, ast.Constant):
        return True
    if isinstance(statement, ast.Assert):
        return isinstance(statement.test, ast.Constant) and statement.test.value is True
    if isinstance(statement, ast.Assign) and all(isinstance(t, ast.Name) for t in statement.targets):
        return _literal(statement.value) is not _NOT_LITERAL
    return False


def _inline_check(check: ast.FunctionDef, call: ast.stmt) -> list[ast.stmt] | None:
    """The body of `def check(candidate)` with `candidate` renamed to the function that the
    final `check(f)` passes; None unless the file is exactly that shape."""
    args = check.args
    if (len(args.args) != 1 or args.vararg or args.kwarg or args.kwonlyargs
            or args.posonlyargs or check.decorator_list):
        return None
    if not (isinstance(call, ast.Expr) and isinstance(call.value, ast.Call)
            and isinstance(call.value.func, ast.Name) and call.value.func.id == check.name
            and len(call.value.args) == 1 and not call.value.keywords
            and isinstance(call.value.args[0], ast.Name)):
        return None
    param, target = args.args[0].arg, call.value.args[0].id
    for node in ast.walk(check):
        if isinstance(node, ast.Name) and node.id == param:
            node.id = target
    return [s for s in check.body if not _harmless(s)]


def _assert_call(statement: ast.stmt) -> list[Call] | None:
    if not isinstance(statement, ast.Assert):
        return None
    test = statement.test
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        call = _call(test.operand)
        return None if call is None else [Call(*call, "falsy")]
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        return _compare(test.left, test.ops[0], test.comparators[0])
    if (isinstance(test, ast.Call) and isinstance(test.func, ast.Attribute)
            and isinstance(test.func.value, ast.Name) and test.func.value.id == "math"
            and test.func.attr == "isclose"):
        return _isclose(test)
    call = _call(test)
    return None if call is None else [Call(*call, "truthy")]


def _compare(left: ast.expr, op: ast.cmpop, right: ast.expr) -> list[Call] | None:
    if isinstance(op, ast.Eq):
        for side, other in ((left, right), (right, left)):
            call, expected = _call(side), _literal(other)
            if call is not None and expected is not _NOT_LITERAL:
                return [Call(*call, "eq", expected)]
        return None
    if isinstance(op, ast.Is):
        call, expected = _call(left), _literal(right)
        if call is not None and any(expected is v for v in (None, True, False)):
            return [Call(*call, "is", expected)]
        return None
    if isinstance(op, (ast.Lt, ast.LtE)):  # abs(f(...) - x) < tol
        tol = _literal(right)
        if (isinstance(left, ast.Call) and isinstance(left.func, ast.Name)
                and left.func.id == "abs" and len(left.args) == 1 and not left.keywords
                and isinstance(left.args[0], ast.BinOp) and isinstance(left.args[0].op, ast.Sub)
                and type(tol) in (int, float)):
            call, x = _call(left.args[0].left), _literal(left.args[0].right)
            if call is not None and type(x) in (int, float):
                return [Call(*call, "close", (x, tol, isinstance(op, ast.Lt)))]
    return None


def _isclose(test: ast.Call) -> list[Call] | None:
    """`math.isclose(f(...), x[, rel_tol=..., abs_tol=...])` with literals (either order)."""
    options = {k.arg: _literal(k.value) for k in test.keywords}
    if len(test.args) != 2 or not set(options) <= {"rel_tol", "abs_tol"}:
        return None
    if any(type(v) not in (int, float) for v in options.values()):
        return None
    for side, other in (test.args, reversed(test.args)):
        call, x = _call(side), _literal(other)
        if call is not None and type(x) in (int, float):
            tolerances = (options.get("rel_tol", 1e-9), options.get("abs_tol", 0.0))
            return [Call(*call, "isclose", (x, *tolerances))]
    return None


def _call(node: ast.expr) -> tuple[str, tuple, tuple] | None:
    """(name, args, kwargs) of `name(<literals>)`, else None."""
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
        return None
    args = tuple(_literal(a) for a in node.args)
    kwargs = tuple((k.arg, _literal(k.value)) for k in node.keywords)
    values = args + tuple(v for _, v in kwargs)
    if any(k is None for k, _ in kwargs) or any(v is _NOT_LITERAL for v in values):
        return None
    return node.func.id, args, tuple(sorted(kwargs))


_NOT_LITERAL = object()


def _literal(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return _NOT_LITERAL


def check(call: Call, result: Any) -> bool:
    """True if `result` (decoded plain data) satisfies `call.predicate`."""
    try:
        return bool(_check(call.predicate, call.expected, result))
    except Exception:  # noqa: BLE001 - e.g. comparing unorderable data: the check fails
        return False


def _check(predicate: str, expected: Any, result: Any) -> bool:
    if predicate == "eq":
        return result == expected
    if predicate == "json_eq":
        return _lists(result) == expected
    if predicate == "truthy":
        return bool(result)
    if predicate == "falsy":
        return not result
    if predicate == "is":
        return result is expected
    if predicate == "isclose":
        x, rel_tol, abs_tol = expected
        return type(result) in (int, float) and math.isclose(result, x, rel_tol=rel_tol,
                                                              abs_tol=abs_tol)
    if predicate == "close":
        x, tol, strict = expected
        if type(result) not in (int, float):
            return False
        gap = abs(result - x)
        return gap < tol if strict else gap <= tol
    raise ValueError(f"unknown predicate {predicate!r}; known: {_PREDICATES}")


def _lists(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    return value


def stdio_matches(output: bytes, expected: str) -> bool:
    """Line-by-line equality ignoring trailing whitespace and trailing blank lines."""
    try:
        text = output.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return _lines(text) == _lines(expected)


def _lines(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def header(mode: str, payload: dict) -> bytes:
    """The length-prefixed JSON header that `_child.py` reads first from stdin."""
    data = json.dumps({"mode": mode, **payload}).encode()
    return b"%d\n" % len(data) + data


def call_payload(code: str, calls: Sequence[Call], nonce: str) -> dict:
    """The "calls" header body: names and encoded arguments, never the expected values."""
    return {"code": code, "nonce": nonce,
            "calls": [[c.name, _child.encode(list(c.args)), _child.encode(dict(c.kwargs))]
                      for c in calls]}


def call_results(stdout: bytes, count: int, nonce: str) -> list[Any]:
    """Decodes `<nonce> [index, value]` lines; an index reported twice or malformed counts as
    missing, and lines without the nonce are ignored.

    Returns:
      per call, the decoded result or `MISSING`.
    """
    seen: dict[int, Any] = {}
    repeated = set()
    prefix = nonce.encode() + b" "
    for line in stdout.split(b"\n"):
        if not line.startswith(prefix):
            continue
        try:
            index, value = ast.literal_eval(line[len(prefix):].decode("ascii"))
            value = _child.decode(value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            continue
        if type(index) is not int or not 0 <= index < count:
            continue
        if index in seen:
            repeated.add(index)
        seen[index] = value
    return [MISSING if i in repeated or i not in seen else seen[i] for i in range(count)]


def script_passed(stdout: bytes, nonce: str) -> bool:
    """True if the fallback harness reported the test as returned."""
    return f"{nonce} 1".encode() in stdout.split(b"\n")


MISSING = object()
