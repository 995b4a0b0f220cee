"""Smoke test of experiments/r1_zero.py: the real entry point, base pretraining included; its
metrics are pinned (r1_zero_golden.py says what, how closely, and how to regenerate them)."""

import copy
import json

import r1_zero_golden as golden


def test_r1_zero_entry_point_pretrains_then_trains(tmp_path):
    base_dir, workdir = tmp_path / "base", tmp_path / "run"
    out = golden.run(base_dir, workdir)  # one CPU device, cheap compiles: mostly compiling
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    assert (base_dir / "DONE").exists()
    info = json.loads((base_dir / "info.json").read_text())
    assert info["corpus"]["packing"] == "best_fit" and 0.0 < info["corpus"]["fill"] <= 1.0
    assert info["pretrain_config"]["num_documents"] == 300  # the smoke preset's corpus
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "eval/pass@1" in r]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 4
    assert all(0.0 <= r["eval/lenient_accuracy"] <= 1.0 for r in evals)
    assert "| base | 0 |" in out.stdout and "| final | 4 |" in out.stdout
    for name in ("reward", "accuracy", "response_length"):
        assert (workdir / "plots" / f"{name}.png").stat().st_size > 0
    mismatches = golden.compare(golden.summarize(base_dir, workdir), golden.load())
    assert not mismatches, ("the smoke run's metrics changed (if intended, regenerate "
                            f"{golden.GOLDEN.name}, see r1_zero_golden.py):\n" +
                            "\n".join(mismatches))


def test_golden_comparison_names_each_change():
    """The comparison fails on a change beyond float32 noise and names it; noise passes."""
    pinned = golden.load()
    assert golden.compare(pinned, pinned) == []
    noisy = copy.deepcopy(pinned)
    noisy["train"]["2"]["kl"] *= 1.003  # about the measured codegen-order difference
    noisy["train"]["4"]["kl"] *= 1.2  # after the reference reset: noise-driven
    noisy["train"]["1"]["ratio_mean"] += 5e-4
    assert golden.compare(noisy, pinned) == []
    changed = copy.deepcopy(pinned)
    changed["train"]["2"]["kl"] *= 1.25  # e.g. beta 0.04 -> 0.05
    changed["train"]["3"]["response_length/mean"] -= 0.5
    changed["samples"][0]["completion"] += "x"
    del changed["train"]["4"]["entropy"]
    lines = golden.compare(changed, pinned)
    assert len(lines) == 4, lines
    assert lines[0].startswith("step-0 sample 0: {")
    assert any(line.startswith("train step 2 kl:") and "rtol 0.01" in line for line in lines)
    assert any(line.startswith("train step 3 response_length/mean:") and "(exact)" in line
               for line in lines)
    assert "train step 4 entropy: missing" in lines
