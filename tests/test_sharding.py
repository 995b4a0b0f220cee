"""The one sharding helper for params and optimizer state (issue 20), on 8 simulated devices."""

import json
import subprocess
import sys

import cpu_env
import jax
import jax.numpy as jnp
import optax
import pytest
from conftest import small_model
from jax.sharding import PartitionSpec

from r1jax import sharding
from r1jax.models import transformer
from r1jax.rl import step as step_lib
from r1jax.sampling import sampler
from r1jax.train import partition
from r1jax.train import state as state_lib

CFG = small_model(64)


def _mesh():
    return sharding.make_mesh({"data": 2, "fsdp": 2, "tensor": 2})


def _flat(tree):
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_optimizer_state_follows_params_or_is_replicated():
    mesh = _mesh()
    abstract, param_sh = transformer.param_shardings(CFG, mesh)
    opt_state = jax.eval_shape(state_lib.make_optimizer(state_lib.OptimConfig()).init, abstract)
    opt_sh = _flat(sharding.like_params(opt_state, abstract, mesh))
    params = _flat(param_sh)
    sharded = [k for k, s in params.items() if s.spec != PartitionSpec()]
    assert len(sharded) > 10  # the rules do shard this model on this mesh
    for name, s in params.items():
        moments = [v for k, v in opt_sh.items() if k.endswith(name) and ".mu" in k or
                   k.endswith(name) and ".nu" in k]
        if name.endswith("['e_score_correction_bias']"):
            assert moments == []  # frozen: no Adam moments at all
            continue
        assert len(moments) == 2, name  # Adam's mu and nu, each with its parameter's sharding
        assert all(m == s for m in moments), name
    counts = [v for k, v in opt_sh.items() if k.endswith(".count")]
    assert counts and all(c.spec == PartitionSpec() for c in counts)  # scalars: replicated


def test_same_path_other_shape_is_replicated():
    """Exact shape, not rank: a factored statistic under a parameter's name (e.g. Adafactor's
    row statistics) does not inherit the parameter's sharding."""
    mesh = _mesh()
    abstract, param_sh = transformer.param_shardings(CFG, mesh)
    kernel = abstract["layers_0"]["mlp"]["down_proj"]["kernel"]
    assert param_sh["layers_0"]["mlp"]["down_proj"]["kernel"].spec != PartitionSpec()
    tree = {"stat": {"layers_0": {"mlp": {"down_proj": {
        "kernel": jax.ShapeDtypeStruct(kernel.shape[:1] + (1,), jnp.float32)}}}}}
    picked = sharding.like_params(tree, abstract, mesh)
    assert picked["stat"]["layers_0"]["mlp"]["down_proj"]["kernel"].spec == PartitionSpec()
    factored = jax.eval_shape(optax.adafactor(1e-3).init, abstract)
    for leaf, s in zip(jax.tree.leaves(factored), jax.tree.leaves(
            sharding.like_params(factored, abstract, mesh))):
        assert s.spec == PartitionSpec() or any(
            leaf.shape == p.shape for p in jax.tree.leaves(abstract))


def test_every_caller_uses_the_one_helper():
    """The RL step, the sampler, the SFT/pretraining partition module and the reward model's
    shardings all come from `transformer.param_shardings` / `sharding.like_params`."""
    mesh = _mesh()
    abstract, param_sh = transformer.param_shardings(CFG, mesh)
    assert step_lib.param_shardings(CFG, mesh) == param_sh
    assert sampler.param_shardings(CFG, mesh) == param_sh
    assert partition.param_shardings(CFG, mesh)[1] == param_sh
    optim = state_lib.OptimConfig()
    state = jax.eval_shape(lambda p: state_lib.create_train_state(p, optim, jax.random.key(0)),
                           abstract)
    assert partition.state_shardings(state, abstract, mesh) == sharding.like_params(
        state, abstract, mesh)


def test_rl_state_reference_and_moments_sharded_like_the_policy():
    mesh = _mesh()
    config = _step_config(CFG)
    state_sh = step_lib.state_shardings(config, mesh)
    params = _flat(state_sh["params"])
    assert _flat(state_sh["ref_params"]) == params
    for key in ("step", "rng", "skipped"):
        assert state_sh[key].spec == PartitionSpec()


def _step_config(model):
    from r1jax.rl import config as rl_config

    return step_lib.StepConfig(model=model, grpo=rl_config.GRPOConfig(),
                               optim=state_lib.OptimConfig(), temperature=1.0, max_new_tokens=4)


def test_jit_init_state_builds_every_leaf_in_place():
    """`init_state` compiled with output shardings: each leaf of the state comes out with the
    sharding `state_shardings` names (the reference and moments like the params)."""
    mesh = _mesh()
    config = _step_config(CFG)
    params = jax.device_put(transformer.random_params(CFG), step_lib.param_shardings(CFG, mesh))
    state = step_lib.jit_init_state(config, mesh, seed=3)(params)
    expected = step_lib.state_shardings(config, mesh)
    assert jax.tree.structure(state) == jax.tree.structure(expected)
    for x, want in zip(jax.tree.leaves(state), jax.tree.leaves(expected)):
        assert x.sharding.is_equivalent_to(want, x.ndim)
    assert any(x.sharding.spec != PartitionSpec() for x in jax.tree.leaves(state["ref_params"]))
    eager = step_lib.init_state(transformer.random_params(CFG), config, 3)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(eager)):
        assert (jax.device_get(a) == jax.device_get(b)).all()


_V3_INIT = """
import json
import jax, numpy as np
from r1jax import sharding
from r1jax.models import config as config_lib, presets, transformer
from r1jax.rl import config as rl_config, step
from r1jax.train import state as state_lib
model = config_lib.ModelConfig.from_dict(presets.deepseek_v3_671b())
cfg = step.StepConfig(model=model, grpo=rl_config.GRPOConfig(), optim=state_lib.OptimConfig(),
                      temperature=1.0, max_new_tokens=8)
mesh = sharding.make_mesh({"fsdp": 128, "expert": 8})
abstract, _ = transformer.param_shardings(model, mesh)
compiled = step.jit_init_state(cfg, mesh, 0).lower(abstract).compile()
avals = jax.tree.leaves(jax.eval_shape(lambda p: step.init_state(p, cfg, 0), abstract))
rows = [(a.size * a.dtype.itemsize, int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize,
         s.is_fully_replicated) for a, s in zip(avals, jax.tree.leaves(compiled.output_shardings))]
print(json.dumps({"devices": len(jax.devices()), "rows": rows}))
"""


@pytest.mark.slow
def test_deepseek_v3_671b_init_state_compiles_sharded_on_1024_devices():
    """`init_state` of the full V3 preset (float32 master weights, moments and reference:
    671B x 16 bytes) compiles for 1,024 simulated devices with every output sharded: no
    replicated array over 100 MB, no shard over 100 MB (about 40 s on 2 CPU cores)."""
    env = cpu_env.env(1024)
    result = subprocess.run([sys.executable, "-c", _V3_INIT], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["devices"] == 1024
    rows = out["rows"]
    assert sum(total for total, _, _ in rows) > 671e9 * 16  # params + mu + nu + reference
    assert not [r for r in rows if r[2] and r[0] > 100e6]
    assert max(shard for _, shard, _ in rows) < 100e6
