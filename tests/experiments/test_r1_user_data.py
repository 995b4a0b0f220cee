"""The R1 pipeline on the user's model and data: an HF directory as the base (used as is) and a
JSONL file for every stage (cold start, reasoning RL, non-reasoning, preference pairs,
evaluation), from the command line; and the schemas' named errors."""

import json
import pathlib
import subprocess
import sys

import hf_dirs
import pytest

from r1jax.data import templates
from r1jax.r1 import data

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = templates.get("r1_zero")


def _write(path, records):
    return hf_dirs.write_jsonl(path, records)


def test_user_cold_start_records_both_schemas_and_task_formats(tmp_path):
    path = _write(tmp_path / "cold.jsonl", [
        {"question": "What is 1 + 2?", "completion": " <think>1 + 2 = 3</think> <answer> 3 </answer>"},
        {"prompt": "raw prompt", "completion": " done"}])
    records = data.user_cold_start_records(path, "records", 10, TEMPLATE)
    assert records[0]["prompt"] == TEMPLATE.format_prompt("What is 1 + 2?")
    assert records[1]["prompt"] == "raw prompt" and records[1]["completion"] == " done"
    gsm = _write(tmp_path / "gsm.jsonl", hf_dirs.gsm8k_records(3))
    records = data.user_cold_start_records(gsm, "gsm8k", 2, TEMPLATE)
    assert len(records) == 2 and records[0]["completion"].endswith("<answer> 8 </answer>")
    assert "3 + 5 = 8" in records[0]["completion"]
    bad = _write(tmp_path / "bad.jsonl", [{"question": "q", "completion": " c"}, {"question": "q"}])
    with pytest.raises(ValueError, match="bad.jsonl: record 2 needs string fields 'completion'"):
        data.user_cold_start_records(bad, "records", 10, TEMPLATE)
    with pytest.raises(ValueError, match="cold_start_format='csv'"):
        data.user_cold_start_records(bad, "csv", 10, TEMPLATE)


def test_user_pairs_schemas(tmp_path):
    pairs = _write(tmp_path / "nr.jsonl", [{"question": "hi", "response": "hello"}])
    assert data.user_non_reasoning_pairs(pairs, 5) == [("hi", "hello")]
    prefs = _write(tmp_path / "p.jsonl", [{"question": "q", "chosen": "good", "rejected": "bad"}])
    (pair,) = data.user_preference_pairs(prefs, 5, TEMPLATE)
    assert pair["chosen"] == "<think>\n\n</think>\n\n<answer> good </answer>"  # policy layout
    with pytest.raises(ValueError, match=r"p.jsonl: record 1 needs string field\(s\) \['response'\]"):
        data.user_non_reasoning_pairs(prefs, 5)
    with pytest.raises(ValueError, match="no records"):
        data.user_preference_pairs(_write(tmp_path / "empty.jsonl", []), 5, TEMPLATE)


@pytest.mark.slow
def test_r1_pipeline_from_an_hf_directory_on_user_jsonl(tmp_path):
    hf_dirs.build_hf_dir(tmp_path / "hf")
    before = hf_dirs.tree_hash(tmp_path / "hf")
    _write(tmp_path / "train.jsonl", hf_dirs.gsm8k_records(8))
    _write(tmp_path / "test.jsonl", hf_dirs.gsm8k_records(4, offset=100))
    _write(tmp_path / "cold.jsonl", [
        {"question": f"What is {i} + 2?",
         "completion": f" <think>\n{i} + 2 = {i + 2}\n</think>\n<answer> {i + 2} </answer>"}
        for i in range(8)])
    _write(tmp_path / "nonreason.jsonl",
           [{"question": f"Say hello {i}", "response": f"Hello {i}!"} for i in range(4)])
    _write(tmp_path / "prefs.jsonl", [{"question": f"Greet me {i}", "chosen": f"Hello {i}.",
                                       "rejected": "no"} for i in range(10)])
    grpo = [f"--config.{s}.data.{k}={v}" for s in ("reasoning_rl", "all_scenario")
            for k, v in (("train_jsonl", "train.jsonl"), ("test_jsonl", "test.jsonl"),
                         ("jsonl_format", "gsm8k"))]
    env = hf_dirs.cheap_cpu_env()
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "r1.py"), f"--config={ROOT}/configs/r1.py:smoke",
         "--config.base_dir=hf", "--workdir=run", "--config.r1_zero.total_steps=0",
         "--config.data.cold_start_jsonl=cold.jsonl",
         "--config.data.non_reasoning_jsonl=nonreason.jsonl",
         "--config.data.preference_jsonl=prefs.jsonl", "--config.data.eval_jsonl=test.jsonl",
         *grpo], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert "held-out test.jsonl (gsm8k)" in out.stdout
    stages = json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
    assert all(s["status"] == "complete" for s in stages.values()) and len(stages) == 6
    assert stages["base"]["metrics"]["base_dir"] == str(tmp_path / "hf")  # used as is
    assert stages["cold_start"]["metrics"]["examples"] == 8
    assert stages["rejection"]["metrics"]["non_reasoning"] == 4
    sft_data = (tmp_path / "run" / "rejection" / "sft_data.jsonl").read_text()
    assert "Hello 0!" in sft_data
    for stage in ("reasoning_rl", "all_scenario"):
        samples = (tmp_path / "run" / stage / "run" / "samples.jsonl").read_text()
        assert "apples" in samples  # the user's questions, not the toy tasks
    assert hf_dirs.tree_hash(tmp_path / "hf") == before
