"""Smoke test of experiments/r1_zero.py: the real entry point, base pretraining included."""

import json
import pathlib
import subprocess
import sys

import hf_dirs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_r1_zero_entry_point_pretrains_then_trains(tmp_path):
    base_dir, workdir = tmp_path / "base", tmp_path / "run"
    env = hf_dirs.cheap_cpu_env()  # one CPU device, cheap compiles: the run is mostly compiling
    out = subprocess.run(
        [sys.executable, "experiments/r1_zero.py", "--config=configs/r1_zero.py:smoke",
         "--pretrain_config=configs/pretrain_base.py:smoke", f"--config.base_dir={base_dir}",
         f"--config.toy_base_dir={base_dir}",  # a toy base location: pretraining allowed
         # The smoke tokenizer (300 documents) splits the template finely: prompts > 256 tokens.
         "--config.data.max_prompt_len=512", f"--workdir={workdir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert (base_dir / "DONE").exists()
    info = json.loads((base_dir / "info.json").read_text())
    assert info["corpus"]["packing"] == "best_fit" and 0.0 < info["corpus"]["fill"] <= 1.0
    assert info["pretrain_config"]["num_documents"] == 300  # the smoke preset's corpus
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/pass@1" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 4
    assert all(0.0 <= r["eval/lenient_accuracy"] <= 1.0 for r in evals)
    assert "| base | 0 |" in out.stdout and "| final | 4 |" in out.stdout
    for name in ("reward", "accuracy", "response_length"):
        assert (workdir / "plots" / f"{name}.png").stat().st_size > 0
