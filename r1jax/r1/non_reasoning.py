"""CoT-prompted non-reasoning SFT data (DeepSeek-R1, arXiv:2501.12948, Sec. 2.3.3).

R1: "For certain non-reasoning tasks, we call DeepSeek-V3 to generate a potential chain-of-
thought before answering the question by prompting. However, for simpler queries, such as
'hello' we do not provide a CoT in response." Here a model (at toy scale the stage-2 policy)
gets `cot_request(question)`, which asks for a brief chain of thought, and its think block
becomes the thought of the SFT example, whose answer stays the dataset's response. The SFT
prompt is the plain question: the model learns to think briefly unprompted.

Simple queries keep an empty think block. The rule (`is_simple_query`): after lower-casing
and dropping punctuation, the query is a greeting or thanks from `GREETINGS`, or it has fewer
than `min_words` words (default `MIN_WORDS`).

A generated thought is used only when it passes the reasoning data's CoT checks: a closed
think block that is not empty, at most `max_thought_chars` characters, in one language, no
long paragraph and no code block (`rejection`'s filters). Otherwise the example falls back
to an empty think block; every outcome is counted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from r1jax.data import templates
from r1jax.evals import rollout
from r1jax.r1 import judge, rejection

MIN_WORDS = 4
GREETINGS = frozenset({
    "hi", "hello", "hey", "hi there", "hello there", "good morning", "good afternoon",
    "good evening", "good night", "thanks", "thank you", "thanks a lot", "thank you very much",
    "bye", "goodbye", "how are you", "whats up", "你好", "谢谢", "再见"})
COT_INSTRUCTION = ("Think briefly (one or two sentences) about what is asked, then answer.\n")
OUTCOMES = ("simple", "thought", "no_thought", "rejected_thought")


def normalise_query(question: str) -> str:
    """Lower case, punctuation dropped (apostrophes too: "what's" -> "whats"), single spaces."""
    return " ".join(re.sub(r"[^\w\s]", "", question.lower()).split())


def is_simple_query(question: str, min_words: int = MIN_WORDS) -> bool:
    """The documented rule: a greeting / thanks, or fewer than `min_words` words."""
    text = normalise_query(question)
    return text in GREETINGS or len(text.split()) < min_words


def cot_request(question: str) -> str:
    """The prompt that asks the CoT writer for a brief chain of thought before answering."""
    return COT_INSTRUCTION + question.strip()


@dataclasses.dataclass(frozen=True)
class CoTConfig:
    """min_words: the simple-query threshold; max_thought_chars: the longest thought kept;
    max_paragraph_chars, language, min_language: the CoT checks of the reasoning data;
    sampling: how the writer samples (`judge.JudgeSettings`: batch, tokens, temperature)."""

    min_words: int = MIN_WORDS
    max_thought_chars: int = 400
    max_paragraph_chars: int = 2000
    language: str = "en"
    min_language: float = 1.0
    sampling: judge.JudgeSettings = judge.JudgeSettings(max_new_tokens=64)

    def __post_init__(self):
        for name in ("min_words", "max_thought_chars", "max_paragraph_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"CoTConfig.{name}: must be >= 1, got {getattr(self, name)!r}")
        if not 0.0 <= self.min_language <= 1.0:
            raise ValueError(f"CoTConfig.min_language: {self.min_language!r} not in [0, 1]")


def thought_of(reply: str, config: CoTConfig) -> tuple[str | None, str]:
    """The usable thought of a writer's reply (its full assistant turn) and the outcome:
    (thought, "thought"), or (None, "no_thought" | "rejected_thought")."""
    thought = templates.extract_reasoning(reply)
    if not thought:
        return None, "no_thought"
    turn = f"{templates.THINK_OPEN}{thought}{templates.THINK_CLOSE}"
    ok = (len(thought) <= config.max_thought_chars
          and rejection.is_single_language(turn, config.language, config.min_language)
          and not rejection.has_long_paragraph(turn, config.max_paragraph_chars)
          and not rejection.has_code_block(turn))
    return (thought, "thought") if ok else (None, "rejected_thought")


def cot_records(ctx: rollout.Context, params, pairs: Sequence[tuple[str, str]],
                config: CoTConfig = CoTConfig()) -> tuple[list[dict], dict[str, int]]:
    """The SFT records of (question, response) pairs, in order, with brief CoTs.

    Args:
      ctx, params: the CoT writer (its model, tokenizer and template).
      pairs: non-reasoning (question, response) pairs.
      config: the simple-query rule, the thought checks and the sampling.
    Returns:
      (records as `rejection.non_reasoning_record`, {outcome: n} over `OUTCOMES`).
    """
    todo = [i for i, (q, _) in enumerate(pairs) if not is_simple_query(q, config.min_words)]
    replies = judge.sample_replies(ctx, params, [cot_request(pairs[i][0]) for i in todo],
                                   config.sampling)
    thoughts, counts = {}, dict.fromkeys(OUTCOMES, 0)
    counts["simple"] = len(pairs) - len(todo)
    for i, reply in zip(todo, replies):
        thoughts[i], outcome = thought_of(reply, config)
        counts[outcome] += 1
    records = [rejection.non_reasoning_record(ctx.template, q, r, thoughts.get(i) or "")
               for i, (q, r) in enumerate(pairs)]
    return records, counts
