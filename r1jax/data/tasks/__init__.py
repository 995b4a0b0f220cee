"""Reasoning tasks: procedurally generated ones (a registry) and user JSONL loaders.

    from r1jax.data import tasks
    task = tasks.get("countdown", max_numbers=4)
    example = next(task.examples("train", seed=0))   # dict: question, answer, ...
    gsm8k = tasks.jsonl.load("gsm8k.jsonl", "gsm8k").examples
"""

from r1jax.data.tasks import arithmetic, base, countdown, jsonl, mixture, word_problems

REGISTRY: dict[str, type[base.Task]] = {
    countdown.Countdown.name: countdown.Countdown,
    arithmetic.Arithmetic.name: arithmetic.Arithmetic,
    word_problems.WordProblems.name: word_problems.WordProblems,
    mixture.Mixture.name: mixture.Mixture,
}

__all__ = ["REGISTRY", "arithmetic", "base", "countdown", "get", "jsonl", "mixture", "names",
           "word_problems"]


def get(name: str, **knobs) -> base.Task:
    """A generated task by name, with its difficulty knobs (see each task's docstring)."""
    if name not in REGISTRY:
        raise KeyError(f"unknown task {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](**knobs)


def names() -> list[str]:
    """Names of the generated tasks."""
    return sorted(REGISTRY)
