"""The program that runs inside the sandbox (as `python -I -c <this file's text>`), and the
plain-data codec that the trusted parent shares with it.

It writes `READY`, reads a header (a decimal length line, then that many bytes of JSON) from
stdin, and runs one of three modes; the parent forms every verdict from what comes back:

- "calls": load the candidate, call each requested function with its plain-data arguments and
  write back `<nonce> [index, encoded result]` lines. The expected values never enter this
  process, so a forged line must still carry the right value.
- "stdio": run the candidate as `__main__` with the rest of stdin as its input; its stdout is
  the answer, compared by the parent.
- "script" (the weaker fallback for assert tests that cannot be converted): load the candidate,
  then run one test; write `<nonce> 1` only if the test returned.

"calls" and "script" jail the candidate before it loads, so that it cannot learn the nonce or
take over the result channel: everything the harness uses afterwards is bound first (exec,
write, fstat, repr, the codec, a builtins snapshot); an audit hook refuses frame access
(`sys._getframe`, traceback/generator frames), gc and ctypes introspection, trace/profile hooks
and opening /proc or /dev/fd; fd duplication, pipes, threads, signal handlers, process creation
and signals are removed from their modules; the candidate's stdin/stdout/stderr are /dev/null
and the result channel is checked to be the original pipe before every write. This is a
Python-level jail: `harness.py` says what it does not stop.
"""

import builtins
import json
import os
import sys

READY = b"\0r1jax-ready\n"
_MAX_DEPTH = 64
_FORBIDDEN_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "sys.addaudithook",
})  # fmt: skip
# Attributes that hand out frames (audited as "object.__getattr__"; `__code__` reads, which
# dataclasses make, are audited too and stay allowed).
_FRAME_ATTRIBUTES = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame", "f_back"})
_FORBIDDEN_OPEN = ("/proc", "/dev/fd", "/dev/std")
_REMOVED = {
    "os": ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve",
           "spawnv", "spawnve", "popen", "kill", "killpg", "dup", "dup2", "pipe", "pipe2",
           "register_at_fork"),
    "_posixsubprocess": ("fork_exec",),
    "_thread": ("start_new_thread", "start_new"),
    "threading": ("_start_new_thread",),
    "_signal": ("signal", "setitimer", "alarm"),
    "signal": ("signal", "setitimer", "alarm"),
    "fcntl": ("fcntl",),
}  # fmt: skip


def make_codec():
    """Returns (encode, decode, plain_copy) bound to the built-ins as they are now, so that a
    candidate replacing `builtins.type` or this module's globals later cannot change them.

    encode: plain data -> literal data (None, bool, int, str, lists and one-key dicts).
      Exact built-in types only (a subclass or any other object, e.g. one whose __eq__ is
      always true, raises TypeError); tagged: {"l"|"t"|"s"|"f": items}, {"d": [[k, v], ...]},
      {"b": hex}, {"x": float.hex()}, {"c": [float, float]}.
    decode: the inverse; anything else raises TypeError or ValueError.
    plain_copy: decode(encode(value)), a copy rebuilt from exact built-in types.
    """
    type_, dict_, list_, len_, float_, complex_, all_ = type, dict, list, len, float, complex, all
    type_error, bytes_, str_ = TypeError, bytes, str
    scalars = (type_(None), bool, int, str)
    tags = {list: "l", tuple: "t", set: "s", frozenset: "f"}
    from_tag = {"l": list, "t": tuple, "s": set, "f": frozenset}

    def encode(value, depth=0):
        kind = type_(value)
        if depth > _MAX_DEPTH:
            raise type_error("result nested too deeply")
        if kind in scalars:
            return value
        if kind is float_:
            return {"x": value.hex()}
        if kind in tags:
            return {tags[kind]: [encode(v, depth + 1) for v in value]}
        if kind is dict_:
            return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
        if kind is bytes_:
            return {"b": value.hex()}
        if kind is complex_:
            return {"c": [encode(value.real), encode(value.imag)]}
        raise type_error(f"not plain data: {kind.__name__}")

    def decode(data, depth=0):
        if depth > _MAX_DEPTH:
            raise type_error("data nested too deeply")
        if type_(data) in scalars:
            return data
        if type_(data) is not dict_ or len_(data) != 1:
            raise type_error("malformed plain data")
        ((tag, items),) = data.items()
        if tag in from_tag and type_(items) is list_:
            return from_tag[tag](decode(v, depth + 1) for v in items)
        if tag == "d" and type_(items) is list_:
            if not all_(type_(kv) is list_ and len_(kv) == 2 for kv in items):
                raise type_error("malformed dict")
            return {decode(k, depth + 1): decode(v, depth + 1) for k, v in items}
        if tag in ("b", "x") and type_(items) is str_:
            return bytes_.fromhex(items) if tag == "b" else float_.fromhex(items)
        if tag == "c" and type_(items) is list_ and len_(items) == 2:
            parts = [decode(v, depth + 1) for v in items]
            if all_(type_(p) is float_ for p in parts):
                return complex_(*parts)
        raise type_error(f"malformed plain data tag {tag!r}")

    return encode, decode, lambda value: decode(encode(value))


