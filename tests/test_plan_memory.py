"""The memory planner against the compiled GRPO update (issue 21), 8 simulated CPU devices.

For three reduced configs (a dense GQA model in the accelerator precision policy, a dense MLA
model in float32, a DeepSeek-V3-shaped MLA + MoE model with a dense prefix, grouped routing
and a shared expert, in the accelerator policy), on two meshes (fsdp=8; data=2 x fsdp=4), the
real step (`rl.step.jit_train_step`: its shardings and donation) is compiled for abstract
inputs and XLA's per-device figures (`memory_analysis`) are compared with the planner's:
the state (params, moments, reference, batch) to 1%, and the peak temporaries and the total
to 15%. Each config's two compiles take 20-80 s on 2 CPU cores (the MoE model's most), hence
`slow`.
"""

import pytest

from r1jax.models import config as config_lib
from r1jax.models import presets
from r1jax.rl import plan_check

BATCH, PROMPT, COMPLETION = 16, 16, 16  # two 32-token sequences per device on both meshes
MESHES = ({"fsdp": 8}, {"data": 2, "fsdp": 4})


def _gqa():
    values = presets.qwen2_5_0_5b().to_dict()
    values.update(vocab_size=512, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                  max_position_embeddings=512, scan_layers=True,
                  **config_lib.precision("accelerator"))
    return config_lib.ModelConfig.from_dict(values)


def _mla(**changes):
    values = presets.deepseek_v3_671b().to_dict()
    values.update(vocab_size=512, hidden_size=64, num_hidden_layers=2, first_k_dense_replace=2,
                  intermediate_size=128, num_attention_heads=4, q_lora_rank=32, kv_lora_rank=32,
                  qk_nope_head_dim=16, qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8,
                  n_group=4, topk_group=2, num_experts_per_tok=2, moe_intermediate_size=32,
                  num_nextn_predict_layers=0, max_position_embeddings=512,
                  original_max_position_embeddings=512, scan_layers=True,
                  **config_lib.precision("float32"))
    values.update(changes)
    return config_lib.ModelConfig(**values)


CONFIGS = {
    "gqa": _gqa,
    "mla": _mla,
    "v3_moe": lambda: _mla(first_k_dense_replace=1, **config_lib.precision("accelerator")),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_planner_agrees_with_the_compiled_train_step(name):
    model = CONFIGS[name]()
    step_config = plan_check.step_config(model, BATCH, COMPLETION)
    rows, failures = [], []
    for mesh in MESHES:
        compiled = plan_check.compiled_memory(step_config, mesh, BATCH, PROMPT, COMPLETION)
        plan = plan_check.planned(step_config, mesh, BATCH, PROMPT, COMPLETION)
        rows.append(plan_check.table_row(name, mesh, plan, compiled, remat=False))
        checks = ((plan.state, compiled.arguments, 0.01, "state"),
                  (plan.temporaries(False), compiled.temporaries, 0.15, "temporaries"),
                  (plan.step_total(False), compiled.total, 0.15, "total"))
        failures += [f"{mesh} {what}: planned {p:.0f} B, compiled {c:.0f} B"
                     for p, c, tol, what in checks if abs(p - c) > tol * c]
    print("\n" + "\n".join(rows))
    assert not failures, "\n".join(rows + failures)
