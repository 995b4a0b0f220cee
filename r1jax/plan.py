"""Per-device memory plan of GRPO training on a device mesh, from real sharded shapes.

  python -m r1jax.plan --config=configs/model.py:deepseek_v3_671b \\
      --mesh=data=1,fsdp=64,expert=8,tensor=1 --accelerator=v5p --batch=64 --seq=4096
  python -m r1jax.plan --config=configs/model.py:deepseek_v3_671b --accelerator=h100
  python -m r1jax.plan --config=configs/r1_zero.py:qwen2_5_3b_countdown \
      --model_dir=/models/Qwen2.5-3B --accelerator=h100

The model is a model config, an HF checkpoint or r1jax base directory (--model_dir), or an
experiment config's base model with its `model_overrides` (`models.summary.resolve_model`).
With an experiment config the plan uses the run's own settings unless --batch/--seq/--mesh
say otherwise: the micro-batch of one gradient computation (prompts_per_step * G /
(num_minibatches * num_micro_batches) sequences), the sequence length (data.max_prompt_len +
sampling.max_new_tokens), the model's dtype (an HF checkpoint keeps its stored one), its
remat_policy (the total that applies is marked) and the configured mesh when it has no -1 axis.

Nothing is allocated: the parameter tree comes from `jax.eval_shape` of the model's `init`, its
logical axis names go through `sharding.RULES` onto a `jax.sharding.AbstractMesh`, and each
leaf's per-device bytes are those of `NamedSharding.shard_shape`. Without --mesh the planner
proposes the smallest power-of-two chip count (and a mesh on it) whose plan fits the
accelerator's memory with 10% headroom.

Per device, for one optimizer update on a micro-batch of --batch sequences of --seq tokens:
  parameters  the sharded parameter tree in param_dtype;
  optimizer   AdamW's two moments in float32 (8 bytes per parameter element; the trainer keeps
              them in param_dtype, so this is the conservative figure), sharded like the params;
  reference   the frozen GRPO reference model, sharded like the params;
  gradients   one gradient tree in param_dtype, sharded like the params;
  activations saved for the backward pass, estimated from shapes (below);
  KV cache    the rollout cache, --batch sequences of --seq slots: config.kv_cache_values_per_token
              (MLA: the latent d_c + d_h^R) per token and layer, batch-sharded.

Activation formula. Tokens per device n = batch * seq / (data * fsdp * expert) (the act_batch
axes); widths over heads, MLP hidden and vocabulary divide by `tensor`. Per token, in the
activation dtype (b bytes), a layer keeps:
  attention (MLA)  2d (residual, norm) + 2 d_c' (query latent, normed) + (d_c + d_h^R)
                   + d_c (normed latent) + (3 H d_qk + 2 H d_v) / tensor (q, k, roped q;
                   v, output; d_qk = d_h + d_h^R) + 2 H S float32 / tensor (scores and
                   probabilities, S = seq) + d (projection);
  attention (GQA)  2d + (H + 2 H_kv) d_h / tensor + 2 H S float32 / tensor + H d_h / tensor + d;
  dense MLP        2d + 3 I / tensor + d;
  MoE              2d + 2 N_r float32 (logits, scores) + R (2d + 3 f / tensor) for the routed
                   rows + 3 N_s f / tensor + d, with R = K_r rows per token (dropless) or
                   n_ep K_r (expert_parallel: the worst-case exchange buffer, see models/moe.py);
  head             2 V float32 / tensor (logits, log-softmax), once.
Without rematerialisation every layer (MTP modules included) keeps all of it. With full
rematerialisation (remat_policy="full") a layer keeps only its input (d per token) and one
layer's activations are live at a time during its recomputation.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections.abc import Mapping

import flax.linen as nn
import jax
import numpy as np
from absl import app, flags
from jax.sharding import AbstractMesh, AxisType, NamedSharding

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import layers, summary, transformer

ACCELERATORS = {"h100": ("NVIDIA H100", 80e9), "v5p": ("TPU v5p", 95e9)}
HEADROOM = 0.9  # plan to use at most this fraction of device memory
GIB = 2**30


def parse_mesh(text: str) -> dict[str, int]:
    """"data=1,fsdp=64,expert=8,tensor=1" -> {axis: size}; unknown axes are an error."""
    shape = {}
    for item in filter(None, text.split(",")):
        name, _, size = item.partition("=")
        if name.strip() not in sharding.MESH_AXES or not size.strip().lstrip("-").isdigit():
            raise ValueError(f"--mesh item {item!r}: expected AXIS=SIZE with AXIS in "
                             f"{sharding.MESH_AXES}")
        shape[name.strip()] = int(size)
    return shape


def abstract_mesh(shape: Mapping[str, int]) -> AbstractMesh:
    """An AbstractMesh over the four axes (missing ones are 1); no devices needed."""
    sizes = tuple(int(shape.get(a, 1)) for a in sharding.MESH_AXES)
    return AbstractMesh(sizes, sharding.MESH_AXES, axis_types=(AxisType.Auto,) * len(sizes))


def boxed_params(config: config_lib.ModelConfig):
    """The parameter tree as ShapeDtypeStructs still boxed with their logical axis names."""
    return jax.eval_shape(lambda: transformer.Transformer(config).init(
        jax.random.key(0), np.zeros((1, 1), np.int32))["params"])


@dataclasses.dataclass(frozen=True)
class ParamShard:
    path: str
    shape: tuple[int, ...]
    spec: jax.sharding.PartitionSpec
    elements: int          # per device
    global_elements: int
    itemsize: int


def param_shards(boxed, mesh: AbstractMesh) -> list[ParamShard]:
    """Every parameter leaf with its per-device shard under the logical rules on `mesh`."""
    specs = nn.logical_to_mesh(nn.get_partition_spec(boxed), sharding.RULES)
    leaves = jax.tree_util.tree_leaves_with_path(nn.unbox(boxed))
    out = []
    for (path, leaf), spec in zip(leaves, jax.tree.leaves(
            specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))):
        shard = NamedSharding(mesh, spec).shard_shape(leaf.shape)
        out.append(ParamShard(jax.tree_util.keystr(path), leaf.shape, spec,
                              int(np.prod(shard)), int(np.prod(leaf.shape)),
                              np.dtype(leaf.dtype).itemsize))
    return out


def _token_shards(mesh: AbstractMesh) -> int:
    axes = sharding.logical_to_spec(("act_batch",))[0]
    return int(np.prod([mesh.shape[a] for a in axes]))


def layer_bytes_per_token(config: config_lib.ModelConfig, mesh: AbstractMesh, seq: int,
                          is_moe: bool) -> float:
    """Bytes one decoder layer keeps per token for the backward pass (module docstring)."""
    c, tp = config, mesh.shape["tensor"]
    b = np.dtype(layers.dtype_of(c.dtype)).itemsize
    d, h = c.hidden_size, c.num_attention_heads
    scores = 2 * h * seq * 4 / tp
    if c.attention_type == "mla":
        q_lora = 2 * (c.q_lora_rank or 0)
        attn = (2 * d + q_lora + c.kv_cache_values_per_token + c.kv_lora_rank
                + (3 * h * c.qk_head_dim + 2 * h * c.v_head_dim) / tp + d) * b + scores
    else:
        heads = (h + 2 * c.num_key_value_heads) * c.head_dim + h * c.head_dim
        attn = (2 * d + heads / tp + d) * b + scores
    if not is_moe:
        return attn + (3 * d + 3 * c.intermediate_size / tp) * b
    n_ep = mesh.shape["expert"] if c.moe_dispatch == "expert_parallel" else 1
    rows = n_ep * c.num_experts_per_tok
    f = c.moe_intermediate_size
    routed = rows * (2 * d + 3 * f / tp) * b
    shared = 3 * c.n_shared_experts * f / tp * b
    return attn + (3 * d) * b + 2 * c.n_routed_experts * 4 + routed + shared


def activation_bytes(config: config_lib.ModelConfig, mesh: AbstractMesh, batch: int,
                     seq: int, remat: bool) -> float:
    """Per-device activation bytes of one forward + backward (module docstring formula)."""
    tokens = batch * seq / _token_shards(mesh)
    kinds = [config.is_moe_layer(i) for i in range(config.num_hidden_layers)]
    kinds += [config.is_moe] * config.num_nextn_predict_layers
    per_layer = [layer_bytes_per_token(config, mesh, seq, k) for k in kinds]
    head = 2 * config.vocab_size * 4 / mesh.shape["tensor"]
    if remat:
        b = np.dtype(layers.dtype_of(config.dtype)).itemsize
        kept = len(kinds) * config.hidden_size * b + max(per_layer)
    else:
        kept = sum(per_layer)
    return tokens * (kept + head)


def kv_cache_bytes(config: config_lib.ModelConfig, mesh: AbstractMesh, batch: int,
                   seq: int) -> float:
    """Per-device rollout KV cache: batch x seq slots, every layer, batch-sharded."""
    b = np.dtype(layers.dtype_of(config.dtype)).itemsize
    per_token = config.kv_cache_values_per_token * config.num_hidden_layers * b
    if config.attention_type == "gqa":
        per_token /= min(mesh.shape["tensor"], config.num_key_value_heads)
    return batch * seq / _token_shards(mesh) * per_token


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-device bytes by component, for one mesh."""

    mesh: dict[str, int]
    parameters: float
    optimizer: float
    reference: float
    gradients: float
    activations_remat: float
    activations_no_remat: float
    kv_cache: float
    replicated: tuple[ParamShard, ...]
    ideal_parameters: float  # the parameter bytes divided evenly over every chip

    @property
    def chips(self) -> int:
        return int(np.prod(list(self.mesh.values())))

    def total(self, remat: bool = True) -> float:
        states = self.parameters + self.optimizer + self.reference + self.gradients
        act = self.activations_remat if remat else self.activations_no_remat
        return states + act + self.kv_cache


