"""Prompt batches for RL and evaluation: grain MapDataset, bucketed padding, per-host shards.

    loader = pipeline.prompt_loader(examples, tok, template.format_prompt, pipeline.PromptConfig(
        batch_size=32, max_prompt_len=256, pad_side="right", seed=0))
    batch = next(loader)            # dict of NumPy arrays and Python lists
    state = loader.get_state()      # {"step": n}; set_state(state) resumes at the same batch

The pipeline is index-based end to end (grain `MapDataset`): batch `s` of host `h` is a pure
function of (source, seed, s, h, process count), so resuming is `step = s` and nothing is
replayed. The global stream (source indices, shuffled per epoch, repeated) is dealt round-robin
to the hosts: with P hosts, host h takes stream positions h, h + P, ..., so the hosts' batches at
one step partition the global batch of a single-host loader with P times the batch size.

Sources are any random-access Sequence of example dicts: a list (user JSONL) or an unlimited
generated task (`generated_source`), which is read in order (it is random already).

Batch keys: `prompt_tokens` int32 [B, P] (P = the longest prompt rounded up to a multiple of
`bucket`, at most `max_prompt_len`), `prompt_lengths` int32 [B], `prompt_truncated` bool [B],
`source_index` int64 [B], `prompt` (list[str]) and every example field (`question`, `answer`,
`numbers`, `target`, `tests`, ...) as a Python list of length B.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable, Sequence
from typing import Any

import grain
import jax
import numpy as np

from r1jax.data import tokenizer as tokenizer_lib
from r1jax.data.tasks import base

INFINITE = sys.maxsize


@dataclasses.dataclass(frozen=True)
class PromptConfig:
    """How prompts become batches.

    Attributes:
      batch_size: prompts per batch on this host (the global batch is batch_size * hosts).
      max_prompt_len: the longest padded prompt.
      bucket: pad to a multiple of this (fewer distinct shapes -> fewer recompilations).
      pad_side: "right" (what `r1jax.sampling.generate` takes) or "left".
      overlong: "error" raises on a prompt longer than max_prompt_len; "truncate" keeps its
        last tokens (the end holds the question and the assistant cue) and flags the row.
      shuffle: reshuffle each epoch (ignored for unlimited sources).
      seed: the shuffle seed.
      num_epochs: None repeats forever (ignored for unlimited sources).
      add_bos: prepend the tokenizer's BOS id (off by default: r1_chat writes BOS as text).
    """

    batch_size: int
    max_prompt_len: int = 512
    bucket: int = 32
    pad_side: str = "right"
    overlong: str = "error"
    shuffle: bool = True
    seed: int = 0
    num_epochs: int | None = None
    add_bos: bool = False

    def __post_init__(self):
        for name in ("batch_size", "max_prompt_len", "bucket"):
            if getattr(self, name) < 1:
                raise ValueError(f"PromptConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.pad_side not in ("left", "right"):
            raise ValueError(f"PromptConfig.pad_side must be 'left' or 'right', got "
                             f"{self.pad_side!r}")
        if self.overlong not in ("error", "truncate"):
            raise ValueError(f"PromptConfig.overlong must be 'error' or 'truncate', got "
                             f"{self.overlong!r}")
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"PromptConfig.num_epochs must be None or >= 1, got "
                             f"{self.num_epochs}")


class GeneratedSource(Sequence):
    """An unlimited generated task as a random-access sequence: item i is
    `task.example(split, seed, i)`, so it shards and resumes like a file."""

    def __init__(self, task: base.Task, split: str, seed: int):
        self.task, self.split, self.seed = task, split, seed

    def __len__(self) -> int:
        return INFINITE

    def __getitem__(self, index: int) -> dict[str, Any]:
        return self.task.example(self.split, self.seed, int(index))


def generated_source(task: base.Task, split: str, seed: int) -> GeneratedSource:
    """The unlimited, deterministic stream of one split of a generated task."""
    return GeneratedSource(task, split, seed)


def _tokenize(example, tok, format_prompt, config: PromptConfig, index: int) -> dict:
    prompt = format_prompt(example["question"])
    ids = tok.encode(prompt, add_bos=config.add_bos)
    truncated = len(ids) > config.max_prompt_len
    if truncated and config.overlong == "error":
        raise ValueError(f"prompt of example {index} (key {example.get('key')!r}) has "
                         f"{len(ids)} tokens > max_prompt_len={config.max_prompt_len}; raise "
                         "max_prompt_len or set overlong='truncate'")
    if truncated:
        bos = int(config.add_bos and tok.bos_id is not None)  # a tokenizer may have no BOS
        keep = config.max_prompt_len - bos
        ids = ids[:bos] + ids[len(ids) - keep:]
    return {"example": example, "prompt": prompt, "ids": ids, "truncated": truncated,
            "source_index": index}


def collate(items: Sequence[dict], pad_id: int, config: PromptConfig) -> dict[str, Any]:
    """Tokenized items -> one batch dict (see the module docstring for the keys)."""
    longest = max(len(item["ids"]) for item in items)
    length = min(config.max_prompt_len, max(1, -(-longest // config.bucket) * config.bucket))
    tokens_bp, lengths_b = tokenizer_lib.pad_sequences(
        [item["ids"] for item in items], length, pad_id, config.pad_side)
    batch = {
        "prompt_tokens": tokens_bp,
        "prompt_lengths": lengths_b,
        "prompt_truncated": np.array([item["truncated"] for item in items], dtype=bool),
        "source_index": np.array([item["source_index"] for item in items], dtype=np.int64),
        "prompt": [item["prompt"] for item in items],
    }
    fields = dict.fromkeys(k for item in items for k in item["example"])
    for name in fields:
        batch[name] = [item["example"].get(name) for item in items]
    return batch


def _index_stream(n: int, config: PromptConfig, process_index: int, process_count: int):
    """Source indices this host reads, in order: shuffled, repeated, dealt round-robin."""
    ds = grain.MapDataset.range(n)
    if n != INFINITE:
        if config.shuffle:
            ds = ds.shuffle(seed=config.seed)
        ds = ds.repeat(config.num_epochs)
        if config.num_epochs is not None:  # every host must see the same number of batches
            per_step = config.batch_size * process_count
            ds = ds[: len(ds) // per_step * per_step]
    return ds[process_index::process_count]


def prompt_dataset(
    source: Sequence[dict],
    tok: tokenizer_lib.Tokenizer,
    format_prompt: Callable[[str], str],
    config: PromptConfig,
    *,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.MapDataset:
    """The grain MapDataset of this host's batches; element s is the batch of step s.

    process_index/process_count default to jax.process_index()/jax.process_count().
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(f"need 0 <= process_index < process_count, got {process_index}, "
                         f"{process_count}")
    if len(source) == 0:
        raise ValueError("the prompt source is empty")
    indices = _index_stream(len(source), config, process_index, process_count)
    items = indices.map(lambda i: _tokenize(source[i], tok, format_prompt, config, int(i)))
    return items.batch(config.batch_size, drop_remainder=True,
                       batch_fn=lambda xs: collate(xs, tok.pad_id, config))


class PromptLoader:
    """An iterator over a batch dataset that remembers its step: checkpoint `get_state()`,
    restore with `set_state()` and the next batch is the one that would have come."""

    def __init__(self, batches: grain.MapDataset, step: int = 0):
        self._batches = batches
        self.step = step

    def __iter__(self) -> PromptLoader:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.step >= len(self._batches):
            raise StopIteration
        batch = self._batches[self.step]
        self.step += 1
        return batch

    def __len__(self) -> int:
        return len(self._batches)

    def batch(self, step: int) -> dict[str, Any]:
        """The batch of any step, without moving the iterator."""
        return self._batches[step]

    def get_state(self) -> dict[str, int]:
        return {"step": self.step}

    def set_state(self, state: dict[str, int]) -> None:
        self.step = int(state["step"])


def prompt_loader(
    source: Sequence[dict],
    tok: tokenizer_lib.Tokenizer,
    format_prompt: Callable[[str], str],
    config: PromptConfig,
    *,
    start_step: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> PromptLoader:
    """A resumable iterator of this host's prompt batches (see `prompt_dataset`)."""
    batches = prompt_dataset(source, tok, format_prompt, config, process_index=process_index,
                             process_count=process_count)
    return PromptLoader(batches, start_step)
