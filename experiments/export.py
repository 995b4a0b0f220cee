"""Exports a run's policy as a Hugging Face checkpoint directory (config.json with the token ids,
safetensors, the tokenizer files, generation_config.json).

  python experiments/export.py --checkpoint=runs/r1_zero_tiny --output=exports/r1_zero_tiny
  python experiments/export.py --checkpoint=runs/qwen --step=200 --output=exports/qwen \
      --dtype=bfloat16

The output directory must be new or empty; `--overwrite` replaces an earlier export (only one
that r1jax wrote: a directory it did not create is never replaced).
"""

from absl import app, flags, logging

from r1jax.rl import export

_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "R1-Zero / GRPO run directory.",
                                  required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
_OUTPUT = flags.DEFINE_string("output", None, "The HF directory to write.", required=True)
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Weights dtype (default: the run's params dtype).")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an earlier export at --output.")


def main(argv):
    del argv
    logging.set_verbosity(logging.ERROR)  # orbax warns that read-only means no saves
    path = export.export_run(_CHECKPOINT.value, _OUTPUT.value, step=_STEP.value,
                             dtype=_DTYPE.value, overwrite=_OVERWRITE.value)
    print(f"wrote {path}")


if __name__ == "__main__":
    app.run(main)
