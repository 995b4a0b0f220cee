"""models.hf: golden-logit parity with transformers, save/load round trips, hostile inputs.

The fixtures in tests/fixtures/hf/ (made by scripts/make_hf_fixtures.py) are tiny random
DeepSeek-V3 (MLA, YaRN, grouped routing with a balancing bias, shared expert), Qwen2 (GQA with
bias, tied) and Llama (GQA, llama3 RoPE) checkpoints with transformers' float32 logits. Nothing
here imports torch or transformers, except the one optional test at the end.
"""

import functools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from safetensors.numpy import load_file, save_file

from r1jax import ownership
from r1jax.models import hf, hf_config, transformer

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "hf")
FAMILIES = ("deepseek_v3", "qwen2", "llama")


def fixture(name):
    return os.path.join(FIXTURES, name)


@functools.cache
def loaded(name):
    return hf.load_hf(fixture(name))


@functools.cache
def _forward(config):
    return jax.jit(lambda params, tokens: transformer.Transformer(config).apply(
        {"params": params}, tokens))


def relative_error(logits, golden):
    return float(np.abs(np.asarray(logits) - golden).max() / np.abs(golden).max())


def assert_trees_equal(a, b):
    flat_a, flat_b = traverse_util.flatten_dict(a), traverse_util.flatten_dict(b)
    assert flat_a.keys() == flat_b.keys()
    for path, value in flat_a.items():
        assert value.dtype == flat_b[path].dtype, path
        np.testing.assert_array_equal(np.asarray(value), np.asarray(flat_b[path]), err_msg=path)


def copy_fixture(name, tmp_path):
    return shutil.copytree(fixture(name), tmp_path / name)


