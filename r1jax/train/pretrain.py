"""Pretraining the toy base model ("V3-Base" of the toy world) that R1-Zero starts from.

Steps: generate the corpus (`r1jax.data.corpus`), train a SentencePiece tokenizer on it, pack
the documents into rows, train a DeepSeek-V3-style MoE model by next-token prediction
(`r1jax.train.sft.train` with every token weighted), and save a base directory
(`r1jax.train.base`). `pretrain_base` is cached: an existing complete base directory is
returned as is, and an interrupted run resumes from its latest checkpoint.
The toy base model stands in for DeepSeek-V3-Base, where R1-Zero starts (arXiv:2501.12948, Sec. 2.2).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import pathlib
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from r1jax import config_utils, ownership
from r1jax.data import corpus
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import config as config_lib
from r1jax.models import presets, transformer
from r1jax.train import base, sft
from r1jax.train import state as state_lib


@dataclasses.dataclass(frozen=True)
class PretrainConfig:
    """tasks / task_knobs: the corpus' task mix; num_documents: corpus size;
    instruction_fraction: share of instruction documents; direct_fraction: share of documents
    with a bare answer instead of the working; direct_accuracy: how often such a bare answer is
    right (`corpus.guess`); piece_names: invented tag names made of the
    tokenizer's pieces (else syllables); vocab_size: tokenizer size (the model's vocab is
    rounded up to a multiple of 64). See `r1jax.data.corpus`."""

    model: config_lib.ModelConfig
    sft: sft.SFTConfig
    optim: state_lib.OptimConfig
    tasks: tuple[str, ...] = ("countdown", "arithmetic", "word_problems")
    task_knobs: tuple[tuple[str, tuple[tuple[str, object], ...]], ...] = config_utils.converted(
        (), lambda knobs: tuple((k, config_utils.sorted_pairs(v)) for k, v in dict(knobs).items()))
    num_documents: int = 20000
    instruction_fraction: float = 0.3
    direct_fraction: float = 0.0
    direct_accuracy: float = 1.0
    piece_names: bool = True
    vocab_size: int = 1024
    tokenizer_documents: int = 3000
    seed: int = 0

    @classmethod
    def from_config_dict(cls, cd: ml_collections.ConfigDict | dict) -> PretrainConfig:
        """A config dict -> PretrainConfig; `optim.total_steps` unset or None means the
        run's `sft.steps` (the length a cosine schedule decays over)."""
        d = cd.to_dict() if hasattr(cd, "to_dict") else dict(cd)
        model = dict(presets.get(d.pop("model_preset")).to_dict(),
                     **config_utils.set_entries(d.pop("model", {})))
        train = config_utils.freeze(sft.SFTConfig, d.pop("sft", None), "pretrain.sft")
        optim = dict(d.pop("optim", None) or {})
        if optim.get("total_steps") is None:
            optim["total_steps"] = train.steps
        return config_utils.freeze(
            cls, d, "pretrain", model=config_lib.ModelConfig.from_dict(model), sft=train,
            optim=config_utils.freeze(state_lib.OptimConfig, optim, "pretrain.optim"))

    @staticmethod
    def config_dict(model_preset: str, model: dict | None = None,
                    **values) -> ml_collections.ConfigDict:
        """The ConfigDict of a pretraining run with every field declared (so the command line
        can set any): `model_preset` names a `presets` model and `model` declares every
        `ModelConfig` field unset, `model` setting those the run changes; `values` set other
        fields (sections as dicts). Unset fields keep the dataclass defaults."""
        c = config_utils.from_dataclass(PretrainConfig, **values)
        del c["model"]  # a preset plus overrides, not a whole ModelConfig
        c.model_preset = model_preset
        c.model = config_utils.unset_fields(config_lib.ModelConfig)
        config_utils.assign(c.model, dict(model or {}))
        return c

    def knobs(self) -> dict:
        return {k: dict(v) for k, v in self.task_knobs}


def _documents(cfg: PretrainConfig, count: int, pieces: tuple[str, ...] | None = None) -> list[str]:
    docs = corpus.documents(cfg.tasks, cfg.seed, cfg.instruction_fraction, cfg.knobs(),
                            cfg.direct_fraction, pieces, cfg.direct_accuracy)
    return list(itertools.islice(docs, count))


def train_tokenizer(cfg: PretrainConfig, path: str | os.PathLike):
    """The base model's SentencePiece tokenizer, trained on `cfg.tokenizer_documents`
    syllable-named documents and written to `path`."""
    return tokenizer_lib.train_sentencepiece(
        _documents(cfg, cfg.tokenizer_documents), cfg.vocab_size, path,
        special_pieces=(tokenizer_lib.BOS, tokenizer_lib.EOS) + tokenizer_lib.ROLE_PIECES)


def corpus_documents(cfg: PretrainConfig, tok, count: int | None = None) -> list[str]:
    """The pretraining corpus (`count` documents, default `cfg.num_documents`). With
    `cfg.piece_names`, its invented tag names are the tokenizer's own pieces
    (`corpus.tag_name`), so the tokenizer comes first, trained on syllable-named documents."""
    pieces = corpus.name_pieces(tok.pieces()) if cfg.piece_names else None
    return _documents(cfg, cfg.num_documents if count is None else count, pieces)


