"""Export of a GRPO run's policy as a Hugging Face checkpoint directory.

    export.export_run("runs/r1_zero_qwen", "exports/qwen-r1-zero", dtype="bfloat16")

The directory holds what `transformers.AutoModelForCausalLM` / `AutoTokenizer` read:
config.json (with bos/eos/pad token ids), model.safetensors (or shards + index), the base
model's tokenizer files (tokenizer.json and tokenizer_config.json for an HF base;
tokenizer.model, the SentencePiece model, for the toy base) and generation_config.json (the
run's evaluation sampling settings). It is written atomically and marked as r1jax's
(`models.hf.save_hf`); an existing directory is replaced only with `overwrite` and only when an
earlier export wrote it.
"""

from __future__ import annotations

import os
import pathlib

import jax

from r1jax.models import config as config_lib
from r1jax.models import hf
from r1jax.rl import runs
from r1jax.train import base


def token_ids(tok) -> dict[str, int | None]:
    """The special token ids an HF config carries (bos None for tokenizers without one)."""
    return {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id, "pad_token_id": tok.pad_id}


def export_run(run_dir: str | os.PathLike, output: str | os.PathLike, *, step: int | None = None,
               dtype: str | None = None, overwrite: bool = False) -> pathlib.Path:
    """Writes the policy of `run_dir` at `step` (default: the newest) as an HF directory.

    Args:
      run_dir: an R1-Zero / GRPO run directory (relative paths are resolved).
      output: the HF directory to write.
      step: the checkpoint step; None: the newest.
      dtype: the exported weights' dtype ("bfloat16", "float32", ...); None keeps the
        params' own (an HF base in bfloat16 trains and exports in bfloat16).
      overwrite: replace an existing export (only one that r1jax wrote).
    Returns:
      The absolute output directory.
    """
    output = pathlib.Path(output).absolute()
    model = runs.load_run(pathlib.Path(run_dir).absolute(), step)
    params, model_config = jax.device_get(model.params), model.config
    if dtype is not None:
        if dtype not in config_lib.DTYPES:
            raise ValueError(f"--dtype={dtype!r}: must be one of {config_lib.DTYPES}")
        params = base.cast_params(params, dtype)
        model_config = model_config.replace(dtype=dtype, param_dtype=dtype)
    ids = token_ids(model.tokenizer)
    generation = dict(ids, do_sample=True, temperature=model.run.eval.temperature,
                      top_p=model.run.eval.top_p,
                      max_new_tokens=model.run.eval.max_new_tokens
                      or model.run.sampling.max_new_tokens)
    hf.save_hf(model_config, params, str(output), overwrite=overwrite,
               generation_config={k: v for k, v in generation.items() if v is not None},
               config_extra=ids, files=base.tokenizer_files(model.run.base_dir))
    return output
