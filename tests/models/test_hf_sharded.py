"""models.hf on 8 simulated devices: sharded loading (bf16 and FP8 block-quantised checkpoints),
the scanned layout, and saving from sharded arrays.

The checkpoints are written here: a tiny V3-shaped model (MLA, a dense layer then MoE layers)
whose widths cross 128 without being multiples of it, so that FP8 blocks of 128 x 128 have
partial edges. The FP8 one quantises every linear weight of the layers as the official
DeepSeek-V3 release does (embedding, head, norms and router stay bf16) with ml_dtypes'
float8_e4m3fn and a float32 `weight_scale_inv` per block; a slow block-by-block loop is the
dequantisation reference.
"""

import json
import os
import re
import subprocess
import sys

import cpu_env
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import hf, hf_shards, moe, transformer

pytestmark = pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (simulated) devices")

MESHES = ({"fsdp": 8}, {"fsdp": 2, "expert": 2, "tensor": 2})
_QUANTISED = re.compile(r"model\.layers\.\d+\..*(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|"
                        r"o_proj|gate_proj|up_proj|down_proj)\.weight$")
FP8_MAX = 448.0  # the largest finite float8_e4m3fn


def tiny_v3() -> config_lib.ModelConfig:
    return config_lib.ModelConfig(
        vocab_size=200, hidden_size=144, num_hidden_layers=3, intermediate_size=272,
        num_attention_heads=2, q_lora_rank=136, kv_lora_rank=64, qk_nope_head_dim=16,
        qk_rope_head_dim=8, v_head_dim=16, n_routed_experts=8, num_experts_per_tok=2,
        n_shared_experts=1, moe_intermediate_size=48, first_k_dense_replace=1,
        max_position_embeddings=64, original_max_position_embeddings=64)


