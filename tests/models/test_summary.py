"""Parameter counts from shapes: DeepSeek-V3 671B / 37B, V2-Lite 15.7B / 2.4B; the CLI runs."""

import subprocess
import sys

from r1jax.models import config as config_lib
from r1jax.models import presets, summary


def _counts(name):
    return summary.count_params(config_lib.ModelConfig.from_dict(presets.get(name)))


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


def test_cli_prints_the_summary():
    result = subprocess.run(
        [sys.executable, "-m", "r1jax.models.summary", "--config=configs/model.py:tiny",
         "--config.num_hidden_layers=2"],
        capture_output=True, text=True, cwd=summary.__file__.rsplit("/r1jax/", 1)[0],
        timeout=120)
    assert result.returncode == 0, result.stderr
    assert "total parameters" in result.stdout and "KV cache per token" in result.stdout
    assert "2 layers" in result.stdout
