"""Rejection sampling: each filter on hand-made completions, selection statistics, non-reasoning
records, mixing, the refusing atomic writer, and a smoke run on a small random model."""

import dataclasses
import json

import numpy as np
import pytest

from r1jax.data import templates
from r1jax.data.tasks import arithmetic, preference
from r1jax.r1 import judge, rejection
from r1jax.rewards import format as format_lib
from r1jax.rewards import registry
from r1jax.train import base

GOOD = "<think>three plus four is seven</think> <answer>7</answer>"


# ---------------------------------------------------------------------------------------------
# Filters
# ---------------------------------------------------------------------------------------------


def test_is_complete():
    assert rejection.is_complete(20, True, 20)
    assert not rejection.is_complete(21, True, 20)  # overlong
    assert not rejection.is_complete(5, False, 20)  # cut at the sampling budget


@pytest.mark.parametrize("text, ok", [
    (GOOD, True),
    ("  <think>\nsteps\n</think>\n<answer> 7 </answer>\n", True),
    ("<think>steps</think> 7", False),  # no answer block
    ("<think>a</think><think>b</think><answer>7</answer>", False),  # two think blocks
    ("<think>steps</think><answer>7</answer> and more", False),  # text after the answer
    ("<think>steps</think><answer> </answer>", False),  # empty answer
    ("steps</think><answer>7</answer>", False),  # no opening tag
])
def test_is_well_formatted(text, ok):
    assert rejection.is_well_formatted(text) is ok


def test_is_single_language():
    assert rejection.is_single_language(GOOD, "en")
    mixed = "<think>three 加 four is seven</think> <answer>7</answer>"
    assert not rejection.is_single_language(mixed, "en")
    assert rejection.is_single_language(mixed, "en", 0.75)  # 4 of 5 words are English
    assert rejection.is_single_language("<think>三加四等于七</think><answer>7</answer>", "zh")
    assert not rejection.is_single_language("<think>3 + 4 = 7</think><answer>7</answer>", "en")
    assert rejection.is_single_language("<answer>7</answer>", "en", 0.0)


def test_deduplicate_after_whitespace_normalisation():
    rows = [{"prompt": "p", "completion": " a  b\n"}, {"prompt": "p", "completion": "a b"},
            {"prompt": "q", "completion": "a b"}, {"prompt": "p", "completion": "a  c"}]
    kept, dropped = rejection.deduplicate(rows)
    assert kept == [rows[0], rows[2], rows[3]] and dropped == 1
    assert rejection.normalise_whitespace("\t x \n\n y  ") == "x y"


def test_strip_stop_keeps_format_tags():
    stops = ("</answer>", "<|end_of_sentence|>", "<|User|>")
    assert rejection.strip_stop(GOOD, stops) == GOOD
    assert rejection.strip_stop(GOOD + "<|end_of_sentence|>", stops) == GOOD
    assert rejection.strip_stop("x<|User|>", stops) == "x"


# ---------------------------------------------------------------------------------------------
# Selection, records, mixing
# ---------------------------------------------------------------------------------------------


def candidate(index, completion, *, length=10, stopped=True, accuracy=1.0):
    return {"prompt_index": index, "prompt": f"prompt {index}", "completion": completion,
            "response": completion, "length": length, "stopped": stopped,
            "accuracy": accuracy, "example": {"question": f"q{index}", "answer": "7",
                                              "task": "toy", "key": f"k{index}"}}


def hand_made():
    return [
        candidate(0, GOOD, length=12),
        candidate(0, GOOD.replace(" <answer>", "\n<answer>"), length=14),  # a duplicate
        candidate(0, GOOD, length=40),  # overlong (max_length 32)
        candidate(0, GOOD, stopped=False),  # hit the budget
        candidate(1, "<think>no answer</think>"),  # format
        candidate(1, "<think>three 加 four</think> <answer>7</answer>"),  # language
        candidate(1, "<think>three plus four is eight</think> <answer>8</answer>",
                  accuracy=0.0),  # incorrect
        candidate(1, "<think>seven it is</think> <answer>7</answer>", length=20),
        candidate(2, "<think>four plus three</think> <answer>7</answer>", length=6),
        candidate(2, "<think>again four plus three</think> <answer>7</answer>", length=8),
        candidate(2, "<think>" + "x" * 60 + "</think> <answer>7</answer>"),  # long paragraph
        candidate(2, "<think>so\n```\n3+4\n```</think> <answer>7</answer>"),  # code block
    ]


