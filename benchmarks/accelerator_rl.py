"""Device check, RL-cost section (issue 25), run by `benchmarks/accelerator.py --sections=rl`
(it reads that script's --small and --repeats flags).

The R1 paper's argument for GRPO on this card: one GRPO update (reference scorer + policy
update) vs one PPO update (+ the critic's value forward, GAE and the critic's own update) of
the same model, batch and lengths, per-device state and peak bytes from the compiled programs
and median times, as ratios (`benchmarks/grpo_vs_ppo.py`, which also runs alone). Full size:
small_50m (MLA + MoE) under the `accelerator` precision policy, 16 rows x (64 + 128) tokens;
--small (CPU): a 2-layer d=64 dense model, 8 rows x (8 + 16).
"""

from __future__ import annotations

import grpo_vs_ppo  # benchmarks/ is the script's directory, on sys.path
from absl import flags

from r1jax.models import config as config_lib
from r1jax.models import presets


def rl_section() -> None:
    if flags.FLAGS.small:
        model, (rows, p, t) = grpo_vs_ppo.small_model(), (8, 8, 16)
    else:
        values = presets.small_50m().to_dict()
        values.update(config_lib.precision("accelerator"))
        model, (rows, p, t) = config_lib.ModelConfig(**values), (16, 64, 128)
    print(f"GRPO vs PPO update, {rows} rows x ({p} + {t}) tokens")
    grpo_vs_ppo.report(grpo_vs_ppo.measure(model, rows, p, t, flags.FLAGS.repeats))
