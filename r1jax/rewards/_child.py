"""The program that runs inside the sandbox (as `python -I -c <this file's text>`), and the
plain-data codec that the trusted parent shares with it.

It reads a header (a decimal length line, then that many bytes of JSON) from stdin and runs one
of three modes; the parent forms every verdict from what comes back:

- "calls": load the candidate, call each requested function with its (plain-data) arguments and
  write back `[index, encoded result]` lines. The expected values never enter this process.
- "stdio": run the candidate as `__main__` with the rest of stdin as its input; its stdout is
  the answer, compared by the parent.
- "script" (the weaker fallback for assert tests that cannot be converted): load the candidate,
  then run one test; write the nonce line only if the test returned. Weaker because the verdict
  is still formed in the process that ran the candidate; see `harness.py` for what guards it.

The candidate's stdout/stderr go to /dev/null in "calls" and "script" (results travel on a
duplicate of the original stdout). Process creation and signals are refused at the Python
level in every mode (the sandbox's cgroup bounds them anyway).
"""

import json
import os
import sys

READY = b"\0r1jax-ready\n"
_MAX_DEPTH = 64


def make_codec():
    """Returns (encode, decode, plain_copy) bound to the built-ins as they are now, so that a
    candidate replacing `builtins.type` or this module's globals later cannot change them.

    encode: plain data -> JSON-able data. Exact built-in types only (a subclass or any other
      object, e.g. one whose __eq__ is always true, raises TypeError); containers are tagged:
      {"l"|"t"|"s"|"f": items}, {"d": [[key, value], ...]}, {"b": hex}, {"c": [re, im]}.
    decode: the inverse; anything else raises TypeError or ValueError.
    plain_copy: decode(encode(value)), a copy rebuilt from exact built-in types.
    """
    type_, dict_, list_, len_, float_, complex_ = type, dict, list, len, float, complex
    type_error, bytes_, all_ = TypeError, bytes, all
    scalars = (type_(None), bool, int, float, str)
    tags = {list: "l", tuple: "t", set: "s", frozenset: "f"}
    from_tag = {"l": list, "t": tuple, "s": set, "f": frozenset}

    def encode(value, depth=0):
        kind = type_(value)
        if depth > _MAX_DEPTH:
            raise type_error("result nested too deeply")
        if kind in scalars:
            return value
        if kind in tags:
            return {tags[kind]: [encode(v, depth + 1) for v in value]}
        if kind is dict_:
            return {"d": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in value.items()]}
        if kind is bytes_:
            return {"b": value.hex()}
        if kind is complex_:
            return {"c": [value.real, value.imag]}
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
        if tag == "b" and type_(items) is str:
            return bytes_.fromhex(items)
        if tag == "c" and type_(items) is list_ and len_(items) == 2:
            return complex_(float_(items[0]), float_(items[1]))
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


def _block_processes():
    import _posixsubprocess
    import signal

    _posixsubprocess.fork_exec = _deny
    for name in ("fork", "forkpty", "system", "posix_spawn", "posix_spawnp", "execv", "execve",
                 "spawnv", "spawnve", "popen", "kill", "killpg"):
        if hasattr(os, name):
            setattr(os, name, _deny)
    signal.signal = _deny  # a handler would receive the running (harness) frame


def _private_stdout():
    """Moves the result channel off fd 1; the candidate's stdin/stdout/stderr become null."""
    out = os.dup(1)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return out


def _run_calls(header, out, write, dumps):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(header["code"], "<solution>", "exec"), namespace)
    except BaseException:  # noqa: BLE001 - a candidate that fails to load passes nothing
        return
    for index, (name, args, kwargs) in enumerate(header["calls"]):
        try:
            value = namespace[name](*decode(args), **decode(kwargs))
            line = dumps([index, encode(value)])
        except BaseException:  # noqa: BLE001 - the call failed: no result line
            continue
        write(out, line.encode() + b"\n")


_FORBIDDEN_EVENTS = frozenset({
    "sys._getframe", "sys._current_frames", "sys.settrace", "sys.setprofile", "gc.get_objects",
    "gc.get_referrers", "gc.get_referents", "object.__getattr__", "sys.addaudithook",
})  # fmt: skip


def _run_script(header, out):
    """The fallback: the verdict is the nonce line written after the test returns. Everything
    the harness uses after the candidate loads is bound here first (exec, write, the codec, a
    builtins snapshot), and frame, gc, ctypes and /proc introspection is refused by an audit
    hook before the candidate loads (see harness.py for what this does not stop)."""
    run, write, callable_, dict_, isinstance_, type_ = exec, os.write, callable, dict, isinstance, type
    str_, forbidden, copy = str, _FORBIDDEN_EVENTS, make_codec()[2]
    builtins_copy = dict_(__builtins__.__dict__)
    verdict = f"{header['nonce']} 1\n".encode()
    test = compile(header["test"], "<test>", "exec")
    code = compile(header["code"], "<solution>", "exec")
    header.clear()

    def guard(event, args):
        if (event in forbidden or event.startswith("ctypes.")
                or (event == "open" and str_(args[0]).startswith(("/proc", "/dev/fd")))):
            raise PermissionError(f"{event} is not allowed in the sandbox")

    def plain_results(fn):  # results reach the test as fresh plain data
        return lambda *args, **kwargs: copy(fn(*args, **kwargs))

    sys.addaudithook(guard)
    namespace = {"__name__": "__main__", "__builtins__": dict_(builtins_copy)}
    try:
        run(code, namespace)
    except BaseException:  # noqa: BLE001 - a candidate that fails to load passes nothing
        return
    test_namespace = {"__name__": "__main__", "__builtins__": dict_(builtins_copy)}
    for name, value in namespace.items():
        wrap = callable_(value) and not isinstance_(value, type_)
        test_namespace[name] = plain_results(value) if wrap else value
    try:
        run(test, test_namespace)
    except BaseException:  # noqa: BLE001 - the test failed
        return
    write(out, verdict)


def main():
    os.write(1, READY)
    header = _read_header()
    mode = header["mode"]
    _block_processes()
    if mode == "stdio":
        code = compile(header.pop("code"), "<solution>", "exec")
        exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
        return
    out = _private_stdout()
    if mode == "calls":
        _run_calls(header, out, os.write, json.dumps)
    elif mode == "script":
        _run_script(header, out)
    os._exit(0)  # atexit hooks and buffered writes of the candidate are not ours to run


if __name__ == "__main__":
    main()
