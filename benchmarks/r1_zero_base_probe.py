"""Can a toy base model work a problem out when it is made to? (A diagnostic, not a test.)

R1-Zero's RL mostly teaches the base to *choose* to work a problem out inside `<think>`; the
final accuracy then stays close to how well the base works problems out. This probe measures
that ceiling before any RL: for held-out 2-digit +/- problems it writes the R1-Zero prompt, the
opening `<think>` and the first line of the worked solution ("Add column by column from the
right."), lets the base continue greedily, and reads "The answer is N". It also samples the
plain template at temperature 1 and splits the completions into worked-out and bare answers.

  python benchmarks/r1_zero_base_probe.py runs/repro/seed0/base runs/repro/seed1/base
  python benchmarks/r1_zero_base_probe.py runs/base_tiny/base --problems=256
"""

from __future__ import annotations

import argparse
import re

import jax
import numpy as np
from absl import logging

from r1jax import sampling
from r1jax.data import tasks, templates
from r1jax.train import base

_ANSWER = re.compile(r"The answer is (\d+)")
_TAGGED = re.compile(r"<answer>\s*(\d+)\s*</answer>")
_FIRST_LINE = {"+": "Add column by column from the right.",
               "-": "Subtract column by column from the right."}


def _complete(cfg, params, tok, prompts, *, temperature, seed, max_new_tokens=120):
    ids, lens = tok.batch_encode(prompts, add_bos=True)
    out = sampling.generate(cfg, params, ids, lens, jax.random.key(seed),
                            max_new_tokens=max_new_tokens, temperature=temperature,
                            eos_id=tok.eos_id)
    return [tok.decode(np.asarray(out.tokens[i])[:int(out.lengths[i])])
            for i in range(len(prompts))]


def probe(base_dir: str, problems: int, samples: int) -> str:
    cfg, params, tok = base.load_base(base_dir)
    template = templates.get("r1_zero")
    task = tasks.get("arithmetic", min_digits=2, max_digits=2, ops="+-")
    stream = task.examples("test", 0)
    examples = [next(stream) for _ in range(problems)]
    forced = _complete(cfg, params, tok, [
        f"{template.format_prompt(e['question'])} <think> {_FIRST_LINE[e['op']]}\n"
        for e in examples], temperature=0.0, seed=0)
    right = {"+": [0, 0], "-": [0, 0]}
    for e, text in zip(examples, forced):
        m = _ANSWER.search(text)
        right[e["op"]][0] += bool(m) and m[1] == e["answer"]
        right[e["op"]][1] += 1
    free = _complete(cfg, params, tok, [template.format_prompt(e["question"])
                                        for e in examples for _ in range(samples)],
                     temperature=1.0, seed=1)
    kinds = {"worked": [0, 0], "bare": [0, 0]}
    for i, text in enumerate(free):
        m = _TAGGED.search(text)
        kind = kinds["worked" if "column by column" in text else "bare"]
        kind[0] += bool(m) and m[1] == examples[i // samples]["answer"]
        kind[1] += 1
    total = sum(a for a, _ in right.values()) / problems
    return (f"{base_dir}: made to work it out (greedy): {total:.1%} "
            f"(+ {right['+'][0]}/{right['+'][1]}, - {right['-'][0]}/{right['-'][1]}); "
            f"template at T=1: worked {kinds['worked'][1]} ({kinds['worked'][0]} right), "
            f"bare {kinds['bare'][1]} ({kinds['bare'][0]} right)")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("base_dirs", nargs="+")
    parser.add_argument("--problems", type=int, default=96)
    parser.add_argument("--samples", type=int, default=4, help="template samples per problem")
    args = parser.parse_args()
    logging.set_verbosity(logging.WARNING)
    for base_dir in args.base_dirs:
        print(probe(base_dir, args.problems, args.samples), flush=True)


if __name__ == "__main__":
    main()
