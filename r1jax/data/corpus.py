"""The toy pretraining corpus: the "web text" from which the small base model learns.

R1-Zero starts from a base model that can already solve some problems and follow simple
instructions, but has never seen the R1-Zero template or its `<think>`/`<answer>` tags
(arXiv:2501.12948 Sec. 2.2). The corpus mirrors that:

* worked solutions of generated tasks (countdown, arithmetic, word problems) in several plain
  layouts (Problem/Solution, Q/A, dialogues between varying roles), ending in "The answer is X",
  and (`direct_fraction` of them) bare answers without the working, so that the base sometimes
  answers from memory, as base models do;
* instruction documents that ask for the working and the result inside a named pair of
  delimiters, then comply. The delimiter names are drawn per document from `REASONING_NAMES`,
  `RESULT_NAMES` or invented words (`tag_name`: random pieces of the tokenizer's vocabulary,
  so every piece is copied somewhere), and are never `think` or `answer`: the base
  model learns the general skill of copying whatever tags an instruction names (an induction
  copy of ordinary word pieces, since tags are plain text to the toy tokenizer), so under the
  R1-Zero template it sometimes writes `<think>`/`<answer>`, and RL must make that reliable.

Every document is a pure function of (seed, index), so the corpus is reproducible.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from r1jax.data import tasks as tasks_lib

#: Word names of the delimiter pairs of the instruction documents: a document draws one name for
#: its reasoning and one for its result, from these lists or (half the time) as an invented word,
#: so that no pair can be memorised and copying the named tags is the only way to predict them.
#: Deliberately excludes the R1 tags `think` and `answer`.
REASONING_NAMES = (
    "work", "steps", "scratch", "notes", "calc", "plan", "draft", "derivation", "reasoning",
    "working", "trace", "analysis", "thoughts", "method", "idea", "sketch", "proof", "logic",
    "explain", "explanation", "process", "mind", "ponder", "consider", "reflect", "muse",
    "study", "inner", "private", "rough", "path", "chain", "argument", "justify", "detail",
    "story", "route", "approach", "compute", "musing",
)
RESULT_NAMES = (
    "result", "final", "out", "reply", "value", "solution", "conclusion", "total", "output",
    "verdict", "response", "number", "sum", "res", "tally", "end", "claim", "outcome", "figure",
    "say", "report", "finding", "return", "score", "short", "boxed", "key", "done", "give",
    "state", "tell", "target", "goal", "decision", "pick", "choice", "summary", "yield",
    "product", "reach",
)
ROLES = (("User", "Assistant"), ("Student", "Tutor"), ("Q", "A"), ("Human", "AI"),
         ("Learner", "Teacher"), ("Person", "Helper"), ("Client", "Agent"), ("Kid", "Parent"),
         ("Asker", "Solver"), ("Boss", "Worker"))

# Every instruction names both tags and shows the order; the wording varies so that the copy
# skill does not hinge on one sentence.
_INSTRUCTIONS = (
    "Solve the problem. Put the working inside {o1} {c1} and the result inside {o2} {c2}.",
    "Write your {w} enclosed in {o1} {c1} tags, then the final {r} enclosed in "
    "{o2} {c2} tags, i.e. {o1} {w} here {c1} {o2} {r} here {c2}.",
    "First explain the steps between {o1} and {c1}. Then give only the {r} between {o2} "
    "and {c2}.",
    "The reply has two parts: the {w} in {o1} {c1} and the {r} in {o2} {c2}.",
    "Format: {o1} {w} {c1} {o2} {r} {c2}.",
    "{ra} answers {rq}. {ra} shows the {w} inside {o1} {c1} tags and the {r} inside {o2} "
    "{c2} tags, like {o1} ... {c1} {o2} ... {c2}.",
    "A talk between {rq} and {ra}. {rq} asks a question and {ra} solves it. The {w} goes in "
    "{o1} {c1} and the {r} in {o2} {c2}, e.g. {o1} {w} {c1} {o2} {r} {c2}.",
    "Use the tags {o1} {c1} for the {w} and {o2} {c2} for the {r}.",
    "Answer in this layout: {o1} your {w} {c1} then {o2} the {r} {c2}.",
    "Think it through in {o1} {c1}, and state the {r} in {o2} {c2}.",
)


_ONSETS = ("b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "z", "br", "ch", "cl", "dr", "fl", "gr", "pl", "sh", "st", "sw", "th", "tr")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "nk", "ng")
_R1_NAMES = frozenset({"think", "answer"})


def tag_name(names: Sequence[str], rng: np.random.Generator,
             pieces: Sequence[str] | None = None) -> str:
    """A delimiter name: one of `names` (30%), or an invented word (70%); never containing an
    R1 tag name (an invented "swuthink" would teach the tail of `</think>`).

    Invented words are 2-3 random `pieces` of the tokenizer's vocabulary when given (so that
    every piece is, somewhere in the corpus, a copy target whose successor its own bigram
    statistics cannot predict), else 2-3 random syllables (the text the tokenizer trains on).
    """
    while True:
        if rng.random() < 0.3:
            name = names[rng.integers(len(names))]
        elif pieces:
            name = "".join(pieces[i] for i in rng.integers(len(pieces), size=rng.integers(2, 4)))
        else:
            name = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                           + _CODAS[rng.integers(len(_CODAS))] for _ in range(rng.integers(2, 4)))
        if not any(r1 in name for r1 in _R1_NAMES):
            return name


def name_pieces(vocabulary: Sequence[str]) -> tuple[str, ...]:
    """The pieces of a tokenizer vocabulary that can make up an invented tag name: lowercase
    ASCII letters only (no word-boundary marker, digits, bytes or special pieces)."""
    return tuple(sorted({p for p in vocabulary if p.isascii() and p.isalpha() and p.islower()}))


def _split_solution(worked: str) -> tuple[str, str]:
    """(steps, final line) of a worked solution; the final line states the answer."""
    lines = worked.rstrip().split("\n")
    return "\n".join(lines[:-1]).strip(), lines[-1].strip()


_DIRECT_LEADS = ("", "I know this one. ", "Quick one. ", "This is easy. ", "From memory. ")
#: Near misses of a numeric guess from memory: off by one or two, or in the tens digit.
_NEAR_MISSES = (-10, -2, -1, 1, 2, 10)


def guess(answer: str, accuracy: float, rng: np.random.Generator) -> str:
    """The answer as a bare guess from memory states it: right with probability `accuracy`,
    else (for a whole-number answer) a near miss; other answers are always stated as they are.

    Web text states many results without the working, and not all of them right; with
    `accuracy` < 1 a base model cannot learn to answer from memory better than that, however
    often it sees a problem, and working a problem out stays the only reliable way.
    """
    if accuracy >= 1.0 or not answer.isdigit() or rng.random() < accuracy:
        return answer
    value = int(answer) + int(rng.choice(_NEAR_MISSES))
    return str(value if value >= 0 else int(answer) + 1)


def _direct(answer: str, rng: np.random.Generator) -> str:
    """The answer stated without any working (a guess from memory)."""
    return f"{_DIRECT_LEADS[rng.integers(len(_DIRECT_LEADS))]}The answer is {answer}"


def plain_document(example: dict, rng: np.random.Generator, direct: bool = False,
                   direct_accuracy: float = 1.0) -> str:
    """A worked solution (or, when `direct`, the bare answer, right with probability
    `direct_accuracy`: `guess`) in one of several plain layouts."""
    q = example["question"]
    w = (_direct(guess(example["answer"], direct_accuracy, rng), rng) if direct
         else example["worked_solution"])
    layout = rng.integers(4)
    if layout == 0:
        return f"Problem: {q}\nSolution: {'' if direct else 'Let me think. '}{w}\n"
    if layout == 1:
        return f"Question: {q}\n{w}\n"
    role_q, role_a = ROLES[rng.integers(len(ROLES))]
    if layout == 2:
        return f"{role_q}: {q}\n{role_a}: {w}\n"
    lead = "" if direct else "Let us work it out.\n"
    return f"{q}\n{lead}{w}\n"


def instruction_document(example: dict, rng: np.random.Generator, direct: bool = False,
                         pieces: Sequence[str] | None = None,
                         direct_accuracy: float = 1.0) -> str:
    """An instruction naming a delimiter pair, a problem, and a reply that follows it (with the
    bare answer instead of the working in the first pair when `direct`; the result pair then
    repeats that guess)."""
    work = tag_name(REASONING_NAMES, rng, pieces)
    result = tag_name(RESULT_NAMES, rng, pieces)
    while result == work:
        result = tag_name(RESULT_NAMES, rng, pieces)
    role_q, role_a = ROLES[rng.integers(len(ROLES))]
    tags = dict(o1=f"<{work}>", c1=f"</{work}>", o2=f"<{result}>", c2=f"</{result}>")
    instruction = _INSTRUCTIONS[rng.integers(len(_INSTRUCTIONS))].format(
        w=("reasoning", "working", "steps", "thinking")[rng.integers(4)],
        r=("result", "answer", "final value")[rng.integers(3)], rq=role_q, ra=role_a, **tags)
    steps, final = _split_solution(example["worked_solution"])
    stated = guess(example["answer"], direct_accuracy, rng) if direct else example["answer"]
    reasoning = _direct(stated, rng) if direct else f"{steps}\n{final}"
    body = f"{tags['o1']} {reasoning} {tags['c1']} {tags['o2']} {stated} {tags['c2']}"
    if rng.random() < 0.7:
        return f"{instruction}\n{role_q}: {example['question']}\n{role_a}: {body}\n"
    return f"{instruction}\nProblem: {example['question']}\nReply: {body}\n"


def documents(task_names: Sequence[str], seed: int, instruction_fraction: float = 0.3,
              task_knobs: dict | None = None, direct_fraction: float = 0.0,
              pieces: Sequence[str] | None = None,
              direct_accuracy: float = 1.0) -> Iterator[str]:
    """Endless corpus documents from the train split of `task_names`, cycling through tasks.

    Args:
      task_names: registry names (`r1jax.data.tasks.names()`).
      seed: corpus seed; document i depends only on (seed, i) and the arguments.
      instruction_fraction: share of instruction documents.
      task_knobs: optional {task name: knobs} for `tasks.get`.
      direct_fraction: share of documents that state the answer without the working. A base
        model trained on both sometimes answers from memory; whether RL teaches it to work
        problems out instead (longer, more accurate responses) is what R1-Zero is about.
      pieces: tokenizer pieces for invented tag names (`name_pieces`); syllables when None.
      direct_accuracy: how often a bare answer is right (`guess`; 1 = always).
    """
    if not 0.0 <= direct_fraction <= 1.0:
        raise ValueError(f"direct_fraction must be in [0, 1], got {direct_fraction}")
    if not 0.0 <= direct_accuracy <= 1.0:
        raise ValueError(f"direct_accuracy must be in [0, 1], got {direct_accuracy}")
    task_knobs = task_knobs or {}
    streams = [tasks_lib.get(n, **task_knobs.get(n, {})).examples("train", seed)
               for n in task_names]
    rng = np.random.default_rng([seed, 7])
    i = 0
    while True:
        example = next(streams[i % len(streams)])
        instruction = rng.random() < instruction_fraction
        direct = bool(direct_fraction) and rng.random() < direct_fraction
        if instruction:
            yield instruction_document(example, rng, direct, pieces, direct_accuracy)
        else:
            yield plain_document(example, rng, direct, direct_accuracy)
        i += 1
