"""A base model on disk: the model config, its parameters and its tokenizer, in one directory.

This is what `experiments/pretrain_base.py` writes (the toy "V3-Base") and what the RL and SFT
trainers start from:

    <dir>/model_config.json   `ModelConfig` fields
    <dir>/tokenizer.model     SentencePiece model (or tokenizer.json for HF tokenizers)
    <dir>/params/             orbax StandardCheckpointer tree (unboxed parameter arrays)
    <dir>/DONE                written last: a directory without it is incomplete and ignored

`save_base` writes into `<dir>.tmp-<pid>` and renames it, so an interrupted save never leaves a
directory that `load_base` would accept.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil

import jax
import orbax.checkpoint as ocp

from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import config as config_lib

_DONE = "DONE"


def exists(directory: str | os.PathLike) -> bool:
    """True when `directory` holds a complete base model."""
    return (pathlib.Path(directory) / _DONE).exists()


def save_base(directory: str | os.PathLike, model_config: config_lib.ModelConfig, params,
              tokenizer_file: str | os.PathLike, extra: dict | None = None) -> pathlib.Path:
    """Writes a complete base-model directory atomically; refuses to replace a complete one."""
    directory = pathlib.Path(directory).absolute()
    if exists(directory):
        raise FileExistsError(f"{directory} already holds a base model; remove it to replace it")
    tmp = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    (tmp / "model_config.json").write_text(json.dumps(model_config.to_dict(), indent=2))
    shutil.copyfile(tokenizer_file, tmp / pathlib.Path(tokenizer_file).name)
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / "params", jax.device_get(params))
    (tmp / "info.json").write_text(json.dumps(extra or {}, indent=2))
    (tmp / _DONE).write_text("ok\n")
    if directory.exists():  # An incomplete earlier attempt: nothing in it is trustworthy.
        shutil.rmtree(directory)
    os.replace(tmp, directory)
    return directory


def load_config(directory: str | os.PathLike) -> config_lib.ModelConfig:
    path = pathlib.Path(directory) / "model_config.json"
    return config_lib.ModelConfig.from_dict(json.loads(path.read_text()))


def load_tokenizer(directory: str | os.PathLike) -> tokenizer_lib.Tokenizer:
    directory = pathlib.Path(directory)
    for name in ("tokenizer.model", "tokenizer.json"):
        if (directory / name).exists():
            return tokenizer_lib.load(str(directory / name))
    raise FileNotFoundError(f"{directory}: no tokenizer.model or tokenizer.json")


def load_base(directory: str | os.PathLike, abstract_params=None):
    """Reads a base model.

    Args:
      directory: written by `save_base`.
      abstract_params: optional pytree of `jax.ShapeDtypeStruct` (with shardings) to restore
        into; default: host arrays with the saved shapes.
    Returns:
      (ModelConfig, params, Tokenizer).
    """
    directory = pathlib.Path(directory).absolute()
    if not exists(directory):
        raise FileNotFoundError(f"{directory}: not a complete base-model directory (no {_DONE})")
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", abstract_params)
    return load_config(directory), params, load_tokenizer(directory)


def is_hf_checkpoint(directory: str | os.PathLike) -> bool:
    directory = pathlib.Path(directory)
    return (directory / "config.json").exists() and (directory / "tokenizer.json").exists()


def load_model(directory: str | os.PathLike):
    """(ModelConfig, params, Tokenizer) from a base directory (`save_base`) or a local HF
    checkpoint directory (config.json + safetensors + tokenizer.json, read by `models.hf`)."""
    directory = pathlib.Path(directory)
    if exists(directory):
        return load_base(directory)
    if is_hf_checkpoint(directory):
        from r1jax.models import hf  # safetensors is only needed for HF directories

        model_config, params = hf.load_hf(directory)
        return model_config, params, tokenizer_lib.load(str(directory / "tokenizer.json"))
    raise FileNotFoundError(f"{directory}: neither a base-model directory (no {_DONE}) nor an "
                            "HF checkpoint (config.json + tokenizer.json)")
