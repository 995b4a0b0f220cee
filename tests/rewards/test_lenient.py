"""Lenient answer reading (the tag-free accuracy diagnostic of R1-Zero runs)."""

import pytest

from r1jax.rewards import countdown, lenient


@pytest.mark.parametrize("completion, side, expected", [
    ("So 84 + 18 - 9 = 93.\nThe answer is 84 + 18 - 9", "expression", "84 + 18 - 9"),
    ("Try 3 * 5 = 15.\nSo 84 + 18 - 9 = 93.", "expression", "84 + 18 - 9"),
    ("ones: 1\nSo 560 - 37 = 523.", "value", "523"),
    ("<think>x</think> <answer>(3 + 4) * 2</answer>", "expression", "(3 + 4) * 2"),
    ("The answer is 7 apples.", "value", "7"),
    ("<work> 2 + 2 = 4 </work> <result> 4 </result>", "value", "4"),
    ("no digits at all", "value", None),
    ("", "expression", None),
])
def test_last_answer(completion, side, expected):
    assert lenient.last_answer(completion, side) == expected


def test_lenient_block_scores_with_the_strict_checker():
    plain = "Try 84 + 9 = 93.\nSo 84 + 18 - 9 = 93.\nThe answer is 84 + 18 - 9"
    assert countdown.accuracy(plain, [84, 18, 9], 93) == 0.0  # no <answer> block
    block = lenient.as_answer_block(plain, "expression")
    assert countdown.accuracy(block, [84, 18, 9], 93) == 1.0


def test_bad_side_and_huge_input():
    with pytest.raises(ValueError, match="side"):
        lenient.last_answer("1", "middle")
    assert lenient.last_answer("x" * 1_000_000 + "\nThe answer is 5", "value") == "5"
