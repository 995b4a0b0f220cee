"""Accuracy curves of several GRPO/PPO runs in one figure (the README's GRPO-vs-PPO plot).

  python benchmarks/plot_runs.py --out=docs/grpo_vs_ppo.png GRPO=runs/j_tiny PPO=runs/j_tiny_ppo

Top: held-out pass@1 (`eval/pass@1`) against step; below: the training batch's accuracy and
total reward (`accuracy`, `reward/total`, one point per step, noisier). Reads each run's metrics.jsonl, so a run still
going is drawn as far as it got.
"""

import argparse
import math
import pathlib

from r1jax.train import metrics

PANELS = (("eval/pass@1", "held-out pass@1"), ("accuracy", "train-batch accuracy"),
          ("reward/total", "train-batch reward"))


def curve(records: list[dict], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the finite values of `key`, in step order (last record of a step)."""
    by_step = {r["step"]: r[key] for r in records
               if isinstance(r.get(key), int | float) and math.isfinite(r[key])}
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def plot(runs: dict[str, pathlib.Path], out: pathlib.Path) -> None:
    """Draws `PANELS` for every run (label -> run directory) into the PNG `out`.

    Raises:
      FileNotFoundError: a run directory without metrics.jsonl, named.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 7), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(PANELS), 1, sharex=True)
    for label, workdir in runs.items():
        path = workdir / metrics.JSONL_NAME
        if not path.is_file():
            raise FileNotFoundError(f"run {label!r}: no {path}")
        records = metrics.read_jsonl(path)
        for ax, (key, _) in zip(axes, PANELS):
            steps, values = curve(records, key)
            ax.plot(steps, values, marker="o" if key.startswith("eval/") else None,
                    markersize=4, linewidth=1.2, label=label)
    for ax, (_, title) in zip(axes, PANELS):
        ax.set_ylabel(title)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[-1].set_xlabel("RL step")
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, required=True, help="PNG to write.")
    parser.add_argument("runs", nargs="+", help="LABEL=RUN_DIR, one per run.")
    args = parser.parse_args()
    runs = {}
    for item in args.runs:
        label, sep, workdir = item.partition("=")
        if not sep or not label or not workdir:
            parser.error(f"expected LABEL=RUN_DIR, got {item!r}")
        runs[label] = pathlib.Path(workdir)
    plot(runs, args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