def make_plan(config: config_lib.ModelConfig, mesh_shape: Mapping[str, int], batch: int,
              seq: int, boxed=None, replicated_threshold: float = 2**24) -> Plan:
    """The per-device plan on `mesh_shape`; `boxed` (from `boxed_params`) may be reused.

    `replicated` lists parameters of more than `replicated_threshold` bytes that no mesh axis
    shards (every device holds all of it) when the mesh has more than one device."""
    mesh = abstract_mesh(mesh_shape)
    shards = param_shards(boxed_params(config) if boxed is None else boxed, mesh)
    params = sum(p.elements * p.itemsize for p in shards)
    elements = sum(p.elements for p in shards)
    replicated = tuple(p for p in shards if mesh.size > 1 and p.elements == p.global_elements
                       and p.elements * p.itemsize > replicated_threshold)
    return Plan(dict(zip(sharding.MESH_AXES, mesh.axis_sizes)), params, 8.0 * elements,
                params, params, activation_bytes(config, mesh, batch, seq, True),
                activation_bytes(config, mesh, batch, seq, False),
                kv_cache_bytes(config, mesh, batch, seq), replicated,
                sum(p.global_elements * p.itemsize for p in shards) / mesh.size)


def candidate_meshes(config: config_lib.ModelConfig, chips: int, batch: int):
    """Meshes of `chips` devices: expert a power of two dividing N_r, tensor <= 8, fsdp the
    rest, data 1; the act_batch shards must divide the batch (whole sequences per device)."""
    experts = config.n_routed_experts if config.is_moe else 1
    for expert, tensor in itertools.product([2**i for i in range(8)], (1, 2, 4, 8)):
        if experts % expert or chips % (expert * tensor):
            continue
        fsdp = chips // (expert * tensor)
        if batch % (fsdp * expert) == 0:
            yield {"data": 1, "fsdp": fsdp, "expert": expert, "tensor": tensor}


