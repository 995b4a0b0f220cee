"""experiments/r1.py on the smoke preset: every stage through the real entry point, killed
(SIGKILL) during the rejection-sampling SFT stage once its first checkpoint exists, then rerun:
the finished stages are skipped untouched and the interrupted one resumes and completes."""

import json
import pathlib
import signal
import subprocess
import sys
import time

import hf_dirs

ROOT = pathlib.Path(__file__).resolve().parents[2]
FINISHED = ("base", "cold_start", "reasoning_rl", "rejection")
SFT_STEPS = 10  # a longer SFT with a checkpoint per step leaves time to kill it mid-stage


def _env(tmp_path):
    """CPU with cheap compiles and a persistent cache shared by both runs, so the rerun does
    not recompile what the killed run already compiled."""
    return hf_dirs.cheap_cpu_env(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
                                 JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _command(tmp_path):
    return [sys.executable, "experiments/r1.py", "--config=configs/r1.py:smoke",
            f"--config.base_dir={tmp_path / 'base'}", f"--config.toy_base_dir={tmp_path / 'base'}",
            f"--workdir={tmp_path / 'run'}",
            f"--config.sft.sft.steps={SFT_STEPS}", "--config.sft.sft.checkpoint_every=1"]


def _manifest(tmp_path):
    return json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]


