"""Offline evaluation of a checkpoint: pass@1 over k samples, cons@k, greedy accuracy, and more.

DeepSeek-R1 (arXiv:2501.12948), Sec. 3 "Evaluation Setup": k responses per question at
temperature 0.6 and top-p 0.95; pass@1 = 1/k sum_i p_i; cons@k is the accuracy of the
majority-vote answer. A checkpoint is either

  * an R1-Zero run directory (`r1jax.rl.trainer`: config.json + checkpoints/): the policy params
    of its newest (or a chosen) checkpoint, with the base model's config and tokenizer and the
    run's template, rewards, mesh and evaluation settings; or
  * a local Hugging Face directory (`r1jax.models.hf.load_hf` + `HFTokenizer`).

Prompts are a generated task split (name + knobs), a user JSONL file (GSM8K, MATH-500, AIME via
`r1jax.data.tasks.jsonl`) or, for a run, the run's own held-out evaluation prompts. Sampling and
scoring are the trainer's (`r1jax.rl.rollout.sample` / `score`), so every number means what the
run's `eval/` metrics mean; answers for the vote are read by `templates.extract_answer`, the
reader the accuracy rewards use.

Reproducing a run: with the run's prompts in one batch of the run's `eval.num_prompts`, its mesh
and the key the trainer used at that step (fold_in(fold_in(seed key, eval stream), step)), the
greedy accuracy and pass@1 equal the values the run logged at the checkpoint's step. Batch b > 0
of a multi-batch evaluation samples with fold_in(key, b); batch 0 with the key itself.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from r1jax.data import pipeline, tasks, templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.evals import passk
from r1jax.models import config as config_lib
from r1jax.models import hf, transformer
from r1jax.rewards import registry
from r1jax.rl import config as rl_config
from r1jax.rl import rollout, step, trainer
from r1jax.train import base, checkpoint

#: Rewards for prompts that lack the fields of a run's own rewards (and for HF checkpoints):
#: the task-dispatching accuracy checker (countdown, code tests, else math) plus strict format.
DEFAULT_REWARDS = registry.Spec.from_dict({"accuracy": 1.0, "format_strict": 1.0})


@dataclasses.dataclass(frozen=True)
class Settings:
    """How to sample. num_samples: k; temperature/top_p: the paper's 0.6 / 0.95; greedy: add a
    temperature-0 sample per prompt; max_new_tokens: the completion budget; batch_size: prompts
    per `generate` call."""

    num_samples: int = 4
    temperature: float = 0.6
    top_p: float | None = 0.95
    greedy: bool = True
    max_new_tokens: int = 1024
    batch_size: int = 32

    def __post_init__(self):
        for name in ("num_samples", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if not self.temperature > 0:
            raise ValueError(f"temperature={self.temperature}: must be > 0 (greedy is separate)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1] or None")

    def replace(self, **changes) -> Settings:
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Model:
    """A policy ready to evaluate. `run` (the run's ExperimentConfig), `step` and `seed_key`
    are set for R1-Zero runs and None for HF checkpoints."""

    config: config_lib.ModelConfig
    params: Any
    tokenizer: tokenizer_lib.Tokenizer
    template: templates.Template
    rewards: registry.Spec
    mesh: jax.sharding.Mesh | None
    source: str
    run: rl_config.ExperimentConfig | None = None
    step: int | None = None
    seed_key: np.ndarray | None = None


# ---------------------------------------------------------------------------------------------
# Loading checkpoints
# ---------------------------------------------------------------------------------------------


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for an r1jax GRPO run directory (config.json with a `grpo` section + checkpoints/)."""
    path = pathlib.Path(path)
    if not (path / "config.json").is_file() or not (path / "checkpoints").is_dir():
        return False
    return "grpo" in json.loads((path / "config.json").read_text())


def run_config(workdir: str | os.PathLike) -> rl_config.ExperimentConfig:
    """The run's ExperimentConfig, rebuilt from the config.json the trainer wrote."""
    values = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    spec = values.pop("rewards")
    values["rewards"] = dict(spec["weights"])
    values["reward_options"] = {name: dict(opts) for name, opts in spec["options"]}
    values["reward_routes"] = {task: list(names) for task, names in spec.get("routes", ())}
    values["data"]["task_knobs"] = dict(values["data"]["task_knobs"])
    values["mesh"] = dict(values["mesh"])
    values["model_overrides"] = dict(values["model_overrides"])
    return rl_config.from_config_dict(values)


def _restore_state(directory: str, abstract_state, step_: int | None):
    """(state, step) from a checkpoint directory, opened read-only: an evaluation never
    deletes or renames anything there, even while the run is still writing to it. Only the
    leaves of `abstract_state` are read (a partial restore: no optimizer state or reference)."""
    options = ocp.CheckpointManagerOptions(read_only=True, create=False)
    with ocp.CheckpointManager(directory, options=options, item_names=("state", "meta")) as mgr:
        step_ = mgr.latest_step() if step_ is None else step_
        if step_ is None or step_ not in mgr.all_steps():
            raise FileNotFoundError(f"{directory}: no checkpoint for step {step_} "
                                    f"(have {sorted(mgr.all_steps())})")
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract_state)
        args = ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=abstract_state, restore_args=restore_args, partial_restore=True))
        return mgr.restore(step_, args=args).state, step_


