"""Evaluates a checkpoint: pass@1 over k samples, cons@k, greedy accuracy (R1 paper Sec. 3).

  python experiments/eval.py --checkpoint=runs/r1_zero_tiny          # the run's held-out prompts
  python experiments/eval.py --checkpoint=runs/r1_zero_tiny --task=countdown --num_prompts=256 \
      --task_knobs='{"min_numbers": 4, "max_numbers": 4}'
  python experiments/eval.py --checkpoint=/models/qwen2.5-math-1.5b --template=r1_chat \
      --data=math500.jsonl --data_format=math --num_samples=16 --max_new_tokens=4096

A run directory is evaluated at its newest checkpoint (or --step) with the run's template,
rewards and evaluation settings; with no --task/--data and no --seed the numbers equal those the
run logged at that step. An R1 all-scenario run is scored with its learned reward model too
(--reward_model, default: the one the pipeline saved beside the run). Unset sampling flags take the run's values (an HF checkpoint: k = 4,
temperature 0.6, top-p 0.95). The JSON result goes to --output (default: <run>/eval/<prompts>-
step<step>.json, or eval/<name>-<prompts>.json for an HF directory).
"""

import dataclasses
import json
import os

from absl import app, flags, logging

from r1jax import ownership
from r1jax.evals import evaluate
from r1jax.r1 import common
from r1jax.rl import runs

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "R1-Zero run directory or HF directory.",
                                  required=True)
_STEP = flags.DEFINE_integer("step", None, "Run checkpoint step (default: the newest).")
_TEMPLATE = flags.DEFINE_string("template", "r1_zero", "Prompt template (HF checkpoints).")
_TASK = flags.DEFINE_string("task", None, "Generated task name (default: the run's prompts).")
_KNOBS = flags.DEFINE_string("task_knobs", None, "Task knobs as a JSON object.")
_TASK_SEED = flags.DEFINE_integer("task_seed", None, "Generated task seed (default: the run's).")
_SPLIT = flags.DEFINE_enum("split", "test", ["train", "test"], "Generated task split.")
_DATA = flags.DEFINE_string("data", None, "User JSONL file (overrides --task).")
_FORMAT = flags.DEFINE_enum("data_format", "math", ["gsm8k", "math"], "JSONL format.")
_NUM_PROMPTS = flags.DEFINE_integer("num_prompts", None, "Prompts to evaluate.")
_SEED = flags.DEFINE_integer("seed", None, "Sampling seed (default: the run's eval key).")
_K = flags.DEFINE_integer("num_samples", None, "k: samples per prompt.")
_TEMPERATURE = flags.DEFINE_float("temperature", None, "Sampling temperature.")
_TOP_P = flags.DEFINE_float("top_p", None, "Nucleus sampling p.")
_GREEDY = flags.DEFINE_bool("greedy", None, "Also decode greedily.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", None, "Completion budget.")
_BATCH = flags.DEFINE_integer("batch_size", None, "Prompts per generate call.")
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON result.")
_REWARD_MODEL = flags.DEFINE_string(
    "reward_model", None, "Saved reward model of an R1 all-scenario run (default: the one the "
    "pipeline saved beside the run, <stage>/reward_model/model).")


def _output_path(model: evaluate.Model, prompts: str) -> str:
    if _OUTPUT.value:
        return _OUTPUT.value
    if runs.run_of(model) is not None:
        return os.path.join(_CHECKPOINT.value, "eval", f"{prompts}-step{model.step}.json")
    ownership.claim("eval", "experiments/eval.py results")  # never someone else's eval/
    return os.path.join("eval", f"{os.path.basename(os.path.abspath(_CHECKPOINT.value))}"
                                f"-{prompts}.json")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax warns that read-only means no saves
    extra = common.run_reward_models(_CHECKPOINT.value, _REWARD_MODEL.value)
    model = runs.load(_CHECKPOINT.value, step_=_STEP.value, template=_TEMPLATE.value,
                      extra_rewards=extra)
    examples, prompts = runs.select_examples(
        model, task=_TASK.value, knobs=json.loads(_KNOBS.value) if _KNOBS.value else None,
        split=_SPLIT.value, seed=_TASK_SEED.value, jsonl=_DATA.value, jsonl_format=_FORMAT.value,
        num_prompts=_NUM_PROMPTS.value)
    path = _output_path(model, prompts)  # before the evaluation: a refused path fails early
    overrides = {"num_samples": _K.value, "temperature": _TEMPERATURE.value, "top_p": _TOP_P.value,
                 "greedy": _GREEDY.value, "max_new_tokens": _MAX_NEW.value,
                 "batch_size": _BATCH.value}
    settings = runs.default_settings(model).replace(
        **{k: v for k, v in overrides.items() if v is not None})
    max_prompt_len, bucket = runs.prompt_padding(model)
    result = evaluate.evaluate(model, examples, settings, runs.default_key(model, _SEED.value),
                               max_prompt_len=max_prompt_len, bucket=bucket)
    evaluate.write_result(path, result, checkpoint=model.source, prompts=prompts,
                          num_prompts=len(examples), settings=dataclasses.asdict(settings))
    print(f"\n{model.source} on {len(examples)} prompts ({prompts}), k={settings.num_samples}:")
    print(evaluate.format_table(result.metrics))
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
