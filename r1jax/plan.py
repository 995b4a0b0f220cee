"""Per-device memory plan of the GRPO update on a device mesh, from real sharded shapes.

  python -m r1jax.plan --config=configs/model.py:deepseek_v3_671b \\
      --mesh=data=1,fsdp=64,expert=8,tensor=1 --accelerator=v5p --batch=64 --seq=4096
  python -m r1jax.plan --config=configs/model.py:deepseek_v3_671b --accelerator=h100
  python -m r1jax.plan --config=configs/r1_zero.py:qwen2_5_3b_countdown \
      --model_dir=/models/Qwen2.5-3B --accelerator=h100
  python benchmarks/plan_check.py --config=configs/model.py:qwen2_5_0_5b --layers=2
      # the planner against the compiled step (`memory_analysis`), reduced depth

The model is a model config, an HF checkpoint or r1jax base directory (--model_dir), or an
experiment config's base model with its `model_overrides` (`models.summary.resolve_model`).
With an experiment config the plan uses the run's own settings unless --batch/--seq/--mesh
say otherwise: the micro-batch of one gradient computation (prompts_per_step * G /
(num_minibatches * num_micro_batches) sequences), the sequence length (data.max_prompt_len +
sampling.max_new_tokens, of which the completion is max_new_tokens), the log-prob chunk, the
model's dtypes (an HF checkpoint keeps its stored one), its remat_policy (the total that
applies is marked) and the configured mesh when it has no -1 axis.

Nothing is allocated: the parameter tree comes from `jax.eval_shape` of the model's `init`, its
logical axis names go through `sharding.RULES` onto a `jax.sharding.AbstractMesh`, and each
leaf's per-device bytes are those of `NamedSharding.shard_shape`. Without --mesh the planner
proposes the smallest power-of-two chip count (and a mesh on it) whose plan fits the
accelerator's memory with 10% headroom.

What one device holds during one update (`rl.step.jit_train_step`) on a micro-batch of B
sequences of S tokens, the last T of them the completion; n = B / (data * fsdp * expert)
sequences per device (the act_batch axes), P_dev the parameter bytes of one shard:

  state (the step's donated arguments, and its aliased outputs):
    parameters   P_dev, in param_dtype (the master weights);
    optimizer    Adam's mu and nu: 2 x the trainable shard in param_dtype (the moments follow
                 the parameters, `train.state.make_optimizer`; frozen leaves have none);
    reference    the frozen GRPO reference, sharded like the parameters: P_dev;
    inputs       the batch: n (S + T) int32 tokens, a bool mask, two float32 log-prob rows.
  temporaries at the peak, the largest of two phases:
    backward     weight copies + activations + logits + gradients (+ accumulator);
    update       gradients (+ accumulator) + the new parameters and moments, which the
                 numerical guard holds beside the old ones until its finite check selects;
  where
    gradients    one gradient tree in param_dtype, sharded like the parameters (P_dev); with
                 micro-batches a float32 accumulator beside it;
    weight copies  W: each layer's weights as the backward keeps them, i.e. the compute-dtype
                 copy (bf16 under the accelerator policy) gathered whole over fsdp: every
                 layer's when layers are unrolled without remat (the forward's gathers serve
                 the backward), SCAN_LIVE_LAYERS layers' per scanned stack, one layer's with
                 remat; plus the output head's V x d copy. None when the parameters are neither
                 cast nor sharded over fsdp (the argument is the copy);
    activations  A: what autodiff saves for the backward, traced from the model itself
                 (`jax.vjp` of `Transformer.hidden` under `jax.eval_shape`, so attention,
                 MLA, MoE dispatch and the remat policy count exactly as the code is written):
                 per layer kind, A_layer = the residual bytes of one sequence added by one more
                 layer, measured at the per-device widths (H / tensor heads, I / tensor and
                 f / tensor hidden); n x (sum over layers of A_layer + the embedding and final
                 norm's share). With remat_policy != "none" each layer keeps what its policy
                 saves (its input for "full") and one layer's full A is live while it is
                 recomputed, when the layers are scanned (scan_layers): with unrolled layers
                 the compiled step kept nearly every activation anyway (CPU, 4-layer MLA,
                 fsdp=8: 2.59 MiB of temporaries with remat, 2.70 without, 0.97 scanned), so
                 the remat figures of an unrolled model are its no-remat ones. MTP modules
                 count as one more layer of the model's kind;
    logits       the chunked log-prob pass (`rl.logprobs`, chunk C positions): two float32
                 [n, C, V / tensor] copies (the logits and their gradient) and the head
                 weight's float32 gradient [d, V / tensor] carried through the chunk loop.
  expert_parallel MoE adds its receive buffer, n_ep * min(K, N_r / n_ep) rows of d in and out
  per token and MoE layer (an estimate: the exchange is not in the traced single-device form).

The rollout holds the state plus the sampler's KV cache: config.kv_cache_values_per_token (MLA:
the latent d_c + d_h^R) per token and layer, batch-sharded; the plan's total is the larger of
the update and the rollout. `benchmarks/plan_check.py` and `tests/test_plan_memory.py` compare
these figures with XLA's own (`compile().memory_analysis()`) on simulated CPU meshes.
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
from r1jax.models import layers, residuals, summary, transformer

ACCELERATORS = {"h100": ("NVIDIA H100", 80e9), "v5p": ("TPU v5p", 95e9)}
HEADROOM = 0.9  # plan to use at most this fraction of device memory
GIB = 2**30
FROZEN = "e_score_correction_bias"  # train.state.FROZEN_PARAM_NAMES: no Adam moments


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


def _itemsize(name: str) -> int:
    return np.dtype(layers.dtype_of(name)).itemsize


def _layer_kinds(config: config_lib.ModelConfig) -> list[bool]:
    """is-MoE of every decoder layer, MTP modules included (each one more layer)."""
    kinds = [config.is_moe_layer(i) for i in range(config.num_hidden_layers)]
    return kinds + [config.is_moe] * config.num_nextn_predict_layers


def _residuals(config, mesh, seq) -> dict[bool, residuals.LayerResiduals]:
    # The traces ignore layout, remat and the EP exchange: configs that differ only there share
    # them (`layer_residuals` is cached on the config).
    dispatch = "dropless" if config.moe_dispatch == "expert_parallel" else config.moe_dispatch
    traced = config.replace(scan_layers=False, remat_policy="none", moe_dispatch=dispatch,
                            num_hidden_layers=2, first_k_dense_replace=1,
                            num_nextn_predict_layers=0)
    sliced = residuals.per_device_widths(traced, mesh.shape["tensor"])
    return {k: residuals.layer_residuals(sliced, k, seq) for k in set(_layer_kinds(config))}


def activation_bytes(config: config_lib.ModelConfig, mesh: AbstractMesh, batch: int,
                     seq: int, remat: bool) -> float:
    """Per-device activations the backward keeps: n (sum_layers A_layer + base).

    With `remat` every layer keeps its input [S, d] (remat_policy "full"; "dots" keeps more,
    not modelled) and one layer's A_layer is live while it is recomputed."""
    res = _residuals(config, mesh, seq)
    kinds = _layer_kinds(config)
    if remat:
        x = seq * config.hidden_size * _itemsize(config.dtype)
        kept = len(kinds) * x + max(res[k].activations for k in kinds)
    else:
        kept = sum(res[k].activations for k in kinds)
    n = batch / _token_shards(mesh)
    return n * (kept + res[kinds[0]].base + _exchange_per_seq(config, mesh, seq))