def load_run(workdir: str | os.PathLike, step_: int | None = None) -> Model:
    """The policy of an R1-Zero run at its newest checkpoint (or `step_`), placed on the run's
    mesh exactly as the trainer held it."""
    workdir = os.path.abspath(workdir)
    config = run_config(workdir)
    # An r1jax base or an HF checkpoint (its stored dtype, as the trainer loaded it).
    model_config = base.load_config(config.base_dir)
    if config.model_overrides:
        model_config = model_config.replace(**dict(config.model_overrides))
    step_config = step.StepConfig(model_config, config.grpo, config.optim,
                                  config.sampling.temperature, config.sampling.max_new_tokens)
    mesh = trainer.make_mesh(config)
    shapes = jax.eval_shape(lambda p: step.init_state(p, step_config, config.seed),
                            transformer.abstract_params(model_config))
    abstract = checkpoint.abstract_tree(shapes, step.state_shardings(step_config, mesh))
    abstract = {"params": abstract["params"], "rng": abstract["rng"]}
    state, restored_step = _restore_state(os.path.join(workdir, "checkpoints"), abstract, step_)
    return Model(model_config, state["params"], base.load_tokenizer(config.base_dir, model_config),
                 templates.get(config.data.template), config.rewards, mesh,
                 source=f"{workdir}@{restored_step}", run=config, step=restored_step,
                 seed_key=np.asarray(jax.device_get(state["rng"])))


def load_hf_dir(path: str | os.PathLike, template: str = "r1_zero") -> Model:
    """A local HF checkpoint (config.json + safetensors + tokenizer.json) on one device, in its
    stored dtype."""
    path = os.path.abspath(path)
    model_config = hf.load_hf_config(path)
    tok = base.load_tokenizer(path, model_config)  # checked before the weights are read
    _, params = hf.load_hf(path, dtype=model_config.param_dtype)
    return Model(model_config, params, tok, templates.get(template),
                 DEFAULT_REWARDS, mesh=None, source=path)


def load(path: str | os.PathLike, *, step_: int | None = None,
         template: str = "r1_zero") -> Model:
    """A run directory (`load_run`) or an HF directory (`load_hf_dir`), told apart by their
    files; `template` applies to HF checkpoints only (a run keeps its own)."""
    if is_run_dir(path):
        return load_run(path, step_)
    if (pathlib.Path(path) / hf.CONFIG_FILE).is_file():
        return load_hf_dir(path, template)
    raise ValueError(f"{path}: neither an r1jax run directory (config.json + checkpoints/) nor "
                     "a Hugging Face checkpoint directory (config.json + safetensors)")


def run_eval_key(model: Model) -> jax.Array:
    """The key the trainer sampled its evaluation with at the checkpoint's step:
    fold_in(fold_in(seed key, the trainer's evaluation stream), step)."""
    key = jax.random.fold_in(jax.numpy.asarray(model.seed_key), trainer._EVAL_SALT)
    return jax.random.fold_in(key, model.step)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def generated_examples(task: str, knobs: dict, split: str, seed: int,
                       num: int) -> list[dict[str, Any]]:
    """The first `num` examples of a generated task's split (the pipeline's order)."""
    source = pipeline.generated_source(tasks.get(task, **knobs), split, seed)
    return [source[i] for i in range(num)]