def propose(config: config_lib.ModelConfig, memory: float, batch: int, seq: int,
            max_chips: int = 8192) -> Plan | None:
    """The smallest power-of-two chip count with a mesh whose plan (with remat) fits
    HEADROOM * memory; among those meshes the one using the least memory. None if none fits."""
    boxed = boxed_params(config)
    chips = 1
    while chips <= max_chips:
        plans = [make_plan(config, m, batch, seq, boxed)
                 for m in candidate_meshes(config, chips, batch)]
        fitting = [p for p in plans if p.total() <= HEADROOM * memory]
        if fitting:
            return min(fitting, key=lambda p: p.total())
        chips *= 2
    return None


def format_report(config: config_lib.ModelConfig, plan: Plan, accelerator: str, batch: int,
                  seq: int, remat: bool | None = None) -> str:
    """The plan as text: per-device GiB by component, fit, replicated parameters; `remat`
    (the run's setting, when known) marks the total that applies."""
    name, memory = ACCELERATORS[accelerator]
    mesh = ",".join(f"{k}={v}" for k, v in plan.mesh.items())
    rows = [("parameters", plan.parameters),
            ("  (evenly over all chips it would be)", plan.ideal_parameters),
            ("optimizer (AdamW, 2 x float32)", plan.optimizer), ("reference model", plan.reference), ("gradients", plan.gradients),
            ("activations, full remat", plan.activations_remat),
            ("activations, no remat", plan.activations_no_remat),
            (f"rollout KV cache ({batch} x {seq} tokens)", plan.kv_cache),
            ("total with remat", plan.total(True)), ("total without remat", plan.total(False))]
    lines = [f"{config.num_hidden_layers} layers, d={config.hidden_size}, "
             f"{config.n_routed_experts} routed experts, moe_dispatch={config.moe_dispatch}; "
             f"micro-batch {batch} x {seq} tokens",
             f"mesh {mesh}: {plan.chips} chips of {name} ({memory / 1e9:.0f} GB, planning "
             f"with {HEADROOM:.0%})", "per device:"]
    lines += [f"  {label:<36} {value / GIB:10.2f} GiB" for label, value in rows]
    for with_remat in (True, False):
        fits = plan.total(with_remat) <= HEADROOM * memory
        mark = " (the run's remat_policy)" if remat == with_remat else ""
        lines.append(f"  {'fits' if fits else 'does NOT fit'} {name} "
                     f"{'with' if with_remat else 'without'} rematerialisation{mark}")
    if plan.replicated:
        lines.append("WARNING: parameters over the size threshold replicated on every device:")
        lines += [f"  {path} {shape} x{n}: {each / GIB:.3f} GiB each, {n * each / GIB:.2f} GiB "
                  "per device in all" for (path, shape), (n, each) in _grouped(plan.replicated)]
    else:
        lines.append("no parameter over the size threshold is replicated")
    return "\n".join(lines)