def test_select_counts_each_drop_once():
    config = rejection.RejectionConfig(max_new_tokens=64, max_length=32, max_paragraph_chars=50)
    kept, stats = rejection.select(hand_made(), config)
    assert [c["length"] for c in kept] == [12, 20, 6, 8]
    assert stats["dropped"] == {"overlong": 2, "format": 1, "language": 1, "long_paragraph": 1,
                                "code_block": 1, "incorrect": 1, "duplicate": 1,
                                "per_prompt_cap": 0}
    assert stats["candidates"] == 12 and stats["kept"] == 4
    assert stats["routes"]["rule"] == {"checked": 6, "accepted": 5, "rejected": 1}
    assert stats["routes"]["judge"]["checked"] == 0 and stats["judge"]["judged"] == 0
    assert stats["kept_per_prompt"] == {"mean": 4 / 3, "histogram": {"1": 2, "2": 1}}
    assert stats["mean_length_tokens"] == np.mean([12, 20, 6, 8])
    capped, stats = rejection.select(hand_made(), rejection.RejectionConfig(
        max_new_tokens=64, max_length=32, max_per_prompt=1, max_paragraph_chars=50))
    assert [c["length"] for c in capped] == [12, 20, 6]
    assert stats["dropped"]["per_prompt_cap"] == 1


def test_cot_filters_read_the_chain_of_thought_only():
    para = "<think>short\n\n" + "y" * 30 + "\n \nend</think> <answer>" + "z" * 99 + "</answer>"
    assert rejection.has_long_paragraph(para, 29) and not rejection.has_long_paragraph(para, 30)
    # A single newline does not split a paragraph: this one has 19 characters.
    assert rejection.has_long_paragraph("<think>" + "w" * 9 + "\n" + "w" * 9 + "</think>", 18)
    assert rejection.has_code_block("<think>```py\nx\n```</think><answer>7</answer>")
    assert not rejection.has_code_block("<think>x</think><answer>```7```</answer>")
    assert not rejection.has_code_block("no think block ```")
    assert rejection.RejectionConfig(drop_code_blocks=False, max_paragraph_chars=None)


def fake_judge(replies):
    """A judge that answers with canned replies, recording what it was asked."""
    asked = []

    def judge_fn(cands):
        asked.extend(cands)
        out = [replies[c["prompt_index"]] for c in cands]
        return [judge.parse_verdict(r) for r in out], out
    return judge_fn, asked


def test_routing_rule_judge_and_judge_after_rule():
    rows = [candidate(0, GOOD, accuracy=0.0), candidate(1, GOOD), candidate(2, GOOD),
            candidate(3, "<think>x</think> <answer>8</answer>")]
    for c in rows[:2]:
        c["task"] = "words"  # no rule: the judge decides (the rule's 0.0 is ignored)
    replies = {0: "<think>same</think> Verdict: correct", 1: "no verdict at all",
               2: "Verdict: incorrect", 3: "Verdict: correct"}
    judge_fn, asked = fake_judge(replies)
    config = rejection.RejectionConfig(judge_tasks=("words",), judge_examples=1)
    kept, stats = rejection.select(rows, config, judge_fn)
    assert [c["prompt_index"] for c in kept] == [0, 2, 3]  # 1: unparseable reply, rejected
    assert [c["prompt_index"] for c in asked] == [0, 1]
    assert stats["routes"] == {"rule": {"checked": 2, "accepted": 2, "rejected": 0},
                               "judge": {"checked": 2, "accepted": 1, "rejected": 1}}
    assert stats["judge"]["unparseable"] == 1 and stats["judge"]["none"] == 1
    assert stats["judge"]["examples"] == [{"question": "q0", "reference": "7", "candidate": "7",
                                           "verdict": "correct", "reply": replies[0]}]
    after = dataclasses.replace(config, judge_after_rule=True)
    judge_fn, asked = fake_judge(replies)
    kept, stats = rejection.select(rows, after, judge_fn)
    assert [c["prompt_index"] for c in kept] == [0, 3]  # 2: the judge overrules the rule
    assert [c["prompt_index"] for c in asked] == [0, 1, 2, 3]
    assert stats["routes"]["rule"] == {"checked": 2, "accepted": 1, "rejected": 1}
    with pytest.raises(ValueError, match="no judge"):
        rejection.select(rows, config)


def test_routes_count_against_the_ground_truth():
    """Samples with a hidden truth (a worded reference's integer): each route counts how many
    of those it accepted are truly correct, and how many truly correct ones it accepted; a
    route without such samples has no truth counts."""
    rows = [candidate(i, GOOD) for i in range(4)]
    for c, truth in zip(rows, (1.0, 0.0, 1.0, 0.0)):
        c.update(task="words", truth=truth)
    replies = {0: "Verdict: correct", 1: "Verdict: correct", 2: "Verdict: incorrect",
               3: "Verdict: incorrect"}
    judge_fn, _ = fake_judge(replies)
    _, stats = rejection.select(rows + [candidate(4, GOOD)],
                                rejection.RejectionConfig(judge_tasks=("words",)), judge_fn)
    assert stats["routes"]["judge"] == {
        "checked": 4, "accepted": 2, "rejected": 2, "with_truth": 4, "truly_correct": 2,
        "accepted_with_truth": 2, "accepted_truly_correct": 1}
    assert stats["routes"]["rule"] == {"checked": 1, "accepted": 1, "rejected": 0}
    fields = {"answer": ["four days", "7", "8 days"], "rule_answer": ["4", None, "8"]}
    got = rejection._truth(registry.get("numeric"), ["<answer>4</answer>", "<answer>7</answer>",
                                                     "<answer>9</answer>"], fields, None)
    np.testing.assert_array_equal(got, [1.0, 1.0, 0.0])
    assert rejection._truth(registry.get("numeric"), ["x"], {"answer": ["1"]}, None) is None