def test_r1_pipeline_smoke_kill_and_resume(tmp_path):
    env = _env(tmp_path)
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(_command(tmp_path), cwd=ROOT, env=env, stdout=log, stderr=log)
    checkpoints = tmp_path / "run" / "sft" / "train" / "checkpoints"
    deadline = time.time() + 600
    while not (checkpoints.exists() and any(p.name.isdigit() for p in checkpoints.iterdir())):
        assert proc.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _manifest(tmp_path)
    assert before["sft"]["status"] == "running"
    assert all(before[n]["status"] == "complete" for n in FINISHED)
    stamps = {n: (before[n]["finished"], before[n].get("outputs")) for n in FINISHED}
    data = tmp_path / "run" / "rejection" / "sft_data.jsonl"
    data_mtime = data.stat().st_mtime_ns

    out = subprocess.run(_command(tmp_path), cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    after = _manifest(tmp_path)
    for n in FINISHED:  # not redone
        assert (after[n]["finished"], after[n].get("outputs")) == stamps[n]
        assert after[n]["attempts"] == 1 and f"[{n}] complete" in out.stdout
    assert data.stat().st_mtime_ns == data_mtime
    assert "[sft] resuming" in out.stdout
    assert after["sft"]["status"] == "complete" and after["sft"]["attempts"] == 2
    assert after["all_scenario"]["status"] == "complete"
    metrics = after["all_scenario"]["metrics"]
    assert 0.0 <= metrics["reward_model"]["eval/accuracy"] <= 1.0
    for n in ("base", "cold_start", "reasoning_rl", "sft", "all_scenario"):
        assert set(after[n]["metrics"]["eval"]) == {"pass@1", "format_rate",
                                                    "language_consistency", "response_length"}
    rejection = after["rejection"]["metrics"]
    assert rejection["non_reasoning"] == 8 and rejection["candidates"] == 4
    _check_stage3(rejection, out.stdout)
    records = [json.loads(line) for line in data.read_text().splitlines()]
    assert all(r["prompt"] and r["completion"] for r in records)
    assert "| all-scenario RL (R1) |" in out.stdout and "| base model |" in out.stdout
    # The interrupted stage resumed from its checkpoints: the pre-kill metrics stay logged.
    steps = [json.loads(line)["step"] for line in
             (tmp_path / "run" / "sft" / "train" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == SFT_STEPS
    _check_eval_finds_the_reward_model(tmp_path / "run")


def _check_stage3(r, stdout):
    """Stage 3's judge route, CoT filters and CoT-prompted non-reasoning data ran and were
    counted (the smoke judge is the untrained stage-2 model: only the plumbing is checked)."""
    assert {"long_paragraph", "code_block"} <= set(r["dropped"])
    # One of the two prompts got a worded reference answer: the judge's route, not the rule's.
    assert r["prompts"] == 2 and r["worded_prompts"] == 1
    passed = r["candidates"] - sum(v for k, v in r["dropped"].items()
                                   if k not in ("incorrect", "duplicate", "per_prompt_cap"))
    assert r["routes"]["rule"]["checked"] == passed  # the word problems have a rule
    # judge_after_rule: the judge saw the rule-accepted samples; only those it accepted stay.
    assert r["routes"]["rule"]["accepted"] <= r["judge"]["judged"] <= passed
    a = r["judge_agreement"]
    assert a["n"] == 4 and 0.0 <= a["agreement"] <= 1.0 and len(a["examples"]) == 4
    assert sum(a["reasons"][k] for k in ("ok", "none", "in_cot", "multiple", "malformed",
                                         "not_last", "unclosed_think", "too_long")) == 4
    assert sum(r["non_reasoning_cot"].values()) == 8
    assert "stage-3 correctness by route: rule" in stdout  # every route and its counts
    assert "held-out items" in stdout and "non-reasoning CoTs:" in stdout
    assert "judge route: 1 of 2 prompts have a reference answer in words" in stdout


def _check_eval_finds_the_reward_model(workdir):
    """experiments/eval.py's loading of a finished pipeline's GRPO runs: the all-scenario run
    gets the reward model saved beside it and the stage-3 judge it recorded (it was scored
    with both), other runs need none."""
    import pytest

    from r1jax.r1 import common, judge
    from r1jax.rl import runs
    from r1jax.train import reward_model as rm

    run = workdir / "all_scenario" / "run"
    scorer, judge_reward = common.run_reward_models(run)
    assert scorer.name == rm.KIND and judge_reward.name == judge.KIND
    model = runs.load(run, extra_rewards=(scorer, judge_reward))
    assert {rm.KIND, judge.KIND} <= set(dict(model.rewards.weights))
    assert common.run_reward_models(workdir / "reasoning_rl" / "run") == ()
    with pytest.raises(FileNotFoundError, match=r"reward 'reward_model'.*pass its directory"):
        common.run_reward_models(run, workdir / "nowhere")


def test_reward_model_init_policy_and_scratch(base_dir):
    """init="policy": the policy's config and trunk, the score head at zero; "scratch": the
    policy's architecture with the overrides, random; a mix of both or a typo is an error."""
    import jax
    import ml_collections
    import numpy as np
    import pytest

    from r1jax.r1 import pipeline
    from r1jax.train import base
    from r1jax.train import reward_model as rm

    policy_config, policy, _ = base.load_base(base_dir)
    c = ml_collections.ConfigDict(dict(init="policy", model={}, train=dict(seed=0)))
    config, params = pipeline.reward_model_init(c, base_dir)
    assert config == policy_config
    assert set(params) == {rm.HEAD, *(n for n in policy if n != "lm_head")}
    for name in set(params) - {rm.HEAD}:
        for got, want in zip(*(jax.tree.leaves(t[name]) for t in (params, policy)), strict=True):
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert not any(np.asarray(x).any() for x in jax.tree.leaves(params[rm.HEAD]))

    c = ml_collections.ConfigDict(dict(init="scratch", model={"num_hidden_layers": 1},
                                       train=dict(seed=0)))
    config, params = pipeline.reward_model_init(c, base_dir)
    assert config.num_hidden_layers == 1 and config.hidden_size == policy_config.hidden_size
    assert not np.array_equal(*(np.asarray(jax.tree.leaves(t["embed_tokens"])[0])
                                for t in (params, policy)))
    with pytest.raises(ValueError, match="reshapes the trunk"):
        pipeline.reward_model_init(ml_collections.ConfigDict(dict(
            init="policy", model={"num_hidden_layers": 1}, train=dict(seed=0))), base_dir)
    with pytest.raises(ValueError, match="'policy' or 'scratch'"):
        pipeline.reward_model_init(ml_collections.ConfigDict(dict(
            init="sft", model={}, train=dict(seed=0))), base_dir)


def test_read_records_validates(tmp_path):
    """Stage-3 data read back: good records in order; a broken line, a record without a string
    completion and an empty file each raise naming the file."""
    import pytest

    from r1jax.r1 import data

    path = tmp_path / "d.jsonl"
    path.write_text('{"prompt": "p1", "completion": "c1"}\n\n{"prompt": "p2", "completion": "c2"}\n')
    assert [r["completion"] for r in data.read_records(path)] == ["c1", "c2"]
    for text, match in (('{"prompt": "p"\n', r"d.jsonl:1: not valid JSON"),
                        ('{"prompt": "p", "completion": 3}\n', r"record 1 needs .*completion"),
                        ("\n", r"d.jsonl: no records")):
        path.write_text(text)
        with pytest.raises(ValueError, match=match):
            data.read_records(path)
