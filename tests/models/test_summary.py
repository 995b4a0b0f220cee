"""Parameter counts from shapes: DeepSeek-V3 671B / 37B, V2-Lite 15.7B / 2.4B; the model
from an HF directory or an experiment config; the CLI runs."""

import functools
import json
import pathlib
import subprocess
import sys

import jax
import pytest

from r1jax import config_utils
from r1jax.models import config as config_lib
from r1jax.models import presets, summary


@pytest.fixture(autouse=True, scope="module")
def _count_each_config_once():
    """`count_params` is a pure function of the (frozen, hashable) config, and tracing the
    61-layer V3 init is the slow part: trace each config once for this module's tests
    (`forward_flops` and `_counts` then share it); the CLI subprocesses are not affected."""
    patch = pytest.MonkeyPatch()
    patch.setattr(summary, "count_params", functools.cache(summary.count_params))
    yield
    patch.undo()


def _counts(name):
    return dict(summary.count_params(config_lib.ModelConfig.from_dict(presets.get(name))))


def test_deepseek_v3_671b_total_and_activated():
    counts = _counts("deepseek_v3_671b")
    assert abs(counts["total"] / 671e9 - 1) < 0.01
    assert abs(counts["activated"] / 37e9 - 1) < 0.03
    # One MTP module: eh_proj 2d*d, one MoE block, norms (embedding and head are shared).
    assert 11e9 < counts["mtp"] < 12e9
    # 61 layers x (512 + 64) cached values in bfloat16.
    assert counts["kv_cache_bytes_per_token"] == 61 * 576 * 2


def test_deepseek_v2_lite_total_and_activated():
    counts = _counts("deepseek_v2_lite")
    assert abs(counts["total"] / 15.7e9 - 1) < 0.01
    assert abs(counts["activated"] / 2.4e9 - 1) < 0.03
    assert counts["mtp"] == 0


def test_dense_models_activate_everything():
    counts = _counts("qwen2_5_0_5b")  # tied embeddings: the table is the head, always active
    assert counts["activated"] == counts["total"] and counts["routed_experts"] == 0
    assert abs(counts["total"] / 494e6 - 1) < 0.01


def test_forward_flops_counts_each_attention_types_head_widths():
    # Per sequence of T tokens: 2 * activated * T + 2 * layers * heads * T^2 * (d_qk + d_v).
    t = 4096
    v3 = config_lib.ModelConfig.from_dict(presets.get("deepseek_v3_671b"))
    attention = summary.forward_flops(v3, 1, t) - 2 * _counts("deepseek_v3_671b")["activated"] * t
    assert attention == 2 * 61 * 128 * t * t * (128 + 64 + 128)  # MLA: d_h + d_h^R, d_v
    qwen = config_lib.ModelConfig.from_dict(presets.get("qwen2_5_0_5b"))
    attention = summary.forward_flops(qwen, 1, t) - 2 * _counts("qwen2_5_0_5b")["activated"] * t
    assert attention == 2 * 24 * 14 * t * t * (64 + 64)  # GQA: head_dim for keys and values
    assert summary.forward_flops(qwen, 3, t) == 3 * summary.forward_flops(qwen, 1, t)


def test_cli_prints_the_summary():
    result = subprocess.run(
        [sys.executable, "-m", "r1jax.models.summary", "--config=configs/model.py:tiny",
         "--config.num_hidden_layers=2"],
        capture_output=True, text=True, cwd=summary.__file__.rsplit("/r1jax/", 1)[0],
        timeout=120)
    assert result.returncode == 0, result.stderr
    assert "total parameters" in result.stdout and "KV cache per token" in result.stdout
    assert "2 layers" in result.stdout


# ---------------------------------------------------------------------------------------------
# The model from an HF directory, an r1jax base directory or an experiment config
# ---------------------------------------------------------------------------------------------

ROOT = pathlib.Path(__file__).resolve().parents[2]


def small_dense(dtype: str = "bfloat16") -> config_lib.ModelConfig:
    """A 2-layer Qwen2-style model (the qwen2_5_0_5b preset shrunk) stored in `dtype`."""
    return config_lib.ModelConfig.from_dict(presets.qwen2_5_0_5b()).replace(
        vocab_size=256, hidden_size=64, num_hidden_layers=2, intermediate_size=128,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16,
        max_position_embeddings=512, dtype=dtype, param_dtype=dtype)


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    from r1jax.models import hf, transformer

    config = small_dense()
    params = jax.tree.map(lambda x: x.astype(jax.numpy.bfloat16),
                          transformer.random_params(config, 0))
    path = tmp_path_factory.mktemp("hf") / "qwen"
    hf.save_hf(config, params, str(path))
    return path


def experiment(preset: str, *overrides: str):
    """configs/r1_zero.py:<preset> through the real flag parser with `overrides`."""
    return config_utils.parse_config_file(f"{ROOT / 'configs' / 'r1_zero'}.py:{preset}",
                                          *overrides)


def test_resolve_model_reads_an_hf_directory_in_its_stored_dtype(hf_dir):
    model = summary.resolve_model(None, str(hf_dir))
    assert model == small_dense()  # bfloat16 stays bfloat16; no weights read to get here
    assert summary.count_params(model)["total"] == _dense_count(model)


def _dense_count(c: config_lib.ModelConfig) -> int:
    """Parameters of a tied-embedding Qwen2 model, counted by hand."""
    attn = c.hidden_size * c.head_dim * (c.num_attention_heads + 2 * c.num_key_value_heads) \
        + c.head_dim * (c.num_attention_heads + 2 * c.num_key_value_heads) \
        + c.num_attention_heads * c.head_dim * c.hidden_size
    layer = attn + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    return c.num_hidden_layers * layer + c.vocab_size * c.hidden_size + c.hidden_size


def test_resolve_model_applies_the_experiments_overrides(hf_dir, tmp_path):
    config = experiment("qwen2_5_3b_countdown", f"base_dir={hf_dir}",
                        "model_overrides.remat_policy=full", "model_overrides.dtype=float32")
    # The preset's accelerator precision makes the master weights float32 (the checkpoint is
    # bfloat16); the command line's dtype wins over the preset's bfloat16 compute.
    assert summary.resolve_model(config) == small_dense().replace(
        remat_policy="full", dtype="float32", param_dtype="float32")
    base = tmp_path / "base"  # an r1jax base directory: model_config.json
    base.mkdir()
    (base / "model_config.json").write_text(json.dumps(small_dense("float32").to_dict()))
    assert summary.resolve_model(config, str(base)) == small_dense("float32").replace(
        remat_policy="full")


def test_resolve_model_names_what_a_directory_lacks(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(FileNotFoundError, match=r"expected an HF checkpoint directory.*"
                                                r"found \['notes.txt'\]"):
        summary.resolve_model(experiment("qwen2_5_3b_countdown", f"base_dir={tmp_path}"))


def test_cli_summarises_an_experiments_hf_model(hf_dir):
    result = subprocess.run(
        [sys.executable, "-m", "r1jax.models.summary",
         "--config=configs/r1_zero.py:qwen2_5_3b_countdown", f"--model_dir={hf_dir}"],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "GQA, 2 layers, d=64" in result.stdout
    assert "KV cache per token (bfloat16)" in result.stdout
