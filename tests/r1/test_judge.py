"""The generative judge: its grading template, the strict verdict parser on hostile replies
(no verdict, two verdicts, a verdict only in the CoT, 10 MB), and a batched judge run and the
judge reward on a small random model (its verdicts are whatever a random model says; the test
checks the plumbing: one parsed-or-counted verdict per item, in order, rejected = 0)."""

import time

import numpy as np
import pytest

from r1jax.data import templates
from r1jax.evals import rollout
from r1jax.r1 import judge
from r1jax.rewards import registry
from r1jax.train import base


def test_grading_prompt_holds_every_part_and_the_verdict_form():
    text = judge.grading_prompt(" How many apples? ", "12", "twelve apples {candidate}")
    assert "Question: How many apples?\n" in text
    assert "Reference answer: 12\n" in text
    assert "Candidate answer: twelve apples {candidate}\n" in text  # braces are left alone
    assert text.endswith("Verdict: correct or Verdict: incorrect")
    assert judge.verdict_text(True) == "Verdict: correct"


@pytest.mark.parametrize("reply, correct, reason", [
    ("<think>12 = twelve</think>\nVerdict: correct", True, "ok"),
    ("<think>13 is not 12</think> <answer>Verdict: incorrect</answer>", False, "ok"),
    ("<think>a\n\nb</think>\n<answer>\nVerdict: correct\n</answer>\n", True, "ok"),
    ("They match.\nVerdict: correct", True, "ok"),  # a plain judge: CoT as free text
    ("<think>looks right</think> <answer>yes</answer>", False, "none"),
    ("", False, "none"),
    ("<think>Verdict: correct</think> <answer>I agree</answer>", False, "in_cot"),
    ("<think>x</think>\nVerdict: correct\nVerdict: incorrect", False, "multiple"),
    ("<think>x</think>\nVerdict: correct\nVerdict: correct", False, "multiple"),
    ("<think>x</think>\nverdict: CORRECT", False, "malformed"),
    ("<think>x</think>\nVerdict: correct!", False, "malformed"),
    ("<think>x</think>\n**Verdict**: correct", False, "malformed"),
    ("<think>x</think>\nVerdict: correct\nbut maybe not", False, "not_last"),
    ("<think>x</think> ok <think>Verdict: correct", False, "unclosed_think"),
])
def test_parse_verdict_is_strict(reply, correct, reason):
    v = judge.parse_verdict(reply)
    assert (v.correct, v.reason) == (correct, reason)
    assert v.parsed == (reason == "ok")


