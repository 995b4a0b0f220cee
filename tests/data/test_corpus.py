"""The toy pretraining corpus: never the R1 tags or template, and instruction documents that
comply with the delimiters they name (the copy skill R1-Zero's format reward builds on)."""

import itertools
import re

import numpy as np

from r1jax.data import corpus, templates

_KNOBS = {"arithmetic": {"min_digits": 1, "max_digits": 2, "ops": "+-"}}
_TAG = re.compile(r"</?([a-z]+)>")


def _docs(seed: int, n: int = 2000, fraction: float = 0.7) -> list[str]:
    return list(itertools.islice(corpus.documents(("arithmetic",), seed, fraction, _KNOBS), n))


def test_no_r1_tags_or_template_in_the_corpus():
    prompt_head = templates.get("r1_zero").prompt.split("{question}")[0][:60]
    for doc in _docs(0) + _docs(1):
        assert "think>" not in doc and "answer>" not in doc
        assert prompt_head not in doc


def test_instruction_documents_use_the_tags_they_name():
    docs = [d for d in _docs(2) if "</" in d]
    assert 0.6 < len(docs) / 2000 < 0.8
    for doc in docs:
        instruction, body = doc.split("\n", 1)
        named = list(dict.fromkeys(_TAG.findall(instruction)))
        assert len(named) == 2 and named[0] != named[1]
        work, result = named
        opened = re.findall(r"<([a-z]+)>", body)
        assert opened == [work, result]
        answer = re.search(rf"<{result}> (.*) </{result}>", body).group(1)
        assert f"The answer is {answer} </{work}>" in body


def test_tag_names_are_varied_and_reproducible():
    rng = np.random.default_rng(0)
    names = [corpus.tag_name(corpus.REASONING_NAMES, rng) for _ in range(2000)]
    assert not any("think" in n or "answer" in n for n in names)
    assert len(set(names)) > 700  # invented words: no pair can be memorised
    assert _docs(3, 50) == _docs(3, 50)
    assert _docs(3, 50) != _docs(4, 50)
