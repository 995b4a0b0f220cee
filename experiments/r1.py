"""DeepSeek-R1: cold start, reasoning RL, rejection sampling + SFT, all-scenario RL
(arXiv:2501.12948 Sec. 2.3), each stage resumable, then the paper-style table.

  python experiments/r1.py                                        # tiny preset, runs/r1_tiny
  python experiments/r1.py --config=configs/r1.py:smoke --workdir=/tmp/r1_smoke
  python experiments/r1.py --stage=rejection     # rerun rejection sampling and what follows
  python experiments/r1.py --config=configs/r1.py:smoke --config.base_dir=/models/Qwen2.5-0.5B \
      --config.data.cold_start_jsonl=cold.jsonl --config.data.eval_jsonl=test.jsonl \
      --config.reasoning_rl.data.train_jsonl=train.jsonl \
      --config.reasoning_rl.data.jsonl_format=gsm8k --workdir=runs/r1_qwen

`--config.base_dir` is an r1jax base or a Hugging Face checkpoint directory (used as is, read
only); each stage can read your JSONL instead of the toy data (schemas: r1jax/r1/data.py).

Rerunning after a kill (or SIGTERM) skips the finished stages and resumes the unfinished one
from its checkpoints. `--stage=NAME` reruns NAME and every later stage (their earlier outputs
are moved to `<stage>.replaced-<k>`); after a kill, rerun without it to resume. The manifest
of the run is `<workdir>/manifest.json`.
"""

# ruff: noqa: E402
# SIGTERM from the first moment on (the imports below take seconds) is a preemption: the run
# checkpoints and exits 75 (r1jax.preemption).
from r1jax import preemption  # isort: skip

preemption.install()

from absl import flags, logging

from r1jax import config_utils
from r1jax.r1 import pipeline

_CONFIG = config_utils.define_config_file("config", "configs/r1.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "runs/r1_tiny", "Run directory.")
_STAGE = flags.DEFINE_enum("stage", None, list(pipeline.STAGES),
                           "Rerun from this stage (earlier stages must be complete).")
_UNTIL = flags.DEFINE_enum("until", None, list(pipeline.STAGES), "Stop after this stage.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    manifest = pipeline.run(_CONFIG.value, _WORKDIR.value, start=_STAGE.value,
                            until=_UNTIL.value)
    print(f"\nDeepSeek-R1 pipeline ({_WORKDIR.value}), held-out "
          f"{pipeline.eval_name(_CONFIG.value)}:")
    print(pipeline.report(manifest))


if __name__ == "__main__":
    config_utils.run(preemption.exit_status(main))  # unknown --config key: exit 2
