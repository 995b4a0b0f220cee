"""DeepSeek-R1-Zero: pure GRPO from a base model with rule rewards (arXiv:2501.12948 Sec. 2.2).

  python experiments/r1_zero.py                                     # tiny: pretrain + GRPO, CPU
  python experiments/r1_zero.py --config=configs/r1_zero.py:tiny --config.seed=1
  python experiments/r1_zero.py --config=configs/r1_zero.py:qwen2_5_3b_countdown \
      --config.base_dir=/path/to/base --workdir=runs/tinyzero

Multi-host (one process per host, every host running the same command): on a TPU pod add
`--distributed` (JAX finds the coordinator); elsewhere also pass --coordinator_address=HOST:PORT
--num_processes=N --process_id=I (or set R1JAX_COORDINATOR, R1JAX_NUM_PROCESSES,
R1JAX_PROCESS_ID). The base model (an r1jax base or an HF checkpoint) must then exist.

`config.base_dir` is an r1jax base directory or a local Hugging Face checkpoint directory
(config.json + safetensors + tokenizer.json), used read-only. Only the toy presets (tiny,
smoke) pretrain: when `base_dir` is their own `toy_base_dir` and holds no model, the toy base
is trained first with `--pretrain_config` and cached for later runs (a cached base pretrained
with other settings is used as is, with a note that names the differences). Any other missing
or unreadable `base_dir` is an error within seconds. The run directory `--workdir` is created
and marked as r1jax's; an existing directory that r1jax did not create is refused.
"""

# ruff: noqa: E402
# SIGTERM from the first moment on (the imports below take seconds) is a preemption: the run
# checkpoints and exits 75 (r1jax.preemption).
from r1jax import preemption  # isort: skip

preemption.install()

import pathlib

import jax
from absl import flags, logging

from r1jax import config_utils, distributed, ownership
from r1jax.rl import report, trainer
from r1jax.train import base, pretrain

_CONFIG = config_utils.define_config_file("config", "configs/r1_zero.py:tiny")
_PRETRAIN = config_utils.define_config_file("pretrain_config", "configs/pretrain_base.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "runs/r1_zero_tiny", "Run directory.")
_DISTRIBUTED = flags.DEFINE_bool("distributed", False, "Join a multi-process run.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "Process 0's HOST:PORT.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in the run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = _CONFIG.value
    multi = _DISTRIBUTED.value and distributed.initialize(
        _COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, auto=True)
    workdir = _WORKDIR.value
    ownership.check_owned(workdir, "write a GRPO run into")  # before any pretraining
    config.base_dir = str(pretrain.ensure_base(  # absolute: the run's config.json records it
        config.base_dir, config.get("toy_base_dir"),  # None in configs without a toy base
        lambda: pretrain.PretrainConfig.from_config_dict(_PRETRAIN.value),
        allow_pretrain=not multi))
    if base.exists(config.base_dir) and jax.process_index() == 0:
        cfg = pretrain.PretrainConfig.from_config_dict(_PRETRAIN.value)
        diff = pretrain.config_differences(cfg, config.base_dir)
        if diff:  # a cached base from other settings (e.g. an older default): say so, keep it
            print(f"note: the base model in {config.base_dir} was pretrained with other settings "
                  f"than --pretrain_config ({'; '.join(diff)}); it is used as is. Remove it, or "
                  "point --config.base_dir elsewhere, to pretrain anew.")
    summary = trainer.train(config, str(ownership.claim(workdir, "rl.trainer run")))
    if summary["preempted"]:
        raise preemption.Preempted(summary["step"], workdir)
    if jax.process_index() != 0:  # process 0 wrote the logs
        return
    metrics_path = pathlib.Path(_WORKDIR.value) / "metrics.jsonl"
    print(f"\nR1-Zero, {summary['step']} steps ({_WORKDIR.value}):")
    print(report.base_vs_final(metrics_path))


if __name__ == "__main__":
    config_utils.run(preemption.exit_status(main))  # unknown --config key: exit 2
