"""Trains the toy base model for R1-Zero (see configs/pretrain_base.py for presets).

  python experiments/pretrain_base.py --workdir=runs/base_tiny
"""

# ruff: noqa: E402
# SIGTERM from the first moment on (the imports below take seconds) is a preemption: the run
# checkpoints and exits 75 (r1jax.preemption).
from r1jax import preemption  # isort: skip

preemption.install()

from absl import flags, logging

from r1jax import config_utils
from r1jax.train import pretrain

_CONFIG = config_utils.define_config_file("config", "configs/pretrain_base.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "runs/base_tiny", "Where the base model is written.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    cfg = pretrain.PretrainConfig.from_config_dict(_CONFIG.value)
    base_dir = pretrain.pretrain_base(cfg, f"{_WORKDIR.value}/base", f"{_WORKDIR.value}/train")
    print(f"base model: {base_dir}")


if __name__ == "__main__":
    config_utils.run(preemption.exit_status(main))  # unknown --config key: exit 2
