"""The memory planner against the compiled GRPO update, for any model preset at reduced depth.

  python benchmarks/plan_check.py --config=configs/model.py:qwen2_5_0_5b --layers=2
  python benchmarks/plan_check.py --config=configs/model.py:deepseek_v3_671b --layers=2 \\
      --vocab=4096 --rows=16 --prompt_len=64 --new_tokens=64 --meshes="fsdp=8;data=2,fsdp=4"

For each mesh (8 simulated CPU devices unless XLA_FLAGS says otherwise), compiles the real
step (`rl.step.jit_train_step`) for abstract inputs (nothing allocated) and prints the
planner's per-device state, peak temporaries and total (`python -m r1jax.plan`'s terms)
against XLA's `memory_analysis()` (`r1jax.rl.plan_check`), with the planner's itemised terms.
`--layers` keeps the preset's widths (a V3 layer at d=7168 compiles in about a minute on CPU);
`--vocab`, `--policy` and `--remat` change what they name. CPU codegen is set cheap (LLVM -O0),
which leaves buffer assignment as it is.
"""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_backend_optimization_level=0 "
                      "--xla_llvm_disable_expensive_passes=true")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import time  # noqa: E402

from absl import flags  # noqa: E402

from r1jax import config_utils, plan  # noqa: E402
from r1jax.models import config as config_lib  # noqa: E402
from r1jax.models import summary  # noqa: E402
from r1jax.rl import plan_check  # noqa: E402

_LAYERS = flags.DEFINE_integer("layers", 2, "Decoder layers kept (MTP modules dropped); a MoE "
                               "preset keeps at least one MoE layer.")
_VOCAB = flags.DEFINE_integer("vocab", None, "Vocabulary size (default: the preset's).")
_POLICY = flags.DEFINE_enum("policy", None, list(config_lib.PRECISION_POLICIES),
                            "Precision policy (default: the preset's dtypes).")
_REMAT = flags.DEFINE_enum("remat", None, list(config_lib.REMAT_POLICIES),
                           "remat_policy (default: the preset's).")
_ROWS = flags.DEFINE_integer("rows", 16, "Completions per update.")
_PROMPT = flags.DEFINE_integer("prompt_len", 16, "Prompt width P.")
_COMPLETION = flags.DEFINE_integer("new_tokens", 16, "Completion width T.")
_MESHES = flags.DEFINE_string("meshes", "fsdp=8;data=2,fsdp=4", "';'-separated meshes.")


def reduced(model: config_lib.ModelConfig) -> config_lib.ModelConfig:
    """The preset at --layers depth (and --vocab, --policy, --remat), no MTP modules."""
    layers = _LAYERS.value
    dense = min(model.first_k_dense_replace, layers - 1) if model.is_moe else layers
    changes = {"num_hidden_layers": layers, "first_k_dense_replace": dense,
               "num_nextn_predict_layers": 0}
    if _VOCAB.value:
        changes["vocab_size"] = _VOCAB.value
    if _POLICY.value:
        changes.update(config_lib.precision(_POLICY.value))
    if _REMAT.value:
        changes["remat_policy"] = _REMAT.value
    return model.replace(**changes)


def terms(p: plan.Plan, remat: bool) -> str:
    mib = 2.0**20
    items = {"params": p.parameters, "moments": p.optimizer, "reference": p.reference,
             "grads": p.gradients + p.accumulator,
             "weight copies": p.weight_copies_remat if remat else p.weight_copies_no_remat,
             "activations": p.activations_remat if remat else p.activations_no_remat,
             "logits": p.logits}
    return "    planner: " + ", ".join(f"{k} {v / mib:.2f}" for k, v in items.items()) + " MiB"


def main(argv, config_flag):
    del argv
    model = reduced(summary.resolve_model(config_flag.value))
    remat = model.remat_policy != "none"
    step_config = plan_check.step_config(model, _ROWS.value, _COMPLETION.value)
    print(f"{model.num_hidden_layers} layers, d={model.hidden_size}, V={model.vocab_size}, "
          f"{model.attention_type}, {model.n_routed_experts} routed experts, dtype "
          f"{model.dtype} / params {model.param_dtype}, remat {model.remat_policy}; "
          f"{_ROWS.value} x ({_PROMPT.value} + {_COMPLETION.value}) tokens; planned / compiled")
    for text in filter(None, _MESHES.value.split(";")):
        mesh = plan.parse_mesh(text)
        start = time.perf_counter()
        compiled = plan_check.compiled_memory(step_config, mesh, _ROWS.value, _PROMPT.value,
                                              _COMPLETION.value)
        seconds = time.perf_counter() - start
        planned = plan_check.planned(step_config, mesh, _ROWS.value, _PROMPT.value,
                                     _COMPLETION.value)
        print(plan_check.table_row("step", mesh, planned, compiled, remat)
              + f"  (compiled in {seconds:.0f} s)")
        print(terms(planned, remat))


if __name__ == "__main__":
    _CONFIG = config_utils.define_config_file("config", "configs/model.py:qwen2_5_0_5b",
                                              "Model config file (preset).")
    config_utils.run(lambda argv: main(argv, _CONFIG))
