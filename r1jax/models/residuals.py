"""What autodiff saves for the backward of the model, traced, never allocated.

A decoder layer's memory in training is mostly its residuals: the values the forward keeps
for the backward. Rather than a hand count that drifts from the code (attention form, MLA
latents, MoE dispatch buffers, precision casts), they are read from JAX itself: the leaves of
the backward function `jax.vjp` returns, under `jax.eval_shape`, so any model size traces in
seconds with nothing allocated. The memory planner (`r1jax.plan`) builds on these figures;
`r1jax.rl.plan_check` compares the result with the compiled GRPO step.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import numpy as np

from r1jax.models import config as config_lib
from r1jax.models import layers, transformer


def _itemsize(name: str) -> int:
    return np.dtype(layers.dtype_of(name)).itemsize




def residual_bytes(config: config_lib.ModelConfig, seqs: int, seq: int) -> tuple[int, int]:
    """Bytes autodiff saves for the backward of `Transformer.hidden` on [seqs, seq] tokens,
    and the model's parameter count.

    The residuals are the leaves of `jax.vjp`'s backward function, traced under
    `jax.eval_shape` (nothing allocated); a value saved twice (e.g. a mask every layer reads)
    counts once. They include the weights the backward reads (the parameters themselves, or
    their compute-dtype copies).
    """
    model = transformer.Transformer(config)

    def residuals(tokens_bs, mask_bs):
        params = model.init(jax.random.key(0), tokens_bs[:1, :1])["params"]

        def hidden_sum(p):
            h_bsd = model.apply({"params": p}, tokens_bs, tokens_bs, mask_bs,
                                method=transformer.Transformer.hidden)
            return h_bsd.astype(np.float32).sum()

        _, backward = jax.vjp(hidden_sum, params)
        return list({id(x): x for x in jax.tree.leaves(backward)}.values()), params

    saved, params = jax.eval_shape(residuals, jax.ShapeDtypeStruct((seqs, seq), np.int32),
                                   jax.ShapeDtypeStruct((seqs, seq), np.bool_))
    size = lambda x: int(np.prod(x.shape))  # noqa: E731
    return (sum(size(x) * np.dtype(x.dtype).itemsize for x in saved),
            sum(size(x) for x in jax.tree.leaves(nn.unbox(params))))


@dataclasses.dataclass(frozen=True)
class LayerResiduals:
    """What one more decoder layer of a kind adds to the saved residuals (bytes)."""

    weights: float      # W: the layer's weights as its backward reads them (compute dtype)
    activations: float  # A_layer: its activations for the traced sequences, no remat
    base: float         # embedding, masks and final norm: the model's share outside layers


def per_device_widths(config: config_lib.ModelConfig, tensor: int) -> config_lib.ModelConfig:
    """The model one device computes under `tensor`-way sharding of heads, MLP hidden and
    vocabulary (the act_heads / act_mlp / act_vocab rules); widths that do not divide stay."""
    if tensor == 1:
        return config
    div = lambda n: n // tensor if n % tensor == 0 and n >= tensor else n  # noqa: E731
    heads = div(config.num_attention_heads)
    kv = config.num_key_value_heads
    kv = div(kv) if heads != config.num_attention_heads and kv % tensor == 0 else kv
    if heads % kv:
        heads, kv = config.num_attention_heads, config.num_key_value_heads
    return config.replace(num_attention_heads=heads, num_key_value_heads=kv,
                          intermediate_size=div(config.intermediate_size),
                          moe_intermediate_size=div(config.moe_intermediate_size))


@functools.lru_cache(maxsize=256)
def layer_residuals(config: config_lib.ModelConfig, moe_layer: bool, seq: int) -> LayerResiduals:
    """`LayerResiduals` of a dense or MoE layer of `config` for one sequence of `seq` tokens.

    Traces 1- and 2-layer models of that kind, without remat: with R(L, b) = b base + L (W + b A)
    on b sequences (the weights outside the layers that the backward keeps, the final norm's
    d-vector scale, are left in W), the three traces R(1, 1), R(1, 2) and R(2, 1) separate the
    layer's weights W (whatever dtype the backward keeps them in: on a CPU host, bf16 matmul
    operands are widened to float32, `layers.accumulating_einsum`) from its activations A.
    Activations then scale with the sequences a device holds; a dropless MoE's block padding
    (a constant per layer) lands in W.
    """
    def model(n):
        return config.replace(num_hidden_layers=n, first_k_dense_replace=0 if moe_layer else n,
                              num_nextn_predict_layers=0, scan_layers=False, remat_policy="none",
                              moe_dispatch="dropless" if config.moe_dispatch ==
                              "expert_parallel" else config.moe_dispatch)

    r11, r12 = residual_bytes(model(1), 1, seq)[0], residual_bytes(model(1), 2, seq)[0]
    r21 = residual_bytes(model(2), 1, seq)[0]
    layer = r21 - r11  # W + A
    base = r11 - layer
    activations = (r12 - r11) - base
    return LayerResiduals(layer - activations, activations, base)