encode, decode, plain_copy = make_codec()


def _read_exact(n):
    data = b""
    while len(data) < n:
        chunk = os.read(0, n - len(data))
        if not chunk:
            raise SystemExit(0)
        data += chunk
    return data


def _read_header():
    line = b""
    while not line.endswith(b"\n"):
        line += _read_exact(1)
    return json.loads(_read_exact(int(line)))


def _deny(*args, **kwargs):
    raise PermissionError("not allowed in the sandbox")


def _remove_dangerous(names):
    """Replaces the listed functions in their modules (and posix for os) with `_deny`."""
    import importlib

    modules = {}
    for name in list(names) + ["posix"]:  # import all first: threading registers at-fork hooks
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            pass
    for name, attrs in names.items():
        for module in [modules.get(name)] + ([modules["posix"]] if name == "os" else []):
            for attr in attrs if module is not None else ():
                if hasattr(module, attr):
                    setattr(module, attr, _deny)


def _private_stdout():
    """Moves the result channel off fd 1; the candidate's stdin/stdout/stderr become null."""
    out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return out


def _run_jailed(header, out):
    """Modes "calls" and "script" (see the module docstring)."""
    run, write, fstat, repr_, callable_, isinstance_, dict_, type_, str_, enumerate_ = (
        exec, os.write, os.fstat, repr, callable, isinstance, dict, type, str, enumerate)
    encode_, decode_, copy = make_codec()
    forbidden, forbidden_open, base_exception = _FORBIDDEN_EVENTS, _FORBIDDEN_OPEN, BaseException
    frame_attributes, value_error, permission_error = _FRAME_ATTRIBUTES, ValueError, PermissionError
    channel = fstat(out).st_ino
    nonce = header["nonce"].encode()
    builtins_copy = dict_(builtins.__dict__)
    code = compile(header["code"], "<solution>", "exec")
    test = compile(header["test"], "<test>", "exec") if "test" in header else None
    calls = [(n, decode_(a), decode_(k)) for n, a, k in header.get("calls", ())]
    header.clear()

    def guard(event, args):
        if (event in forbidden or event.startswith("ctypes.")
                or (event == "object.__getattr__" and args[1] in frame_attributes)
                or (event == "open" and str_(args[0]).startswith(forbidden_open))):
            # ValueError for frames: what the standard library expects where sys._getframe
            # may fail (namedtuple, enum, typing, warnings fall back to defaults).
            error = value_error if event.startswith("sys.") else permission_error
            raise error(f"{event} is not allowed in the sandbox")

    def plain_results(fn):
        return lambda *args, **kwargs: copy(fn(*args, **kwargs))

    def send(line):
        if fstat(out).st_ino == channel:  # not a pipe the candidate put in its place
            write(out, nonce + b" " + line + b"\n")

    _remove_dangerous(_REMOVED)
    sys.addaudithook(guard)
    # Not "__main__": a demo under `if __name__ == "__main__":` must not run (or read stdin).
    namespace = {"__name__": "solution", "__builtins__": dict_(builtins_copy)}
    try:
        run(code, namespace)
    except base_exception:  # a candidate that fails to load passes nothing
        return
    for index, (name, args, kwargs) in enumerate_(calls):
        try:
            result = namespace[name](*args, **kwargs)
            line = repr_([index, encode_(result)]).encode()
        except base_exception:  # the call failed: no result line
            continue
        send(line)
    if test is None:
        return
    test_namespace = {"__name__": "__main__", "__builtins__": dict_(builtins_copy)}
    for name, value in namespace.items():  # results reach the test as fresh plain data
        wrap = callable_(value) and not isinstance_(value, type_)
        test_namespace[name] = plain_results(value) if wrap else value
    try:
        run(test, test_namespace)
    except base_exception:  # the test failed
        return
    send(b"1")


def main():
    os.write(1, READY)
    header = _read_header()
    if header["mode"] == "stdio":
        _remove_dangerous({k: v for k, v in _REMOVED.items() if k in ("os", "_posixsubprocess")})
        code = compile(header.pop("code"), "<solution>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
        return
    _run_jailed(header, _private_stdout())
    os._exit(0)  # atexit hooks and buffered writes of the candidate are not ours to run


if __name__ == "__main__":
    main()