def rewrite_weights(directory, edit):
    file = os.path.join(directory, hf.WEIGHTS_FILE)
    tensors = load_file(file)
    edit(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def rewrite_config(directory, edit):
    file = os.path.join(directory, hf.CONFIG_FILE)
    with open(file) as fh:
        values = json.load(fh)
    edit(values)
    with open(file, "w") as fh:
        json.dump(values, fh)


# ------------------------------------------------------------------------------------ parity


@pytest.mark.parametrize("name", FAMILIES)
def test_logits_match_transformers(name):
    config, params = loaded(name)
    golden = np.load(os.path.join(fixture(name), "golden.npz"))
    logits = _forward(config)(params, jnp.asarray(golden["tokens"]))
    assert relative_error(logits, golden["logits"]) < 1e-4


def test_config_mapping():
    ds, _ = loaded("deepseek_v3")
    assert (ds.attention_type, ds.rope_type, ds.rope_interleave) == ("mla", "yarn", True)
    assert (ds.n_group, ds.topk_group, ds.q_lora_rank, ds.first_k_dense_replace) == (4, 2, 24, 1)
    assert (ds.mscale, ds.mscale_all_dim, ds.rope_factor) == (0.9, 0.8, 4.0)
    assert ds.num_nextn_predict_layers == 0  # Announced by config.json, absent from the weights.
    qwen, _ = loaded("qwen2")
    assert (qwen.attention_bias, qwen.tie_word_embeddings, qwen.num_key_value_heads) == (
        True, True, 2)
    llama, _ = loaded("llama")
    assert (llama.head_dim, llama.rope_type, llama.attention_bias) == (16, "llama3", False)
    assert (llama.tie_word_embeddings, llama.rms_norm_eps) == (False, 1e-5)


# ------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_round_trip(name, tmp_path):
    config, params = loaded(name)
    hf.save_hf(config, params, str(tmp_path / "out"))
    assert sorted(os.listdir(tmp_path)) == ["out"]  # No temporary directory left behind.
    config2, params2 = hf.load_hf(str(tmp_path / "out"))
    assert config2 == config
    assert_trees_equal(params2, params)


def test_sharded_round_trip(tmp_path):
    config, params = loaded("deepseek_v3")
    hf.save_hf(config, params, str(tmp_path / "out"), max_shard_bytes=40_000)
    files = os.listdir(tmp_path / "out")
    assert hf.INDEX_FILE in files and hf.WEIGHTS_FILE not in files
    assert len([f for f in files if f.endswith(".safetensors")]) > 3
    config2, params2 = hf.load_hf(str(tmp_path / "out"))
    assert config2 == config
    assert_trees_equal(params2, params)


def test_mtp_round_trip(tmp_path):
    config = loaded("deepseek_v3")[0].replace(num_nextn_predict_layers=1)
    params = transformer.random_params(config, seed=3)
    hf.save_hf(config, params, str(tmp_path / "out"))
    names = load_file(os.path.join(tmp_path, "out", hf.WEIGHTS_FILE)).keys()
    assert {"model.layers.3.eh_proj.weight", "model.layers.3.shared_head.norm.weight",
            "model.layers.3.shared_head.head.weight"} <= set(names)
    config2, params2 = hf.load_hf(str(tmp_path / "out"))
    assert config2 == config
    assert_trees_equal(params2, params)


def test_bfloat16(tmp_path):
    config, params = hf.load_hf(fixture("deepseek_v3"), dtype=jnp.bfloat16)
    assert config.param_dtype == config.dtype == "bfloat16"
    flat = traverse_util.flatten_dict(params)
    assert flat[("layers_1", "mlp", "gate", "e_score_correction_bias")].dtype == jnp.float32
    assert flat[("layers_1", "mlp", "experts", "up_proj")].dtype == jnp.bfloat16
    hf.save_hf(config, params, str(tmp_path / "out"))
    config2, params2 = hf.load_hf(str(tmp_path / "out"), dtype=jnp.bfloat16)
    assert config2 == config
    assert_trees_equal(params2, params)


def test_save_never_clobbers(tmp_path):
    """A directory r1jax did not create is never replaced, even with overwrite=True; one that
    an earlier save_hf wrote (marked) is replaced only with overwrite=True."""
    config, params = loaded("qwen2")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for overwrite in (False, True):
        with pytest.raises(ownership.NotOwnedError, match="keep.txt"):
            hf.save_hf(config, params, str(out), overwrite=overwrite)
        assert os.listdir(out) == ["keep.txt"]
    mine = tmp_path / "mine"
    hf.save_hf(config, params, str(mine))
    assert ownership.is_marked(mine)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        hf.save_hf(config, params, str(mine))
    hf.save_hf(config, params, str(mine), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["mine", "out"]
    assert hf.load_hf(str(mine))[0] == config


def test_checkpoint_dtype_is_kept_when_asked(tmp_path):
    """dtype=None keeps the stored dtype: a bfloat16 checkpoint loads as bfloat16 params and
    config, and load_hf_config agrees without reading weights."""
    config, params = hf.load_hf(fixture("qwen2"), dtype=jnp.bfloat16)
    hf.save_hf(config, params, str(tmp_path / "bf16"))
    assert hf.checkpoint_dtype(str(tmp_path / "bf16")) == "bfloat16"
    config2, params2 = hf.load_hf(str(tmp_path / "bf16"), dtype=None)
    assert config2.param_dtype == config2.dtype == "bfloat16"
    assert {leaf.dtype for leaf in jax.tree.leaves(params2)} == {jnp.dtype(jnp.bfloat16)}
    assert hf.load_hf_config(str(tmp_path / "bf16")) == config2
    assert hf.checkpoint_dtype(fixture("qwen2")) == "float32"


def test_save_rejects_unrepresentable_config():
    config, params = loaded("qwen2")
    with pytest.raises(ValueError, match="rope_interleave"):
        hf_config.config_to_hf(config.replace(rope_interleave=True))


# ------------------------------------------------------------------------------------ hostile input


def test_missing_tensor(tmp_path):
    path = copy_fixture("deepseek_v3", tmp_path)
    name = "model.layers.2.mlp.experts.5.up_proj.weight"
    rewrite_weights(path, lambda t: t.pop(name))
    with pytest.raises(ValueError, match=rf"{name}' is missing.*\[16, 32\]"):
        hf.load_hf(str(path))


def test_wrong_shape(tmp_path):
    path = copy_fixture("llama", tmp_path)
    name = "model.layers.1.self_attn.k_proj.weight"
    rewrite_weights(path, lambda t: t.update({name: np.zeros((16, 32), np.float32)}))
    with pytest.raises(ValueError, match=rf"{name}' has shape \[16, 32\], expected \[32, 32\]"):
        hf.load_hf(str(path))


def test_unexpected_tensor(tmp_path):
    path = copy_fixture("qwen2", tmp_path)
    rewrite_weights(path, lambda t: t.update({"model.layers.0.extra.weight": np.zeros(3)}))
    with pytest.raises(ValueError, match="unexpected tensor.*model.layers.0.extra.weight"):
        hf.load_hf(str(path))


def test_truncated_safetensors(tmp_path):
    path = copy_fixture("qwen2", tmp_path)
    file = os.path.join(path, hf.WEIGHTS_FILE)
    with open(file, "r+b") as fh:
        fh.truncate(os.path.getsize(file) - 100)
    with pytest.raises(ValueError, match="model.safetensors"):
        hf.load_hf(str(path))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(architectures=["MistralForCausalLM"]), "'architectures'.*Mistral"),
    (lambda c: c.pop("kv_lora_rank"), "'kv_lora_rank' is missing"),
    (lambda c: c["rope_parameters"].update(rope_type="dynamic"), r"rope_parameters\.'rope_type'"),
    (lambda c: c.update(n_group="4"), "'n_group' must be int"),
    (lambda c: c.update(scoring_func="softmax"), "'scoring_func'"),
    (lambda c: c.update(quantization_config={"quant_method": "fp8"}),
     r"quantization_config\.'weight_block_size' is missing"),
    (lambda c: c.update(quantization_config={"quant_method": "fp8", "weight_block_size": [128]}),
     r"quantization_config\.'weight_block_size' must be two positive integers"),
    (lambda c: c.update(quantization_config={"quant_method": "awq"}),
     r"quantization_config\.'quant_method' = 'awq' is not supported"),
    (lambda c: c.update(topk_group=8), "topk_group"),
])
def test_bad_config(tmp_path, edit, match):
    path = copy_fixture("deepseek_v3", tmp_path)
    rewrite_config(path, edit)
    with pytest.raises(ValueError, match=match) as info:
        hf.load_hf(str(path))
    assert "config.json" in str(info.value)


