"""All-scenario prompts: reasoning word problems mixed with general instructions (R1 Sec. 2.3.4).

The last RL stage of DeepSeek-R1 trains on "a diverse distribution of prompts": reasoning
prompts scored by rule rewards and general prompts scored by preference reward models. This task
draws each example from `word_problems` (with its knobs) or, with probability
`general_fraction`, from the instructions of `preference` (question and correct answer only).
Each example keeps its own `task` field ("word_problems" or "preference") and its own split, so
a reward spec with routes (`registry.Spec.routes`) can score the two kinds differently, and the
held-out problems of both tasks stay held out. With `worded_fraction`, that share of the word
problems gets its reference answer in number words with a unit (`worded.worded_example`,
task "word_problems_worded"): answers no rule reads, for a generative judge's reward.
"""

from __future__ import annotations

import numpy as np

from r1jax.data.tasks import base, preference, word_problems, worded

_GENERAL_FIELDS = ("key", "question", "answer", "kind", "worked_solution")


class Mixture(base.Task):
    """Word problems and general instructions.

    Args:
      general_fraction: probability that an example is a general instruction.
      language, scale: the word problems' knobs (`word_problems.WordProblems`).
      worded_fraction: probability that a word problem's reference answer is worded.
    """

    name = "mixture"

    def __init__(self, *, general_fraction=0.5, language="mixed", scale=1, test_percent=10,
                 worded_fraction=0.0):
        super().__init__(test_percent=test_percent)
        for name, value in (("general_fraction", general_fraction),
                            ("worded_fraction", worded_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        self.general_fraction, self.worded_fraction = general_fraction, worded_fraction
        self.reasoning = word_problems.WordProblems(language=language, scale=scale,
                                                    test_percent=test_percent)
        self.general = preference.Preference(test_percent=test_percent)

    def knobs(self):
        knobs = dict(super().knobs(), general_fraction=self.general_fraction,
                     language=self.reasoning.language, scale=self.reasoning.scale)
        # Listed only when set: the knobs (and run configs) of existing mixtures stay as they were.
        return dict(knobs, worded_fraction=self.worded_fraction) if self.worded_fraction \
            else knobs

    def _generate(self, rng: np.random.Generator):  # pragma: no cover - `sample` is overridden
        raise NotImplementedError

    def sample(self, rng: np.random.Generator):
        """An example of either task, with that task's name and split."""
        if rng.random() < self.general_fraction:
            example = self.general.sample(rng)
            return {k: example[k] for k in _GENERAL_FIELDS + ("task", "split")}
        example = self.reasoning.sample(rng)
        # Drawn only when worded problems are asked for: the default stream stays as it was.
        if self.worded_fraction and rng.random() < self.worded_fraction:
            return worded.worded_example(example)
        return example
