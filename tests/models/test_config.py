"""ModelConfig: presets validate, bad values raise ValueError naming the field."""

import pytest

from r1jax.models import config as config_lib
from r1jax.models import presets

BAD = [
    ("attention_type", {"attention_type": "mqa"}),
    ("rope_type", {"rope_type": "ntk"}),
    ("mla_decode", {"mla_decode": "fast"}),
    ("remat_policy", {"remat_policy": "some"}),
    ("dtype", {"dtype": "int8"}),
    ("hidden_size", {"hidden_size": 0}),
    ("kv_lora_rank", {"kv_lora_rank": 0}),
    ("q_lora_rank", {"q_lora_rank": -1}),
    ("qk_rope_head_dim", {"qk_rope_head_dim": 7}),
    ("head_dim", {"attention_type": "gqa", "head_dim": 9}),
    ("num_key_value_heads", {"attention_type": "gqa", "num_attention_heads": 4,
                             "num_key_value_heads": 3}),
    ("rope_factor", {"rope_type": "yarn", "rope_factor": 0.5}),
    ("num_experts_per_tok", {"n_routed_experts": 4, "num_experts_per_tok": 5}),
    ("n_group", {"n_routed_experts": 6, "n_group": 4}),
    ("topk_group", {"n_routed_experts": 8, "n_group": 2, "topk_group": 3}),
    ("first_k_dense_replace", {"first_k_dense_replace": 9}),
    ("num_nextn_predict_layers", {"num_nextn_predict_layers": -1}),
]


@pytest.mark.parametrize("field,changes", BAD, ids=[b[0] for b in BAD])
def test_bad_value_names_the_field(field, changes):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}\b"):
        config_lib.ModelConfig(**changes)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="kv_lora"):
        config_lib.ModelConfig.from_dict({"kv_lora": 3})


@pytest.mark.parametrize("name", sorted(presets.PRESETS))
def test_presets_build(name):
    config = config_lib.ModelConfig.from_dict(presets.get(name))
    assert hash(config) == hash(config_lib.ModelConfig.from_dict(config.to_dict()))


def test_derived_quantities():
    v3 = config_lib.ModelConfig.from_dict(presets.deepseek_v3_671b())
    assert v3.qk_head_dim == 192 and v3.rope_dim == 64
    assert v3.kv_cache_values_per_token == 512 + 64
    assert [v3.is_moe_layer(i) for i in (0, 2, 3, 60)] == [False, False, True, True]
    qwen = config_lib.ModelConfig.from_dict(presets.qwen2_5_0_5b())
    assert qwen.kv_cache_values_per_token == 2 * 2 * 64 and not qwen.is_moe_layer(5)
