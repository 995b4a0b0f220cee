"""Tokenizers: training speed and determinism, exact round trips, special pieces, padding."""

import itertools
import json
import time

import numpy as np
import pytest

from r1jax.data import tasks
from r1jax.data import tokenizer as tokenizer_lib

ROUND_TRIP = [
    "",
    "hello world",
    "  leading spaces and trailing   ",
    "tabs\tand\n\nnewlines\r\n  indented\n",
    "中文：小明买了3个苹果，一共花了12元。",
    "emoji 🙂🚀 and combining é (e\u0301) and zero-width\u200bjoin",
    "<think>\nreasoning</think> <answer>42</answer>",
    "<|begin_of_sentence|><|User|>question<|Assistant|><think>\n",
    "math: \\boxed{\\frac{1}{2}} $x^2$ {braces} 1,234,567.89",
    "def f(x):\n    return x ** 2  # code\n",
]


def corpus(n: int = 1500) -> list[str]:
    streams = [tasks.get("countdown").examples("train", 0),
               tasks.get("arithmetic").examples("train", 0),
               tasks.get("word_problems", language="mixed").examples("train", 0)]
    texts = []
    for ex in itertools.islice(itertools.chain.from_iterable(zip(*streams)), n):
        texts.append(f"{ex['question']}\n<think>{ex['worked_solution']}</think>"
                     f"<answer>{ex['answer']}</answer>")
    return texts


@pytest.fixture(scope="module")
def texts():
    return corpus()


@pytest.fixture(scope="module")
def sp(texts, tmp_path_factory):
    return tokenizer_lib.train_sentencepiece(
        texts, 1000, tmp_path_factory.mktemp("sp") / "tok.model")


def test_training_is_fast_and_deterministic(texts, tmp_path):
    start = time.perf_counter()
    tokenizer_lib.train_sentencepiece(texts, 1000, tmp_path / "a.model")
    assert time.perf_counter() - start < 2.0
    tokenizer_lib.train_sentencepiece(texts, 1000, tmp_path / "b.model")
    assert (tmp_path / "a.model").read_bytes() == (tmp_path / "b.model").read_bytes()
    assert not list(tmp_path.glob("*.tmp"))


def test_vocab_size_and_special_ids(sp):
    assert 256 + len(tokenizer_lib.SPECIAL_PIECES) < sp.vocab_size <= 1000
    assert sp.pad_id == 0
    assert len({sp.pad_id, sp.bos_id, sp.eos_id}) == 3
    assert sp.bos_id == sp.id_of(tokenizer_lib.BOS)
    assert sp.eos_id == sp.id_of(tokenizer_lib.EOS)


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_sentencepiece_round_trip(sp, text):
    assert sp.decode(sp.encode(text)) == text


@pytest.mark.parametrize("piece", tokenizer_lib.SPECIAL_PIECES)
def test_special_pieces_are_single_tokens(sp, piece):
    assert sp.encode(piece) == [sp.id_of(piece)]
    assert sp.id_of(piece) in sp.encode(f"x {piece} y")
    assert sp.decode([sp.id_of(piece)]) == piece


def test_extra_pieces_and_unknown_piece(texts, tmp_path):
    tok = tokenizer_lib.train_sentencepiece(texts[:200], 600, tmp_path / "t.model",
                                            extra_pieces=["<tool>"])
    assert tok.encode("<tool>") == [tok.id_of("<tool>")]
    with pytest.raises(KeyError, match="not a piece"):
        tok.id_of("<no such piece>")


def test_encode_bos_eos_and_decode_skips_pad_only(sp):
    ids = sp.encode("hi", add_bos=True, add_eos=True)
    assert ids[0] == sp.bos_id and ids[-1] == sp.eos_id
    text = sp.decode(ids + [sp.pad_id] * 3 + sp.encode(" more"))
    assert text == tokenizer_lib.BOS + "hi" + tokenizer_lib.EOS + " more"
    assert sp.decode(np.array([[sp.pad_id] + sp.encode("x")])) == "x"


@pytest.mark.parametrize("side", ["right", "left"])
def test_batch_encode_padding(sp, side):
    batch = ["a", "a longer sentence with 中文", ""]
    ids, lengths = sp.batch_encode(batch, max_len=40, pad_side=side)
    assert ids.dtype == np.int32 and ids.shape == (3, 40) and lengths.dtype == np.int32
    for row, text in enumerate(batch):
        n = int(lengths[row])
        assert n == len(sp.encode(text))
        real = ids[row, :n] if side == "right" else ids[row, 40 - n:]
        pad = ids[row, n:] if side == "right" else ids[row, :40 - n]
        assert list(real) == sp.encode(text)
        assert (pad == sp.pad_id).all()
        assert sp.decode(ids[row]) == text


