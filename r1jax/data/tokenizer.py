"""Tokenizers behind one interface: SentencePiece (trained locally) and HF `tokenizers`.

The toy runs train a small byte-fallback BPE SentencePiece model in-process
(`train_sentencepiece`), so no download is ever needed; real checkpoints (Qwen, Llama,
DeepSeek) bring a `tokenizer.json` that `HFTokenizer` reads. Both expose the same methods,
so the pipeline, the sampler and the rewards never ask which one they hold.

Departures from the usual SentencePiece setup, and why:
- identity normalisation, no dummy prefix, no whitespace folding: `decode(encode(s)) == s`
  for every string (whitespace runs and newlines matter in code and in the R1 format);
- BOS/EOS are user-defined pieces, not control symbols, so they decode to visible text and
  are encoded back to themselves; only PAD is a control symbol (decode drops it).
"""

from __future__ import annotations

import abc
import io
import json
import os
import pathlib
from collections.abc import Iterable, Sequence

import numpy as np
import sentencepiece as spm

BOS = "<|begin_of_sentence|>"
EOS = "<|end_of_sentence|>"
PAD = "<|pad|>"
UNK = "<unk>"
#: Pieces that the trained models keep whole: the R1 format tags and the chat-role markers.
FORMAT_PIECES = ("<think>", "</think>", "<answer>", "</answer>")
ROLE_PIECES = ("<|System|>", "<|User|>", "<|Assistant|>")
SPECIAL_PIECES = (BOS, EOS) + FORMAT_PIECES + ROLE_PIECES


