"""Smoke test of experiments/distill.py on a hand-made stage-3 dataset (smoke preset)."""

import json
import pathlib
import subprocess
import sys

import hf_dirs

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_distill_entry_point_compares_sft_and_rl_students(tmp_path):
    records = [{"type": "reasoning", "prompt": f"User: what is {i} + 1?\nAssistant:",
                "completion": f" <think>\n{i} + 1 = {i + 1}\n</think>\n<answer> {i + 1} </answer>"}
               for i in range(6)]
    data = tmp_path / "sft_data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    env = hf_dirs.cheap_cpu_env()
    out = subprocess.run(
        [sys.executable, "experiments/distill.py", "--config=configs/r1.py:smoke",
         f"--config.distill.base_dir={tmp_path / 'student'}",
         f"--config.distill.toy_base_dir={tmp_path / 'student'}", f"--workdir={tmp_path / 'run'}",
         f"--data={data}"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    manifest = json.loads((tmp_path / "run" / "distill" / "manifest.json").read_text())
    stages = manifest["stages"]
    assert all(stages[n]["status"] == "complete" for n in ("student_base", "distill_sft",
                                                           "distill_rl"))
    sft, rl = stages["distill_sft"]["metrics"], stages["distill_rl"]["metrics"]
    # The RL student got as many steps as the SFT's estimated FLOPs buy (at least one).
    assert rl["steps"] >= 1 and rl["flops"] > 0 and sft["flops"] > 0
    assert "student + distillation (SFT)" in out.stdout and "student + RL" in out.stdout
    student = json.loads((tmp_path / "student" / "model_config.json").read_text())
    assert student["attention_type"] == "gqa" and student["n_routed_experts"] == 0


def test_rl_steps_for_budget_with_a_cosine_schedule():
    """The tiny preset's RL student has a cosine lr (warmup 5): estimating its steps must not
    build a 1-step cosine schedule (the first full tiny distill run failed there)."""
    from conftest import config_preset

    from r1jax.models import config as config_lib
    from r1jax.models import presets
    from r1jax.r1 import config as r1_config
    from r1jax.r1 import distill

    section = r1_config.from_config_dict(config_preset("r1", "tiny")).distill.rl
    assert section.values.optim.schedule == "cosine" and section.values.optim.warmup_steps > 1
    model_config = config_lib.ModelConfig.from_dict(presets.get("tiny").to_dict())
    rl = section.experiment("unused", 0, total_steps=40)
    per_step = distill.rl_step_flops(model_config, rl.grpo, rl.sampling.max_new_tokens, 100)
    assert distill.rl_steps_for_budget(7.4 * per_step, model_config, section, 100) == 7
    assert distill.rl_steps_for_budget(0.1 * per_step, model_config, section, 100) == 1