def _grouped(shards) -> list[tuple[tuple[str, tuple], tuple[int, int]]]:
    """Leaves that differ only in their layer index, grouped: ((path, shape), (count, bytes))."""
    groups: dict[tuple[str, tuple], list[int]] = {}
    for p in shards:
        key = (re.sub(r"'(layers|mtp)_\d+'", r"'\1_*'", p.path), p.shape)
        groups.setdefault(key, []).append(p.elements * p.itemsize)
    return [(k, (len(v), v[0])) for k, v in groups.items()]


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RunSettings:
    """What one gradient computation of a run looks like to the planner."""

    batch: int                      # sequences per micro-batch
    seq: int                        # tokens per sequence
    remat: bool | None              # the model's remat_policy != "none" (None: not known)
    mesh: dict[str, int] | None     # a fixed mesh, or None to propose one
    source: str                     # where the numbers came from, for the report


DEFAULT_SETTINGS = RunSettings(512, 4096, None, None, "defaults (--batch, --seq)")


def experiment_settings(config, model: config_lib.ModelConfig) -> RunSettings:
    """The run settings of an experiment ConfigDict (`configs/r1_zero.py`) and its model."""
    g, d, s = config.grpo, config.data, config.sampling
    rows = g.prompts_per_step * g.group_size
    batch = rows // (g.num_minibatches * g.num_micro_batches)
    mesh = {a: int(n) for a, n in dict(config.mesh).items() if n is not None}
    fixed = mesh if -1 not in mesh.values() else None
    return RunSettings(batch, d.max_prompt_len + s.max_new_tokens, model.remat_policy != "none",
                       fixed, f"the experiment config: {g.prompts_per_step} prompts x G "
                       f"{g.group_size} / ({g.num_minibatches} minibatches x "
                       f"{g.num_micro_batches} micro-batches), {d.max_prompt_len} prompt + "
                       f"{s.max_new_tokens} new tokens, dtype {model.dtype}, remat_policy "
                       f"{model.remat_policy}")


