"""Toy preference pairs for reward-model training, and simple instructions with no chain of thought.

DeepSeek-R1's all-scenario RL (arXiv:2501.12948, Sec. 2.3.4) scores general prompts with a
preference reward model trained on (chosen, rejected) response pairs (the DeepSeek-V3 pipeline);
its rejection-sampling SFT mixes in non-reasoning data answered with no CoT (Sec. 2.3.3). This
task generates both locally: an instruction with a checkable answer, a chosen response that is
correct, helpful and polite, and a rejected response with exactly one defect:

  wrong       a polite wrapping around a wrong answer: two neighbours swapped or a digit
              written twice (sort), a number skipped or written twice (count), a letter left in
              lowercase or the word unchanged (upper), another word repeated or one of the
              copies replaced by another word (repeat);
  unhelpful   a refusal, an evasion or the question echoed back;
  rude        the correct answer wrapped in an insult.

Instruction kinds: `sort` (single digits, smallest first), `count` (from a to b), `upper` (a word
in capital letters), `repeat` (a word n times). The problem key is the instruction's content
(kind and numbers or word), so however the wrappers and the defect are drawn, a problem stays in
one split. Fields: `question`, `answer` (the correct bare answer), `chosen`, `rejected`,
`defect`, `mistake` (which wrong answer; "" for the other defects), `kind`; `worked_solution` is
the chosen response (there is no chain of thought). The task is not in `tasks.REGISTRY`, which
lists reasoning tasks for RL.
"""

from __future__ import annotations

import numpy as np

from r1jax.data.tasks import base

KINDS = ("sort", "count", "upper", "repeat")
DEFECTS = ("wrong", "unhelpful", "rude")

WORDS = (
    "apple", "river", "garden", "pencil", "window", "tiger", "cloud", "bread", "music", "stone",
    "forest", "candle", "rocket", "silver", "dragon", "orange", "planet", "winter", "button",
    "yellow", "castle", "mirror", "pepper", "rabbit", "summer", "turtle", "violin", "island",
    "jacket", "kettle", "lemon", "marble", "needle", "ocean", "pillow", "quartz", "ribbon",
    "saddle", "tomato", "valley", "wagon", "zebra", "anchor", "basket", "cotton", "desert",
    "engine", "feather", "guitar", "hammer", "insect", "jungle", "kitten", "ladder", "meadow",
    "nickel", "paddle", "puzzle", "saucer", "tunnel",
)  # fmt: skip

POLITE = (
    "{a}", "Sure! {a}", "Of course. Here it is: {a}", "Happy to help: {a}",
    "Here you go: {a}. Anything else?", "{a}. I hope this helps.",
    "Certainly: {a}", "Great question! The answer is: {a}",
)
RUDE = (
    "Ugh, fine. {a}. Stop wasting my time.", "{a}. Even a child could do that.",
    "Obviously {a}, you idiot.", "Whatever. {a}", "{a}. Don't ask me such stupid things again.",
    "Seriously? It's {a}. Figure it out yourself.", "{a}. Now go away.",
    "What a dumb request. {a}",
)
UNHELPFUL = (
    "I don't know.", "I'd rather not do that.", "You can do that yourself.",
    "Sorry, I can't help with that.", "That is an interesting question.", "Maybe later.",
    "Hmm, let me think about it some other time.", "You asked: {q}", "Why do you want that?",
)

_QUESTIONS = {
    "sort": ("Sort these numbers from smallest to largest: {x}.",
             "Please put these numbers in increasing order: {x}."),
    "count": ("Count from {x} to {y}.", "Please count from {x} up to {y}."),
    "upper": ("Write the word {x} in capital letters.", "Please write {x} in uppercase."),
    "repeat": ("Repeat the word {x} {y} times.", "Please write {x} {y} times."),
}


def _pick(rng: np.random.Generator, options):
    return options[int(rng.integers(len(options)))]


def _show(xs) -> str:
    return " ".join(map(str, xs))


