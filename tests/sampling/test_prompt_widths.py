"""Fixed prompt widths (issue 24): the prompt pipeline pads every batch to a multiple of
`PromptConfig.bucket`, so the sampler sees one prompt width per bucket and compiles once per
bucket, not once per distinct prompt length. Counted on the jitted function's own cache.

test_sampler's tiny GQA model (vocab 64, 2 layers); one compile.
"""

import numpy as np
from test_sampler import GQA, RNG, params_of

from r1jax.data import pipeline
from r1jax.sampling import sampler as sampler_lib

BUCKET, MAX_PROMPT_LEN, NEW_TOKENS = 8, 16, 3


def batch_of(lengths):
    """A pipeline batch (`pipeline.collate`) of prompts with these token counts."""
    items = [{"example": {}, "prompt": "", "ids": list(range(1 + i, 1 + i + n)),
              "truncated": False, "source_index": i} for i, n in enumerate(lengths)]
    config = pipeline.PromptConfig(batch_size=len(lengths), max_prompt_len=MAX_PROMPT_LEN,
                                   bucket=BUCKET)
    return pipeline.collate(items, 0, config)


def test_prompt_lengths_within_a_bucket_compile_the_sampler_once():
    """Batches whose longest prompts are 3 and 7 tokens are both 8 wide and share one compile
    (unpadded, 3 and 7 wide, they would compile twice); a 9-token prompt starts the next bucket."""
    sampler = sampler_lib.make_sampler(
        GQA, sampler_lib.SamplingConfig(max_new_tokens=NEW_TOKENS, temperature=0.0))
    params = params_of(GQA)
    compiles = []
    for lengths in ([3, 2], [7, 5]):
        batch = batch_of(lengths)
        assert batch["prompt_tokens"].shape == (2, BUCKET)
        result = sampler(params, batch["prompt_tokens"], batch["prompt_lengths"], RNG)
        assert np.asarray(result.lengths).tolist() == [NEW_TOKENS] * 2
        compiles.append(getattr(sampler, "jitted", sampler)._cache_size())  # jit w/o a mesh
    assert compiles == [1, 1]
    assert batch_of([9, 1])["prompt_tokens"].shape == (2, 2 * BUCKET)
