"""A base model on disk: the model config, its parameters and its tokenizer, in one directory.

This is what `experiments/pretrain_base.py` writes (the toy "V3-Base") and what the RL and SFT
trainers start from:

    <dir>/model_config.json   `ModelConfig` fields
    <dir>/tokenizer.model     SentencePiece model (or tokenizer.json [+ tokenizer_config.json]
                              for HF tokenizers)
    <dir>/params/             orbax StandardCheckpointer tree (unboxed parameter arrays)
    <dir>/.r1jax              the ownership marker (`r1jax.ownership`)
    <dir>/DONE                written last: a directory without it is incomplete and ignored

`save_base` writes into a fresh temporary directory beside `<dir>` and renames it, so an
interrupted save never leaves a directory that `load_base` would accept. It never replaces a
directory that r1jax did not create (`r1jax.ownership`).

`load_model` also reads a local Hugging Face checkpoint directory (config.json + safetensors +
tokenizer.json or tokenizer.model), keeping its stored dtype; `check_model_dir` says, in
seconds, why a directory is neither.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import traverse_util

from r1jax import ownership
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import config as config_lib
from r1jax.models import moe

_DONE = "DONE"
#: Tokenizer files a model directory may hold; the first present of the first two is loaded.
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json", "tokenizer_config.json",
                   "special_tokens_map.json")
_HF_CONFIG, _HF_WEIGHTS = "config.json", ("model.safetensors", "model.safetensors.index.json")
EXPECTED = ("an r1jax base model directory (model_config.json, params/, tokenizer, DONE; written "
            "by experiments/pretrain_base.py or a pipeline stage) or a Hugging Face checkpoint "
            "directory (config.json + model.safetensors or model.safetensors.index.json + "
            "tokenizer.json or tokenizer.model)")


def exists(directory: str | os.PathLike) -> bool:
    """True when `directory` holds a complete base model."""
    return (pathlib.Path(directory) / _DONE).exists()


def tokenizer_files(directory: str | os.PathLike) -> list[pathlib.Path]:
    """The tokenizer files present in a model directory (to copy along with the model)."""
    directory = pathlib.Path(directory)
    files = [directory / name for name in TOKENIZER_FILES if (directory / name).is_file()]
    if not any(f.name in TOKENIZER_FILES[:2] for f in files):
        raise FileNotFoundError(f"{directory}: no tokenizer.model or tokenizer.json")
    return files


def save_base(directory: str | os.PathLike, model_config: config_lib.ModelConfig, params,
              tokenizer_file: str | os.PathLike | Sequence[str | os.PathLike],
              extra: dict | None = None) -> pathlib.Path:
    """Writes a complete base-model directory atomically.

    Args:
      directory: where; it must not hold a complete base, and an existing incomplete one is
        replaced only when r1jax created it (marked) or it is empty.
      model_config, params: the model (params unboxed; fetched to the host).
      tokenizer_file: one tokenizer file, or several (e.g. `tokenizer_files(hf_dir)`).
      extra: JSON-able info, written as info.json.
    Returns:
      The absolute directory.
    """
    directory = pathlib.Path(directory).absolute()
    if exists(directory):
        raise FileExistsError(f"{directory} already holds a base model; remove it to replace it")
    ownership.check_owned(directory, "replace the incomplete base model in")
    files = [tokenizer_file] if isinstance(tokenizer_file, (str, os.PathLike)) \
        else list(tokenizer_file)
    tmp = ownership.temp_dir(directory.parent, directory.name, "train.base.save_base")
    try:
        (tmp / "model_config.json").write_text(json.dumps(model_config.to_dict(), indent=2))
        for file in files:
            shutil.copyfile(file, tmp / pathlib.Path(file).name)
        # The host copy is written by this process alone: with the default options orbax
        # waits for every process at its barriers, and the R1 pipeline's other processes
        # are not saving (r1.common.save_model).
        alone = ocp.options.MultiprocessingOptions(primary_host=jax.process_index(),
                                                   active_processes={jax.process_index()})
        with ocp.StandardCheckpointer(multiprocessing_options=alone) as ckptr:
            ckptr.save(tmp / "params", jax.device_get(params))
        (tmp / "info.json").write_text(json.dumps(extra or {}, indent=2))
        (tmp / _DONE).write_text("ok\n")
        ownership.remove(directory)  # an incomplete earlier attempt (marked) or an empty dir
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # the temporary directory made above
        raise
    return directory


def is_hf_checkpoint(directory: str | os.PathLike) -> bool:
    """True for a directory with config.json, safetensors weights and a tokenizer."""
    return not _hf_missing(pathlib.Path(directory))


def _hf_missing(directory: pathlib.Path) -> list[str]:
    """The parts of an HF checkpoint directory that `directory` lacks."""
    missing = [] if (directory / _HF_CONFIG).is_file() else [_HF_CONFIG]
    if not any((directory / w).is_file() for w in _HF_WEIGHTS):
        missing.append(" or ".join(_HF_WEIGHTS))
    if not any((directory / t).is_file() for t in TOKENIZER_FILES[:2]):
        missing.append("tokenizer.json or tokenizer.model")
    return missing


def check_model_dir(directory: str | os.PathLike, field: str = "base_dir") -> pathlib.Path:
    """Returns `directory` (absolute) if it holds a base model or an HF checkpoint; else raises
    FileNotFoundError saying what was expected and what was found. Reads no weights."""
    path = pathlib.Path(directory).absolute()
    if exists(path) or is_hf_checkpoint(path):
        return path
    found = ownership.describe(path)
    if path.is_dir() and (path / _HF_CONFIG).is_file():
        found += f" (an incomplete HF checkpoint: no {', no '.join(_hf_missing(path))})"
    elif path.is_dir() and (path / "model_config.json").is_file():
        found += f" (an incomplete r1jax base model: no {_DONE}; its save was interrupted)"
    raise FileNotFoundError(f"{field}={directory}: expected {EXPECTED}; found {found}")


def load_config(directory: str | os.PathLike) -> config_lib.ModelConfig:
    """The ModelConfig of a base directory, or of an HF checkpoint (its stored dtype)."""
    directory = pathlib.Path(directory)
    path = directory / "model_config.json"
    if not path.exists() and is_hf_checkpoint(directory):
        from r1jax.models import hf  # safetensors is only needed for HF directories

        return hf.load_hf_config(str(directory.absolute()))
    return config_lib.ModelConfig.from_dict(json.loads(path.read_text()))


def load_tokenizer(directory: str | os.PathLike,
                   model_config: config_lib.ModelConfig | None = None) -> tokenizer_lib.Tokenizer:
    """The tokenizer of a model directory, checked against the model's vocabulary (the
    directory's own config unless `model_config` is given)."""
    directory = pathlib.Path(directory)
    path = next(f for f in tokenizer_files(directory) if f.name in TOKENIZER_FILES[:2])
    tok = tokenizer_lib.load(str(path))
    check_vocab(tok, model_config or load_config(directory), path)
    return tok


