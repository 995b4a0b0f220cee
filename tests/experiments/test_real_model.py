"""The real-model path end to end, without torch: a user's HF directory (r1jax's `save_hf` + a
`tokenizers` BPE with "bos_token": null) and GSM8K-format JSONL, through the real entry points
from the command line only, with relative paths: R1-Zero (smoke-sized), evaluation of the run,
export, and the export's logits equal to the trained params' logits."""

import json
import pathlib
import subprocess
import sys

import hf_dirs
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from r1jax import ownership
from r1jax.models import hf, transformer
from r1jax.rl import export, runs
from r1jax.train import base

ROOT = pathlib.Path(__file__).resolve().parents[2]
ENV = hf_dirs.cheap_cpu_env()


def _run(cwd, script, *flags):
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / script), *flags], cwd=cwd,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def _logits(config, params, tokens):
    return np.asarray(transformer.Transformer(config).apply({"params": params}, tokens))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """R1-Zero for 2 steps from the HF directory on GSM8K JSONL, every path relative."""
    root = tmp_path_factory.mktemp("real")
    hf_dirs.build_hf_dir(root / "hf")
    hf_dirs.write_jsonl(root / "train.jsonl", hf_dirs.gsm8k_records(8))
    hf_dirs.write_jsonl(root / "test.jsonl", hf_dirs.gsm8k_records(4, offset=100))
    before = hf_dirs.tree_hash(root / "hf")
    stdout = _run(root, "r1_zero.py", f"--config={ROOT}/configs/r1_zero.py:smoke",
                  "--config.base_dir=hf", "--config.data.train_jsonl=train.jsonl",
                  "--config.data.test_jsonl=test.jsonl", "--config.data.jsonl_format=gsm8k",
                  "--config.total_steps=2", "--workdir=run")
    assert "| final | 2 |" in stdout
    assert hf_dirs.tree_hash(root / "hf") == before  # the user's checkpoint is read-only
    return root


@pytest.mark.slow
def test_r1_zero_from_an_hf_directory_on_gsm8k_jsonl(trained):
    run = trained / "run"
    assert ownership.is_marked(run)
    config = json.loads((run / "config.json").read_text())
    assert config["base_dir"] == str(trained / "hf")  # resolved before it was recorded
    assert config["data"]["train_jsonl"] == "train.jsonl"
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert samples and all("apples" in s["prompt"] for s in samples)  # the user's questions


@pytest.mark.slow
def test_eval_of_a_run_started_from_an_hf_checkpoint(trained):
    stdout = _run(trained, "eval.py", "--checkpoint=run")
    result = json.loads((trained / "run" / "eval" / "test-heldout-step2.json").read_text())
    assert result["num_prompts"] == 2 and 0.0 <= result["metrics"]["pass@1"] <= 1.0
    assert "wrote run/eval/test-heldout-step2.json" in stdout


@pytest.mark.slow
def test_export_reloads_with_the_trained_logits(trained):
    _run(trained, "export.py", "--checkpoint=run", "--output=export")
    out = trained / "export"
    assert sorted(p.name for p in out.iterdir()) == [
        ".r1jax", "config.json", "generation_config.json", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json"]
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["eos_token_id"] == 0 and hf_config["bos_token_id"] is None
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 0
    model = runs.load_run(trained / "run")
    config, params = hf.load_hf(str(out), dtype=None)
    assert config.param_dtype == "float32" and config.vocab_size == model.config.vocab_size
    tokens = jnp.asarray([model.tokenizer.encode("Tom has 3 apples and buys 5 more.")])
    trained_params = jax.device_get(model.params)
    _, base_params = hf.load_hf(str(trained / "hf"), dtype=None)
    changed = jax.tree.leaves(jax.tree.map(lambda a, b: bool(np.any(a != b)), params,
                                           base_params))
    assert any(changed)  # the export holds the trained policy, not the base
    np.testing.assert_array_equal(_logits(config, params, tokens),
                                  _logits(model.config, trained_params, tokens))
    # --dtype=bfloat16: the weights are the trained ones rounded once, and stay bfloat16.
    bf16 = export.export_run(trained / "run", trained / "export_bf16", dtype="bfloat16")
    assert hf.checkpoint_dtype(str(bf16)) == "bfloat16"
    config16, params16 = hf.load_hf(str(bf16), dtype=None)
    assert config16.param_dtype == "bfloat16"
    expected = base.cast_params(trained_params, "bfloat16")
    jax.tree.map(np.testing.assert_array_equal, params16, expected)
    with pytest.raises(FileExistsError, match="overwrite=True"):  # an export is not replaced
        export.export_run(trained / "run", bf16)
    with pytest.raises(ownership.NotOwnedError):  # nor is the user's directory, ever
        export.export_run(trained / "run", trained / "hf", overwrite=True)


def test_distributed_runs_accept_hf_directories_and_never_pretrain(tmp_path):
    """`--distributed` (allow_pretrain=False) starts from an HF directory; a missing toy base is
    an error naming the single-process pretraining, and no config is even read."""
    from r1jax.train import pretrain

    def never():
        raise AssertionError("pretraining was started")

    hf_dir = hf_dirs.build_hf_dir(tmp_path / "hf")
    assert pretrain.ensure_base(hf_dir, None, never,
                                allow_pretrain=False) == hf_dir
    toy = tmp_path / "toy"
    with pytest.raises(FileNotFoundError, match="a multi-process run does not pretrain"):
        pretrain.ensure_base(toy, toy, never, allow_pretrain=False)
    with pytest.raises(FileNotFoundError, match="only a toy preset pretrains"):
        pretrain.ensure_base(tmp_path / "elsewhere", toy, never)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "hf-tokenizer"]


def test_a_bfloat16_checkpoint_loads_as_bfloat16(tmp_path):
    config, params, tok = base.load_model(hf_dirs.build_hf_dir(tmp_path / "hf", "bfloat16"))
    assert config.param_dtype == config.dtype == "bfloat16" and tok.bos_id is None
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.bfloat16)}
    # Told otherwise (model_overrides.param_dtype=float32: master weights), the arrays follow.
    as_f32 = base.cast_params(params, "float32")
    assert {leaf.dtype for leaf in jax.tree.leaves(as_f32)} == {jnp.dtype(jnp.float32)}
