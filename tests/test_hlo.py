"""r1jax.hlo on real compiled programs (8 simulated devices): it finds a collective that the
partitioner puts inside a loop body, and none where the loop does not communicate."""

import jax
import jax.numpy as jnp
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from r1jax import hlo, sharding

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")


def _loop_sums(x_nd, w_lnd):
    """Per iteration, sum(x * w[i]): with x and w sharded over n, every iteration all-reduces."""
    init = jnp.zeros((), x_nd.dtype) * x_nd[0, 0]  # varies like x inside shard_map
    return jax.lax.fori_loop(0, w_lnd.shape[0], lambda i, c: c + jnp.sum(x_nd * w_lnd[i]), init)


def test_collective_inside_a_loop_is_found_and_a_local_loop_is_clean():
    mesh = sharding.make_mesh({"fsdp": 8})
    x_nd = jax.device_put(jnp.ones((8, 4)), NamedSharding(mesh, PartitionSpec("fsdp")))
    w_lnd = jax.device_put(jnp.ones((3, 8, 4)), NamedSharding(mesh, PartitionSpec(None, "fsdp")))
    report = hlo.loop_report(jax.jit(_loop_sums).lower(x_nd, w_lnd).compile().as_text())
    assert report.loops == 1 and report.collectives >= 1
    assert [hlo.opcode(line) for _, line in report.in_loops] == ["all-reduce"]
    # Each device loops over its own rows, then one all-reduce after the loop.
    local = jax.shard_map(lambda x, w: jax.lax.psum(_loop_sums(x, w), "fsdp"), mesh=mesh,
                          in_specs=(PartitionSpec("fsdp"), PartitionSpec(None, "fsdp")),
                          out_specs=PartitionSpec())
    report = hlo.loop_report(jax.jit(local).lower(x_nd, w_lnd).compile().as_text())
    assert report.loops == 1 and report.collectives >= 1 and report.in_loops == []