def test_index_cannot_escape_directory(tmp_path):
    config, params = loaded("qwen2")
    out = tmp_path / "out"
    hf.save_hf(config, params, str(out), max_shard_bytes=20_000)
    index = json.loads((out / hf.INDEX_FILE).read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../elsewhere.safetensors"
    (out / hf.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(ValueError, match="elsewhere.safetensors"):
        hf.load_hf(str(out))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weight_is_named(tmp_path, value):
    path = copy_fixture("llama", tmp_path)
    name = "model.layers.1.mlp.down_proj.weight"

    def poison(tensors):
        tensors[name][3, 5] = value

    rewrite_weights(path, poison)
    with pytest.raises(ValueError, match=rf"model.safetensors: tensor '{name}' has 1 non-finite"):
        hf.load_hf(str(path))


@pytest.mark.parametrize("edit, match", [
    (lambda c: c.update(rms_norm_eps=float("nan")), "'rms_norm_eps' must be a finite number"),
    (lambda c: c.update(rms_norm_eps=0.0), "'rms_norm_eps' must be positive"),
    (lambda c: c["rope_parameters"].update(rope_theta=-1.0), r"rope_parameters\.'rope_theta' must "
     "be positive"),
    (lambda c: c["rope_parameters"].update(rope_theta=float("inf")), "'rope_theta' must be a finite"),
    (lambda c: c.update(rope_theta=-1), "field 'rope_theta' must be positive, got -1"),
    (lambda c: c.update(initializer_range=float("nan")), "'initializer_range' must be a finite"),
    (lambda c: c.update(vocab_size=10**12), r"'vocab_size' = 1000000000000 is outside \[1, "),
    (lambda c: c.update(vocab_size=95), r"'vocab_size', 'hidden_size' = \[95, 32\] do not match"),
])
def test_bad_config_values(tmp_path, edit, match):
    path = copy_fixture("qwen2", tmp_path)
    rewrite_config(path, edit)  # json.dump writes NaN / Infinity, which json.load accepts
    with pytest.raises(ValueError, match=match) as info:
        hf.load_hf(str(path))
    assert "config.json" in str(info.value)


def test_layer_count_checked_before_building_the_tree(tmp_path, monkeypatch):
    """A million announced layers against three present fails at once, not after describing them."""
    path = copy_fixture("deepseek_v3", tmp_path)
    rewrite_config(path, lambda c: c.update(num_hidden_layers=1_000_000))
    def never(*args, **kwargs):  # the check must come before any tree is described
        raise AssertionError("abstract parameter tree built before the layer count was checked")

    monkeypatch.setattr(transformer, "abstract_params", never)
    with pytest.raises(ValueError, match=r"config.json: field 'num_hidden_layers' = 1000000, "
                       r"but .* holds tensors for 3 layer\(s\) \(layer 3 is absent\)"):
        hf.load_hf(str(path))
    rewrite_config(path, lambda c: c.update(num_hidden_layers=1, first_k_dense_replace=1))
    with pytest.raises(ValueError, match=r"'num_hidden_layers' \+ 'num_nextn_predict_layers' = "
                       r"2, but .* holds tensors for layer 2"):
        hf.load_hf(str(path))


# ------------------------------------------------------------------------------------ transformers


@pytest.mark.parametrize("name", FAMILIES)
def test_transformers_loads_save_hf_output(name, tmp_path):
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    config, params = loaded(name)
    hf.save_hf(config, params, str(tmp_path / "out"))
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "out"), attn_implementation="eager", dtype=torch.float32)
    golden = np.load(os.path.join(fixture(name), "golden.npz"))
    with torch.no_grad():
        logits = model(torch.from_numpy(golden["tokens"]).long()).logits.numpy()
    assert relative_error(logits, golden["logits"]) < 1e-4
