"""Reward registry and weighted combination (DeepSeek-R1 Sec. 2.2.2 and 2.3.3).

Every reward has the batched form `fn(completions, **task_fields) -> float32 [N]`, where each
task field is a per-completion sequence (`answer=[...]`, `numbers=[...]`, `target=[...]`,
`tests=[...]`, `lengths=[...]`, `language=[...]`). A trainer config lists `{name: weight}`:

    spec = registry.Spec.from_dict({"accuracy": 1.0, "format_strict": 0.5},
                                   options={"overlong": {"max_length": 1024, "cache_length": 256}})
    with pool.WorkerPool(8) as workers:
        result = registry.combine(spec, completions, pool=workers, answer=answers)
    result.total        # float32 [N] = sum_k w_k r_k
    result.components   # {name: float32 [N]} for logging
    result.metrics()    # {"reward/total": mean, "reward/<name>": mean, ...}

The R1 paper sums accuracy and format rewards for R1-Zero (Sec. 2.2.2) and adds language
consistency "directly" to the accuracy reward in the reasoning RL stage (Sec. 2.3.3): both are
weighted sums here. Rewards that need `correct` (cosine length scaling) get it, when the caller
doesn't pass it, from the first weighted reward declared `is_accuracy` (>= 1), else from the
generic "accuracy" reward; the same reward gives the trainers' logged accuracy.

Untrusted scoring (symbolic math, countdown, code) runs in a `WorkerPool` with a per-item
timeout; cheap text and length rewards run inline, their inputs capped so each item is bounded.
No reward raises on any completion text; a failure scores 0 clipped into the reward's range.

Every reward also has a per-batch time budget, the option `batch_timeout_s` (default
`BATCH_TIMEOUT_S`; None turns it off): items not scored when it runs out score the failure value
and are counted in `Rewards.over_budget` and the metric `reward/over_budget`. Inline rewards
check it between items (one item may overrun it by its own bounded cost).

Accuracy rewards (accuracy, math, numeric, countdown) read the answer outside the reasoning;
the option `answer_in_think=True` reads the whole completion (see `rewards.answer`).
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import math as _math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from r1jax.rewards import code, countdown, format, language, length, math, numeric
from r1jax.rewards import pool as pool_lib

_TIMEOUT_MARGIN_S = 1.0
BATCH_TIMEOUT_S = 300.0  # far above a healthy batch; bounds one made of hanging items
_REGISTRY_OPTIONS = ("batch_timeout_s",)  # consumed here, never passed to the scorer


@dataclasses.dataclass(frozen=True)
class RewardFn:
    """A named reward.

    Attributes:
      name: registry name.
      score: per-item function `score(completion, **fields_i, **options) -> float` (module
        level, so worker processes can unpickle it); None when `batch` is set.
      batch: vectorised `batch(**fields, **options) -> [N]` on whole field arrays.
      fields: task fields the reward requires.
      optional: task fields it reads when present (None otherwise).
      low, high: the reward's range; outputs are clipped into it.
      pooled: score in worker processes (untrusted, possibly slow or hanging work).
      timeout_s: per-item soft timeout in the pool.
      options: fixed keyword options, e.g. (("max_length", 1024),); `timeout_s` (math, code,
        accuracy) is the scorer's own limit, and the pool's sits 1 s above it.
      batch_timeout_s: wall-clock budget for one batch (option `batch_timeout_s`; None: none).
      is_accuracy: a correctness checker (1.0 = correct): the first one a `Spec` weights is
        the run's logged accuracy and the `correct` input of length rewards
        (`Spec.accuracy_name`).
    """

    name: str
    score: Callable[..., float] | None = None
    batch: Callable[..., np.ndarray] | None = None
    fields: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()
    low: float = 0.0
    high: float = 1.0
    pooled: bool = False
    timeout_s: float = 10.0
    options: tuple[tuple[str, Any], ...] = ()
    batch_timeout_s: float | None = BATCH_TIMEOUT_S
    is_accuracy: bool = False

    def with_options(self, **options) -> RewardFn:
        """Returns a copy with `options` merged in (the cosine range follows its options).

        Raises ValueError naming the reward and option for an option its scorer does not take
        (a typo would otherwise make every item fail and score 0 without a word)."""
        options = dict(options)
        budget = options.pop("batch_timeout_s", self.batch_timeout_s)
        if budget is not None and not (isinstance(budget, int | float) and 0 < budget < _math.inf):
            raise ValueError(f"reward {self.name!r}: option 'batch_timeout_s' must be a positive "
                             f"number or None, got {budget!r}")
        _check_options(self, options)
        merged = {**dict(self.options), **options}
        fn = dataclasses.replace(self, options=tuple(sorted(merged.items())),
                                 batch_timeout_s=budget)
        if self.name == "cosine":
            low, high = length.cosine_range(**merged)
            fn = dataclasses.replace(fn, low=low, high=high)
        if "timeout_s" in merged:  # the pool's limit sits just above the scorer's own
            fn = dataclasses.replace(fn, timeout_s=merged["timeout_s"] + _TIMEOUT_MARGIN_S)
        return fn

    def __call__(
        self, completions: Sequence[str], *, pool: pool_lib.WorkerPool | None = None, **task_fields
    ) -> np.ndarray:
        """Returns float32 [N] rewards in [low, high] for N completions."""
        return self.score_batch(completions, pool=pool, **task_fields)[0]

    def score_batch(
        self, completions: Sequence[str], *, pool: pool_lib.WorkerPool | None = None, **task_fields
    ) -> tuple[np.ndarray, int]:
        """Returns (float32 [N] rewards in [low, high], items left unscored by the budget)."""
        columns = _columns(self, len(completions), task_fields)
        options = dict(self.options)
        failure = min(max(0.0, self.low), self.high)
        over_budget = 0
        if self.batch is not None:
            values = np.asarray(self.batch(**columns, **options), np.float64)
        elif self.pooled:
            values, over_budget = _pooled(self, completions, columns, options, pool, failure)
        else:
            values, over_budget = _inline(self, completions, columns, options, failure)
        values = np.where(np.isfinite(values), values, failure)
        return np.clip(values, self.low, self.high).astype(np.float32), over_budget


def _check_options(fn: RewardFn, options: Mapping[str, Any]) -> None:
    scorer = fn.batch if fn.batch is not None else fn.score
    params = inspect.signature(scorer).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return
    known = [p.name for p in params if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    known = [k for k in known if k not in fn.fields + fn.optional + ("completion",)]
    for name in options:
        if name not in known:
            raise ValueError(f"reward {fn.name!r} has no option {name!r}; its options are "
                             f"{sorted(known + list(_REGISTRY_OPTIONS))}")


def _columns(fn: RewardFn, n: int, task_fields: Mapping[str, Sequence]) -> dict[str, Sequence]:
    missing = [f for f in fn.fields if f not in task_fields]
    if missing:
        raise ValueError(f"reward {fn.name!r} needs task field(s) {missing}")
    names = [f for f in fn.fields + fn.optional if f in task_fields]
    for name in names:
        if len(task_fields[name]) != n:
            raise ValueError(
                f"task field {name!r} has {len(task_fields[name])} entries for {n} completions"
            )
    return {name: task_fields[name] for name in names}


def _rows(completions, columns):
    for i, completion in enumerate(completions):
        yield completion, {name: column[i] for name, column in columns.items()}


def _safe(score, completion, row, options) -> float:
    try:
        return float(score(completion, **row, **options))
    except Exception:  # noqa: BLE001 - never raise on model output
        return _math.nan


def _inline(fn, completions, columns, options, failure) -> tuple[np.ndarray, int]:
    """Scores in this process, item by item, until the batch budget runs out."""
    values = np.full([len(completions)], failure, np.float64)
    deadline = _math.inf if fn.batch_timeout_s is None else time.monotonic() + fn.batch_timeout_s
    for i, (completion, row) in enumerate(_rows(completions, columns)):
        if time.monotonic() >= deadline:
            return values, len(completions) - i
        values[i] = _safe(fn.score, completion, row, options)
    return values, 0


def _pooled(fn, completions, columns, options, workers, failure) -> tuple[np.ndarray, int]:
    kwargs = [{"completion": c, **row, **options} for c, row in _rows(completions, columns)]
    if workers is None:
        with pool_lib.WorkerPool() as temporary:
            return _pooled(fn, completions, columns, options, temporary, failure)
    values = workers.map(fn.score, kwargs, timeout_s=fn.timeout_s, failure=failure,
                         budget_s=fn.batch_timeout_s)
    return values, workers.over_budget


def accuracy(completion, numbers=None, target=None, answer=None, tests=None, timeout_s=5.0,
             answer_in_think=False):
    """Per-item accuracy chosen by the task fields present: code tests, countdown, else math.

    `answer_in_think` applies to countdown and math (see `rewards.answer`); code tests run the
    code the code reward extracts."""
    if tests is not None:
        return code.reward(completion, tests, timeout_s=timeout_s)
    if numbers is not None and target is not None:
        return countdown.accuracy(completion, numbers, target, answer_in_think=answer_in_think)
    if answer is not None:
        return math.accuracy(completion, answer, timeout_s=timeout_s,
                             answer_in_think=answer_in_think)
    return 0.0


def _overlong(lengths, max_length=None, cache_length=None):
    if max_length is None or cache_length is None:
        raise ValueError("reward 'overlong' needs options max_length and cache_length")
    return length.overlong(lengths, max_length=max_length, cache_length=cache_length)


def _cosine(lengths, correct, max_length=None, **options):
    if max_length is None:
        raise ValueError("reward 'cosine' needs option max_length")
    return length.cosine(lengths, correct, max_length=max_length, **options)


_REGISTRY: dict[str, RewardFn] = {
    fn.name: fn
    for fn in (
        RewardFn("accuracy", accuracy, optional=("numbers", "target", "answer", "tests"),
                 pooled=True, timeout_s=10.0, is_accuracy=True),
        RewardFn("countdown", countdown.accuracy, fields=("numbers", "target"), pooled=True,
                 is_accuracy=True),
        RewardFn("math", math.accuracy, fields=("answer",), pooled=True, is_accuracy=True),
        RewardFn("numeric", numeric.accuracy, fields=("answer",), is_accuracy=True),
        RewardFn("code", code.reward, fields=("tests",), pooled=True, timeout_s=10.0,
                 is_accuracy=True),
        RewardFn("format_strict", format.strict),
        RewardFn("format_lenient", format.lenient),
        RewardFn("language", language.consistency, optional=("language",)),
        RewardFn("overlong", batch=_overlong, fields=("lengths",), low=-1.0, high=0.0),
        RewardFn("cosine", batch=_cosine, fields=("lengths", "correct"), low=-10.0, high=2.0),
    )
}  # fmt: skip
_BUILTIN = frozenset(_REGISTRY)
_INTERFACE = ("name", "fields", "optional", "low", "high", "pooled", "is_accuracy",
              "with_options", "__call__")


def names() -> tuple[str, ...]:
    """Returns the registered reward names."""
    return tuple(sorted(_REGISTRY))


def register(reward, *, replace: bool = False) -> None:
    """Adds a reward under `reward.name`: a `RewardFn` or any object with its interface (`name`,
    `fields`, `optional`, `low`, `high`, `pooled`, `is_accuracy`, `with_options`,
    `__call__(completions, *, pool, **task_fields)`), e.g. a learned reward model
    (`reward_model.Scorer`).

    Raises ValueError when the name is taken by another reward and `replace` is False, and
    TypeError naming the attributes of that interface that `reward` lacks.
    """
    _check_interface(reward, "register")
    taken = _REGISTRY.get(reward.name)
    if taken is not None and taken is not reward and not replace:
        raise ValueError(f"reward {reward.name!r} is already registered; pass replace=True")
    _REGISTRY[reward.name] = reward


def _check_interface(reward, where: str) -> None:
    missing = [a for a in _INTERFACE if not hasattr(reward, a)]
    if missing:
        raise TypeError(f"{where}: {reward!r} lacks the reward attribute(s) {missing}")


def unregister(name: str) -> None:
    """Removes a reward added by `register` (the built-in rule rewards stay)."""
    if name in _BUILTIN:
        raise ValueError(f"reward {name!r} is built in and cannot be removed")
    _REGISTRY.pop(name, None)


def get(name: str, **options) -> RewardFn:
    """Returns the reward called `name` with `options`; ValueError names the choices."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown reward {name!r}; choose from {names()}")
    fn = _REGISTRY[name]
    return fn.with_options(**options) if options else fn


