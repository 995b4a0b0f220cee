"""Policies to evaluate or export: a GRPO run directory read back, or a local HF directory.

A run directory (`r1jax.rl.trainer`: config.json + checkpoints/) gives the policy params of its
newest (or a chosen) checkpoint, with the base model's config and tokenizer and the run's
template, rewards, mesh and evaluation settings; an HF directory (`r1jax.models.hf.load_hf` +
`HFTokenizer`) gives its weights and tokenizer with the default rewards. Both become an
`evals.evaluate.Model`, which `evals.evaluate.evaluate` scores; this module also knows a run's
own evaluation prompts, settings, prompt padding and sampling key, which `experiments/eval.py`
uses by default.

Reproducing a run: with the run's prompts in one batch of the run's `eval.num_prompts`, its mesh
and the key the trainer used at that step (`trainer.eval_key`), the greedy accuracy and pass@1
equal the values the run logged at the checkpoint's step.
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

from r1jax.data import tasks, templates
from r1jax.evals import evaluate
from r1jax.models import hf, transformer
from r1jax.rl import config as rl_config
from r1jax.rl import step, trainer
from r1jax.train import base, checkpoint


@dataclasses.dataclass(frozen=True)
class RunModel(evaluate.Model):
    """A policy read from a run directory: the run's ExperimentConfig, the checkpoint's step
    and the run's seed key (the trainer's RNG state) besides what every Model holds."""

    run: rl_config.ExperimentConfig | None = None
    step: int | None = None
    seed_key: np.ndarray | None = None


def run_of(model: evaluate.Model) -> rl_config.ExperimentConfig | None:
    """The run's config for a model read from a run directory, else None (an HF directory)."""
    return model.run if isinstance(model, RunModel) else None


# ---------------------------------------------------------------------------------------------
# Loading checkpoints
# ---------------------------------------------------------------------------------------------


def is_run_dir(path: str | os.PathLike) -> bool:
    """True for an r1jax GRPO run directory (config.json with a `grpo` section + checkpoints/)."""
    path = pathlib.Path(path)
    if not (path / "config.json").is_file() or not (path / "checkpoints").is_dir():
        return False
    return "grpo" in json.loads((path / "config.json").read_text())


def run_config(workdir: str | os.PathLike,
               extra_rewards: Sequence = ()) -> rl_config.ExperimentConfig:
    """The run's ExperimentConfig, rebuilt from the config.json the trainer wrote (with the
    `extra_rewards` the run was given, e.g. a learned reward model: a Spec's `extra`)."""
    values = json.loads((pathlib.Path(workdir) / "config.json").read_text())
    spec = values.pop("rewards")
    values["rewards"] = dict(spec["weights"])
    values["reward_options"] = {name: dict(opts) for name, opts in spec["options"]}
    values["reward_routes"] = {task: list(names) for task, names in spec.get("routes", ())}
    values["data"]["task_knobs"] = dict(values["data"]["task_knobs"])
    values["mesh"] = dict(values["mesh"])
    values["model_overrides"] = dict(values["model_overrides"])
    return rl_config.from_config_dict(values, extra_rewards)


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


def load_run(workdir: str | os.PathLike, step_: int | None = None, *,
             extra_rewards: Sequence = ()) -> RunModel:
    """The policy of an R1-Zero run at its newest checkpoint (or `step_`), placed on the run's
    mesh exactly as the trainer held it (`extra_rewards`: as `run_config`)."""
    workdir = os.path.abspath(workdir)
    config = run_config(workdir, extra_rewards)
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
    return RunModel(model_config, state["params"],
                    base.load_tokenizer(config.base_dir, model_config),
                    templates.get(config.data.template), config.rewards, mesh,
                    source=f"{workdir}@{restored_step}", run=config, step=restored_step,
                    seed_key=np.asarray(jax.device_get(state["rng"])))


