"""Model presets for `python -m r1jax.models.summary` and the experiments.

  python -m r1jax.models.summary --config=configs/model.py:deepseek_v3_671b
  python -m r1jax.models.summary --config=configs/model.py:tiny --config.num_hidden_layers=2

Presets: tiny, small_50m, deepseek_v3_671b, deepseek_v2_lite, qwen2_5_0_5b, qwen2_5_3b,
llama3_2_1b (defined in r1jax/models/presets.py).
"""

from r1jax.models import presets


def get_config(arg=None):
    return presets.get(arg or "tiny")
