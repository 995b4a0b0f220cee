"""The pinned metrics of the tiny R1-Zero smoke run (issue 20: the same metrics before and
after a restructuring), the command that produces them, and the comparison.

tests/experiments/test_r1_zero.py runs the smoke run once (experiments/r1_zero.py, smoke
presets, base pretraining included, cheap CPU codegen) and compares `summarize` of its outputs
with r1_zero_smoke_golden.json. Regenerate the file only when a change of behaviour is
intended (say so in the commit):

    python tests/experiments/r1_zero_golden.py            # refuses to replace the file
    python tests/experiments/r1_zero_golden.py --overwrite

What is pinned, and how closely:
- exactly: the logged steps; every discrete quantity (response lengths, the clipped fraction,
  accuracies, format rates, reward components, non-finite counts); every evaluation metric
  (means of 0/1 scores and integer lengths); the step-0 evaluation samples of the fixed
  base (completion text, length, reward); the base's pretraining corpus statistics.
- within tolerances, the continuous training metrics (`CLOSE`). Two runs compiled by XLA's
  default CPU codegen instead of the cheap one (other fusions, so float32 sums in another
  order: what another CPU does), one on the same base and one pretraining its own base,
  gave the same discrete values, the same step-0 samples and these largest differences:
  entropy 2.2e-5 relative, ratio_mean 5.6e-4 absolute, kl / loss / grad_norm 2.2e-3
  relative up to the reference reset (`ref_update_every` = 3) and 18% after it (step 4).
  The last is large because the smoke run's rewards are all 0 (a 4-step base answers
  nothing), so the update is the KL term alone, whose gradient is 0 up to rounding while
  the policy equals the reference (step 1, and just after the reset): Adam normalises
  that rounding noise into full-size steps in noise-chosen directions. The tolerances are
  about 3-5x those differences. The same fact limits what the run covers: advantages are
  0, so the pinned metrics exercise sampling, the KL penalty, the optimizer and its
  schedule, not the clipped policy-gradient term (tests/rl/ check that against
  references).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import subprocess
import sys
import tempfile

if __name__ == "__main__":  # as a script: tests/ helper modules import as they do under pytest
    sys.path[:0] = [str(pathlib.Path(__file__).resolve().parents[1])]

import hf_dirs  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
GOLDEN = pathlib.Path(__file__).with_name("r1_zero_smoke_golden.json")
#: The smoke preset's reference reset (configs/r1_zero.py:smoke grpo.ref_update_every).
REF_RESET_STEP = 3
#: Training metrics compared exactly (discrete by construction).
EXACT = ("accuracy", "accuracy_lenient", "format_rate", "nonfinite",
         "response_length/clipped_frac", "response_length/max", "response_length/mean")
#: Continuous training metrics: name -> (rtol up to the reference reset, rtol after, atol).
#: atol covers the values that are 0 up to rounding (kl and loss at step 1: ~1e-9).
CLOSE = {"entropy": (1e-4, 1e-4, 0.0), "ratio_mean": (0.0, 0.0, 3e-3),
         "learning_rate": (1e-6, 1e-6, 0.0), "kl": (1e-2, 0.6, 1e-7),
         "loss": (1e-2, 0.6, 1e-8), "pg_loss": (1e-2, 0.6, 1e-8),
         "grad_norm": (1e-2, 0.6, 1e-5), "clip_frac_low": (0.0, 0.0, 0.02),
         "clip_frac_high": (0.0, 0.0, 0.02), "aux_loss": (0.0, 0.0, 1e-6)}
SAMPLE_KEYS = ("completion", "length", "reward", "correct")


def command(base_dir: pathlib.Path, workdir: pathlib.Path) -> list[str]:
    """The smoke run: experiments/r1_zero.py pretrains the toy base into `base_dir`, then
    runs 4 GRPO steps in `workdir`."""
    return [sys.executable, "experiments/r1_zero.py", "--config=configs/r1_zero.py:smoke",
            "--pretrain_config=configs/pretrain_base.py:smoke", f"--config.base_dir={base_dir}",
            f"--config.toy_base_dir={base_dir}",  # a toy base location: pretraining allowed
            # The smoke tokenizer (300 documents) splits the template finely: prompts > 256.
            "--config.data.max_prompt_len=512", f"--workdir={workdir}"]


def run(base_dir: pathlib.Path, workdir: pathlib.Path) -> subprocess.CompletedProcess:
    """Runs `command` on one CPU device with the cheap codegen (the run is mostly compiling)."""
    return subprocess.run(command(base_dir, workdir), cwd=ROOT, env=hf_dirs.cheap_cpu_env(),
                          capture_output=True, text=True, timeout=900)


def _jsonl(path: pathlib.Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarize(base_dir: pathlib.Path, workdir: pathlib.Path) -> dict:
    """The pinned quantities of a finished smoke run.

    Returns:
      {"corpus": the base's corpus statistics, "eval": {step: eval metrics},
       "train": {step: {metric: value}} (EXACT, reward/* and CLOSE keys),
       "samples": the step-0 evaluation samples [{completion, length, reward, correct}]}.
    """
    records = _jsonl(workdir / "metrics.jsonl")
    keep = set(EXACT) | set(CLOSE)
    train, evals = {}, {}
    for r in records:
        if "eval/pass@1" in r:
            evals[str(r["step"])] = {k: v for k, v in r.items() if k.startswith("eval/")}
        else:
            train[str(r["step"])] = {k: v for k, v in r.items()
                                     if k in keep or k.startswith("reward/")}
    samples = [{k: s[k] for k in SAMPLE_KEYS} for s in _jsonl(workdir / "samples.jsonl")
               if s["step"] == 0]
    corpus = json.loads((base_dir / "info.json").read_text())["corpus"]
    return {"corpus": corpus, "eval": evals, "train": train, "samples": samples}


def _close(name: str, step: int, got: float, want: float) -> bool:
    before, after, atol = CLOSE[name]
    rtol = before if step <= REF_RESET_STEP else after
    return math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)


def _exact(where: str, got, want) -> list[str]:
    """One line per entry (of a dict, or by index of a list) that differs between `want`
    and `got`, or that only one of them has."""
    if isinstance(want, list):
        got, want = dict(enumerate(got)), dict(enumerate(want))
    absent = "<absent>"
    return [f"{where} {key}: {want.get(key, absent)!r} -> {got.get(key, absent)!r} (exact)"
            for key in sorted(set(want) | set(got)) if want.get(key, absent) != got.get(key, absent)]


def compare(got: dict, golden: dict) -> list[str]:
    """Every difference between a run's `summarize` and the golden one, one line each
    ("train step 2 kl: 0.00045 -> 0.00051 (rtol 0.01, atol 1e-07)"); empty when they agree.
    Training metrics the golden file lacks (added later) are not compared."""
    out = _exact("corpus", got["corpus"], golden["corpus"])
    for step in sorted(set(golden["eval"]) | set(got["eval"]), key=int):
        out += _exact(f"eval step {step}", got["eval"].get(step, {}),
                      golden["eval"].get(step, {}))
    out += _exact("step-0 sample", got["samples"], golden["samples"])
    if sorted(got["train"], key=int) != sorted(golden["train"], key=int):
        out.append(f"train steps: {sorted(golden['train'], key=int)} -> "
                   f"{sorted(got['train'], key=int)}")
    for step, want in golden["train"].items():
        have = got["train"].get(step, {})
        for name, value in want.items():
            if name not in have:
                out.append(f"train step {step} {name}: missing")
            elif name not in CLOSE:
                out += _exact(f"train step {step}", {name: have[name]}, {name: value})
            elif not _close(name, int(step), have[name], value):
                before, after, atol = CLOSE[name]
                rtol = before if int(step) <= REF_RESET_STEP else after
                out.append(f"train step {step} {name}: {value!r} -> {have[name]!r} "
                           f"(rtol {rtol}, atol {atol})")
    return out


def load() -> dict:
    return json.loads(GOLDEN.read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace {GOLDEN.name} (refused without it when it exists)")
    args = parser.parse_args(argv)
    if GOLDEN.exists() and not args.overwrite:
        print(f"{GOLDEN} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        base_dir, workdir = pathlib.Path(tmp) / "base", pathlib.Path(tmp) / "run"
        out = run(base_dir, workdir)
        if out.returncode != 0:
            print(out.stdout[-2000:] + out.stderr[-4000:], file=sys.stderr)
            return out.returncode
        summary = summarize(base_dir, workdir)
    GOLDEN.write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
