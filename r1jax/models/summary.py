"""Parameter counts and KV-cache size of a model config, from shapes only (nothing allocated).

  python -m r1jax.models.summary --config=configs/model.py:deepseek_v3_671b
  python -m r1jax.models.summary --config=configs/model.py:tiny --config.num_hidden_layers=2

Counts come from `jax.eval_shape` of `Transformer(config).init`, so they are those of the real
parameter tree. "Activated" per token (DeepSeek-V3 report, Sec. 1: 671B total, 37B activated)
counts the parameters a token's forward pass multiplies with: all of them except the routed
experts it is not sent to (each MoE layer's routed experts contribute K_r / N_r) and the input
embedding table (a lookup; with tied embeddings the table is the output head and counts). This
is the convention that reproduces both published figures: V3 671B / 37B, V2-Lite 15.7B / 2.4B.
MTP modules are excluded from the totals and reported on their own.
"""

from __future__ import annotations

import numpy as np
from absl import app
from flax import traverse_util
from ml_collections import config_flags

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


def main(argv, config_flag):
    del argv
    if config_flag.value is None:
        raise app.UsageError("--config is required, e.g. --config=configs/model.py:tiny")
    print(format_summary(config_lib.ModelConfig.from_dict(config_flag.value)))


if __name__ == "__main__":
    # Defined here, not at import: the trainers import this module and have --config of their own.
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Model config file (preset).")
    app.run(lambda argv: main(argv, _CONFIG))
