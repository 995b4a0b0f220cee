"""Distillation (DeepSeek-R1 Sec. 2.4, 4.1): a small dense student fine-tuned on the R1
pipeline's stage-3 data vs the same student trained by R1-Zero-style RL for the same
estimated FLOPs; prints the comparison table.

  python experiments/r1.py && python experiments/distill.py          # tiny, runs/r1_tiny
  python experiments/distill.py --config=configs/r1.py:smoke --workdir=/tmp/r1 \
      --data=/tmp/r1/rejection/sft_data.jsonl

Stages (student_base, distill_sft, distill_rl) resume like the R1 pipeline's; the manifest is
`<workdir>/distill/manifest.json`.
"""

# ruff: noqa: E402
# SIGTERM from the first moment on (the imports below take seconds) is a preemption: the run
# checkpoints and exits 75 (r1jax.preemption).
from r1jax import preemption  # isort: skip

preemption.install()

from absl import flags, logging

from r1jax import config_utils
from r1jax.r1 import distill

_CONFIG = config_utils.define_config_file("config", "configs/r1.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "runs/r1_tiny", "The R1 run directory.")
_DATA = flags.DEFINE_string("data", None, "SFT JSONL (default: the run's stage-3 data).")
_STAGE = flags.DEFINE_enum("stage", None, list(distill.STAGES), "Rerun from this stage.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    manifest = distill.run(_CONFIG.value, _WORKDIR.value, _DATA.value, start=_STAGE.value)
    print(f"\nDistillation vs RL, dense student ({_WORKDIR.value}/distill):")
    print(distill.report(manifest))


if __name__ == "__main__":
    config_utils.run(preemption.exit_status(main))  # unknown --config key: exit 2