def quantise(w, block):
    """float32 [out, in] -> (float8_e4m3fn [out, in], float32 scale_inv [ceil(out/bm), ceil(in/bn)])."""
    bm, bn = block
    rows, cols = -(-w.shape[0] // bm), -(-w.shape[1] // bn)
    padded = np.zeros((rows * bm, cols * bn), np.float32)
    padded[:w.shape[0], :w.shape[1]] = np.abs(w)
    scale = np.maximum(padded.reshape(rows, bm, cols, bn).max(axis=(1, 3)), 1e-12) / FP8_MAX
    full = np.repeat(np.repeat(scale, bm, 0), bn, 1)[:w.shape[0], :w.shape[1]]
    return (w / full).astype(ml_dtypes.float8_e4m3fn), scale.astype(np.float32)


def dequantise_slowly(q, scale, block):
    """The reference: each block times its scale, one block at a time."""
    bm, bn = block
    out = np.empty(q.shape, np.float32)
    for i in range(scale.shape[0]):
        for j in range(scale.shape[1]):
            rows, cols = slice(i * bm, (i + 1) * bm), slice(j * bn, (j + 1) * bn)
            out[rows, cols] = q[rows, cols].astype(np.float32) * scale[i, j]
    return out


def write_fp8(src, dst, block):
    """A copy of the checkpoint `src` with its layers' linear weights FP8 block-quantised."""
    os.makedirs(dst)
    tensors = load_file(os.path.join(src, hf.WEIGHTS_FILE))
    out = {}
    for name, value in tensors.items():
        if _QUANTISED.match(name):
            out[name], out[name + "_scale_inv"] = quantise(value.astype(np.float32), block)
        else:
            out[name] = value
    save_file(out, os.path.join(dst, hf.WEIGHTS_FILE), metadata={"format": "pt"})
    with open(os.path.join(src, hf.CONFIG_FILE)) as fh:
        values = json.load(fh)
    values["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3",
                                     "activation_scheme": "dynamic",
                                     "weight_block_size": list(block)}
    with open(os.path.join(dst, hf.CONFIG_FILE), "w") as fh:
        json.dump(values, fh)
    return out


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """{"bf16": dir, "fp8": dir (128 x 128 blocks), "fp8_small": dir (16 x 24 blocks)}."""
    root = tmp_path_factory.mktemp("hf_sharded")
    config = tiny_v3()
    # bf16, except the float32 balancing bias, which is spread 2 apart per expert: the top-k
    # choice is then the same in float32 and bf16 (sigmoid scores differ by < 1), so a routing
    # flip near a tie cannot stand in for a loading error.
    params = traverse_util.unflatten_dict({
        path: jnp.asarray(2.0 * np.random.default_rng(len(path)).permutation(8), jnp.float32)
        if path[-1] == moe.BIAS else leaf.astype(jnp.bfloat16)
        for path, leaf in flat(transformer.random_params(config, 0)).items()})
    hf.save_hf(config.replace(dtype="bfloat16", param_dtype="bfloat16"), params,
               str(root / "bf16"))
    dirs = {"bf16": str(root / "bf16")}
    for key, block in (("fp8", (128, 128)), ("fp8_small", (16, 24))):
        dirs[key] = str(root / key)
        write_fp8(dirs["bf16"], dirs[key], block)
    return dirs


def forward(config, params, tokens, mesh=None):
    fn = jax.jit(lambda p, t: transformer.Transformer(config).apply({"params": p}, t))
    if mesh is None:
        return np.asarray(fn(params, tokens), np.float32)
    with jax.set_mesh(mesh):
        return np.asarray(fn(params, tokens), np.float32)


TOKENS = jnp.asarray(np.random.default_rng(0).integers(0, 200, (8, 12)), jnp.int32)


def relative_error(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def flat(tree):
    return traverse_util.flatten_dict(tree)


# ---------------------------------------------------------------------------------- FP8


@pytest.mark.parametrize("key, block", [("fp8", (128, 128)), ("fp8_small", (16, 24))])
def test_fp8_dequantisation_equals_block_loop(checkpoints, key, block, tmp_path):
    """Every quantised weight loads as q * scale_inv block by block (partial edge blocks too)."""
    config, params = hf.load_hf(checkpoints[key], jnp.float32)
    hf.save_hf(config, params, str(tmp_path / "out"))
    saved = load_file(str(tmp_path / "out" / hf.WEIGHTS_FILE))
    raw = _read_raw(checkpoints[key])
    quantised = [n for n in raw if _QUANTISED.match(n)]
    assert len(quantised) > 20 and any(raw[n].shape[0] % 128 for n in quantised)
    for name in quantised:
        want = dequantise_slowly(raw[name], raw[name + "_scale_inv"], block)
        np.testing.assert_array_equal(saved[name], want, err_msg=name)
    assert not any(n.endswith("_scale_inv") for n in saved)


def _read_raw(directory):
    """The stored tensors, float8 included (the NumPy backend of safetensors cannot read it)."""
    file = os.path.join(directory, hf.WEIGHTS_FILE)
    header, start = hf_shards.safetensors_header(file)
    data = np.fromfile(file, np.uint8)[start:]
    dtypes = {"F8_E4M3": ml_dtypes.float8_e4m3fn, "F32": np.float32, "BF16": ml_dtypes.bfloat16}
    return {name: data[v["data_offsets"][0]:v["data_offsets"][1]].view(dtypes[v["dtype"]])
            .reshape(v["shape"]) for name, v in header.items() if name != "__metadata__"}


def test_fp8_errors_name_the_tensor(checkpoints, tmp_path):
    tensors = _read_raw(checkpoints["fp8"])
    name = "model.layers.1.self_attn.o_proj.weight"
    bad_shape = dict(tensors, **{name + "_scale_inv": np.ones((3, 3), np.float32)})
    no_scale = {k: v for k, v in tensors.items() if k != name + "_scale_inv"}
    for i, (case, match) in enumerate([(bad_shape, rf"{name}_scale_inv' is F32 \[3, 3\], "
                                        r"expected float \[2, 1\]"),
                                       (no_scale, rf"FP8 tensor '{name}' has no")]):
        out = tmp_path / str(i)
        os.makedirs(out)
        save_file(case, str(out / hf.WEIGHTS_FILE))
        with open(os.path.join(checkpoints["fp8"], hf.CONFIG_FILE)) as fh:
            (out / hf.CONFIG_FILE).write_text(fh.read())
        with pytest.raises(ValueError, match=match):
            hf.load_hf(str(out))
    unquantised = tmp_path / "noconfig"
    os.makedirs(unquantised)
    save_file(tensors, str(unquantised / hf.WEIGHTS_FILE))
    with open(os.path.join(checkpoints["bf16"], hf.CONFIG_FILE)) as fh:
        (unquantised / hf.CONFIG_FILE).write_text(fh.read())
    with pytest.raises(ValueError, match="is FP8 but config.json has no quantization_config"):
        hf.load_hf(str(unquantised))


# ---------------------------------------------------------------------------------- sharded


@pytest.mark.parametrize("key, mesh_shape", [("bf16", MESHES[0]), ("fp8", MESHES[1])], ids=str)
def test_sharded_load_matches_single_device(checkpoints, key, mesh_shape):
    """8-device loads: float32 params equal the single-device load bit for bit; bf16 logits
    equal its float32 logits within bf16 rounding; no parameter is whole on any device; the
    reader never held more than one parameter plus one block on the host."""
    whole = hf_shards.ReadStats()
    config32, ref = hf.load_hf(checkpoints[key], jnp.float32, stats=whole)
    # On one device each block is a whole parameter: the measure sees it (the mesh's must not).
    assert whole.largest_buffer_bytes == max(a.size for a in flat(ref).values()) * 4
    ref_logits = forward(config32, ref, TOKENS)
    mesh = sharding.make_mesh(mesh_shape)
    _, sharded32 = hf.load_hf(checkpoints[key], jnp.float32, mesh=mesh)
    for path, leaf in flat(sharded32).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat(ref)[path]))
    stats = hf_shards.ReadStats()
    config16, params16 = hf.load_hf(checkpoints[key], jnp.bfloat16, mesh=mesh, stats=stats)
    _assert_sharded(params16, hf.param_shardings(config16, mesh))
    _assert_host_memory(stats, ref, params16)
    # bf16 weights and compute: 8 significant bits, 3 layers of rounding (measured 1.3e-2).
    assert relative_error(forward(config16, params16, TOKENS, mesh), ref_logits) < 3e-2


