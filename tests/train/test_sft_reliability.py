"""SFT trainer reliability: a resumed run matches an uninterrupted one, non-finite updates stop the run naming a finite checkpoint, a
corrupted latest checkpoint falls back to the previous one, SIGTERM checkpoints and raises
`preemption.Preempted`. (The reward-model trainer shares this code: `r1jax.train.resume`.)"""

import os
import shutil
import signal

import jax
import numpy as np
import pytest
from test_sft import CFG, _batch_fn

from r1jax import preemption
from r1jax.models import transformer
from r1jax.train import checkpoint, guard, metrics, sft
from r1jax.train import state as state_lib

OPTIM = state_lib.OptimConfig(learning_rate=1e-2, warmup_steps=1)


def _run(workdir, batch_fn=None, steps=4, **overrides):
    """Final params of the small SFT run (seed-2 init) in `workdir`, resuming what is there."""
    cfg = sft.SFTConfig(steps=steps, batch_size=8, seq_len=24, log_every=1, checkpoint_every=2,
                        mesh=(("data", 1),), **overrides)
    return sft.train(CFG, OPTIM, cfg, batch_fn or _batch_fn(), workdir,
                     transformer.random_params(CFG, seed=2), devices=jax.devices()[:1])


@pytest.fixture(scope="module")
def sft_reference(tmp_path_factory):
    """(workdir, final params) of one uninterrupted 4-step `_run`, which the resume and
    corrupted-checkpoint tests both compare against (one run instead of one per test).
    Tests must only read or copy its workdir."""
    workdir = tmp_path_factory.mktemp("sft_reference")
    return workdir, _run(workdir)


def test_resume_matches_uninterrupted(sft_reference, tmp_path):
    init = transformer.random_params(CFG, seed=2)
    _, full = sft_reference
    _run(tmp_path / "b", steps=2)
    resumed = _run(tmp_path / "b")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 full, resumed)
    changed = jax.tree.map(lambda x, y: bool(np.any(x != y)), init, full)
    assert sum(jax.tree.leaves(changed)) > 0
    bias_paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(full)[0]
                  if "e_score_correction_bias" in str(p)]
    assert bias_paths, "the MoE layer's balancing bias should exist"


def test_non_finite_batches_are_skipped_then_stop_the_run(tmp_path):
    good = _batch_fn()

    def batch_fn(step):
        batch = good(step)
        if step >= 2:  # NaN loss weights from the third step on
            batch = dict(batch, weights=np.full_like(batch["weights"], np.nan))
        return batch

    with pytest.raises(guard.NonFiniteError,
                       match=r"sft stopped at step 4: 2 consecutive updates.*the last "
                             r"checkpoint, step 2 in .*, is finite"):
        _run(tmp_path, batch_fn, max_consecutive_nonfinite=2)
    records = metrics.read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["nonfinite"] for r in records] == [0, 0, 1]  # step 4 stopped before its log
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [2]


def test_a_corrupted_latest_checkpoint_falls_back_to_the_previous_one(sft_reference, tmp_path):
    reference, full = sft_reference
    shutil.copytree(reference, tmp_path / "resumed")
    step_dir = tmp_path / "resumed" / "checkpoints" / "4"
    shutil.rmtree(step_dir / "state")  # step 4's arrays are gone
    with pytest.warns(UserWarning, match=r"checkpoint step 4 .*unreadable"):
        resumed = _run(tmp_path / "resumed", _batch_fn())
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7),
                 full, resumed)
    strip = lambda path: [{k: v for k, v in r.items() if k != "tokens_per_s"}  # noqa: E731
                          for r in metrics.read_jsonl(path)]
    assert strip(tmp_path / "resumed" / "metrics.jsonl") == strip(reference / "metrics.jsonl")
    assert sorted(os.listdir(tmp_path / "resumed" / "checkpoints")) == ["2", "4", "4.rejected-0"]


def test_sigterm_checkpoints_the_completed_steps_and_raises_preempted(tmp_path):
    good = _batch_fn()

    def batch_fn(step):
        if step == 2:  # the signal arrives while step 2 (the third) runs
            os.kill(os.getpid(), signal.SIGTERM)
        return good(step)

    before = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(preemption.Preempted, match="preempted at step 3"):
            _run(tmp_path, batch_fn, steps=10)
    finally:
        preemption.clear()
    with checkpoint.Checkpointer(tmp_path / "checkpoints") as ckpt:
        assert ckpt.all_steps() == [2, 3]
    assert signal.getsignal(signal.SIGTERM) == before  # the trainer's handler was removed
