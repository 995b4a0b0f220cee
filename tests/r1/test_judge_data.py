"""Toy grading data: number words, items whose truth is known by construction (and that the
numeric rule cannot grade), the judge's SFT records (their verdicts parse back to the truth)
and the agreement measure."""

import pytest

from r1jax.data import tasks, templates
from r1jax.data.tasks import worded
from r1jax.r1 import judge, judge_data
from r1jax.rewards import numeric


@pytest.mark.parametrize("n, words", [
    (0, "zero"), (7, "seven"), (19, "nineteen"), (20, "twenty"), (42, "forty-two"),
    (100, "one hundred"), (105, "one hundred and five"), (999, "nine hundred and ninety-nine"),
    (1000, "one thousand"), (1005, "one thousand and five"),
    (21_340, "twenty-one thousand three hundred and forty")])
def test_number_words(n, words):
    assert judge_data.number_words(n) == words


def test_number_words_range():
    with pytest.raises(ValueError, match="outside"):
        judge_data.number_words(-1)


def test_items_truth_by_construction_and_beyond_the_rule():
    items = judge_data.grading_items(40, "test", seed=0)
    assert items == judge_data.grading_items(40, "test", seed=0)
    assert sum(it["correct"] for it in items) == 20
    assert {it["form"] for it in items} == set(judge_data.FORMS)
    assert {it["side"] for it in items} == set(judge_data.SIDES)
    for it in items:
        assert (it["value"] == it["reference_value"]) == it["correct"]
        plain = it["reference"] if it["side"] == "candidate" else it["candidate"]
        assert plain.isdigit()  # one side free-form, the other plain digits
    train = {it["question"] for it in judge_data.grading_items(40, "train", seed=0)}
    assert not train & {it["question"] for it in items}  # disjoint splits
    for side in judge_data.SIDES:
        worded_items = [it for it in items if it["form"] == "words" and it["correct"]
                        and it["side"] == side]
        assert worded_items and all(  # the rule cannot read number words: a judge is needed
            numeric.accuracy(f"<answer>{it['candidate']}</answer>", it["reference"]) == 0.0
            for it in worded_items)


def test_worded_example():
    """A word problem's answer in words with its unit, the integer kept as the hidden truth;
    anything but a word problem is refused."""
    ex = {"task": "word_problems", "kind": "travel", "answer": "410", "question": "q"}
    got = worded.worded_example(ex)
    assert got == dict(ex, task=worded.WORDED_TASK,
                       answer="four hundred and ten kilometres", rule_answer="410")
    assert worded.worded_example(ex, "digits_unit")["answer"] == "410 kilometres"
    with pytest.raises(ValueError, match="needs a word problem"):
        worded.worded_example({"kind": "sort", "answer": "a b"})
    # user JSONL rows (no kind) and non-integer answers are not worded (stage 3 keeps them)
    assert worded.can_word(ex) and not worded.can_word({"answer": "8", "question": "q"})
    assert not worded.can_word(dict(ex, answer="2.5"))
    with pytest.raises(ValueError, match="form 'roman'"):
        worded.write_answer(4, "roman", "days")


@pytest.mark.parametrize("name", templates.names())
def test_sft_records_teach_the_verdict_format(name):
    template = templates.get(name)
    items = judge_data.grading_items(6, "train", seed=1)
    for it, rec in zip(items, judge_data.sft_records(items, template)):
        assert rec["prompt"] == template.format_prompt(
            judge.grading_prompt(it["question"], it["reference"], it["candidate"]))
        reply = template.full_response(rec["completion"])
        for stop in template.stop_strings:  # what judge.sample_replies cuts
            if stop != templates.ANSWER_CLOSE and reply.endswith(stop):
                reply = reply[: -len(stop)]
        assert judge.parse_verdict(reply) == judge.Verdict(it["correct"], "ok")


def test_agreement():
    items = [{"correct": True}, {"correct": False}, {"correct": False}, {"correct": True}]
    verdicts = [judge.Verdict(True, "ok"), judge.Verdict(True, "ok"),
                judge.Verdict(False, "none"), judge.Verdict(False, "ok")]
    got = judge_data.agreement(verdicts, items)
    assert got == {"agreement": 0.5, "parsed": 0.75, "false_accept": 0.5, "n": 4}
    with pytest.raises(ValueError, match="3 verdicts for 4"):
        judge_data.agreement(verdicts[:3], items)


def test_mixture_worded_share():
    """The all-scenario mixture with worded_fraction: word problems with worded answers under
    their own task (the judge's route), the integer kept; without it the stream is as before."""
    plain = tasks.get("mixture", general_fraction=0.5)
    mixed = tasks.get("mixture", general_fraction=0.5, worded_fraction=0.5)
    got = [mixed.example("train", 0, i) for i in range(60)]
    kinds = {ex["task"] for ex in got}
    assert kinds == {"preference", "word_problems", worded.WORDED_TASK}
    for ex in got:
        if ex["task"] == worded.WORDED_TASK:
            assert not ex["answer"].isdigit() and ex["rule_answer"].isdigit()
    assert tasks.get("mixture", **mixed.knobs()).knobs() == mixed.knobs()
    assert "worded_fraction" not in plain.knobs()
    assert [plain.example("train", 0, i) for i in range(20)] == [
        tasks.get("mixture", general_fraction=0.5, worded_fraction=0.0).example("train", 0, i)
        for i in range(20)]
