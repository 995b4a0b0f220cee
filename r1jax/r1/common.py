"""Building blocks shared by the R1 pipeline and distillation: SFT and GRPO stages that end in
a base-format model directory, and the per-stage held-out evaluation.

Every model a stage produces is saved as `<stage>/model` in the `r1jax.train.base` format
(config, tokenizer, params, DONE), so the next stage, `experiments/eval.py` and the GRPO
trainer (as `base_dir`) all read it the same way.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
from flax import traverse_util
from jax.experimental import multihost_utils

from r1jax import preemption
from r1jax.data import pipeline, tasks, templates
from r1jax.evals import evaluate
from r1jax.models import hf_shards
from r1jax.r1 import config as r1_config
from r1jax.r1 import data, judge
from r1jax.rewards import registry
from r1jax.rl import runs, trainer
from r1jax.train import base, sft
from r1jax.train import reward_model as rm

TEMPLATE = "r1_zero"
EVAL_REWARDS = registry.Spec.from_dict({"numeric": 1.0, "format_strict": 1.0})
#: The table's columns: (metric, title, shown in percent).
COLUMNS = (("pass@1", "pass@1", True), ("format_rate", "format", True),
           ("language_consistency", "language", True), ("response_length", "length", False))


def save_model(directory: pathlib.Path, model_config, params, tokenizer_dir) -> pathlib.Path:
    """Saves a stage's model (kept as is when a killed attempt already finished saving it).

    Every process calls it: `params` may be sharded across processes (`sft.train` returns
    them as trained), so each leaf is gathered alone (`hf_shards.gather`: one
    `process_allgather` per leaf, in the same order everywhere); process 0 keeps the host
    copies and writes them alone (`base.save_base`), the others drop theirs and wait for the
    directory to be complete. Process 0 thus holds the whole model on the host: right for
    the stage models r1jax trains (tests/r1/test_multihost_sft.py), not for a pod-scale one,
    whose save would need every process to write its own shards."""
    if not base.exists(directory):
        host = {}
        for path, leaf in traverse_util.flatten_dict(params).items():
            value = hf_shards.gather(leaf)
            if jax.process_index() == 0:
                host[path] = value
        if jax.process_index() == 0:
            base.save_base(directory, model_config, traverse_util.unflatten_dict(host),
                           base.tokenizer_files(tokenizer_dir))
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(f"save_model {directory}")
    return directory


def sft_stage(stage_dir: pathlib.Path, start_dir, records, section: r1_config.SFTStage, *,
              desc: str) -> pathlib.Path:
    """SFT of the model in `start_dir` on prompt/completion records (loss on completions);
    resumes from `<stage_dir>/train` checkpoints; returns the saved model directory."""
    model_dir = stage_dir / "model"
    if base.exists(model_dir):
        return model_dir
    model_config, params, tok = base.load_model(start_dir)
    cfg, optim = section.sft, section.optim
    rows = sft.pack(data.sft_examples(records, tok), cfg.seq_len, tok.pad_id, strategy=cfg.packing)
    if rows["tokens"].shape[0] < cfg.batch_size:  # a tiny dataset: repeat it to fill a batch
        reps = -(-cfg.batch_size // rows["tokens"].shape[0])
        rows = {k: v.repeat(reps, axis=0) if v.ndim else v for k, v in rows.items()}
    params = sft.train(model_config, optim, cfg, sft.epoch_batches(rows, cfg.batch_size,
                                                                   cfg.seed),
                       stage_dir / "train", params, desc=desc)
    return save_model(model_dir, model_config, params, start_dir)


def grpo_stage(stage_dir: pathlib.Path, start_dir, section: r1_config.GRPOSection,
               seed: int, extra_rewards: Sequence = (), **changes
               ) -> tuple[pathlib.Path, dict[str, Any]]:
    """GRPO (`rl.trainer.train`) from the model in `start_dir`, run in `<stage_dir>/run`
    (resumable); returns (the saved final model directory, the trainer's summary).
    `extra_rewards` (e.g. the learned reward model) are passed to the run's reward spec
    (`registry.Spec.extra`), never registered; `changes` replace top-level fields of the
    section (`GRPOSection.experiment`)."""
    model_dir, run_dir = stage_dir / "model", stage_dir / "run"
    run_config = section.experiment(pathlib.Path(start_dir).absolute(), seed, extra_rewards,
                                    **changes)
    summary = trainer.train(run_config, str(run_dir))
    if summary["preempted"]:
        raise preemption.Preempted(summary["step"], f"GRPO in {run_dir}")
    final = runs.load_run(run_dir, extra_rewards=extra_rewards)
    save_model(model_dir, final.config, final.params, start_dir)
    summary = {"step": summary["step"], "eval": summary["eval"],
               "nonfinite_total": summary.get("nonfinite_total", 0)}
    return model_dir, summary


def run_reward_models(run_dir, reward_model_dir=None) -> tuple:
    """The learned rewards a GRPO run was scored with, to pass back as `extra_rewards`
    (`rl.runs.load`): an all-scenario run names `reward_model.KIND` among its rewards, and
    the pipeline saved the model beside the run (`<stage>/reward_model/model`) unless
    `reward_model_dir` says where it is; one scored by the stage-3 judge (`judge.KIND`)
    recorded it in `<stage>/judge.json`. Empty for a run without them or an HF directory.

    Raises:
      FileNotFoundError: the run needs a reward model or judge that is not where it was
        looked for.
    """
    if not runs.is_run_dir(run_dir):
        return ()
    config = json.loads((pathlib.Path(run_dir) / "config.json").read_text())
    weights = dict(config["rewards"]["weights"])
    stage_dir = pathlib.Path(run_dir).absolute().parent
    found = ()
    if rm.KIND in weights:
        directory = pathlib.Path(reward_model_dir or stage_dir / "reward_model" / "model")
        if not (directory / "info.json").is_file():
            raise FileNotFoundError(f"{run_dir} was scored with the learned reward {rm.KIND!r}, "
                                    f"whose model is not in {directory}; pass its directory")
        found += (rm.load(directory),)
    if judge.KIND in weights:
        found += (judge.load_reward(stage_dir),)
    return found


def eval_examples(eval_cfg: r1_config.EvalConfig, jsonl: str | None = None,
                  jsonl_format: str = "gsm8k") -> list[dict]:
    """The first `eval_cfg.num_prompts` held-out examples: of the user's JSONL (`jsonl`, in
    `jsonl_format`) when set, else of the generated `eval_cfg.task`'s test split."""
    if jsonl:
        examples = tasks.jsonl.load(jsonl, jsonl_format, split="test").examples
        return examples[:eval_cfg.num_prompts]
    source = pipeline.generated_source(tasks.get(eval_cfg.task, **dict(eval_cfg.task_knobs)),
                                       "test", 0)
    return [source[i] for i in range(eval_cfg.num_prompts)]