class Tokenizer(abc.ABC):
    """Text <-> token ids. Ids are plain Python ints; batches are int32 NumPy arrays."""

    @abc.abstractmethod
    def _encode(self, text: str) -> list[int]:
        """Encodes text with no BOS/EOS added."""

    @abc.abstractmethod
    def _decode(self, ids: Sequence[int]) -> str:
        """Decodes ids (PAD already removed), rendering special pieces as their text."""

    @abc.abstractmethod
    def id_of(self, piece: str) -> int:
        """The id of one vocabulary piece; KeyError if it is not a single piece."""

    @property
    @abc.abstractmethod
    def vocab_size(self) -> int:
        """Number of ids (embedding rows needed)."""

    @property
    @abc.abstractmethod
    def bos_id(self) -> int | None:
        """The BOS id, or None for tokenizers without one (Qwen2/2.5: `"bos_token": null`)."""

    @property
    @abc.abstractmethod
    def eos_id(self) -> int: ...

    @property
    @abc.abstractmethod
    def pad_id(self) -> int: ...

    def encode(self, text: str, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, optionally framed by BOS (when the tokenizer has one) and EOS."""
        ids = self._encode(text)
        bos = [self.bos_id] if add_bos and self.bos_id is not None else []
        return bos + ids + ([self.eos_id] if add_eos else [])

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`. Stops nowhere (EOS is rendered, not a terminator); PAD is skipped.

        When a tokenizer has no PAD of its own and pads with EOS, EOS is kept.
        """
        ids = [int(i) for i in np.asarray(list(ids)).reshape(-1)]
        if self.pad_id != self.eos_id:
            ids = [i for i in ids if i != self.pad_id]
        return self._decode(ids)

    def batch_encode(
        self,
        texts: Sequence[str],
        max_len: int | None = None,
        pad_side: str = "right",
        *,
        add_bos: bool = False,
        add_eos: bool = False,
        truncate: bool = False,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Encodes and pads a batch.

        Args:
          texts: B strings.
          max_len: L, the padded length; None pads to the longest sequence.
          pad_side: 'right' (tokens first) or 'left' (tokens last, for decoding prompts).
          truncate: keep the first `max_len` ids of longer sequences instead of raising.

        Returns:
          ids int32 [B, L] and lengths int32 [B] (number of real tokens per row).
        """
        seqs = [self.encode(t, add_bos=add_bos, add_eos=add_eos) for t in texts]
        if max_len is None:
            max_len = max((len(s) for s in seqs), default=0)
        too_long = [i for i, s in enumerate(seqs) if len(s) > max_len]
        if too_long and not truncate:
            i = too_long[0]
            raise ValueError(f"text {i} has {len(seqs[i])} tokens > max_len={max_len}")
        seqs = [s[:max_len] for s in seqs]
        return pad_sequences(seqs, max_len, self.pad_id, pad_side)


def pad_sequences(
    seqs: Sequence[Sequence[int]], length: int, pad_id: int, pad_side: str = "right"
) -> tuple[np.ndarray, np.ndarray]:
    """Pads id lists to `length`: returns ids int32 [B, length] and lengths int32 [B]."""
    if pad_side not in ("left", "right"):
        raise ValueError(f"pad_side must be 'left' or 'right', got {pad_side!r}")
    ids_bl = np.full((len(seqs), length), pad_id, dtype=np.int32)
    lengths_b = np.zeros((len(seqs),), dtype=np.int32)
    for row, seq in enumerate(seqs):
        if len(seq) > length:
            raise ValueError(f"sequence {row} has {len(seq)} ids > length={length}")
        n = len(seq)
        lengths_b[row] = n
        if n:
            if pad_side == "right":
                ids_bl[row, :n] = seq
            else:
                ids_bl[row, length - n :] = seq
    return ids_bl, lengths_b


# ----------------------------------------------------------------------------- SentencePiece


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model (ours from `train_sentencepiece`, or e.g. Llama-2's)."""

    def __init__(self, model: str | os.PathLike | bytes):
        proto = model if isinstance(model, bytes) else pathlib.Path(model).read_bytes()
        self._sp = spm.SentencePieceProcessor(model_proto=proto)
        self._bos = self._special(BOS, self._sp.bos_id())
        self._eos = self._special(EOS, self._sp.eos_id())
        self._pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._eos

    def _special(self, piece: str, builtin: int) -> int:
        if builtin >= 0:
            return builtin
        pid = self._sp.piece_to_id(piece)
        if self._sp.id_to_piece(pid) != piece:
            raise ValueError(f"SentencePiece model has neither a built-in id nor a {piece} piece")
        return pid

    def _encode(self, text: str) -> list[int]:
        return list(self._sp.encode(text))

    def _decode(self, ids: Sequence[int]) -> str:
        # sp.decode drops control symbols (e.g. Llama's <s>, </s>); render those by hand.
        out, run = [], []
        for i in ids:
            if self._sp.is_control(i) and i in (self._bos, self._eos):
                out.append(self._sp.decode(run) + self._sp.id_to_piece(i))
                run = []
            else:
                run.append(i)
        return "".join(out) + self._sp.decode(run)

    def id_of(self, piece: str) -> int:
        pid = self._sp.piece_to_id(piece)
        if self._sp.id_to_piece(pid) != piece:
            raise KeyError(f"{piece!r} is not a piece of this SentencePiece model")
        return pid

    def pieces(self) -> list[str]:
        """Every piece's text, by id (SentencePiece's spelling: U+2581 marks a space)."""
        return [self._sp.id_to_piece(i) for i in range(self._sp.get_piece_size())]

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    @property
    def bos_id(self) -> int:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad


# Why each option: exact round trips (identity normalisation, no dummy prefix, keep whitespace),
# any unicode (byte fallback), determinism (one thread, every sentence, in order).
_TRAINER_OPTIONS = dict(
    model_type="bpe",
    byte_fallback=True,
    character_coverage=0.9995,  # the rarest characters fall back to bytes
    pad_id=0, pad_piece=PAD, unk_id=1, unk_piece=UNK, bos_id=-1, eos_id=-1,
    normalization_rule_name="identity",
    remove_extra_whitespaces=False,
    add_dummy_prefix=False,
    allow_whitespace_only_pieces=True,
    split_digits=True,
    hard_vocab_limit=False,
    max_sentence_length=1 << 20,
    input_sentence_size=0,
    shuffle_input_sentence=False,
    num_threads=1,
    minloglevel=2,
)


def train_sentencepiece(
    text_iterator: Iterable[str],
    vocab_size: int,
    path: str | os.PathLike,
    *,
    extra_pieces: Sequence[str] = (),
    special_pieces: Sequence[str] = SPECIAL_PIECES,
) -> SentencePieceTokenizer:
    """Trains a byte-fallback BPE SentencePiece model in-process and writes it to `path`.

    Deterministic (one thread, no sentence sampling): the same texts give the same file.
    The special pieces (`special_pieces` + `extra_pieces`) are single pieces; PAD is id 0.
    `special_pieces` must include BOS and EOS; leaving out `FORMAT_PIECES` makes `<think>` and
    `<answer>` ordinary text (how the toy base model sees them, like a web-text base model).
    `vocab_size` is an upper bound (a small corpus may yield fewer pieces) and must exceed
    256 byte pieces + the special pieces + the distinct characters of the corpus.

    Returns:
      The trained tokenizer. The file is written atomically (temp file + rename).
    """
    missing = {BOS, EOS} - set(special_pieces)
    if missing:
        raise ValueError(f"special_pieces must include {sorted(missing)}")
    texts = [t for t in text_iterator if t]
    if not texts:
        raise ValueError("train_sentencepiece needs at least one non-empty text")
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=buf,
        vocab_size=vocab_size,
        user_defined_symbols=list(dict.fromkeys(tuple(special_pieces) + tuple(extra_pieces))),
        **_TRAINER_OPTIONS,
    )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)
    return SentencePieceTokenizer(path)


