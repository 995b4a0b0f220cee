"""Parameter counts and KV-cache size of a model config, from shapes only (nothing allocated).

  python -m r1jax.models.summary --config=configs/model.py:deepseek_v3_671b
  python -m r1jax.models.summary --config=configs/model.py:tiny --config.num_hidden_layers=2
  python -m r1jax.models.summary --model_dir=/models/Qwen2.5-3B           # an HF directory
  python -m r1jax.models.summary --config=configs/r1_zero.py:qwen2_5_3b_countdown \
      --model_dir=/models/Qwen2.5-3B      # the experiment's model: its base + model_overrides

The model comes from a model config (`configs/model.py`), from a model directory (an HF
checkpoint: config.json + safetensors, read from the headers only; or an r1jax base directory:
model_config.json), or from an experiment config (`configs/r1_zero.py:<preset>`: its
`base_dir`, unless --model_dir names another, with its `model_overrides` applied).

Counts come from `jax.eval_shape` of `Transformer(config).init`, so they are those of the real
parameter tree. "Activated" per token (DeepSeek-V3 report, Sec. 1: 671B total, 37B activated)
counts the parameters a token's forward pass multiplies with: all of them except the routed
experts it is not sent to (each MoE layer's routed experts contribute K_r / N_r) and the input
embedding table (a lookup; with tied embeddings the table is the output head and counts). This
is the convention that reproduces both published figures: V3 671B / 37B, V2-Lite 15.7B / 2.4B.
MTP modules are excluded from the totals and reported on their own.
"""

from __future__ import annotations

import json
import os

import numpy as np
from absl import app
from flax import traverse_util

from r1jax.models import config as config_lib
from r1jax.models import layers, transformer

_ROUTED = "experts"  # moe.Experts' module name; `shared_experts` are always active.


def count_params(config: config_lib.ModelConfig) -> dict[str, int]:
    """Parameter counts by shape.

    Returns:
      dict with `total` (without MTP), `activated` (per token, without MTP and the input
      embedding lookup), `mtp` (all MTP modules), `routed_experts` (without MTP), `embedding`
      (input table + untied head),
      `kv_cache_bytes_per_token` (all layers, in `config.dtype`).
    """
    flat = traverse_util.flatten_dict(transformer.abstract_params(config))
    counts = {"total": 0, "mtp": 0, "routed_experts": 0, "embedding": 0}
    routed_active_fraction = (config.num_experts_per_tok / config.n_routed_experts
                              if config.is_moe else 1.0)
    inactive = 0.0
    for path, leaf in flat.items():
        size = int(np.prod(leaf.shape))
        if path[0].startswith("mtp_"):
            counts["mtp"] += size
            continue
        counts["total"] += size
        if path[0] in ("embed_tokens", "lm_head"):
            counts["embedding"] += size
        if path[0] == "embed_tokens" and not config.tie_word_embeddings:
            inactive += size
        if _ROUTED in path:
            counts["routed_experts"] += size
            inactive += size * (1.0 - routed_active_fraction)
    counts["activated"] = counts["total"] - round(inactive)
    counts["kv_cache_bytes_per_token"] = (config.kv_cache_values_per_token
                                          * config.num_hidden_layers
                                          * np.dtype(layers.dtype_of(config.dtype)).itemsize)
    return counts


def forward_flops(config: config_lib.ModelConfig, rows: int, length: int) -> float:
    """Model FLOPs of one forward over rows x length tokens (the MFU numerator's forward part).

    2 * activated params per token (`count_params`) plus the attention score and value
    products over the full T x T, as computed: 2 * layers * heads * T * (d_qk + d_v) per token.

    Args:
      config: the model; rows: sequences; length: T, tokens per sequence.
    Returns:
      FLOPs of the forward pass (a backward costs about twice as much).
    """
    active = count_params(config)["activated"]
    # MLA's values have their own width; GQA's share head_dim with the keys.
    v_dim = config.v_head_dim if config.attention_type == "mla" else config.head_dim
    attention = 2 * config.num_hidden_layers * config.num_attention_heads * length * (
        config.qk_head_dim + v_dim)
    return float(rows * length * (2 * active + attention))