def pretrain_base(cfg: PretrainConfig, base_dir: str | os.PathLike,
                  workdir: str | os.PathLike | None = None) -> pathlib.Path:
    """Trains and saves the base model unless `base_dir` already holds one; returns base_dir."""
    base_dir = pathlib.Path(base_dir).absolute()
    if base.exists(base_dir):
        return base_dir
    # Both checked before hours of training: r1jax writes only into directories it marked.
    ownership.check_owned(base_dir, "pretrain a base model into")
    workdir = ownership.claim(workdir or f"{base_dir}.work", "train.pretrain work")
    tok_path = workdir / "tokenizer.model"
    tok = train_tokenizer(cfg, tok_path)
    docs = corpus_documents(cfg, tok)
    vocab = -(-tok.vocab_size // 64) * 64
    model_cfg = cfg.model.replace(vocab_size=vocab)
    encoded = [tok.encode(d, add_bos=True, add_eos=True) for d in docs]
    rows = sft.pack(((ids, [1.0] * len(ids)) for ids in encoded), cfg.sft.seq_len, tok.pad_id,
                    strategy=cfg.sft.packing)
    (workdir / "corpus_stats.json").write_text(json.dumps({
        "documents": len(docs), "tokens": int(sum(map(len, encoded))),
        "rows": int(rows["tokens"].shape[0]), "packing": cfg.sft.packing,
        "fill": round(float((rows["segment_ids"] > 0).mean()), 4),
        "truncated": int(rows["num_truncated"]),
        "vocab_size": tok.vocab_size}, indent=2))
    params = sft.train(model_cfg, cfg.optim, cfg.sft,
                       sft.epoch_batches(rows, cfg.sft.batch_size, cfg.seed), workdir,
                       _init_params(model_cfg, cfg.seed), desc="pretrain base")
    return base.save_base(base_dir, model_cfg, params, tok_path,
                          {"corpus": json.loads((workdir / "corpus_stats.json").read_text()),
                           "pretrain_config": _flat(cfg)})


def ensure_base(base_dir: str | os.PathLike, toy_base_dir: str | os.PathLike | None,
                pretrain_config: Callable[[], PretrainConfig], *,
                allow_pretrain: bool = True) -> pathlib.Path:
    """The absolute base directory, pretraining the toy base first only where that is asked for.

    Args:
      base_dir: the run's base model: an r1jax base or an HF checkpoint directory.
      toy_base_dir: the preset's own toy base location (None for presets with a real base).
        Only when `base_dir` is this location and holds no model is the toy base pretrained
        (resumably, with `<base_dir>.work`), so that a mistyped or missing path can never
        start a long pretraining or write into someone's directory.
      pretrain_config: builds the PretrainConfig (only called when pretraining).
      allow_pretrain: False where pretraining cannot run (a multi-process run).
    Returns:
      The absolute base directory.
    Raises:
      FileNotFoundError: within seconds, naming what was expected and what was found.
    """
    path = pathlib.Path(base_dir).absolute()
    if base.exists(path) or base.is_hf_checkpoint(path):
        return path
    is_toy = toy_base_dir is not None and path == pathlib.Path(toy_base_dir).absolute()
    if not is_toy or not allow_pretrain:
        try:
            base.check_model_dir(path)
        except FileNotFoundError as e:
            why = ("a multi-process run does not pretrain; pretrain the toy base first in a "
                   "single-process run" if is_toy else "only a toy preset pretrains its toy "
                   f"base, and only into its own location (toy_base_dir={toy_base_dir})")
            raise FileNotFoundError(f"{e}. Not pretraining: {why}") from None
    ownership.check_owned(path, "pretrain a base model into")  # before reading any config
    print(f"no base model in {path}: pretraining the toy base first")
    return pretrain_base(pretrain_config(), path, f"{path}.work")


def _flat(cfg: PretrainConfig) -> dict:
    """The config as flat JSON values: {"sft.steps": 3300, "task_knobs": [...], ...}."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = value

    walk("", json.loads(json.dumps(dataclasses.asdict(cfg))))
    return out


def config_differences(cfg: PretrainConfig, base_dir: str | os.PathLike) -> list[str] | None:
    """Fields where `cfg` differs from the config that pretrained the base in `base_dir`, as
    "name: recorded -> given" lines; None when the base records no config (not pretrained
    here, or by an older r1jax)."""
    info = pathlib.Path(base_dir) / "info.json"
    recorded = json.loads(info.read_text()).get("pretrain_config") if info.exists() else None
    if recorded is None:
        return None
    given = _flat(cfg)
    return [f"{k}: {recorded.get(k)!r} -> {given.get(k)!r}"
            for k in sorted(set(recorded) | set(given)) if recorded.get(k) != given.get(k)]


def _init_params(model_cfg: config_lib.ModelConfig, seed: int):
    """The model's own initialisation (N(0, initializer_range)), unboxed."""
    variables = jax.jit(transformer.Transformer(model_cfg).init)(
        jax.random.key(seed), jnp.zeros((1, 8), jnp.int32))
    return nn.unbox(variables["params"])
