"""A generative judge (DeepSeek-R1, arXiv:2501.12948, Sec. 2.3.3): a model grades a candidate
answer against the reference answer where no rule can check it.

R1 feeds "the ground-truth and model predictions into DeepSeek-V3 for judgment". Here any
r1jax model is the judge: `grading_prompt` writes the question, the reference and the
candidate into a fixed template, the judge's reply is sampled through the batched sampler
(`rollout.sample`, greedy by default) and `parse_verdict` reads it strictly:

  * the judge may think first (a `<think>` block, or free text before the verdict);
  * the reply must end with exactly one verdict line, `Verdict: correct` or
    `Verdict: incorrect`, after the chain of thought (outside any `<think>` block);
  * only the last `TAIL_CHARS` characters are read (a bounded scan), and a reply longer than
    `MAX_CHARS` is rejected without being read at all.

Anything else is rejected and counted under a reason (`REASONS`): no verdict, several verdict
lines after the CoT (conflicting or not: "exactly one"), a verdict only inside the CoT, a
malformed verdict line, a verdict that is not the last line, an unclosed `<think>` block, or
a reply too long to read. A rejected reply counts as "incorrect" for whoever asks (the
sample is dropped, the reward is 0), never as correct.

`JudgeReward` wraps a judge in the reward registry's interface, so all-scenario RL can route
rows of a task to it (`registry.Spec.extra` and `reward_routes`), beside the reward model.
A run scored with it records which judge in `judge.json` beside its run directory
(`save_reward` / `load_reward`), so the run can be loaded again for evaluation.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import pathlib
import re
from collections.abc import Sequence

import jax
import numpy as np

from r1jax.data import pipeline, templates
from r1jax.evals import rollout
from r1jax.rewards import registry
from r1jax.train import base

CORRECT, INCORRECT = "correct", "incorrect"
KIND = "judge"  # the reward's name in a Spec
POINTER = "judge.json"  # beside a run scored by a judge: which model, how it sampled
VERDICT_PREFIX = "Verdict:"
TAIL_CHARS = 4096  # the scan reads at most this many characters from the end of a reply
MAX_CHARS = 1 << 20  # a longer reply is rejected unread (a runaway judge)
REASONS = ("ok", "none", "in_cot", "multiple", "malformed", "not_last", "unclosed_think",
           "too_long")

# A line that looks like a verdict in any spelling ("verdict - Correct", "**Verdict**:"):
# all of them count when deciding whether there is exactly one, only the exact form passes.
_VERDICT_LIKE = re.compile(r"^[\s*#>_`-]*verdict\b", re.IGNORECASE)
_STRICT = re.compile(rf"^{VERDICT_PREFIX} ({CORRECT}|{INCORRECT})$")

# Short on purpose: toy judges have 256-token contexts. "Same answer" covers number words,
# units and formatting ("twelve apples" vs 12).
GRADING_TEMPLATE = (
    "Question: {question}\n"
    "Reference answer: {reference}\n"
    "Candidate answer: {candidate}\n"
    "Is the candidate the same answer as the reference? Think, then end with one line: "
    f"{VERDICT_PREFIX} {CORRECT} or {VERDICT_PREFIX} {INCORRECT}")


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A parsed judge reply: `correct` is True only for an accepted `Verdict: correct`;
    `reason` is one of `REASONS` ("ok" when the reply parsed)."""

    correct: bool
    reason: str

    @property
    def parsed(self) -> bool:
        return self.reason == "ok"


def grading_prompt(question: str, reference: str, candidate: str) -> str:
    """The judge's question for one item (placeholders filled by `str.replace`, so braces in
    the texts are safe; each text is stripped)."""
    text = GRADING_TEMPLATE
    for key, value in (("question", question), ("reference", reference),
                       ("candidate", candidate)):
        text = text.replace("{" + key + "}", str(value).strip())
    return text


def verdict_text(correct: bool) -> str:
    """The verdict line a judge must end with."""
    return f"{VERDICT_PREFIX} {CORRECT if correct else INCORRECT}"


