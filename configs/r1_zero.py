"""DeepSeek-R1-Zero: GRPO from a base model with accuracy + format rewards (arXiv:2501.12948).

  python experiments/pretrain_base.py                                 # the toy base model
  python experiments/r1_zero.py --config=configs/r1_zero.py:tiny --workdir=runs/r1_zero_tiny
  python experiments/r1_zero.py --config=configs/r1_zero.py:tiny --config.grpo.beta=0.001

Presets:
  tiny   2-digit +/- arithmetic from the toy base model of configs/pretrain_base.py:tiny, on
         one CPU in minutes.
  tiny_ppo  the tiny run with PPO and a critic instead of GRPO (same model, data, batch).
  qwen2_5_3b_countdown  TinyZero (countdown, Qwen2.5-3B base from a local HF directory).
  deepseek_v3_671b      the paper's R1-Zero setting (V3-Base, math JSONL, pod-scale mesh).
  smoke  a few seconds per step with a shrunken everything (for the tests, which point
         `base_dir` at a small random model).

The paper's R1-Zero settings are the defaults of `r1jax.rl.config` (lr 3e-6, beta 0.001,
epsilon 10, G 16, 32 questions per step, temperature 1, reference refreshed every 400 steps).
Every preset declares every field (`rl_config.config_dict`), so any of them can be set on the
command line: `--config.sampling.top_p=0.95`, `--config.data.train_jsonl=train.jsonl`,
`--config.rewards.math=1.0` (adds a reward), `--config.model_overrides.remat_policy=full`.
"""

import ml_collections

from r1jax import config_utils
from r1jax.models import config as model_config_lib
from r1jax.rl import config as rl_config


def _base() -> ml_collections.ConfigDict:
    # rl_config.config_dict declares every ExperimentConfig field at its default (the paper's
    # R1-Zero values), so the command line can set any of them; the presets change a few.
    return rl_config.config_dict(base_dir="runs/base_tiny/base", total_steps=200)


def tiny() -> ml_collections.ConfigDict:
    """2-digit addition and subtraction on the toy base model, on 2 CPU cores in minutes.

    The base (configs/pretrain_base.py:tiny) copies the delimiter tags an instruction names, so
    it mostly follows the R1-Zero template from step 0 (as V3-Base largely did), but it learned
    from a corpus where two solutions in three are bare answers: under the template it often
    answers from memory (`<think> The answer is 95 </think>`), which is usually wrong. Accuracy
    is what RL must grow, and it grows by working the problem out in the think block: longer
    responses, higher pass@1, the R1-Zero phenomenon in miniature. Scaled to the toy: G = 8
    (paper 16), 8 questions per step (paper 32), beta = 0.001 as in the paper, DAPO's clip
    0.2/0.28 instead of the paper's epsilon = 10 (two minibatch updates per batch), a strong
    lr (2e-4, cosine to 2e-5) for 60 steps, completions of at most 112 tokens, and partial
    format credit (format_lenient) beside the paper's strict format and accuracy rewards.
    """
    c = _base()
    c.toy_base_dir = c.base_dir  # the toy base is pretrained here when missing
    c.total_steps = 60  # 80 did not lift a weak base further (96879b8 seed 1: +18.8 vs +23.5)
    c.optim.update(learning_rate=2e-4, warmup_steps=5, schedule="cosine", end_lr_factor=0.1)
    c.grpo.update(group_size=8, prompts_per_step=8, num_minibatches=2,
                  clip_eps_low=0.2, clip_eps_high=0.28, ref_update_every=0)
    c.sampling.update(max_new_tokens=112)
    c.data.update(task="arithmetic", task_knobs={"min_digits": 2, "max_digits": 2, "ops": "+-"})
    c.eval.update(every=20)
    config_utils.assign(c.rewards, {"numeric": 1.0, "format_strict": 0.5, "format_lenient": 0.5})
    c.checkpoint_every = 20
    return c


def tiny_ppo() -> ml_collections.ConfigDict:
    """The tiny run with PPO (grpo.algorithm="ppo"): a value model initialised from the policy,
    GAE (lambda 0.95, gamma 1) from its values, the KL to the reference in the per-token
    rewards (as PPO for RLHF puts it), the value loss clipped at 0.2; model, data, batch,
    learning rate and steps as `tiny`, so the two runs compare GRPO with PPO."""
    c = tiny()
    c.grpo.update(algorithm="ppo", advantage="gae", kl_in="reward")
    return c


