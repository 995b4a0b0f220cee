"""Does the default tiny R1-Zero run reproduce the R1-Zero phenomenon, seed after seed?

Runs the default command (`python experiments/r1_zero.py`: the toy base model is pretrained,
then GRPO) once per seed, each in its own subprocess with its own workdir and base directory,
so the corpus, the pretraining and the RL all change with the seed. Prints each seed's
base-vs-final table (greedy accuracy, pass@1, lenient accuracy, format rate, mean length), its
wall-clock time and the load average, then the acceptance checks of the issue:
pass@1 up >= 25 points, format rate >= 95%, lenient accuracy up >= 15 points, <= 20 minutes.

  python benchmarks/r1_zero_repro.py                           # seeds 0, 1, 2 under runs/repro
  python benchmarks/r1_zero_repro.py --seeds=0 --root=/tmp/repro
  python benchmarks/r1_zero_repro.py --parallel                # all seeds at once

Extra arguments after `--` go to every run (e.g. `-- --config.total_steps=60`).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys
import time

from r1jax.rl import report

ROOT = pathlib.Path(__file__).resolve().parents[1]
LIMIT_S = 20 * 60


def command(seed: int, root: pathlib.Path, extra: list[str]) -> list[str]:
    """The default command with this seed's pretraining and RL seeds and directories."""
    run = root / f"seed{seed}"
    return [sys.executable, "experiments/r1_zero.py", f"--workdir={run / 'r1_zero'}",
            f"--config.base_dir={run / 'base'}", f"--config.toy_base_dir={run / 'base'}",
            f"--config.seed={seed}",
            f"--config.data.seed={seed}", f"--pretrain_config.seed={seed}",
            f"--pretrain_config.sft.seed={seed}", "--config.progress_bar=False", *extra]


def checks(metrics_path: pathlib.Path, wall_s: float) -> dict[str, bool]:
    """The issue's acceptance criteria for one run."""
    rows = report.eval_rows(metrics_path)
    if not rows:
        return {"evaluated": False}
    first, last = rows[0], rows[-1]

    def gain(key: str) -> float:
        return last.get(key, 0.0) - first.get(key, 0.0)

    return {"pass@1 +25pt": gain("eval/pass@1") >= 0.25,
            "format >= 95%": last.get("eval/format_rate", 0.0) >= 0.95,
            "lenient +15pt": gain("eval/lenient_accuracy") >= 0.15,
            "<= 20 min": wall_s <= LIMIT_S}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--root", default="runs/repro", help="one subdirectory per seed")
    parser.add_argument("--parallel", action="store_true", help="run the seeds concurrently")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    root = pathlib.Path(args.root).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    procs = {}
    for seed in seeds:
        (root / f"seed{seed}").mkdir(parents=True, exist_ok=True)
        log = open(root / f"seed{seed}" / "log.txt", "w")  # noqa: SIM115 (closed below)
        start = time.time()
        proc = subprocess.Popen(command(seed, root, extra), cwd=ROOT, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ))
        procs[seed] = (proc, log, start)
        if not args.parallel:
            _finish(seed, root, *procs[seed])
    if args.parallel:
        for seed in seeds:
            _finish(seed, root, *procs[seed])


def _finish(seed: int, root: pathlib.Path, proc, log, start: float) -> None:
    rc = proc.wait()
    log.close()
    wall_s = time.time() - start
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    metrics_path = root / f"seed{seed}" / "r1_zero" / "metrics.jsonl"
    print(f"\n## seed {seed}: exit {rc}, wall-clock {wall_s / 60:.1f} min, load average {load}")
    if rc:
        print(f"(failed; see {root / f'seed{seed}' / 'log.txt'})")
    if metrics_path.exists():
        print(report.base_vs_final(metrics_path))
        results = checks(metrics_path, wall_s)
        print("checks: " + ", ".join(f"{k}: {'ok' if v else 'FAIL'}" for k, v in results.items()))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
