"""Procedurally generated tasks: seeded sampling and a train/test split that cannot overlap.

Every example is a plain dict with at least:

  task             the task name ("countdown", "arithmetic", "word_problems", "gsm8k", ...)
  question         the problem in natural language, with no prompt template around it
  answer           the canonical answer string (what the accuracy reward compares against)
  worked_solution  a readable chain of thought ending with the answer string (for the
                   pretraining corpus and cold-start SFT)
  key              the canonical problem key: two examples are the same problem iff equal
  split            "train" or "test", a pure function of `key`

plus task-specific fields (countdown: `numbers`, `target`). The split of a problem is
`sha1(key) mod 100 < test_percent`, so however a problem is phrased or sampled (any seed, any
language) it lands in the same split: the test set never leaks into training.
"""

from __future__ import annotations

import abc
import hashlib
import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np

Example = dict[str, Any]
SPLITS = ("train", "test")
_MAX_ATTEMPTS = 100_000


def split_of(key: str, test_percent: int) -> str:
    """'test' if the stable hash of the problem key falls under `test_percent`, else 'train'."""
    bucket = int.from_bytes(hashlib.sha1(key.encode("utf-8")).digest()[:8], "big") % 100
    return "test" if bucket < test_percent else "train"


class Task(abc.ABC):
    """A seeded, unlimited source of examples. Subclasses implement `_generate`."""

    name: str = ""

    def __init__(self, *, test_percent: int = 10):
        if not 0 <= test_percent <= 100:
            raise ValueError(f"test_percent must be in [0, 100], got {test_percent}")
        self.test_percent = test_percent

    @abc.abstractmethod
    def _generate(self, rng: np.random.Generator) -> Example:
        """One example without `task`/`split` (those are added here); must set `key`."""

    def knobs(self) -> dict[str, Any]:
        """The constructor arguments: `get(task.name, **task.knobs())` rebuilds the task."""
        return {"test_percent": self.test_percent}

    def sample(self, rng: np.random.Generator) -> Example:
        """One example from either split (its `split` field says which)."""
        example = self._generate(rng)
        example["task"] = self.name
        example["split"] = split_of(f"{self.name}:{example['key']}", self.test_percent)
        return example

    def example(self, split: str, seed: int, index: int) -> Example:
        """Example number `index` of the stream `examples(split, seed)`: random access, so a
        loader can shard and resume it like a file-backed dataset."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if (split == "test" and self.test_percent == 0) or (
            split == "train" and self.test_percent == 100
        ):
            raise ValueError(f"split {split!r} is empty with test_percent={self.test_percent}")
        rng = np.random.default_rng([seed, index])
        for _ in range(_MAX_ATTEMPTS):
            example = self.sample(rng)
            if example["split"] == split:
                return example
        raise RuntimeError(f"{self.name}: no {split} example in {_MAX_ATTEMPTS} attempts")

    def examples(self, split: str, seed: int) -> Iterator[Example]:
        """An infinite, deterministic stream of examples of one split."""
        for index in itertools.count():
            yield self.example(split, seed, index)
