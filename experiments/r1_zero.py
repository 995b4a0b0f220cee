"""DeepSeek-R1-Zero: pure GRPO from a base model with rule rewards (arXiv:2501.12948 Sec. 2.2).

  python experiments/r1_zero.py                                     # tiny: pretrain + GRPO, CPU
  python experiments/r1_zero.py --config=configs/r1_zero.py:tiny --config.seed=1
  python experiments/r1_zero.py --config=configs/r1_zero.py:qwen2_5_3b_countdown \
      --config.base_dir=/path/to/base --workdir=runs/tinyzero

When `config.base_dir` holds no base model and `--pretrain_config` is set (the default), the toy
base model is trained first (experiments/pretrain_base.py) and cached for later runs.
"""

import pathlib

from absl import app, flags, logging
from ml_collections import config_flags

from r1jax.evals import report
from r1jax.rl import trainer
from r1jax.train import base, pretrain

_CONFIG = config_flags.DEFINE_config_file("config", "configs/r1_zero.py:tiny")
_PRETRAIN = config_flags.DEFINE_config_file("pretrain_config", "configs/pretrain_base.py:tiny")
_WORKDIR = flags.DEFINE_string("workdir", "runs/r1_zero_tiny", "Run directory.")


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it writes at INFO
    config = _CONFIG.value
    if not base.exists(config.base_dir):
        print(f"no base model in {config.base_dir}: pretraining it first")
        cfg = pretrain.PretrainConfig.from_config_dict(_PRETRAIN.value)
        pretrain.pretrain_base(cfg, config.base_dir, f"{config.base_dir}.work")
    summary = trainer.train(config, _WORKDIR.value)
    metrics_path = pathlib.Path(_WORKDIR.value) / "metrics.jsonl"
    print(f"\nR1-Zero, {summary['step']} steps ({_WORKDIR.value}):")
    print(report.base_vs_final(metrics_path))


if __name__ == "__main__":
    app.run(main)
