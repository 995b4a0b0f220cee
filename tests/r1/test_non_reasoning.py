"""CoT-prompted non-reasoning data: the simple-query rule, the thought checks, the records'
layout, and a run of the CoT writer on a small random model (same sampling shapes as
test_judge's, so the compiled sampler is shared)."""

import pytest

from r1jax.data import templates
from r1jax.evals import rollout
from r1jax.r1 import judge, non_reasoning
from r1jax.rewards import format as format_lib
from r1jax.rewards import registry
from r1jax.train import base

CONFIG = non_reasoning.CoTConfig(
    max_thought_chars=40, sampling=judge.JudgeSettings(batch_size=4, max_new_tokens=8,
                                                       max_prompt_len=240))


@pytest.mark.parametrize("question, simple", [
    ("hello", True), ("Hello there!", True), ("Thank you very much.", True), ("你好", True),
    ("What's up?", True), ("Name a fruit", True),  # 3 words < 4
    ("Write a haiku about autumn leaves.", False), ("Hello, can you explain tides?", False),
])
def test_simple_query_rule(question, simple):
    assert non_reasoning.is_simple_query(question) is simple


def test_thought_checks():
    ok = "<think>\nThe user wants a fruit.\n</think>\n<answer> apple </answer>"
    assert non_reasoning.thought_of(ok, CONFIG) == ("The user wants a fruit.", "thought")
    assert non_reasoning.thought_of("<answer> apple </answer>", CONFIG) == (None, "no_thought")
    assert non_reasoning.thought_of("<think> </think> x", CONFIG) == (None, "no_thought")
    for bad in ("<think>" + "long " * 20 + "</think>", "<think>a ```x``` b</think>",
                "<think>用户 wants fruit</think>"):
        assert non_reasoning.thought_of(bad, CONFIG) == (None, "rejected_thought")


@pytest.mark.parametrize("name", templates.names())
def test_record_with_a_thought_keeps_the_layout(name):
    from r1jax.r1 import rejection

    template = templates.get(name)
    record = rejection.non_reasoning_record(template, "Name a colour, please.", "Blue.",
                                            "A colour is asked.")
    turn = template.full_response(record["completion"])
    assert templates.extract_reasoning(turn) == "A colour is asked."
    assert record["prompt"] == template.format_prompt("Name a colour, please.")
    if name == "r1_zero":
        assert format_lib.strict(turn) == 1.0


def test_cot_records_on_a_small_model(base_dir):
    model_config, params, tok = base.load_base(base_dir)
    ctx = rollout.Context(model_config, tok, templates.get("r1_zero"),
                          registry.Spec.from_dict({"format_strict": 1.0}), None, None)
    pairs = [("hi", "Hello!"), ("What is the capital of France?", "Paris."),
             ("Write one line about the sea.", "The sea is wide."), ("thanks", "You're welcome.")]
    records, counts = non_reasoning.cot_records(ctx, params, pairs, CONFIG)
    assert counts["simple"] == 2 and sum(counts.values()) == 4
    assert [r["question"] for r in records] == [q for q, _ in pairs]
    assert [r["answer"] for r in records] == [a for _, a in pairs]
    for r in (records[0], records[3]):  # simple queries: an empty think block
        assert templates.extract_reasoning(r["completion"]) == ""
    thoughts = [templates.extract_reasoning(r["completion"]) for r in records[1:3]]
    assert sum(bool(t) for t in thoughts) == counts["thought"]