def check_vocab(tok: tokenizer_lib.Tokenizer, model_config: config_lib.ModelConfig,
                where: str | os.PathLike) -> None:
    """A tokenizer with ids beyond the embedding table would index out of range (NaN losses on
    accelerators): refuse it at load time."""
    if tok.vocab_size > model_config.vocab_size:
        raise ValueError(f"{where}: the tokenizer has {tok.vocab_size} tokens but the model's "
                         f"vocabulary (vocab_size) has only {model_config.vocab_size} rows; "
                         "use the tokenizer the model was trained with")


def cast_params(params, dtype: str):
    """Floating params cast to `dtype` (e.g. a `param_dtype` override: float32 master weights
    for a bfloat16 checkpoint); the MoE balancing bias stays float32 (as `hf.load_hf`)."""
    flat = traverse_util.flatten_dict(params)
    out = {path: leaf if path[-1] == moe.BIAS or not jnp.issubdtype(leaf.dtype, jnp.floating)
           else leaf.astype(dtype) for path, leaf in flat.items()}
    return traverse_util.unflatten_dict(out)


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
    model_config = load_config(directory)
    tok = load_tokenizer(directory, model_config)
    with ocp.StandardCheckpointer() as ckptr:
        params = ckptr.restore(directory / "params", abstract_params)
    return model_config, params, tok


def load_model(directory: str | os.PathLike):
    """(ModelConfig, params, Tokenizer) from a base directory (`save_base`) or a local HF
    checkpoint directory (read by `models.hf` in its stored dtype: bfloat16 stays bfloat16).
    Anything else raises FileNotFoundError (`check_model_dir`)."""
    directory = check_model_dir(directory)
    if exists(directory):
        return load_base(directory)
    from r1jax.models import hf  # safetensors is only needed for HF directories

    model_config = hf.load_hf_config(str(directory))
    tok = load_tokenizer(directory, model_config)  # checked before the weights are read
    _, params = hf.load_hf(str(directory), dtype=model_config.param_dtype)
    return model_config, params, tok