@dataclasses.dataclass(frozen=True)
class Spec:
    """A weighted sum of rewards, as a trainer config lists it (hashable, validated).

    Attributes:
      weights: ((name, weight), ...).
      options: ((name, ((option, value), ...)), ...) for rewards that take options.
      routes: ((task, (name, ...)), ...): the rewards that score rows whose `task` field is
        `task` (R1 Sec. 2.3.4: rule rewards on reasoning prompts, a reward model on general
        ones); a reward scores 0 on the rows it is not routed to. Rows of a task not listed
        (or all rows, without routes or a `task` field) get every reward.
      extra: rewards the caller passes in rather than registers (the R1 pipeline's learned
        reward model for its all-scenario stage), each with `register`'s interface; a name
        resolves to one of them before the registry, so no global table is changed. Left out
        of equality and hashing (the names in `weights` identify the run's rewards).
    """

    weights: tuple[tuple[str, float], ...]
    options: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    routes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    extra: tuple[Any, ...] = dataclasses.field(default=(), compare=False)

    def __post_init__(self):
        for fn in self.extra:
            _check_interface(fn, "Spec.extra")
        for name, weight in self.weights:
            self._lookup(name)
            if not _math.isfinite(weight):
                raise ValueError(f"reward weight {name!r} must be finite, got {weight}")
        for name, options in self.options:
            self._lookup(name, **dict(options))  # unknown ones fail here, not mid-run
        weighted = {name for name, _ in self.weights}
        for task, routed in self.routes:
            unknown = sorted(set(routed) - weighted)
            if unknown:
                raise ValueError(f"reward route {task!r}: {unknown} are not weighted rewards "
                                 f"({sorted(weighted)})")

    @classmethod
    def from_dict(cls, weights: Mapping[str, float], options: Mapping[str, Mapping] | None = None,
                  routes: Mapping[str, Sequence[str]] | None = None, extra: Sequence = ()):
        """Builds a Spec from `{name: weight}`, `{name: {option: value}}`,
        `{task: [name, ...]}` and the caller's own rewards (`extra`)."""
        opts = tuple(
            sorted((k, tuple(sorted(dict(v).items()))) for k, v in (options or {}).items())
        )
        paths = tuple(sorted((k, tuple(v)) for k, v in (routes or {}).items()))
        return cls(tuple((k, float(w)) for k, w in weights.items()), opts, paths, tuple(extra))

    def rows_for(self, name: str, task: Sequence[str] | None, n: int) -> np.ndarray | None:
        """Indices of the rows that reward `name` scores; None means all of them."""
        if not self.routes or task is None:
            return None
        routes = dict(self.routes)
        rows = [i for i, t in enumerate(task) if t not in routes or name in routes[t]]
        return None if len(rows) == n else np.asarray(rows, np.int64)

    def _lookup(self, name: str, **options) -> RewardFn:
        """The reward `name` of `extra`, else of the registry, with `options`."""
        fn = next((fn for fn in self.extra if fn.name == name), None)
        if fn is None:
            return get(name, **options)
        return fn.with_options(**options) if options else fn

    def reward(self, name: str) -> RewardFn:
        return self._lookup(name, **dict(dict(self.options).get(name, ())))

    def accuracy_name(self) -> str | None:
        """The first weighted reward that is a correctness checker (`is_accuracy`), in the order
        of `weights`; None when there is none."""
        return next((name for name, _ in self.weights if self._lookup(name).is_accuracy), None)


