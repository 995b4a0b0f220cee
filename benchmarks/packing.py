"""How much of each pretraining step trains on real tokens: next-fit vs best-fit packing.

Builds the tiny preset's corpus (configs/pretrain_base.py:tiny: its tokenizer trained in a
temporary directory, its documents encoded), packs it both ways into rows of `sft.seq_len` and
prints the rows, the fill (real tokens / row slots), the packing time, and best-fit's ratio of
real tokens per step over next-fit's (the same rows per step, so the same step time).

  python benchmarks/packing.py
  python benchmarks/packing.py --documents=10000 --seq_len=512
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import tempfile
import time

from r1jax.train import pretrain, sft

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--documents", type=int, default=None, help="default: the preset's")
    parser.add_argument("--seq_len", type=int, default=None, help="default: the preset's")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("cfg", ROOT / "configs/pretrain_base.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = pretrain.PretrainConfig.from_config_dict(module.get_config("tiny"))
    documents = args.documents or cfg.num_documents
    seq_len = args.seq_len or cfg.sft.seq_len
    with tempfile.TemporaryDirectory() as tmp:
        tok = pretrain.train_tokenizer(cfg, pathlib.Path(tmp) / "tokenizer.model")
    docs = pretrain.corpus_documents(cfg, tok, documents)
    encoded = [tok.encode(d, add_bos=True, add_eos=True) for d in docs]
    tokens = sum(map(len, encoded))
    print(f"{documents} documents, {tokens} tokens (mean {tokens / documents:.0f}), "
          f"rows of {seq_len}")
    fill = {}
    for strategy in sft.PACKING:
        start = time.perf_counter()
        rows = sft.pack(((ids, [1.0] * len(ids)) for ids in encoded), seq_len, tok.pad_id,
                        strategy=strategy)["tokens"].shape[0]
        fill[strategy] = tokens / (rows * seq_len)
        print(f"{strategy:>9}: {rows} rows, fill {fill[strategy]:.1%}, "
              f"packed in {time.perf_counter() - start:.1f} s")
    print(f"best_fit / next_fit real tokens per step: {fill['best_fit'] / fill['next_fit']:.2f}x")


if __name__ == "__main__":
    main()