def _assert_sharded(params, shardings):
    split = 0
    for path, leaf in flat(params).items():
        target = flat(shardings)[path]
        assert leaf.sharding.is_equivalent_to(target, leaf.ndim), path
        shard_shape = target.shard_shape(leaf.shape)
        assert len(leaf.addressable_shards) == 8
        assert all(s.data.shape == shard_shape for s in leaf.addressable_shards), path
        if shard_shape != leaf.shape:  # the device holds its block only, never the whole leaf
            split += leaf.size
    total = sum(leaf.size for leaf in flat(params).values())
    assert split > 0.95 * total  # only norms, biases and the router's small kernels replicate


def _assert_host_memory(stats, ref, sharded):
    largest_leaf = max(a.size for a in flat(ref).values()) * 4  # as float32
    largest_block = max(s.data.size for a in flat(sharded).values()
                        for s in a.addressable_shards) * 4
    model = sum(a.size for a in flat(ref).values()) * 4
    assert stats.slices_read > 0
    assert stats.largest_buffer_bytes <= largest_block < largest_leaf
    assert stats.peak_held_bytes <= largest_leaf + 2 * largest_block < model / 4


# ---------------------------------------------------------------------------------- scan


def test_scan_layers_load_gives_the_same_logits(checkpoints, key="fp8"):
    config, params = hf.load_hf(checkpoints[key], jnp.float32)
    scanned_config, scanned = hf.load_hf(checkpoints[key], jnp.float32, scan_layers=True)
    assert scanned_config == config.replace(scan_layers=True)
    assert scanned["moe_layers"]["mlp"]["experts"]["up_proj"].shape == (2, 8, 144, 48)
    np.testing.assert_allclose(forward(scanned_config, scanned, TOKENS),
                               forward(config, params, TOKENS), rtol=1e-5, atol=1e-5)
    mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
    _, on_mesh = hf.load_hf(checkpoints[key], jnp.float32, mesh=mesh, scan_layers=True)
    for path, leaf in flat(on_mesh).items():
        np.testing.assert_array_equal(np.asarray(leaf), np.asarray(flat(scanned)[path]))