def eval_rewards(jsonl: str | None = None, jsonl_format: str = "gsm8k") -> registry.Spec:
    """Accuracy + strict format; math answers (`jsonl_format` "math") by the math reward."""
    if jsonl and jsonl_format == "math":
        return registry.Spec.from_dict({"math": 1.0, "format_strict": 1.0})
    return EVAL_REWARDS


def evaluate_model(model_dir, eval_cfg: r1_config.EvalConfig, seed: int = 0,
                   jsonl: str | None = None, jsonl_format: str = "gsm8k") -> dict[str, float]:
    """Held-out pass@1 (k samples at the paper's temperature 0.6 / top-p 0.95), strict format
    rate, language consistency (of the question's language) and mean response length, on
    `eval_cfg`'s task or the user's `jsonl` test file."""
    model_config, params, tok = base.load_model(model_dir)
    model = evaluate.Model(model_config, params, tok, templates.get(TEMPLATE),
                           eval_rewards(jsonl, jsonl_format), mesh=None, source=str(model_dir))
    result = evaluate.evaluate(model, eval_examples(eval_cfg, jsonl, jsonl_format),
                               eval_cfg.settings(greedy=False), jax.random.PRNGKey(seed),
                               max_prompt_len=eval_cfg.max_prompt_len, bucket=64,
                               reward_workers=1, progress=False)
    return {key: float(result.metrics[key]) for key, _, _ in COLUMNS}


def table(rows: list[tuple[str, dict[str, float] | None]], extra: tuple[str, ...] = ()) -> str:
    """A Markdown table in the paper's style: one row per (name, metrics or None)."""
    titles = [title for _, title, _ in COLUMNS] + list(extra)
    lines = ["| stage | " + " | ".join(titles) + " |", "|" + "---|" * (len(titles) + 1)]
    for name, metrics in rows:
        cells = []
        for key, _, percent in COLUMNS:
            value = None if metrics is None else metrics.get(key)
            cells.append("-" if value is None else
                         f"{100 * value:.1f}%" if percent else f"{value:.1f}")
        cells += [str((metrics or {}).get(key, "-")) for key in extra]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
