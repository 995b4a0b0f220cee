"""Test helpers: a user's Hugging Face checkpoint directory built without torch (r1jax's own
`save_hf` + a `tokenizers` byte-level BPE whose tokenizer_config.json has "bos_token": null,
as transformers writes for Qwen2), GSM8K-format JSONL files, a hash of a directory tree, and
the environment of the entry-point subprocesses."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib

import cpu_env
import jax.numpy as jnp

from r1jax import ownership
from r1jax.data import templates
from r1jax.models import config as config_lib
from r1jax.models import hf, transformer
from r1jax.train import base

EOS = "<|endoftext|>"


def cheap_cpu_env(**extra: str) -> dict[str, str]:
    """One CPU device with cheap compiles (without them a smoke run is mostly XLA compiling):
    LLVM at -O0 and the pre-fusion-emitter CPU codegen (about 5x faster for a GRPO step)."""
    return cpu_env.env(1, **extra)


def gsm8k_records(count: int, offset: int = 0) -> list[dict]:
    """GSM8K-format records: a word problem and a worked answer ending in `#### <number>`."""
    out = []
    for i in range(offset, offset + count):
        a, b = 3 + i % 7, 5 + i % 11
        out.append({"question": f"Tom has {a} apples and buys {b} more. How many apples now?",
                    "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n"
                              f"#### {a + b}"})
    return out


def write_jsonl(path: pathlib.Path, records: list[dict]) -> pathlib.Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _tokenizer(directory: pathlib.Path, texts: list[str]) -> int:
    """Trains a byte-level BPE into `directory` (tokenizer.json + tokenizer_config.json with
    "bos_token": null); returns its size."""
    import tokenizers
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=[EOS],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.save(str(directory / "tokenizer.json"))
    config = {"bos_token": None, "eos_token": EOS, "pad_token": None,
              "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 512}
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return tok.get_vocab_size(with_added_tokens=True)


def model_config(vocab_size: int, dtype: str = "float32") -> config_lib.ModelConfig:
    """A 2-layer Qwen2-style dense model (GQA with q/k/v biases, tied embeddings)."""
    return config_lib.ModelConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, attention_type="gqa",
        n_routed_experts=0, n_shared_experts=0, rope_interleave=False, q_lora_rank=None,
        attention_bias=True, tie_word_embeddings=True, max_position_embeddings=512,
        original_max_position_embeddings=512, dtype=dtype, param_dtype=dtype)


def build_hf_dir(path: pathlib.Path, dtype: str = "float32") -> pathlib.Path:
    """A user's HF checkpoint directory (unmarked, as transformers would leave it)."""
    scratch = path.with_name(path.name + "-tokenizer")
    scratch.mkdir()
    template = templates.get("r1_zero")
    texts = [template.format_prompt(r["question"]) + " <think> " + r["answer"] + " </think>"
             for r in gsm8k_records(200)]
    size = _tokenizer(scratch, texts)
    config = model_config(-(-size // 64) * 64, dtype)
    params = base.cast_params(transformer.random_params(config, 0), dtype)
    hf.save_hf(config, params, str(path), config_extra={"bos_token_id": None, "eos_token_id": 0},
               files=[scratch / "tokenizer.json", scratch / "tokenizer_config.json"])
    (path / ownership.MARKER).unlink()  # the user's directory: r1jax did not create it
    assert jnp.dtype(hf.checkpoint_dtype(str(path))) == jnp.dtype(dtype)
    return path


def tree_hash(root: pathlib.Path) -> dict[str, str]:
    """{relative path: sha256 (or 'dir')} of everything under `root` ({} when missing)."""
    if not root.exists():
        return {}
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames:
            out[os.path.relpath(os.path.join(dirpath, name), root)] = "dir"
        for name in filenames:
            full = os.path.join(dirpath, name)
            out[os.path.relpath(full, root)] = hashlib.sha256(
                pathlib.Path(full).read_bytes()).hexdigest()
    return out