def parse_verdict(reply: str, *, tail_chars: int = TAIL_CHARS,
                  max_chars: int = MAX_CHARS) -> Verdict:
    """The strict verdict of a judge reply (see the module docstring).

    Args:
      reply: the judge's whole assistant turn (`template.full_response`), answer tags allowed
        around the verdict.
      tail_chars: how many characters from the end are read.
      max_chars: replies longer than this are rejected ("too_long") unread.
    Returns:
      A `Verdict`; `correct` is False for every rejected reply.
    """
    if not isinstance(reply, str) or len(reply) > max_chars:
        return Verdict(False, "too_long")
    tail = reply[-tail_chars:]
    close = tail.rfind(templates.THINK_CLOSE)
    after = tail[close + len(templates.THINK_CLOSE):] if close >= 0 else tail
    if templates.THINK_OPEN in after:  # a CoT opened after the last close never ended
        return Verdict(False, "unclosed_think")
    if close < 0 and len(reply) > len(tail):  # the tail may sit inside a long CoT
        return Verdict(False, "too_long")
    for tag in (templates.ANSWER_OPEN, templates.ANSWER_CLOSE):
        after = after.replace(tag, "\n")
    lines = [line.strip() for line in after.splitlines() if line.strip()]
    found = [i for i, line in enumerate(lines) if _VERDICT_LIKE.match(line)]
    if not found:
        cot = (tail[:close] if close >= 0 else "").replace(templates.THINK_OPEN, "\n")
        in_cot = any(_VERDICT_LIKE.match(line) for line in cot.splitlines())
        return Verdict(False, "in_cot" if in_cot else "none")
    if len(found) > 1:
        return Verdict(False, "multiple")
    match = _STRICT.match(lines[found[0]])
    if match is None:
        return Verdict(False, "malformed")
    if found[0] != len(lines) - 1:
        return Verdict(False, "not_last")
    return Verdict(match.group(1) == CORRECT, "ok")


def count_reasons(verdicts: Sequence[Verdict]) -> dict[str, int]:
    """{reason: n} over `REASONS` (zeros included), plus "unparseable": the rejected ones."""
    counts = collections.Counter(v.reason for v in verdicts)
    out = {r: counts[r] for r in REASONS}
    out["unparseable"] = len(verdicts) - counts["ok"]
    return out


@dataclasses.dataclass(frozen=True)
class JudgeSettings:
    """How the judge samples: `batch_size` prompts per call, `max_new_tokens` per reply,
    `max_prompt_len` tokens per grading prompt, `temperature` (0: greedy), `seed`."""

    batch_size: int = 8
    max_new_tokens: int = 64
    max_prompt_len: int = 512
    temperature: float = 0.0
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "max_new_tokens", "max_prompt_len"):
            if getattr(self, name) < 1:
                raise ValueError(f"JudgeSettings.{name}: must be >= 1, got "
                                 f"{getattr(self, name)!r}")
        if self.temperature < 0:
            raise ValueError(f"JudgeSettings.temperature: must be >= 0, got {self.temperature}")


def sample_replies(ctx: rollout.Context, params, questions: Sequence[str],
                   settings: JudgeSettings) -> list[str]:
    """One reply per question (the full assistant turn, a final EOS or non-tag stop string
    cut), through the batched sampler with `ctx`'s model and template, every batch padded to
    the same shape.
    The last batch is filled with copies of the last question, whose replies are dropped."""
    if not questions:
        return []
    b = settings.batch_size
    rows = [{"question": q} for q in questions]
    rows += [rows[-1]] * (-len(rows) % b)
    batches = pipeline.prompt_dataset(
        rows, ctx.tokenizer, ctx.template.format_prompt,
        # Every batch padded to max_prompt_len: one compiled sampler for all calls.
        pipeline.PromptConfig(batch_size=b, max_prompt_len=settings.max_prompt_len,
                              bucket=settings.max_prompt_len, shuffle=False, num_epochs=1),
        process_index=0, process_count=1)
    rng, replies = jax.random.key(settings.seed), []
    for step in range(len(batches)):
        rolled = rollout.sample(ctx, params, batches[step], jax.random.fold_in(rng, step),
                                num_samples=1, max_new_tokens=settings.max_new_tokens,
                                temperature=settings.temperature)
        replies += [_strip_end(ctx, ctx.template.full_response(t)) for t in rolled["texts"]]
    return replies[: len(questions)]


def _strip_end(ctx: rollout.Context, reply: str) -> str:
    """`reply` without a trailing EOS or stop string that is not a format tag (so a verdict
    line ends the reply, not "Verdict: correct<|end_of_sentence|>")."""
    tags = (templates.THINK_OPEN, templates.THINK_CLOSE, templates.ANSWER_OPEN,
            templates.ANSWER_CLOSE)
    ends = (*ctx.template.stop_strings, ctx.tokenizer.decode([ctx.tokenizer.eos_id]))
    for end in ends:
        if end and end not in tags and reply.endswith(end):
            return reply[: -len(end)]
    return reply