def jsonl_examples(path: str | os.PathLike, fmt: str, num: int | None = None,
                   task: str | None = None) -> list[dict[str, Any]]:
    """Examples of a user JSONL file ("gsm8k" or "math" format: MATH-500, AIME), first `num`."""
    examples = tasks.jsonl.load(path, fmt, task=task, split="test").examples
    return examples[:num] if num else examples


def run_examples(config: rl_config.ExperimentConfig) -> list[dict[str, Any]]:
    """The run's held-out evaluation prompts (what the trainer's `eval/` metrics used): its
    test JSONL (else its train JSONL's test split) when it trained on user data."""
    d = config.data
    if d.train_jsonl is not None:
        path = d.test_jsonl or d.train_jsonl
        examples = tasks.jsonl.load(path, d.jsonl_format, on_error=d.jsonl_on_error,
                                    split="test").examples
        return examples[:config.eval.num_prompts]
    return generated_examples(d.task, dict(d.task_knobs), "test", d.seed, config.eval.num_prompts)


def prompt_batches(examples: Sequence[dict], model: Model, batch_size: int,
                   max_prompt_len: int = 512, bucket: int = 32) -> list[dict[str, Any]]:
    """Pipeline batches of at most `batch_size` prompts, in order, the last one possibly
    smaller; each is padded exactly as the trainer's loader pads a batch of those prompts."""
    batches = []
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start:start + batch_size])
        cfg = pipeline.PromptConfig(batch_size=len(chunk), max_prompt_len=max_prompt_len,
                                    bucket=bucket, shuffle=False, num_epochs=1)
        loader = pipeline.prompt_loader(chunk, model.tokenizer, model.template.format_prompt,
                                        cfg, process_index=0, process_count=1)
        batches.append(loader.batch(0))
    return batches