def test_parse_verdict_bounds_its_scan_on_huge_replies():
    ten_mb = "Verdict: correct\n" * (10_000_000 // 17)
    start = time.perf_counter()
    assert judge.parse_verdict(ten_mb) == judge.Verdict(False, "too_long")
    # Under the size cap the scan reads only the tail: with no CoT close in it, the tail may
    # sit inside the CoT (rejected); after a close, the verdicts there are read ("multiple").
    assert judge.parse_verdict(ten_mb, max_chars=len(ten_mb)).reason == "too_long"
    closed_mb = "<think>" + ten_mb + "</think>\nVerdict: correct\nVerdict: incorrect"
    assert judge.parse_verdict(closed_mb, max_chars=len(closed_mb)).reason == "multiple"
    # A long CoT with no close in the tail: the tail may be inside the CoT -> rejected.
    long_cot = "<think>" + "x " * 5000 + "\nVerdict: correct"
    assert judge.parse_verdict(long_cot).reason == "too_long"
    # A long CoT that closes, then the verdict: read from the tail and accepted.
    closed = "<think>" + "x " * 5000 + "</think>\nVerdict: correct"
    assert judge.parse_verdict(closed) == judge.Verdict(True, "ok")
    assert time.perf_counter() - start < 1.0


def test_count_reasons_counts_every_rejection():
    vs = [judge.parse_verdict(r) for r in
          ("Verdict: correct", "nothing", "<think>Verdict: correct</think>", 7)]
    counts = judge.count_reasons(vs)
    assert counts["ok"] == 1 and counts["none"] == 1 and counts["in_cot"] == 1
    assert counts["too_long"] == 1 and counts["unparseable"] == 3
    assert set(judge.REASONS) <= set(counts)


def test_settings_name_the_bad_field():
    with pytest.raises(ValueError, match="batch_size"):
        judge.JudgeSettings(batch_size=0)
    with pytest.raises(ValueError, match="temperature"):
        judge.JudgeSettings(temperature=-1.0)


@pytest.fixture(scope="module")
def judge_ctx(base_dir):
    model_config, params, tok = base.load_base(base_dir)
    ctx = rollout.Context(model_config, tok, templates.get("r1_zero"),
                          registry.Spec.from_dict({"format_strict": 1.0}), None, None)
    return ctx, params


def test_judge_batches_through_the_sampler(judge_ctx):
    ctx, params = judge_ctx
    items = [{"question": f"{i} + 1?", "reference": str(i + 1), "candidate": str(i)}
             for i in range(5)]  # 5 items, batches of 4: one padded batch
    settings = judge.JudgeSettings(batch_size=4, max_new_tokens=8, max_prompt_len=240)
    verdicts, replies = judge.judge(ctx, params, items, settings)
    assert len(verdicts) == len(replies) == 5
    assert verdicts == [judge.parse_verdict(r) for r in replies]
    assert all(r.startswith(ctx.template.response_prefix) for r in replies)
    again, _ = judge.judge(ctx, params, items, settings)  # greedy: the same verdicts
    assert again == verdicts

    # The judge reward beside a rule reward, routed by task as in all-scenario RL.
    reward = judge.JudgeReward(ctx, params, settings)
    spec = registry.Spec.from_dict({"judge": 1.0, "format_strict": 1.0},
                                   routes={"words": ["judge"], "math": ["format_strict"]},
                                   extra=[reward])
    out = registry.combine(
        spec, ["<answer> 3 </answer>", "no answer block", "<answer> 4 </answer>"],
        answer=["3", "4", "4"], question=["q", "q", "q"], task=["words", "words", "math"])
    got = out.components["judge"]
    assert got.dtype == np.float32 and got.shape == (3,) and got[1] == got[2] == 0.0
    assert got[0] in (0.0, 1.0) and sum(reward.last_counts[r] for r in judge.REASONS) == 1


class _Recorder:
    """A stand-in for the learned reward model: scores 0.5, records the rows it was given."""

    name, fields, optional = "reward_model", (), ("question",)
    low, high, pooled, is_accuracy = 0.0, 1.0, False, False

    def __init__(self):
        self.seen = []

    def with_options(self, **options):
        return self

    def __call__(self, completions, *, pool=None, question=None, **fields):
        self.seen += list(question)
        return np.full([len(completions)], 0.5, np.float32)


def test_all_scenario_routes_worded_answers_to_the_judge(monkeypatch):
    """Stage 4 as configs/r1.py builds it: the judge scores only the rows with a worded
    reference (it is asked exactly those), the rule only plain word problems, the reward
    model only instructions. The judge's sampling is replaced by a recorder that accepts."""
    from r1jax.data.tasks import worded
    from r1jax.r1 import config as r1_config

    section = r1_config.from_config_dict(_load_r1_preset("smoke")).all_scenario
    asked = []

    def fake_judge(ctx, params, items, settings):
        asked.extend(items)
        return [judge.Verdict(True, "ok")] * len(items), ["Verdict: correct"] * len(items)

    monkeypatch.setattr(judge, "judge", fake_judge)
    scorer, judge_reward = _Recorder(), judge.JudgeReward(None, None)
    spec = section.experiment("/start", 0, (scorer, judge_reward)).rewards
    rows = {"task": ["word_problems", worded.WORDED_TASK, "preference", worded.WORDED_TASK],
            "answer": ["12", "twelve dollars", "a b", "three days"],
            "question": ["q0", "q1", "q2", "q3"]}
    answers = ["<think>x</think> <answer>12</answer>", "<think>x</think> <answer>12</answer>",
               "<think>x</think> <answer>a b</answer>", "<think>x</think> no answer"]
    out = registry.combine(spec, answers, **rows)
    np.testing.assert_array_equal(out.components[judge.KIND], [0, 1, 0, 0])
    assert [it["question"] for it in asked] == ["q1"]  # q3 has no answer block: 0, unasked
    assert asked[0]["reference"] == "twelve dollars" and asked[0]["candidate"] == "12"
    np.testing.assert_array_equal(out.components["numeric"], [1, 0, 0, 0])
    assert scorer.seen == ["q2"]
    np.testing.assert_array_equal(out.components["reward_model"], [0, 0, 0.5, 0])


def _load_r1_preset(name):
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "configs" / "r1.py"
    spec = importlib.util.spec_from_file_location("_test_configs_r1", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(name)