@pytest.mark.parametrize("name", templates.names())
def test_non_reasoning_completion_has_an_empty_think_block(name):
    template = templates.get(name)
    record = rejection.non_reasoning_record(template, "Count from 1 to 3.", "Sure! 1 2 3")
    turn = template.full_response(record["completion"])
    assert templates.extract_reasoning(turn) == ""
    assert record["prompt"] == template.format_prompt("Count from 1 to 3.")
    assert "Sure! 1 2 3" in turn and turn.endswith(template.stop_strings[0])
    if name == "r1_zero":
        assert format_lib.strict(turn) == 1.0


def test_mix_share_and_determinism():
    reasoning = [{"type": "reasoning", "i": i} for i in range(6)]
    extra = [{"type": "non_reasoning", "i": i} for i in range(10)]
    mixed = rejection.mix(reasoning, extra, 0.25, seed=0)
    assert len(mixed) == 8 and sum(r["type"] == "non_reasoning" for r in mixed) == 2
    assert mixed == rejection.mix(reasoning, extra, 0.25, seed=0)
    assert mixed != rejection.mix(reasoning, extra, 0.25, seed=1)
    assert len(rejection.mix(reasoning, extra[:1], 0.5, seed=0)) == 7  # a short pool: all of it


def test_write_is_atomic_and_refuses_a_different_dataset(tmp_path):
    path = tmp_path / "out" / "sft.jsonl"
    records = [{"prompt": "p", "completion": "数 🙂"}, {"prompt": "q", "completion": "c"}]
    rejection.write_dataset(records, path, {"kept": 2})
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == records
    assert json.loads(rejection.stats_path(path).read_text()) == {"kept": 2}
    rejection.write_dataset(records, path, {"kept": 2})  # the same dataset again: fine
    with pytest.raises(FileExistsError, match="different dataset"):
        rejection.write_dataset(records[:1], path, {"kept": 1})
    assert path.read_text(encoding="utf-8").splitlines() == lines  # untouched
    assert json.loads(rejection.stats_path(path).read_text()) == {"kept": 2}
    rejection.write_dataset(records[:1], path, {"kept": 1}, overwrite=True)
    assert len(path.read_text().splitlines()) == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["sft.jsonl", "sft.stats.json"]


def test_config_names_the_bad_field():
    with pytest.raises(ValueError, match="non_reasoning_fraction"):
        rejection.RejectionConfig(non_reasoning_fraction=1.0)
    with pytest.raises(ValueError, match="language"):
        rejection.RejectionConfig(language="fr")
    with pytest.raises(ValueError, match="unknown reward"):
        rejection.RejectionConfig(accuracy_reward="nope")


# ---------------------------------------------------------------------------------------------
# Smoke: the whole function on a small random model
# ---------------------------------------------------------------------------------------------


def test_rejection_sample_smoke(base_dir, tmp_path):
    model_config, params, tok = base.load_base(base_dir)
    template = templates.get("r1_zero")
    task = arithmetic.Arithmetic(min_digits=1, max_digits=2)
    examples = [task.example("train", 0, i) for i in range(5)]  # 5 prompts: one padded batch
    pairs = [preference.Preference().example("train", 0, i) for i in range(20)]
    config = rejection.RejectionConfig(num_samples=2, batch_size=4, max_new_tokens=12,
                                       accuracy_reward="numeric", min_language=0.0,
                                       non_reasoning_fraction=0.5)
    out = tmp_path / "sft.jsonl"
    stats = rejection.rejection_sample(
        model_config, params, tok, template, examples, config, out,
        non_reasoning=[(p["question"], p["chosen"]) for p in pairs])
    assert stats["candidates"] == 10 and stats["prompts"] == 5
    assert stats["kept"] + sum(stats["dropped"].values()) == 10
    assert stats["non_reasoning"] == stats["kept"]  # fraction 0.5
    assert sum(stats["kept_per_prompt"]["histogram"].values()) == 5
    assert json.loads(rejection.stats_path(out).read_text()) == stats
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == stats["total"] == stats["kept"] + stats["non_reasoning"]
    again = rejection.rejection_sample(  # the same seed: the same dataset, so no refusal
        model_config, params, tok, template, examples, config, out,
        non_reasoning=[(p["question"], p["chosen"]) for p in pairs])
    assert again == stats