def select_examples(model: Model, *, task: str | None = None, knobs: dict | None = None,
                    split: str = "test", seed: int | None = None, jsonl: str | None = None,
                    jsonl_format: str = "math",
                    num_prompts: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """The prompts to evaluate and a short name for them.

    Precedence: a JSONL file; else a generated task (for a run, its own knobs and data seed
    when it is the run's task); else, for a run, its held-out evaluation prompts.
    """
    if jsonl:
        return jsonl_examples(jsonl, jsonl_format, num_prompts), pathlib.Path(jsonl).stem
    run = model.run
    if task is None and run is not None:
        config = run if num_prompts is None else dataclasses.replace(
            run, eval=dataclasses.replace(run.eval, num_prompts=num_prompts))
        d = run.data
        name = pathlib.Path(d.test_jsonl or d.train_jsonl).stem if d.train_jsonl else d.task
        return run_examples(config), f"{name}-heldout"
    if task is None:
        raise ValueError("an HF checkpoint needs prompts: pass a task or a JSONL file")
    same_task = run is not None and run.data.task == task
    if knobs is None:
        knobs = dict(run.data.task_knobs) if same_task else {}
    if seed is None:
        seed = run.data.seed if same_task else 0
    return generated_examples(task, knobs, split, seed, num_prompts or 64), f"{task}-{split}"


def default_settings(model: Model) -> Settings:
    """A run's own evaluation settings (all its held-out prompts in one batch, as the trainer
    sampled them); the paper's for an HF checkpoint."""
    if model.run is None:
        return Settings()
    e, s = model.run.eval, model.run.sampling
    return Settings(num_samples=e.num_samples, temperature=e.temperature, top_p=e.top_p,
                    greedy=e.greedy, max_new_tokens=e.max_new_tokens or s.max_new_tokens,
                    batch_size=e.num_prompts)


def default_key(model: Model, seed: int | None) -> jax.Array:
    """PRNGKey(seed) when given; else the run's evaluation key at its step (`run_eval_key`),
    or PRNGKey(0) for an HF checkpoint."""
    if seed is not None:
        return jax.random.PRNGKey(seed)
    return run_eval_key(model) if model.run is not None else jax.random.PRNGKey(0)


def prompt_padding(model: Model) -> tuple[int, int]:
    """(max_prompt_len, bucket): the run's data settings, else 1024 and 32."""
    if model.run is None:
        return 1024, 32
    return model.run.data.max_prompt_len, model.run.data.bucket


# ---------------------------------------------------------------------------------------------
# Sampling, scoring and the metrics
# ---------------------------------------------------------------------------------------------


def rewards_for(model: Model, examples: Sequence[dict]) -> registry.Spec:
    """The model's rewards when every example has the fields they need, else DEFAULT_REWARDS
    (e.g. a countdown run evaluated on GSM8K falls back to the generic accuracy checker)."""
    needed = {f for name, _ in model.rewards.weights for f in model.rewards.reward(name).fields}
    present = set.intersection(*(set(e) for e in examples)) | {"lengths"}
    return model.rewards if needed <= present else DEFAULT_REWARDS


def normalise_answer(answer: str | None) -> str | None:
    """The answer as the vote compares it: whitespace removed ("78 - 9" and "78-9" agree)."""
    if answer is None:
        return None
    return "".join(answer.split()) or None


def vote(answers_nk: Sequence[Sequence[str | None]],
         correct_nk: np.ndarray) -> tuple[list[str | None], np.ndarray]:
    """Majority votes and whether each is correct.

    A vote's correctness is the score the accuracy reward gave to the vote's first sample, so
    the vote is judged by the very checker (and answer reader) that scored the samples.

    Args:
      answers_nk: per problem, the k normalised extracted answers (None: no answer).
      correct_nk: [num_problems, k] 0/1 accuracy of each sample.
    Returns:
      (the winning answer per problem or None, bool [num_problems]).
    """
    votes = [passk.majority_vote(row) for row in answers_nk]
    correct = np.array([v is not None and bool(correct_nk[i][list(answers_nk[i]).index(v)])
                        for i, v in enumerate(votes)], bool)
    return votes, correct


def cons_at_k(answers_nk: Sequence[Sequence[str | None]], correct_nk: np.ndarray) -> float:
    """cons@k (`passk.cons_at_k`) with the vote judged as in `vote`."""
    def correct_fn(i, answer):
        return bool(correct_nk[i][list(answers_nk[i]).index(answer)])

    return passk.cons_at_k(answers_nk, correct_fn)


def _language_consistency(ctx: rollout.Context, scored: rollout.Rollout) -> np.ndarray:
    """The language-consistency reward (R1 Sec. 2.3.3) of each completion; the target language
    is the example's `language` field, English without one."""
    responses = [ctx.template.full_response(t) for t in scored["texts"]]
    fields = {"language": scored["fields"]["language"]} if "language" in scored["fields"] else {}
    return registry.get("language")(responses, **fields)


def _keep(ctx: rollout.Context, scored: rollout.Rollout) -> dict[str, Any]:
    """The per-completion values the metrics and the JSON report need."""
    answers = [normalise_answer(templates.extract_answer(ctx.template.full_response(t)))
               for t in scored["texts"]]
    out = {k: np.asarray(scored[k]) for k in ("accuracy", "lenient_accuracy", "format",
                                              "lengths", "rewards")}
    out.update(texts=list(scored["texts"]), answers=answers,
               language=_language_consistency(ctx, scored))
    return out


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    return {k: (sum((p[k] for p in parts), []) if isinstance(parts[0][k], list)
                else np.concatenate([p[k] for p in parts])) for k in parts[0]}


def sample_and_score(ctx: rollout.Context, params, batches: Sequence[dict], rng,
                     settings: Settings, progress: bool = True):
    """k sampled (and, with `settings.greedy`, one greedy) completions of every prompt, scored.

    Returns:
      (sampled, greedy or None): dicts of per-completion arrays and lists over all batches,
      the k samples of a prompt consecutive.
    """
    sampled, greedy = [], []
    for b, batch in enumerate(tqdm.tqdm(batches, desc="eval", unit="batch", disable=not progress,
                                        dynamic_ncols=True)):
        key = rng if b == 0 else jax.random.fold_in(rng, b)
        out = rollout.sample(ctx, params, batch, key, num_samples=settings.num_samples,
                             max_new_tokens=settings.max_new_tokens,
                             temperature=settings.temperature, top_p=settings.top_p)
        sampled.append(_keep(ctx, rollout.score(ctx, out)))
        if settings.greedy:
            out = rollout.sample(ctx, params, batch, key, num_samples=1,
                                 max_new_tokens=settings.max_new_tokens, temperature=0.0)
            greedy.append(_keep(ctx, rollout.score(ctx, out)))
    return _join(sampled), (_join(greedy) if greedy else None)


def compute_metrics(sampled: dict[str, Any], greedy: dict[str, Any] | None,
                    k: int) -> dict[str, float]:
    """The evaluation metrics, named and computed as the trainer's `eval/` metrics (plus cons@k
    and language consistency), from `sample_and_score`'s output."""
    correct_nk = sampled["accuracy"].reshape(-1, k)
    answers_nk = [sampled["answers"][i:i + k] for i in range(0, len(sampled["answers"]), k)]
    metrics = {
        "pass@1": passk.pass_at_1_mean(correct_nk),
        f"pass@{k}": float(np.mean(passk.pass_at_k(k, correct_nk.sum(1), k))),
        f"cons@{k}": cons_at_k(answers_nk, correct_nk),
        "lenient_accuracy": float(np.mean(sampled["lenient_accuracy"])),
        "format_rate": float(np.mean(sampled["format"])),
        "language_consistency": float(np.mean(sampled["language"])),
        "response_length": float(np.mean(sampled["lengths"])),
        "reward": float(np.mean(sampled["rewards"])),
    }
    if greedy is not None:
        metrics["greedy_accuracy"] = float(np.mean(greedy["accuracy"]))
        metrics["greedy_lenient_accuracy"] = float(np.mean(greedy["lenient_accuracy"]))
    return metrics


# ---------------------------------------------------------------------------------------------
# The evaluation and its report
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    """Metrics and, per problem, the extracted answers, their correctness and the vote."""

    metrics: dict[str, float]
    problems: list[dict[str, Any]]

    def to_json(self, **header) -> str:
        return json.dumps({**header, "metrics": self.metrics, "problems": self.problems},
                          indent=2, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _problems(examples, sampled, greedy, k: int) -> list[dict[str, Any]]:
    correct_nk = sampled["accuracy"].reshape(-1, k)
    answers_nk = [sampled["answers"][i:i + k] for i in range(0, len(sampled["answers"]), k)]
    votes, vote_correct = vote(answers_nk, correct_nk)
    problems = []
    for i, example in enumerate(examples):
        record = {"question": example["question"], "answer": example.get("answer"),
                  "answers": answers_nk[i], "correct": correct_nk[i].astype(int).tolist(),
                  "vote": votes[i], "vote_correct": bool(vote_correct[i]),
                  "completions": sampled["texts"][i * k:(i + 1) * k]}
        if greedy is not None:
            record.update(greedy_completion=greedy["texts"][i],
                          greedy_correct=bool(greedy["accuracy"][i]))
        problems.append(record)
    return problems


def evaluate(model: Model, examples: Sequence[dict], settings: Settings, rng, *,
             max_prompt_len: int = 512, bucket: int = 32, reward_workers: int = 2,
             progress: bool = True) -> Result:
    """Evaluates `model` on `examples` (dicts with `question` and the reward fields).

    Args:
      rng: the sampling key (batch b > 0 uses fold_in(rng, b)).
      max_prompt_len, bucket: prompt padding (`pipeline.PromptConfig`); a run's own values
        reproduce its evaluation batch exactly.
      reward_workers: processes for the pooled accuracy checkers.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    batches = prompt_batches(examples, model, settings.batch_size, max_prompt_len, bucket)
    rewards = rewards_for(model, examples)
    with rollout.reward_pool(rewards, reward_workers) as pool:
        ctx = rollout.Context(model.config, model.tokenizer, model.template, rewards, pool,
                              model.mesh)
        sampled, greedy = sample_and_score(ctx, model.params, batches, rng, settings, progress)
    k = settings.num_samples
    return Result(compute_metrics(sampled, greedy, k), _problems(examples, sampled, greedy, k))


_PERCENT = ("pass@", "cons@", "accuracy", "rate", "consistency")


def format_table(metrics: dict[str, float]) -> str:
    """A two-column Markdown table; rates in percent, lengths and rewards as numbers."""
    lines = ["| metric | value |", "|---|---|"]
    for name, value in metrics.items():
        percent = any(p in name for p in _PERCENT)
        lines.append(f"| {name} | {100 * value:.1f}% |" if percent else
                     f"| {name} | {value:.3f} |")
    return "\n".join(lines)


def write_result(path: str | os.PathLike, result: Result, **header) -> None:
    """Writes the JSON report atomically (a tmp file renamed over `path`)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp")
    tmp.write_text(result.to_json(**header))
    os.replace(tmp, path)