def _twice(rng, xs: list) -> list:
    """xs with one element written twice (next to itself)."""
    i = int(rng.integers(len(xs)))
    return xs[:i + 1] + xs[i:]


def _sort(rng):
    digits = [int(d) for d in rng.choice(10, size=int(rng.integers(4, 7)), replace=False)]
    answer = sorted(digits)
    if rng.random() < 0.5:
        i = int(rng.integers(len(answer) - 1))
        wrong, mistake = answer[:i] + [answer[i + 1], answer[i]] + answer[i + 2:], "swap"
    else:
        wrong, mistake = _twice(rng, answer), "twice"
    return dict(x=_show(digits)), _show(answer), _show(wrong), mistake, _show(digits)


def _count(rng):
    a = int(rng.integers(1, 13))
    b = a + int(rng.integers(3, 7))
    answer = list(range(a, b + 1))
    if rng.random() < 0.5:
        i = int(rng.integers(1, len(answer) - 1))
        wrong, mistake = answer[:i] + answer[i + 1:], "skip"
    else:
        wrong, mistake = _twice(rng, answer), "twice"
    return dict(x=a, y=b), _show(answer), _show(wrong), mistake, f"{a}-{b}"


def _upper(rng):
    word = _pick(rng, WORDS)
    answer = word.upper()
    if rng.random() < 0.5:
        i = int(rng.integers(len(word)))
        wrong, mistake = answer[:i] + answer[i].lower() + answer[i + 1:], "one_lower"
    else:
        wrong, mistake = word, "unchanged"
    return dict(x=word), answer, wrong, mistake, word


def _repeat(rng):
    word, n = _pick(rng, WORDS), int(rng.integers(2, 6))
    other = _pick(rng, [w for w in WORDS if w != word])
    if rng.random() < 0.5:
        wrong, mistake = [other] * n, "other_word"
    else:
        i = int(rng.integers(n))
        wrong, mistake = [word] * i + [other] + [word] * (n - i - 1), "odd_one"
    return dict(x=word, y=n), " ".join([word] * n), " ".join(wrong), mistake, f"{word}*{n}"


_CONTENT = {"sort": _sort, "count": _count, "upper": _upper, "repeat": _repeat}


class Preference(base.Task):
    """(instruction, chosen, rejected) triples; see the module docstring.

    Args:
      kinds: instruction kinds to draw from (a subset of `KINDS`).
      defects: defects of the rejected response to draw from (a subset of `DEFECTS`).
    """

    name = "preference"

    def __init__(self, *, kinds=KINDS, defects=DEFECTS, test_percent=10):
        super().__init__(test_percent=test_percent)
        kinds, defects = tuple(kinds), tuple(defects)
        if not kinds or set(kinds) - set(KINDS):
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
        if not defects or set(defects) - set(DEFECTS):
            raise ValueError(f"defects must be a non-empty subset of {DEFECTS}, got {defects}")
        self.kinds, self.defects = kinds, defects

    def knobs(self):
        return dict(super().knobs(), kinds=self.kinds, defects=self.defects)

    def _generate(self, rng: np.random.Generator):
        kind, defect = _pick(rng, self.kinds), _pick(rng, self.defects)
        slots, answer, wrong, mistake, key = _CONTENT[kind](rng)
        question = _pick(rng, _QUESTIONS[kind]).format(**slots)
        chosen = _pick(rng, POLITE).format(a=answer)
        if defect == "wrong":
            rejected = _pick(rng, POLITE).format(a=wrong)
        elif defect == "rude":
            rejected = _pick(rng, RUDE).format(a=answer)
        else:
            rejected = _pick(rng, UNHELPFUL).format(q=question)
        return {
            "key": f"{kind}:{key}",
            "question": question,
            "answer": answer,
            "chosen": chosen,
            "rejected": rejected,
            "defect": defect,
            "mistake": mistake if defect == "wrong" else "",
            "kind": kind,
            "worked_solution": chosen,
        }