def _exchange_per_seq(config: config_lib.ModelConfig, mesh: AbstractMesh, seq: int) -> float:
    """expert_parallel's receive buffer per sequence, over the MoE layers (module docstring)."""
    n_ep = mesh.shape["expert"]
    if config.moe_dispatch != "expert_parallel" or n_ep == 1:
        return 0.0
    rows = n_ep * min(config.num_experts_per_tok, config.n_routed_experts // n_ep)
    moe_layers = sum(_layer_kinds(config))
    return moe_layers * seq * rows * 2 * config.hidden_size * _itemsize(config.dtype)


# Layers of a scanned stack whose weight copies are live at once during its backward: the
# iteration's own, its full-size gradient before the reduce-scatter and the next one gathered
# ahead. Measured on the compiled step (CPU, fsdp=8): 2.1, 2.4 and 3.1 layers' worth for
# stacks of 2, 4 and 8 layers; unrolled layers keep every layer's copy.
SCAN_LIVE_LAYERS = 3


def weight_copy_bytes(config: config_lib.ModelConfig, mesh: AbstractMesh, batch: int,
                      seq: int, remat: bool) -> float:
    """Per-device weight copies the backward keeps (module docstring: W)."""
    del batch  # the copies do not depend on it
    if mesh.shape["fsdp"] == 1 and config.dtype == config.param_dtype:
        return 0.0
    w = {k: r.weights for k, r in _residuals(config, mesh, seq).items()}
    if remat:
        layer_copies = max(w.values())
    elif config.scan_layers:
        dense = config.first_k_dense_replace if config.is_moe else config.num_hidden_layers
        stacks = ((dense, False), (config.num_hidden_layers - dense, True))
        layer_copies = sum(min(n, SCAN_LIVE_LAYERS) * w[k] for n, k in stacks if n)
        if config.num_nextn_predict_layers:  # MTP modules are not scanned
            layer_copies += config.num_nextn_predict_layers * w[config.is_moe]
    else:
        layer_copies = sum(w[k] for k in _layer_kinds(config))
    head = config.vocab_size * config.hidden_size / mesh.shape["tensor"]
    return layer_copies + head * _itemsize(config.dtype)


def logits_bytes(config: config_lib.ModelConfig, mesh: AbstractMesh, batch: int,
                 completion: int, chunk: int) -> float:
    """The chunked log-prob pass: 2 float32 [n, C, V / tensor] + float32 [d, V / tensor]."""
    n = batch / _token_shards(mesh)
    vocab = config.vocab_size / mesh.shape["tensor"]
    return 4 * vocab * (2 * n * min(chunk, completion) + config.hidden_size)


def input_bytes(mesh: AbstractMesh, batch: int, seq: int, completion: int) -> float:
    """The batch arrays: tokens int32 [n, S], mask bool and two float32 log-prob rows [n, T]."""
    return batch / _token_shards(mesh) * (4 * seq + 9 * completion + 8)


def kv_cache_bytes(config: config_lib.ModelConfig, mesh: AbstractMesh, batch: int,
                   seq: int) -> float:
    """Per-device rollout KV cache: batch x seq slots, every layer, batch-sharded."""
    per_token = config.kv_cache_values_per_token * config.num_hidden_layers \
        * _itemsize(config.dtype)
    if config.attention_type == "gqa":
        per_token /= min(mesh.shape["tensor"], config.num_key_value_heads)
    return batch * seq / _token_shards(mesh) * per_token


# ---------------------------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    """Per-device bytes by component, for one mesh (module docstring)."""

    mesh: dict[str, int]
    parameters: float
    optimizer: float
    reference: float
    inputs: float
    gradients: float
    accumulator: float
    weight_copies_remat: float
    weight_copies_no_remat: float
    activations_remat: float
    activations_no_remat: float
    logits: float
    kv_cache: float
    replicated: tuple[ParamShard, ...]
    ideal_parameters: float  # the parameter bytes divided evenly over every chip

    @property
    def chips(self) -> int:
        return int(np.prod(list(self.mesh.values())))

    @property
    def state(self) -> float:
        """The step's arguments (aliased by its outputs)."""
        return self.parameters + self.optimizer + self.reference + self.inputs

    def temporaries(self, remat: bool = True) -> float:
        """Peak temporaries: the larger of the backward and the update phase."""
        weights = self.weight_copies_remat if remat else self.weight_copies_no_remat
        act = self.activations_remat if remat else self.activations_no_remat
        grads = self.gradients + self.accumulator
        return grads + max(weights + act + self.logits, self.parameters + self.optimizer)

    def step_total(self, remat: bool = True) -> float:
        """What the compiled update holds: state + peak temporaries."""
        return self.state + self.temporaries(remat)

    def total(self, remat: bool = True) -> float:
        """The larger of the update and the rollout (state + KV cache)."""
        return max(self.step_total(remat), self.state + self.kv_cache)


def make_plan(config: config_lib.ModelConfig, mesh_shape: Mapping[str, int], batch: int,
              seq: int, boxed=None, replicated_threshold: float = 2**24, *,
              completion: int | None = None, logps_chunk: int = 512,
              micro_batches: int = 1) -> Plan:
    """The per-device plan on `mesh_shape`; `boxed` (from `boxed_params`) may be reused.

    Args:
      batch, seq: B sequences of S tokens per gradient computation (one micro-batch).
      completion: T, the completion tokens of each sequence (default S: the upper bound).
      logps_chunk: C, GRPOConfig.logps_chunk_size.
      micro_batches: GRPOConfig.num_micro_batches (> 1 adds the float32 accumulator).
    `replicated` lists parameters of more than `replicated_threshold` bytes that no mesh axis
    shards (every device holds all of it) when the mesh has more than one device."""
    mesh = abstract_mesh(mesh_shape)
    completion = seq if completion is None else completion
    shards = param_shards(boxed_params(config) if boxed is None else boxed, mesh)
    params = sum(p.elements * p.itemsize for p in shards)
    trainable = sum(p.elements * p.itemsize for p in shards
                    if not p.path.endswith(f"'{FROZEN}']"))
    replicated = tuple(p for p in shards if mesh.size > 1 and p.elements == p.global_elements
                       and p.elements * p.itemsize > replicated_threshold)
    accumulator = 4.0 * sum(p.elements for p in shards) if micro_batches > 1 else 0.0
    return Plan(
        dict(zip(sharding.MESH_AXES, mesh.axis_sizes)), params, 2.0 * trainable, params,
        input_bytes(mesh, batch, seq, completion), params, accumulator,
        weight_copy_bytes(config, mesh, batch, seq, config.scan_layers),
        weight_copy_bytes(config, mesh, batch, seq, False),
        activation_bytes(config, mesh, batch, seq, config.scan_layers),
        activation_bytes(config, mesh, batch, seq, False),
        logits_bytes(config, mesh, batch, completion, logps_chunk),
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
            max_chips: int = 8192, **options) -> Plan | None:
    """The smallest power-of-two chip count with a mesh whose plan (with remat) fits
    HEADROOM * memory; among those meshes the one using the least memory. None if none fits.
    `options` go to `make_plan` (completion, logps_chunk, micro_batches)."""
    boxed = boxed_params(config)
    chips = 1
    while chips <= max_chips:
        plans = [make_plan(config, m, batch, seq, boxed, **options)
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
    rows = [("parameters (master weights)", plan.parameters),
            ("  (evenly over all chips it would be)", plan.ideal_parameters),
            (f"optimizer (Adam mu, nu in {config.param_dtype})", plan.optimizer),
            ("reference model", plan.reference), ("batch inputs", plan.inputs),
            ("gradients", plan.gradients), ("gradient accumulator (float32)", plan.accumulator),
            ("weight copies, remat", plan.weight_copies_remat),
            ("weight copies, no remat", plan.weight_copies_no_remat),
            ("activations, remat", plan.activations_remat),
            ("activations, no remat", plan.activations_no_remat),
            ("logits (chunked log-probs)", plan.logits),
            ("update step, with remat", plan.step_total(True)),
            ("update step, without remat", plan.step_total(False)),
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
    if not config.scan_layers:
        lines.append("  (unrolled layers: remat saves nothing the compiled step shows; the remat "
                     "figures need scan_layers=True)")
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
    completion: int | None = None   # completion tokens per sequence (None: all of seq)
    logps_chunk: int = 512          # GRPOConfig.logps_chunk_size
    micro_batches: int = 1          # GRPOConfig.num_micro_batches

    @property
    def plan_options(self) -> dict:
        """The keyword arguments of `make_plan` these settings fix."""
        return {"completion": self.completion, "logps_chunk": self.logps_chunk,
                "micro_batches": self.micro_batches}


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
                       f"{model.remat_policy}", s.max_new_tokens, g.logps_chunk_size,
                       g.num_micro_batches)


def with_flags(settings: RunSettings, batch: int | None, seq: int | None,
               mesh: str | None) -> RunSettings:
    """`settings` with the command line's explicit --batch, --seq and --mesh applied."""
    changes = {k: v for k, v in (("batch", batch), ("seq", seq)) if v is not None}
    if seq is not None and settings.completion is not None and settings.completion > seq:
        changes["completion"] = None
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
                         replicated_threshold=_THRESHOLD.value * 2**20, **settings.plan_options)
    else:
        plan = propose(config, ACCELERATORS[acc][1], batch, seq, **settings.plan_options)
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