@dataclasses.dataclass(frozen=True)
class Rewards:
    """The result of `combine`: total [N] and each component [N]."""

    total: np.ndarray
    components: dict[str, np.ndarray]
    sandbox: str | None = None
    over_budget: dict[str, int] = dataclasses.field(default_factory=dict)

    def metrics(self) -> dict[str, float | str]:
        """Means for logging: reward/total, reward/<name>, reward/sandbox if code ran, and
        reward/over_budget (items scored as failures because a batch budget ran out) if any."""
        out: dict[str, float | str] = {"reward/total": float(np.mean(self.total))}
        out.update({f"reward/{k}": float(np.mean(v)) for k, v in self.components.items()})
        if self.sandbox is not None:
            out["reward/sandbox"] = self.sandbox
        if any(self.over_budget.values()):
            out["reward/over_budget"] = float(sum(self.over_budget.values()))
        return out


def combine(
    spec: Spec | Mapping[str, float],
    completions: Sequence[str],
    *,
    pool: pool_lib.WorkerPool | None = None,
    **task_fields,
) -> Rewards:
    """Returns the weighted total sum_k w_k r_k [N] and every component r_k [N].

    Args:
      spec: a `Spec` or a `{name: weight}` mapping.
      completions: N model outputs (full assistant turns, see `format`).
      pool: worker processes for pooled rewards; a temporary pool is made if needed and None.
      **task_fields: per-completion sequences of length N.
    """
    if not isinstance(spec, Spec):
        spec = Spec.from_dict(spec)
    needs_pool = any(spec.reward(name).pooled for name, _ in spec.weights)
    if pool is None and needs_pool:
        with pool_lib.WorkerPool() as temporary:
            return combine(spec, completions, pool=temporary, **task_fields)
    components: dict[str, np.ndarray] = {}
    over_budget: dict[str, int] = {}
    for name, _ in sorted(spec.weights, key=lambda kv: "correct" in spec.reward(kv[0]).fields):
        fn = spec.reward(name)
        fields = dict(task_fields)
        if "correct" in fn.fields and "correct" not in fields:
            fields["correct"] = _correct(spec, components, completions, pool, task_fields)
        rows = spec.rows_for(name, task_fields.get("task"), len(completions))
        if rows is None:
            components[name], over_budget[name] = _score(fn, completions, pool, fields)
        else:  # routed: score only this reward's rows, 0 elsewhere
            components[name], over_budget[name] = np.zeros([len(completions)], np.float32), 0
            if len(rows):
                components[name][rows], over_budget[name] = _score(
                    fn, [completions[i] for i in rows], pool,
                    {k: [v[i] for i in rows] for k, v in fields.items()})
        if over_budget[name]:
            logging.warning("reward %r: batch budget of %ss ran out; %d of %d items scored as "
                            "failures", name, fn.batch_timeout_s, over_budget[name],
                            len(completions))
    total = np.zeros([len(completions)], np.float32)
    for name, weight in spec.weights:
        total += np.float32(weight) * components[name]
    uses_code = any(n in ("code", "accuracy") for n, _ in spec.weights)
    return Rewards(total, components, code.sandbox_kind() if uses_code else None, over_budget)


def _score(fn, completions, pool, fields) -> tuple[np.ndarray, int]:
    """(rewards [N], items over budget) of a built-in or registered reward."""
    if isinstance(fn, RewardFn):
        return fn.score_batch(completions, pool=pool, **fields)
    return fn(completions, pool=pool, **fields), 0  # e.g. reward_model.Scorer: no budget


def _correct(spec, components, completions, workers, task_fields) -> np.ndarray:
    name = spec.accuracy_name()  # scored already: `combine` scores `correct` readers last
    if name is not None:
        return components[name] >= 1.0
    return spec.reward("accuracy")(completions, pool=workers, **task_fields) >= 1.0
