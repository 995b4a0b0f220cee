"""tensorflow-datasets builders for generated tasks and user JSONL, stored as array_record.

No TensorFlow: the builders write `file_format="array_record"` and are read with
`builder.as_data_source()` / `tfds.data_source(...)` (random access, grain-friendly).
`tfds.load` would need TensorFlow and is never used.

    builder = tfds_builders.prepare_generated("countdown", data_dir, train_size=10_000,
                                              test_size=500, seed=0, max_numbers=4)
    train = tfds_builders.examples(builder, "train")  # a Sequence of example dicts

Each dataset's config name carries a hash of everything that determines its content (task,
knobs, sizes, seed; or the JSONL files' bytes and format), so a different request gets a
different directory, and preparing an existing config reuses it: nothing prepared is ever
overwritten. tfds itself writes into a temporary directory and renames it when complete.

Record layout: the common example fields as Text features, and every task-specific field
(`numbers`, `target`, `tests`, ...) JSON-encoded in one `fields` Text feature, so one schema
serves every task. `examples()` decodes records back into the task's example dicts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import tensorflow_datasets as tfds

from r1jax.data import tasks
from r1jax.data.tasks import jsonl

TEXT_FIELDS = ("task", "question", "answer", "worked_solution", "key", "split")
FILE_FORMAT = "array_record"


def _features() -> tfds.features.FeaturesDict:
    spec = {name: tfds.features.Text() for name in TEXT_FIELDS + ("fields",)}
    return tfds.features.FeaturesDict(spec)


def encode(example: dict[str, Any]) -> dict[str, str]:
    """Example dict -> record: the common fields as text, the rest as JSON in `fields`."""
    record = {name: str(example.get(name, "")) for name in TEXT_FIELDS}
    rest = {k: v for k, v in example.items() if k not in TEXT_FIELDS}
    record["fields"] = json.dumps(rest, ensure_ascii=False, sort_keys=True)
    return record


def decode(record: dict[str, Any]) -> dict[str, Any]:
    """Record read from a data source (bytes or str values) -> example dict."""
    def text(value) -> str:
        return value.decode("utf-8") if isinstance(value, bytes) else str(value)

    example = {name: text(record[name]) for name in TEXT_FIELDS}
    example.update(json.loads(text(record["fields"])))
    return example


class Examples(Sequence):
    """A random-access view of one split of a tfds data source as example dicts."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        return decode(self._source[index % len(self)])

    def __iter__(self):
        return (self[i] for i in range(len(self)))


def _digest(*parts: Any) -> str:
    h = hashlib.sha1()
    for part in parts:
        h.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True).encode())
    return h.hexdigest()[:12]


# ----------------------------------------------------------------------------- generated tasks


@dataclasses.dataclass
class GeneratedConfig(tfds.core.BuilderConfig):
    """A generated task with fixed-size splits. `knobs_json` holds the task's knobs."""

    task: str = "countdown"
    knobs_json: str = "{}"
    train_size: int = 1000
    test_size: int = 100
    seed: int = 0


class R1jaxTasks(tfds.core.GeneratorBasedBuilder):
    """Fixed-size train/test splits of a generated task; problems are unique per split."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [GeneratedConfig(name="countdown_default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(),
                                     description=self.__doc__)

    def _split_generators(self, dl_manager):
        del dl_manager
        return {"train": self._generate_examples("train"), "test": self._generate_examples("test")}

    def _generate_examples(self, split: str):
        cfg = self.builder_config
        task = tasks.get(cfg.task, **json.loads(cfg.knobs_json))
        size = cfg.train_size if split == "train" else cfg.test_size
        seen: set[str] = set()
        stale = 0  # draws since the last new problem: a small problem space runs dry
        for example in task.examples(split, cfg.seed):
            if len(seen) == size:
                return
            if example["key"] in seen:
                stale += 1
                if stale > max(1000, size):
                    raise ValueError(f"{cfg.task}: found only {len(seen)} distinct {split} "
                                     f"problems, {size} requested; widen the task's knobs")
                continue
            stale = 0
            seen.add(example["key"])
            yield len(seen) - 1, encode(example)


def prepare_generated(
    task: str, data_dir: str | os.PathLike, *, train_size: int, test_size: int, seed: int = 0,
    **knobs,
) -> tfds.core.DatasetBuilder:
    """Generates (once) and returns the builder of a generated task's dataset."""
    knobs = tasks.get(task, **knobs).knobs()  # validates, and fills the defaults in
    name = f"{task}_{_digest(task, knobs, train_size, test_size, seed)}"
    config = GeneratedConfig(name=name, task=task, knobs_json=json.dumps(knobs, sort_keys=True),
                             train_size=train_size, test_size=test_size, seed=seed)
    return _prepare(R1jaxTasks, config, data_dir)


# ----------------------------------------------------------------------------- user JSONL


@dataclasses.dataclass
class JsonlConfig(tfds.core.BuilderConfig):
    """User JSONL files, one per split: `files_json` is {"train": path, ...}."""

    files_json: str = "{}"
    fmt: str = "gsm8k"
    task: str = ""
    on_error: str = "raise"


class R1jaxJsonl(tfds.core.GeneratorBasedBuilder):
    """User JSONL problems (GSM8K, MATH-style, code) in the example-dict schema."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [JsonlConfig(name="gsm8k_default")]

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(),
                                     description=self.__doc__)

    def _split_generators(self, dl_manager):
        del dl_manager
        files = json.loads(self.builder_config.files_json)
        return {split: self._generate_examples(split, path) for split, path in files.items()}

    def _generate_examples(self, split: str, path: str):
        cfg = self.builder_config
        loaded = jsonl.load(path, cfg.fmt, on_error=cfg.on_error, task=cfg.task or None,
                            split=split)
        for i, example in enumerate(loaded.examples):
            yield i, encode(example)


def prepare_jsonl(
    files: dict[str, str | os.PathLike], fmt: str, data_dir: str | os.PathLike, *,
    task: str | None = None, on_error: str = "raise",
) -> tfds.core.DatasetBuilder:
    """Converts (once) user JSONL files {split: path} of format `fmt` into a tfds dataset.

    The config name hashes the files' bytes, so an edited file makes a new dataset next to
    the old one instead of replacing it.
    """
    if fmt not in jsonl.FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {jsonl.FORMATS}")
    paths = {split: os.path.abspath(p) for split, p in files.items()}
    contents = [pathlib.Path(paths[s]).read_bytes() for s in sorted(paths)]
    name = f"{task or fmt}_{_digest(sorted(paths), fmt, task, on_error, *contents)}"
    config = JsonlConfig(name=name, files_json=json.dumps(paths, sort_keys=True), fmt=fmt,
                         task=task or "", on_error=on_error)
    return _prepare(R1jaxJsonl, config, data_dir)


def _prepare(cls, config, data_dir) -> tfds.core.DatasetBuilder:
    builder = cls(config=config, data_dir=os.fspath(data_dir), file_format=FILE_FORMAT)
    mode = tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(download_mode=mode))
    return builder


def examples(builder: tfds.core.DatasetBuilder, split: str) -> Examples:
    """One split of a prepared dataset as a random-access Sequence of example dicts."""
    return Examples(builder.as_data_source(split=split))