def judge(ctx: rollout.Context, params, items: Sequence[dict],
          settings: JudgeSettings = JudgeSettings()) -> tuple[list[Verdict], list[str]]:
    """Judges items {"question", "reference", "candidate"} with the model of `ctx`.

    Returns:
      (one `Verdict` per item, the judge's replies).
    """
    prompts = [grading_prompt(it["question"], it["reference"], it["candidate"])
               for it in items]
    replies = sample_replies(ctx, params, prompts, settings)
    return [parse_verdict(r) for r in replies], replies


class JudgeReward:
    """LLM-as-judge in the reward registry's interface (`registry.Spec.extra`): 1.0 when the
    judge accepts the completion's final answer against the row's `answer`, else 0.0 (no
    answer block, or a rejected reply, scores 0). Route a task to it with `reward_routes`
    (R1 Sec. 2.3.4 routes rule rewards and model rewards by prompt type).

    Args:
      ctx: the judge's model, tokenizer and template (its `rewards` are not used).
      params: the judge's parameters.
      settings: sampling of the replies.
      name: the reward's name in a Spec.
    """

    fields: tuple[str, ...] = ("answer",)
    optional: tuple[str, ...] = ("question",)
    low, high = 0.0, 1.0
    pooled = False
    is_accuracy = False  # a model's opinion: not the run's logged (rule) accuracy

    def __init__(self, ctx: rollout.Context, params, settings: JudgeSettings = JudgeSettings(),
                 name: str = KIND):
        self.ctx, self.params, self.settings, self.name = ctx, params, settings, name
        self.last_counts: dict[str, int] = {}

    def with_options(self, **options) -> JudgeReward:
        """A copy with another `name` or JudgeSettings fields (same judge model)."""
        name = options.pop("name", self.name)
        settings = dataclasses.replace(self.settings, **options)  # TypeError names a bad one
        return JudgeReward(self.ctx, self.params, settings, name)

    def __repr__(self) -> str:
        return f"JudgeReward(name={self.name!r}, settings={self.settings!r})"

    def __deepcopy__(self, memo) -> JudgeReward:
        return self  # immutable once built; never copy the params

    def __call__(self, completions: Sequence[str], *, pool=None, answer=None, question=None,
                 **task_fields):
        """The registry interface: float32 [N] in {0, 1}."""
        del pool, task_fields
        n = len(completions)
        answers = [None] * n if answer is None else list(answer)
        questions = [""] * n if question is None else [q or "" for q in question]
        candidates = [templates.extract_answer(c) for c in completions]
        todo = [i for i in range(n) if candidates[i] and answers[i] is not None]
        verdicts, _ = judge(self.ctx, self.params,
                            [{"question": questions[i], "reference": str(answers[i]),
                              "candidate": candidates[i]} for i in todo], self.settings)
        self.last_counts = count_reasons(verdicts)
        out = np.zeros([n], np.float32)
        for i, v in zip(todo, verdicts):
            out[i] = float(v.correct)
        return out


def sampling_context(model_config, tok, template: templates.Template) -> rollout.Context:
    """A sampling context for a judge or a CoT writer (no rewards are scored with it)."""
    return rollout.Context(model_config, tok, template,
                           registry.Spec.from_dict({"format_strict": 1.0}), None, None)


def context(model_dir, template: templates.Template) -> tuple[rollout.Context, dict]:
    """(a sampling context, params) of the judge model in `model_dir` (an r1jax base-format
    directory)."""
    model_config, params, tok = base.load_base(model_dir)
    return sampling_context(model_config, tok, template), params


def save_reward(directory: str | os.PathLike, model_dir, template_name: str,
                settings: JudgeSettings) -> pathlib.Path:
    """Writes `<directory>/judge.json`: the judge's model directory (absolute), template and
    sampling settings, so `load_reward` rebuilds the same `JudgeReward`."""
    path = pathlib.Path(directory) / POINTER
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model_dir": str(pathlib.Path(model_dir).absolute()),
                                "template": template_name,
                                "settings": dataclasses.asdict(settings)}, indent=2) + "\n")
    return path


def load_reward(directory: str | os.PathLike) -> JudgeReward:
    """The `JudgeReward` recorded in `<directory>/judge.json` (`save_reward`).

    Raises:
      FileNotFoundError: no judge.json there, or its model directory is gone.
    """
    path = pathlib.Path(directory) / POINTER
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no judge recorded here (the run's '{KIND}' reward "
                                "needs it)")
    info = json.loads(path.read_text())
    if not base.exists(info["model_dir"]):
        raise FileNotFoundError(f"{path}: the judge model {info['model_dir']} is missing")
    ctx, params = context(info["model_dir"], templates.get(info["template"]))
    return JudgeReward(ctx, params, JudgeSettings(**info["settings"]))
