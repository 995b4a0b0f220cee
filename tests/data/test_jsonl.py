"""data.tasks.jsonl on hostile files: every per-line failure names file and line, is skippable
with on_error="skip", and an over-long line is never read into memory whole."""

import json
import time
import tracemalloc

import pytest

from r1jax.data.tasks import jsonl

GOOD = {
    "gsm8k": json.dumps({"question": "q", "answer": "1 + 1 = 2\n#### 2"}),
    "math": json.dumps({"problem": "p", "answer": "\\frac{1}{2}"}),
    "code": json.dumps({"prompt": "p", "tests": ["assert True"]}),
}


def write(path, middle: bytes, fmt="gsm8k"):
    """GOOD, the bad line `middle` as line 2, GOOD again."""
    good = GOOD[fmt].encode()
    path.write_bytes(good + b"\n" + middle + b"\n" + good + b"\n")
    return path


def assert_named_and_skippable(path, fmt, reason, **options):
    with pytest.raises(ValueError) as info:
        jsonl.load(path, fmt, **options)
    assert str(info.value).startswith(f"{path}:2: ") and reason in str(info.value), info.value
    loaded = jsonl.load(path, fmt, on_error="skip", **options)
    assert len(loaded.examples) == 2 and loaded.skipped == 1
    assert loaded.errors[0].startswith(f"{path}:2: ") and reason in loaded.errors[0]


def test_non_utf8_bytes(tmp_path):
    line = b'{"question": "caf\xe9", "answer": "#### 1"}'  # Latin-1, not UTF-8
    assert_named_and_skippable(write(tmp_path / "a.jsonl", line), "gsm8k",
                               "not valid UTF-8 (byte 0xe9 at offset 17)")


@pytest.mark.parametrize("nested", [b"[" * 200_000 + b"]" * 200_000,
                                    b'{"a":' * 200_000 + b"1" + b"}" * 200_000])
def test_deep_nesting(tmp_path, nested):
    path = write(tmp_path / "a.jsonl", nested, "math")
    assert_named_and_skippable(path, "math", "nested too deeply")


def test_over_long_line_is_named_and_skipped_in_bounded_memory(tmp_path):
    path = tmp_path / "a.jsonl"
    with open(path, "wb") as fh:  # line 2 is a sparse 64 MiB string: cheap to write and read
        fh.write(GOOD["gsm8k"].encode() + b'\n{"question": "')
        fh.seek(64 << 20, 1)
        fh.write(b'", "answer": "#### 1"}\n' + GOOD["gsm8k"].encode() + b"\n")
    tracemalloc.start()
    try:
        assert_named_and_skippable(path, "gsm8k", "longer than the limit max_line_bytes=1048576",
                                   max_line_bytes=1 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20  # 1 MiB lines and 1 MiB chunks, never the 64 MiB line


def test_one_gib_line_fails_fast_with_the_default_limit(tmp_path):
    path = tmp_path / "a.jsonl"
    with open(path, "wb") as fh:
        fh.write(b'{"question": "')
        fh.seek(1 << 30, 1)
        fh.write(b'"}\n')
    start = time.perf_counter()
    with pytest.raises(ValueError, match=rf"{path}:1: line is longer than the limit "
                       rf"max_line_bytes={jsonl.MAX_LINE_BYTES}"):
        jsonl.load(path, "gsm8k")
    assert time.perf_counter() - start < 2.0  # reads the first 8 MiB only


def test_line_size_limit_boundary(tmp_path):
    line = GOOD["math"].encode()
    path = write(tmp_path / "a.jsonl", line, "math")
    assert len(jsonl.load(path, "math", max_line_bytes=len(line)).examples) == 3
    loaded = jsonl.load(path, "math", max_line_bytes=len(line) - 1, on_error="skip")
    assert loaded.skipped == 3 and "longer than the limit" in loaded.errors[0]
    path.write_bytes(line)  # no final newline
    assert len(jsonl.load(path, "math", max_line_bytes=len(line)).examples) == 1
    with pytest.raises(ValueError, match="max_line_bytes"):
        jsonl.load(path, "math", max_line_bytes=len(line) - 1)
    with pytest.raises(ValueError, match="max_line_bytes must be a positive int"):
        jsonl.load(path, "math", max_line_bytes=0)


@pytest.mark.parametrize("fmt, record, reason", [
    ("gsm8k", {"question": "", "answer": "#### 1"}, "field 'question' is empty"),
    ("gsm8k", {"question": " \n", "answer": "#### 1"}, "field 'question' is empty"),
    ("gsm8k", {"question": "q", "answer": "4 + 1\n#### five"}, "is not a number: 'five'"),
    ("gsm8k", {"question": "q", "answer": "#### 5 apples"}, "is not a number"),
    ("gsm8k", {"question": "q", "answer": "#### 1.2.3"}, "is not a number"),
    ("math", {"problem": "", "answer": "1"}, "field 'problem' is empty"),
    ("math", {"problem": "p", "answer": "  "}, "field 'answer' is empty"),
    ("math", {"problem": "p", "solution": "so \\boxed{ }"}, "empty \\boxed{}"),
    ("code", {"prompt": " ", "tests": ["assert True"]}, "field 'prompt' is empty"),
    ("code", {"prompt": "p", "tests": [""]}, "non-empty strings"),
])
def test_empty_and_non_numeric_fields(tmp_path, fmt, record, reason):
    path = write(tmp_path / f"{fmt}.jsonl", json.dumps(record).encode(), fmt)
    assert_named_and_skippable(path, fmt, reason)


@pytest.mark.parametrize("answer, parsed", [
    ("#### 1,245", "1245"), ("#### -3", "-3"), ("#### 0.5", "0.5"), ("#### $18", "$18"),
    ("#### 3/4", "3/4"), ("#### 25%", "25%"),
])
def test_numeric_gsm8k_answers_still_load(tmp_path, answer, parsed):
    path = write(tmp_path / "a.jsonl", json.dumps({"question": "q", "answer": answer}).encode())
    assert jsonl.load(path, "gsm8k").examples[1]["answer"] == parsed


def test_byte_order_mark_and_crlf(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + GOOD["gsm8k"].encode() + b"\r\n" + GOOD["gsm8k"].encode())
    assert len(jsonl.load(path, "gsm8k").examples) == 2
