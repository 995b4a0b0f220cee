"""The rollout layout (`r1jax.sampling.layout`): weights resharded from training (fsdp=8) to a
decode mesh (tensor=8) on 8 simulated devices keep their values, and the compiled decode loop of
a small V3-shaped model (MLA, grouped routing with bias, shared expert, dense first layer) then
gathers no weight: no all-gather whose result has a weight's shape, in the while bodies or
anywhere. (Under fsdp=8 the same program has 27 such all-gathers, hoisted before the loop: every
device holds every weight while decoding; measured, see the layout module docstring.)
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from conftest import small_model

from r1jax import hlo, sharding
from r1jax.models import transformer
from r1jax.sampling import layout
from r1jax.sampling import sampler as sampler_lib

MODEL = small_model(64).replace(n_routed_experts=8, n_group=4, topk_group=2, n_shared_experts=1,
                                moe_block_size=4, scan_layers=False, moe_dispatch="auto")
_RESULT = re.compile(r"=\s*\w+\[([\d,]*)\]")


def all_gather_shapes(lines) -> list[tuple[int, ...]]:
    """Result shapes of the all-gather instructions among HLO lines."""
    return [tuple(int(x) for x in _RESULT.search(line).group(1).split(",") if x)
            for line in lines if hlo.opcode(line) == "all-gather"]


def test_decode_layout_gathers_no_weight():
    train_mesh = sharding.make_mesh({"fsdp": 8})
    mesh = layout.decode_mesh({"tensor": 8})
    params = jax.device_put(transformer.random_params(MODEL),
                            sampler_lib.param_shardings(MODEL, train_mesh))
    moved, seconds = layout.reshard(MODEL, params, mesh)
    assert seconds > 0
    kernel = moved["lm_head"]["kernel"]
    assert kernel.sharding.mesh.shape["tensor"] == 8 and not kernel.sharding.is_fully_replicated
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(moved)):
        np.testing.assert_array_equal(a, b)

    settings = sampler_lib.SamplingConfig(max_new_tokens=4, temperature=1.0)
    prompts = jax.ShapeDtypeStruct((8, 6), jnp.int32, sharding=sharding.batch_sharding(mesh, 2))
    lengths = jax.ShapeDtypeStruct((8,), jnp.int32, sharding=sharding.batch_sharding(mesh, 1))
    with jax.set_mesh(mesh):
        text = sampler_lib.make_sampler(MODEL, settings, mesh).jitted.lower(
            moved, prompts, lengths, jax.random.key(0)).compile().as_text()
    report = hlo.loop_report(text)
    # The reader sees the decode loop and the activation collectives it runs every step.
    assert report.loops > 0 and len(report.in_loops) > 0
    weight_shapes = {tuple(x.shape) for x in jax.tree.leaves(moved)}
    gathered = set(all_gather_shapes(text.splitlines()))
    assert not gathered & weight_shapes, gathered & weight_shapes