def test_batch_encode_longest_and_overlong(sp):
    ids, lengths = sp.batch_encode(["one", "one two three"])
    assert ids.shape[1] == lengths.max()
    with pytest.raises(ValueError, match="max_len=2"):
        sp.batch_encode(["one two three four"], max_len=2)
    ids, lengths = sp.batch_encode(["one two three four"], max_len=2, truncate=True)
    assert lengths.tolist() == [2] and ids[0].tolist() == sp.encode("one two three four")[:2]
    with pytest.raises(ValueError, match="pad_side"):
        sp.batch_encode(["x"], pad_side="middle")


# ----------------------------------------------------------------------------- HF tokenizers


@pytest.fixture(scope="module")
def hf_dir(texts, tmp_path_factory):
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=list(tokenizer_lib.SPECIAL_PIECES) + ["<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts[:500], trainer)
    path = tmp_path_factory.mktemp("hf")
    tok.save(str(path / "tokenizer.json"))
    config = {"bos_token": {"content": tokenizer_lib.BOS}, "eos_token": tokenizer_lib.EOS,
              "pad_token": "<pad>"}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_hf_round_trip(hf_dir, text):
    tok = tokenizer_lib.load(hf_dir)
    assert tok.decode(tok.encode(text)) == text


def test_hf_specials_and_config(hf_dir):
    tok = tokenizer_lib.load(hf_dir / "tokenizer.json")
    assert isinstance(tok, tokenizer_lib.HFTokenizer)
    assert tok.pad_id == tok.id_of("<pad>") != tok.eos_id
    for piece in tokenizer_lib.SPECIAL_PIECES:
        assert tok.encode(piece) == [tok.id_of(piece)]
    ids, lengths = tok.batch_encode(["x", "xyz xyz"], pad_side="left", add_eos=True)
    assert ids[0, -1] == tok.eos_id and ids[0, 0] == tok.pad_id
    assert tok.decode(ids[0]) == "x" + tokenizer_lib.EOS


def test_hf_without_pad_token_pads_with_eos(hf_dir):
    tok = tokenizer_lib.HFTokenizer(hf_dir, pad_token=tokenizer_lib.EOS)
    assert tok.pad_id == tok.eos_id
    assert tok.decode(tok.encode("a", add_eos=True)) == "a" + tokenizer_lib.EOS
    with pytest.raises(ValueError, match="bos_token '<missing>' is not a token"):
        tokenizer_lib.HFTokenizer(hf_dir, bos_token="<missing>")


def bpe_without_bos(texts, path, config):
    """A Qwen2-style byte-level BPE: EOS `<|endoftext|>`, no BOS piece, `config` as
    tokenizer_config.json (None: no config file)."""
    tokenizers = pytest.importorskip("tokenizers")
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts[:200], trainer)
    path.mkdir()
    tok.save(str(path / "tokenizer.json"))
    if config is not None:
        (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


def test_hf_null_bos_token_loads_without_bos(texts, tmp_path):
    """transformers writes `"bos_token": null` for Qwen2/2.5: BOS is optional."""
    path = bpe_without_bos(texts, tmp_path / "qwen", {"bos_token": None,
                                                      "eos_token": "<|endoftext|>"})
    tok = tokenizer_lib.load(path)
    assert tok.bos_id is None and tok.eos_id == tok.id_of("<|endoftext|>") == tok.pad_id
    assert tok.encode("1 + 2", add_bos=True) == tok.encode("1 + 2")
    assert tok.encode("1", add_bos=True, add_eos=True)[-1] == tok.eos_id


def test_hf_missing_eos_is_named(texts, tmp_path):
    path = bpe_without_bos(texts, tmp_path / "bad", {"bos_token": None, "eos_token": "</s>"})
    with pytest.raises(ValueError, match="tokenizer_config.json: eos_token '</s>'"):
        tokenizer_lib.load(path)
    path = bpe_without_bos(texts, tmp_path / "noconfig", None)
    with pytest.raises(ValueError, match="eos_token"):  # no EOS piece, no config to name one
        tokenizer_lib.load(path)


def test_prompt_truncation_without_a_bos_keeps_the_last_tokens(texts, tmp_path):
    """add_bos on a BOS-less tokenizer adds nothing, so truncation keeps the prompt's last
    max_prompt_len tokens (it used to keep the first token as if it were BOS)."""
    from r1jax.data import pipeline

    tok = tokenizer_lib.load(bpe_without_bos(texts, tmp_path / "qwen", {"bos_token": None,
                                                                         "eos_token": "<|endoftext|>"}))
    prompt = "one two three four five six seven eight nine ten"
    config = pipeline.PromptConfig(batch_size=1, max_prompt_len=4, bucket=4, shuffle=False,
                                   num_epochs=1, overlong="truncate", add_bos=True)
    batch = pipeline.prompt_loader([{"question": prompt}], tok, lambda q: q, config).batch(0)
    assert list(batch["prompt_tokens"][0][:4]) == tok.encode(prompt)[-4:]