def test_save_from_sharded_and_scanned_trees(checkpoints, tmp_path):
    """save_hf of a sharded scanned tree writes the checkpoint the unscanned load reads back."""
    mesh = sharding.make_mesh({"fsdp": 2, "expert": 2, "tensor": 2})
    config, params = hf.load_hf(checkpoints["bf16"], None)
    scanned_config, scanned = hf.load_hf(checkpoints["bf16"], None, mesh=mesh, scan_layers=True)
    hf.save_hf(scanned_config, scanned, str(tmp_path / "out"), max_shard_bytes=100_000)
    assert hf.INDEX_FILE in os.listdir(tmp_path / "out")
    config2, params2 = hf.load_hf(str(tmp_path / "out"), None)
    assert config2 == config
    for path, leaf in flat(params).items():
        assert flat(params2)[path].dtype == leaf.dtype, path
        np.testing.assert_array_equal(np.asarray(flat(params2)[path]), np.asarray(leaf))


# ---------------------------------------------------------------------------------- two processes

_RUNNER = """
import json, sys
from r1jax import distributed
distributed.initialize()  # R1JAX_* environment variables
import jax
from r1jax import sharding
from r1jax.models import hf, hf_shards
stats = hf_shards.ReadStats()
config, params = hf.load_hf(sys.argv[1], None, mesh=sharding.make_mesh({"fsdp": 8}),
                            scan_layers=True, stats=stats)
assert not params["moe_layers"]["mlp"]["experts"]["up_proj"].is_fully_addressable
hf.save_hf(config, params, sys.argv[2], max_shard_bytes=100_000)
print("RESULT " + json.dumps({"slices": stats.slices_read}), flush=True)
"""


@pytest.mark.slow  # two interpreters start JAX: ~20 s on 2 cores
def test_two_processes_load_their_slices_and_save(checkpoints, tmp_path):
    """Two jax.distributed processes of 4 devices each: each reads only its devices' slices
    (fewer reads than one process driving all 8), and save_hf of the scanned tree sharded
    across both writes the checkpoint that the unscanned single-process load reads back."""
    import portpicker

    port = portpicker.pick_unused_port()
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    procs = [subprocess.Popen(
        [sys.executable, "-c", _RUNNER, checkpoints["bf16"], str(tmp_path / "out")],
        env=cpu_env.env(4, R1JAX_COORDINATOR=f"127.0.0.1:{port}",
                 R1JAX_NUM_PROCESSES="2", R1JAX_PROCESS_ID=str(i)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=repo) for i in range(2)]
    outputs = []
    try:
        # The one-process reference count, read while the two children start up.
        stats = hf_shards.ReadStats()
        hf.load_hf(checkpoints["bf16"], None, mesh=sharding.make_mesh({"fsdp": 8}),
                   scan_layers=True, stats=stats)
        for p in procs:
            out, _ = p.communicate(timeout=300)
            assert p.returncode == 0, out[-4000:]
            outputs.append(json.loads(out.split("RESULT ", 1)[1].splitlines()[0]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    slices = [o["slices"] for o in outputs]
    assert all(s < stats.slices_read for s in slices) and sum(slices) >= stats.slices_read
    config, params = hf.load_hf(checkpoints["bf16"], None)
    config2, params2 = hf.load_hf(str(tmp_path / "out"), None)
    assert config2 == config
    for path, leaf in flat(params).items():
        np.testing.assert_array_equal(np.asarray(flat(params2)[path]), np.asarray(leaf))