# ----------------------------------------------------------------------------- HF tokenizers


def _token_content(value) -> str | None:
    """tokenizer_config.json stores special tokens as a string or an AddedToken dict."""
    if isinstance(value, dict):
        return value.get("content")
    return value


class HFTokenizer(Tokenizer):
    """A Hugging Face `tokenizers` tokenizer.json (Qwen2, Llama-3, DeepSeek-V3/R1 checkpoints).

    BOS/EOS/PAD come from the arguments, else the sibling tokenizer_config.json, else the
    vocabulary's `SPECIAL_PIECES`. Without a PAD token, EOS pads (and decode then keeps EOS).
    BOS is optional: `"bos_token": null` in tokenizer_config.json (as transformers writes for
    Qwen2/2.5), or no config and no `BOS` piece, gives `bos_id` None. EOS is required.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
    ):
        try:
            import tokenizers
        except ImportError as e:  # optional dependency: pip install r1jax[hf]
            raise ImportError(
                "HFTokenizer needs the `tokenizers` package: pip install 'r1jax[hf]'"
            ) from e
        path = pathlib.Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        self._tok = tokenizers.Tokenizer.from_file(str(file))
        config = _read_config(file.parent / "tokenizer_config.json")
        self._eos = self._configured(eos_token or _token_content(config.get("eos_token")) or EOS,
                                     "eos_token", file)
        pad = pad_token or _token_content(config.get("pad_token"))
        self._pad = self._configured(pad, "pad_token", file) if pad else self._eos
        bos = bos_token or _token_content(config.get("bos_token"))
        if bos:
            self._bos = self._configured(bos, "bos_token", file)
        elif "bos_token" in config:  # explicitly null: the model uses no BOS
            self._bos = None
        else:  # no config: our own tokenizers carry the BOS piece; others may have none
            self._bos = self._tok.token_to_id(BOS)

    def _configured(self, piece: str, field: str, file: pathlib.Path) -> int:
        """The id of a configured special token; a clear error when the vocabulary lacks it."""
        pid = self._tok.token_to_id(piece)
        if pid is None:
            raise ValueError(f"{file.parent / 'tokenizer_config.json'}: {field} {piece!r} is not "
                             f"a token of {file}")
        return pid

    def _encode(self, text: str) -> list[int]:
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def _decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def id_of(self, piece: str) -> int:
        pid = self._tok.token_to_id(piece)
        if pid is None:
            raise KeyError(f"{piece!r} is not a token of this tokenizer")
        return pid

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int:
        return self._eos

    @property
    def pad_id(self) -> int:
        return self._pad


def _read_config(path: pathlib.Path) -> dict:
    """tokenizer_config.json as a dict ({} when absent); a named error when malformed."""
    if not path.exists():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: must hold a JSON object")
    return config


def load(path: str | os.PathLike, **kwargs) -> Tokenizer:
    """Loads a tokenizer by file type: `*.model` -> SentencePiece; tokenizer.json or a
    checkpoint directory -> HF `tokenizers`."""
    path = pathlib.Path(path)
    if path.suffix == ".model":
        return SentencePieceTokenizer(path)
    return HFTokenizer(path, **kwargs)
