"""What of the toy R1-Zero run is bitwise reproducible, and a way to check it on your machine.

  python benchmarks/determinism.py                 # about a minute on 2 CPU cores
  python benchmarks/determinism.py --steps=50

Prints a SHA-256 fingerprint (first 16 hex digits) of each stage of the tiny base's pretraining
(configs/pretrain_base.py:tiny): the corpus, the tokenizer, the packed rows, the initial
parameters, and the parameters after `--steps` optimizer steps, trained twice in this process.
Compare the lines between two machines (or two installs).

What to expect (measured on the 2-core CPU, jax 0.10.2):
- The corpus, the tokenizer and the packed rows are pure functions of the seed (NumPy
  generators, one-thread SentencePiece training, in order): the same fingerprints on any
  machine with the same package versions.
- Everything computed by XLA depends on the compiled program, not only on the seed: the initial
  parameters (a jitted draw from JAX's counter-based PRNG), and the training. With the suite's
  cheap-codegen XLA flags (tests/cpu_env.py) the initial parameters already have other bits.
  XLA compiles for the host CPU (AVX2 or AVX-512, the core count that splits the work) and
  changes with jax/jaxlib, so across machines runs differ in rounding from the start, and the
  differences grow over thousands of steps: the README's figures reproduce in distribution
  (the spread over seeds), not to the digit.
- On one machine and install, the same program on the same inputs gives the same bits: the
  two runs here end bitwise equal (XLA:CPU reductions have a fixed order), so a rerun, and a
  resumed run, reproduce a run exactly.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import pathlib
import tempfile

import jax
import numpy as np
from absl import logging

from r1jax.train import pretrain, sft

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fingerprint(*arrays_or_bytes) -> str:
    """The first 16 hex digits of the SHA-256 of the bytes (arrays: dtype, shape, data)."""
    h = hashlib.sha256()
    for x in arrays_or_bytes:
        if isinstance(x, bytes | str):
            h.update(x.encode() if isinstance(x, str) else x)
        else:
            x = np.asarray(x)
            h.update(f"{x.dtype}{x.shape}".encode())
            h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()[:16]


def tree_fingerprint(tree) -> str:
    return fingerprint(*jax.tree.leaves(jax.device_get(tree)))


def _preset() -> pretrain.PretrainConfig:
    spec = importlib.util.spec_from_file_location("pb", ROOT / "configs/pretrain_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return pretrain.PretrainConfig.from_config_dict(module.get_config("tiny"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="optimizer steps per run")
    parser.add_argument("--documents", type=int, default=4000, help="corpus prefix used")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    cfg = _preset()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"{jax.device_count()} device(s): {jax.devices()[0].device_kind}")
    with tempfile.TemporaryDirectory() as tmp:
        tok_path = pathlib.Path(tmp) / "tokenizer.model"
        tok = pretrain.train_tokenizer(cfg, tok_path)
        docs = pretrain.corpus_documents(cfg, tok, args.documents)
        print(f"corpus ({len(docs)} documents):  {fingerprint(*docs)}")
        print(f"tokenizer:                 {fingerprint(tok_path.read_bytes())}")
        rows = sft.pack(((ids, [1.0] * len(ids)) for ids in
                         (tok.encode(d, add_bos=True, add_eos=True) for d in docs)),
                        cfg.sft.seq_len, tok.pad_id, strategy=cfg.sft.packing)
        print(f"packed rows:               {fingerprint(rows['tokens'], rows['segment_ids'])}")
        model_cfg = cfg.model.replace(vocab_size=-(-tok.vocab_size // 64) * 64)
        init = pretrain._init_params(model_cfg, cfg.seed)
        print(f"initial parameters:        {tree_fingerprint(init)}")
        sft_cfg = dataclasses.replace(cfg.sft, steps=args.steps, log_every=args.steps,
                                  checkpoint_every=args.steps)
        optim = dataclasses.replace(cfg.optim, total_steps=max(args.steps, cfg.optim.warmup_steps + 1))
        trained = []
        for run in range(2):
            params = sft.train(model_cfg, optim, sft_cfg,
                               sft.epoch_batches(rows, cfg.sft.batch_size, cfg.seed),
                               pathlib.Path(tmp) / f"run{run}", init, desc=f"run {run}")
            trained.append(tree_fingerprint(params))
        same = "bitwise equal" if trained[0] == trained[1] else "DIFFERENT"
        print(f"after {args.steps} steps:  run 0 {trained[0]}, run 1 {trained[1]} ({same})")


if __name__ == "__main__":
    main()