def smoke() -> ml_collections.ConfigDict:
    """Seconds per step: 4 steps, G=4, 2 prompts, 12 new tokens, arithmetic with an inline
    (no worker pool) numeric reward."""
    c = _base()
    c.toy_base_dir = c.base_dir
    c.total_steps = 4
    c.mesh.update(data=1, fsdp=1)  # one device
    c.optim.update(learning_rate=1e-3, warmup_steps=1)
    c.grpo.update(group_size=4, prompts_per_step=2, num_minibatches=2, num_micro_batches=2,
                  beta=0.04, clip_eps_low=0.2, clip_eps_high=0.28, ref_update_every=3)
    c.sampling.update(max_new_tokens=12)
    c.data.update(task="arithmetic", task_knobs={"min_digits": 1, "max_digits": 2},
                  bucket=64)
    c.eval.update(every=2, num_prompts=2, max_new_tokens=12,
                  num_logged_samples=2)
    config_utils.assign(c.rewards, {"numeric": 1.0, "format_strict": 0.5, "format_lenient": 0.5})
    c.checkpoint_every = 2
    c.keep_checkpoints = 2
    c.progress_bar = False
    return c


def _accelerator_precision(c: ml_collections.ConfigDict) -> None:
    """The accelerator precision policy over the checkpoint's own dtypes: float32 master
    weights and Adam moments (an HF bf16 checkpoint is widened once at load), bf16 compute,
    float32 accumulation. With bf16 weights an AdamW step at lr 1e-6..3e-6 mostly rounds away
    (`r1jax.models.config.PRECISION_POLICIES`)."""
    config_utils.assign(c.model_overrides, model_config_lib.precision("accelerator"))


def qwen2_5_3b_countdown() -> ml_collections.ConfigDict:
    """TinyZero: countdown with 3-4 numbers from a local Qwen2.5-3B base (HF directory), one
    GPU host or a small TPU slice. Override --config.base_dir=/path/to/Qwen2.5-3B."""
    c = _base()
    c.base_dir = "checkpoints/Qwen2.5-3B"
    c.total_steps = 300
    c.optim.update(learning_rate=1e-6, warmup_steps=10)
    c.grpo.update(group_size=8, prompts_per_step=32, num_minibatches=4, num_micro_batches=4,
                  clip_eps_low=0.2, clip_eps_high=0.2, ref_update_every=0)
    c.data.update(task="countdown", task_knobs={"min_numbers": 3, "max_numbers": 4})
    c.eval.update(every=25, num_prompts=256)
    config_utils.assign(c.rewards, {"countdown": 1.0, "format_strict": 0.1})
    c.checkpoint_every = 25
    _accelerator_precision(c)
    return c


def deepseek_v3_671b() -> ml_collections.ConfigDict:
    """The paper's R1-Zero run: DeepSeek-V3-Base (HF directory), R1-Zero template, G = 16,
    32 questions per step, lr 3e-6, beta 0.001, epsilon 10, temperature 1, reference refreshed
    every 400 steps, 32,768-token completions, math rewards on user JSONL
    (--config.data.train_jsonl=math_train.jsonl --config.data.test_jsonl=math500.jsonl).
    Mesh for a pod: experts over `expert`, the rest FSDP (see `python -m r1jax.plan`)."""
    c = _base()
    c.base_dir = "checkpoints/DeepSeek-V3-Base"
    c.total_steps = 8000
    c.mesh.update(expert=64)
    c.grpo.update(num_minibatches=16, num_micro_batches=8)
    c.sampling.update(max_new_tokens=32768)
    c.data.update(train_jsonl="data/math_train.jsonl",
                  test_jsonl="data/math500.jsonl", jsonl_format="math", max_prompt_len=2048,
                  bucket=128)
    c.eval.update(every=100, num_prompts=500, num_samples=16)
    config_utils.assign(c.rewards, {"math": 1.0, "format_strict": 1.0})
    c.checkpoint_every = 50
    _accelerator_precision(c)
    return c


PRESETS = {"tiny": tiny, "tiny_ppo": tiny_ppo, "smoke": smoke, "qwen2_5_3b_countdown": qwen2_5_3b_countdown,
           "deepseek_v3_671b": deepseek_v3_671b}


def get_config(arg=None) -> ml_collections.ConfigDict:
    name = arg or "tiny"
    if name not in PRESETS:
        raise ValueError(f"unknown r1_zero preset {name!r}; known: {sorted(PRESETS)}")
    return PRESETS[name]()