def with_flags(settings: RunSettings, batch: int | None, seq: int | None,
               mesh: str | None) -> RunSettings:
    """`settings` with the command line's explicit --batch, --seq and --mesh applied."""
    changes = {k: v for k, v in (("batch", batch), ("seq", seq)) if v is not None}
    if mesh:
        changes["mesh"] = parse_mesh(mesh)
    return dataclasses.replace(settings, **changes)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------

_MODEL_DIR = flags.DEFINE_string("model_dir", None, "HF checkpoint or r1jax base directory "
                                 "(default: the experiment config's base_dir).")
_MESH = flags.DEFINE_string("mesh", None, "data=..,fsdp=..,expert=..,tensor=..; "
                            "default: the experiment's fixed mesh, else propose one")
_ACCELERATOR = flags.DEFINE_enum("accelerator", "v5p", list(ACCELERATORS), "Device type.")
_BATCH = flags.DEFINE_integer("batch", None, "Sequences per forward/backward (micro-batch); "
                              "default: the experiment's, else 512 (R1-Zero: 32 x 16).")
_SEQ = flags.DEFINE_integer("seq", None, "Tokens per sequence (prompt + completion); "
                            "default: the experiment's, else 4096.")
_THRESHOLD = flags.DEFINE_float("replicated_threshold_mb", 16.0,
                                "Flag replicated parameters larger than this (MiB).")


def main(argv, config_flag):
    del argv
    try:
        config = summary.resolve_model(config_flag.value, _MODEL_DIR.value)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    experiment = summary.is_experiment_config(config_flag.value)
    settings = experiment_settings(config_flag.value, config) if experiment else DEFAULT_SETTINGS
    settings = with_flags(settings, _BATCH.value, _SEQ.value, _MESH.value)
    acc, batch, seq = _ACCELERATOR.value, settings.batch, settings.seq
    if experiment:
        print(f"micro-batch {batch} x {seq} tokens from {settings.source}")
    if settings.mesh:
        plan = make_plan(config, settings.mesh, batch, seq,
                         replicated_threshold=_THRESHOLD.value * 2**20)
    else:
        plan = propose(config, ACCELERATORS[acc][1], batch, seq)
        if plan is None:
            raise app.UsageError(f"no mesh of up to 8192 chips fits {ACCELERATORS[acc][0]}")
        print(f"proposed: {plan.chips} chips")
    print(format_report(config, plan, acc, batch, seq, remat=settings.remat))


if __name__ == "__main__":
    from r1jax import config_utils

    # Defined here, not at import: tests import this module.
    _CONFIG = config_utils.define_config_file("config", "configs/model.py:deepseek_v3_671b",
                                              "Model or experiment config file (preset).")
    config_utils.run(lambda argv: main(argv, _CONFIG))
