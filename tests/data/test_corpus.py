"""The toy pretraining corpus: never the R1 tags or template, and instruction documents that
comply with the delimiters they name (the copy skill R1-Zero's format reward builds on)."""

import itertools
import re

import numpy as np
import pytest

from r1jax.data import corpus, templates

_KNOBS = {"arithmetic": {"min_digits": 1, "max_digits": 2, "ops": "+-"}}
_TAG = re.compile(r"</?([a-z]+)>")


# Pieces that spell the R1 tags (th|ink, an|swer) among others: invented names may use each of
# them but never assemble `think` or `answer`.
_PIECES = ("th", "ink", "an", "swer", "o", "bl", "ar", "e", "st")


def _docs(seed: int, n: int = 2000, fraction: float = 0.7, direct: float = 0.0,
          pieces=None, accuracy: float = 1.0) -> list[str]:
    return list(itertools.islice(
        corpus.documents(("arithmetic",), seed, fraction, _KNOBS, direct, pieces, accuracy), n))


@pytest.mark.parametrize("pieces", [None, _PIECES])
def test_no_r1_tags_or_template_in_the_corpus(pieces):
    prompt_head = templates.get("r1_zero").prompt.split("{question}")[0][:60]
    for doc in _docs(0, pieces=pieces) + _docs(1, direct=0.5, pieces=pieces):
        assert "think>" not in doc and "answer>" not in doc
        assert prompt_head not in doc


def test_piece_names_use_every_piece_and_only_pieces():
    rng = np.random.default_rng(0)
    names = [corpus.tag_name(corpus.RESULT_NAMES, rng, _PIECES) for _ in range(3000)]
    invented = [n for n in names if n not in corpus.RESULT_NAMES]
    assert 0.6 < len(invented) / len(names) < 0.8
    for piece in _PIECES:  # each piece is a copy target somewhere
        assert sum(piece in n for n in invented) > 50, piece
    spell = re.compile(f"({'|'.join(_PIECES)})+")
    assert all(spell.fullmatch(n) for n in invented)
    assert not any("think" in n or "answer" in n for n in names)


def test_name_pieces_keeps_lowercase_word_pieces():
    vocab = ["<pad>", "<0x41>", "\u2581the", "an", "swer", "Th", "12", "a", "<|User|>", "é", ">"]
    assert corpus.name_pieces(vocab) == ("a", "an", "swer")


def test_direct_documents_state_the_answer_without_working():
    docs = _docs(5, direct=0.5)
    worked = [d for d in docs if "column by column" in d]
    assert 0.4 < 1 - len(worked) / len(docs) < 0.6
    for doc in docs:
        question = re.search(r"What is (\d+) ([+-]) (\d+)\?", doc)
        a, op, b = int(question.group(1)), question.group(2), int(question.group(3))
        truth = a + b if op == "+" else a - b
        stated = re.findall(r"The answer is (\d+)", doc)
        assert stated == [str(truth)]  # stated once, worked out or not
        if "column by column" not in doc:
            assert not re.search(r"(ones|tens):", doc)
    assert _docs(5, 100) != _docs(5, 100, direct=0.5)
    with pytest.raises(ValueError, match="direct_fraction"):
        next(corpus.documents(("arithmetic",), 0, 0.5, _KNOBS, direct_fraction=1.5))


def _question(doc: str) -> int:
    a, op, b = re.search(r"What is (\d+) ([+-]) (\d+)\?", doc).groups()
    return int(a) + int(b) if op == "+" else int(a) - int(b)


def test_bare_guesses_are_right_at_the_given_rate_and_worked_solutions_always():
    """direct_accuracy 0.3: about 3 bare answers in 10 right, the others near misses
    (+-1, +-2, +-10, never negative); every worked solution right; the result pair of an
    instruction document repeats the guess."""
    docs = _docs(3, 4000, direct=0.5, accuracy=0.3, pieces=_PIECES)
    bare = [d for d in docs if "column by column" not in d]
    right = 0
    for doc in docs:
        truth = _question(doc)
        (stated,) = re.findall(r"The answer is (\d+)", doc)
        if doc in bare:
            right += int(stated) == truth
            assert int(stated) - truth in (0, -10, -2, -1, 1, 2, 10)
        else:
            assert int(stated) == truth
        result = re.search(r"<([a-z]+)> (\d+) </\1>\n", doc)
        if result:
            assert result.group(2) == stated
    assert len(bare) > 1700 and abs(right / len(bare) - 0.3) < 0.04  # ~4 standard errors
    assert _docs(3, 200, direct=0.5) == _docs(3, 200, direct=0.5, accuracy=1.0)
    with pytest.raises(ValueError, match="direct_accuracy"):
        next(corpus.documents(("arithmetic",), 0, 0.5, _KNOBS, 0.5, None, -0.1))


@pytest.mark.parametrize("direct", [0.0, 0.5])
def test_instruction_documents_use_the_tags_they_name(direct):
    docs = [d for d in _docs(2, direct=direct, pieces=_PIECES) if "</" in d]
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
    assert len(set(names)) > 1000  # invented words: no pair can be memorised
    assert _docs(3, 50) == _docs(3, 50)
    assert _docs(3, 50) != _docs(4, 50)