def format_summary(config: config_lib.ModelConfig) -> str:
    c = count_params(config)
    kv = c["kv_cache_bytes_per_token"]
    rows = [
        ("total parameters (no MTP)", f"{c['total']:,}", f"{c['total'] / 1e9:.2f} B"),
        ("activated per token", f"{c['activated']:,}", f"{c['activated'] / 1e9:.2f} B"),
        ("  routed experts", f"{c['routed_experts']:,}", f"{c['routed_experts'] / 1e9:.2f} B"),
        ("  embedding + head", f"{c['embedding']:,}", f"{c['embedding'] / 1e9:.2f} B"),
        ("MTP modules", f"{c['mtp']:,}", f"{c['mtp'] / 1e9:.2f} B"),
        (f"KV cache per token ({config.dtype})", f"{kv:,} bytes", f"{kv / 2**10:.1f} KiB"),
    ]
    width = max(len(r[0]) for r in rows)
    header = (f"{config.attention_type.upper()}, {config.num_hidden_layers} layers, "
              f"d={config.hidden_size}, experts={config.n_routed_experts} "
              f"(top-{config.num_experts_per_tok})")
    return "\n".join([header] + [f"{a:<{width}}  {b:>24}  {c_:>10}" for a, b, c_ in rows])


# ---------------------------------------------------------------------------------------------
# Where the model comes from (shared with `python -m r1jax.plan`)
# ---------------------------------------------------------------------------------------------


def is_experiment_config(config) -> bool:
    """True for a GRPO experiment config (`configs/r1_zero.py`): it names a base model and
    the ModelConfig fields to override, where a model config is the fields themselves."""
    return config is not None and "base_dir" in config and "model_overrides" in config


def load_model_dir(directory: str | os.PathLike) -> config_lib.ModelConfig:
    """The ModelConfig of an HF checkpoint directory (config.json; its stored dtype, from the
    safetensors headers) or of an r1jax base directory (model_config.json); no weights read.

    Raises:
      FileNotFoundError: the directory holds neither, naming what it expected and found.
    """
    path = os.path.abspath(directory)
    if os.path.isfile(os.path.join(path, "model_config.json")):
        with open(os.path.join(path, "model_config.json")) as f:
            return config_lib.ModelConfig.from_dict(json.load(f))
    if os.path.isfile(os.path.join(path, "config.json")):
        from r1jax.models import hf  # safetensors is only needed for HF directories

        return hf.load_hf_config(path)
    found = sorted(os.listdir(path))[:8] if os.path.isdir(path) else "no such directory"
    raise FileNotFoundError(f"{directory}: expected an HF checkpoint directory (config.json + "
                            f"safetensors) or an r1jax base directory (model_config.json); "
                            f"found {found}")


def resolve_model(config, model_dir: str | None = None) -> config_lib.ModelConfig:
    """The ModelConfig that `config` (a model or experiment ConfigDict, or None) and
    `model_dir` describe (see the module docstring); an experiment's set `model_overrides`
    are applied on top of its model directory's config."""
    if is_experiment_config(config):
        model = load_model_dir(model_dir or config.base_dir)
        overrides = {k: v for k, v in dict(config.model_overrides).items() if v is not None}
        return model.replace(**overrides) if overrides else model
    if model_dir is not None:
        return load_model_dir(model_dir)
    if config is None:
        raise ValueError("give --config (a model or experiment config) or --model_dir")
    return config_lib.ModelConfig.from_dict(config)


def main(argv, config_flag, model_dir_flag):
    del argv
    if config_flag.value is None and model_dir_flag.value is None:
        raise app.UsageError("--config or --model_dir is required, e.g. "
                             "--config=configs/model.py:tiny")
    try:
        model = resolve_model(config_flag.value, model_dir_flag.value)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(format_summary(model))


if __name__ == "__main__":
    from absl import flags

    from r1jax import config_utils

    # Defined here, not at import: the trainers import this module and have --config of their own.
    _CONFIG = config_utils.define_config_file("config", None, "Model or experiment config file.")
    _MODEL_DIR = flags.DEFINE_string("model_dir", None, "HF checkpoint or r1jax base directory.")
    config_utils.run(lambda argv: main(argv, _CONFIG, _MODEL_DIR))