def load_hf_dir(path: str | os.PathLike, template: str = "r1_zero") -> evaluate.Model:
    """A local HF checkpoint (config.json + safetensors + tokenizer.json) on one device, in its
    stored dtype, scored by `evaluate.DEFAULT_REWARDS`."""
    path = os.path.abspath(path)
    model_config = hf.load_hf_config(path)
    tok = base.load_tokenizer(path, model_config)  # checked before the weights are read
    _, params = hf.load_hf(path, dtype=model_config.param_dtype)
    return evaluate.Model(model_config, params, tok, templates.get(template),
                          evaluate.DEFAULT_REWARDS, mesh=None, source=path)


def load(path: str | os.PathLike, *, step_: int | None = None,
         template: str = "r1_zero", extra_rewards: Sequence = ()) -> evaluate.Model:
    """A run directory (`load_run`, with the `extra_rewards` it was given) or an HF directory
    (`load_hf_dir`), told apart by their files; `template` applies to HF checkpoints only (a
    run keeps its own)."""
    if is_run_dir(path):
        return load_run(path, step_, extra_rewards=extra_rewards)
    if (pathlib.Path(path) / hf.CONFIG_FILE).is_file():
        return load_hf_dir(path, template)
    raise ValueError(f"{path}: neither an r1jax run directory (config.json + checkpoints/) nor "
                     "a Hugging Face checkpoint directory (config.json + safetensors)")


# ---------------------------------------------------------------------------------------------
# A run's own prompts, settings and key
# ---------------------------------------------------------------------------------------------


def run_examples(config: rl_config.ExperimentConfig) -> list[dict[str, Any]]:
    """The run's held-out evaluation prompts (what the trainer's `eval/` metrics used): its
    test JSONL (else its train JSONL's test split) when it trained on user data."""
    d = config.data
    if d.train_jsonl is not None:
        path = d.test_jsonl or d.train_jsonl
        examples = tasks.jsonl.load(path, d.jsonl_format, on_error=d.jsonl_on_error,
                                    split="test").examples
        return examples[:config.eval.num_prompts]
    return evaluate.generated_examples(d.task, dict(d.task_knobs), "test", d.seed,
                                       config.eval.num_prompts)


def select_examples(model: evaluate.Model, *, task: str | None = None,
                    knobs: dict | None = None, split: str = "test", seed: int | None = None,
                    jsonl: str | None = None, jsonl_format: str = "math",
                    num_prompts: int | None = None) -> tuple[list[dict[str, Any]], str]:
    """The prompts to evaluate and a short name for them.

    Precedence: a JSONL file; else a generated task (for a run, its own knobs and data seed
    when it is the run's task); else, for a run, its held-out evaluation prompts.
    """
    if jsonl:
        return (evaluate.jsonl_examples(jsonl, jsonl_format, num_prompts),
                pathlib.Path(jsonl).stem)
    run = run_of(model)
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
    examples = evaluate.generated_examples(task, knobs, split, seed, num_prompts or 64)
    return examples, f"{task}-{split}"


def default_settings(model: evaluate.Model) -> evaluate.Settings:
    """A run's own evaluation settings (all its held-out prompts in one batch, as the trainer
    sampled them); the paper's for an HF checkpoint."""
    run = run_of(model)
    if run is None:
        return evaluate.Settings()
    e, s = run.eval, run.sampling
    return evaluate.Settings(num_samples=e.num_samples, temperature=e.temperature,
                             top_p=e.top_p, greedy=e.greedy,
                             max_new_tokens=e.max_new_tokens or s.max_new_tokens,
                             batch_size=e.num_prompts)


def run_eval_key(model: RunModel) -> jax.Array:
    """The key the trainer sampled its evaluation with at the checkpoint's step."""
    return trainer.eval_key(jax.numpy.asarray(model.seed_key), model.step)


def default_key(model: evaluate.Model, seed: int | None) -> jax.Array:
    """PRNGKey(seed) when given; else the run's evaluation key at its step (`run_eval_key`),
    or PRNGKey(0) for an HF checkpoint."""
    if seed is not None:
        return jax.random.PRNGKey(seed)
    return run_eval_key(model) if run_of(model) is not None else jax.random.PRNGKey(0)


def prompt_padding(model: evaluate.Model) -> tuple[int, int]:
    """(max_prompt_len, bucket): the run's data settings, else 1024 and 32."""
    run = run_of(model)
    if run is None:
        return 1024, 32
    return run.data.max_prompt_len, run.data.bucket
