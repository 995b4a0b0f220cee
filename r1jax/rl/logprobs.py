"""Token log-probs and entropies from the model's final hidden states, in chunks.

The GRPO step needs log pi(o_t | ...) = z[o_t] - logsumexp(z) for every completion token, where
z = (h W_U) / tau are the logits at temperature tau, and optionally the entropy
H = logsumexp(z) - sum_v p_v z_v. Forming z for the whole batch costs B * T * V float32 (about
18 GB per copy for one 32k-token sequence with DeepSeek-V3's 129k vocabulary); the backward keeps
further copies of the same size. Here z exists one chunk at a time:

  * over the sequence: `chunk_size` positions per step of a `lax.scan`, the step body under
    `jax.checkpoint`, so the backward recomputes each chunk's logits instead of storing them;
  * optionally over the vocabulary: `vocab_chunk_size` columns of W_U at a time, folded into a
    running (max, sum exp, sum exp * z) (the online logsumexp of Milakov & Gimelshein 2018),
    so one step holds [B, chunk_size, vocab_chunk_size] logits, independent of V.

Peak memory of this pass is then O(B * chunk * V) (or O(B * chunk * vocab_chunk)) instead of
O(B * T * V); the results equal the full-logits formula (`controls.policy_logps`, the one the
sampler uses) up to float reassociation. The head matmul is the model's own (`layers.matmul`
with the compute and accumulation dtypes of the precision policy, float32 out), for a tied or
an untied output head.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import layers
from r1jax.sampling import controls

_LOGIT_AXES = ("act_batch", "act_length", "act_vocab")
# Logits of vocabulary padding: finite, so that exp() is 0 and 0 * z stays 0 (with -inf, the
# product and its gradient would be NaN).
_PAD_LOGIT = -1e30


def unembedding(config: config_lib.ModelConfig, params) -> tuple[jax.Array, int]:
    """The output head's weight and the axis of it that indexes the vocabulary.

    Returns (lm_head/kernel [d, V], 1), or (embed_tokens/embedding [V, d], 0) when tied.
    """
    if config.tie_word_embeddings:
        return params["embed_tokens"]["embedding"], 0
    return params["lm_head"]["kernel"], 1


def head_logits(hidden_bcd: jax.Array, w: jax.Array, vocab_axis: int,
                config: config_lib.ModelConfig) -> jax.Array:
    """float32 logits [B, C, V'] of hidden states under a head weight (or a vocabulary slice of
    it), computed as `Transformer`'s head computes them (`layers.Dense` / `Embed.attend`)."""
    dtype = layers.dtype_of(config.dtype)
    subscripts = "bcd,vd->bcv" if vocab_axis == 0 else "bcd,dv->bcv"
    logits_bcv = layers.matmul(subscripts, hidden_bcd.astype(dtype), w.astype(dtype), config,
                               jnp.float32)
    return sharding.constrain(logits_bcv, _LOGIT_AXES)


def _stats(z_bcv: jax.Array, tokens_bc: jax.Array, offset) -> tuple[jax.Array, ...]:
    """(max, sum exp(z - max), sum exp(z - max) z, z at the token if it lies in this slice)."""
    m_bc = jax.lax.stop_gradient(jnp.max(z_bcv, axis=-1))
    e_bcv = jnp.exp(z_bcv - m_bc[..., None])
    ids_v = offset + jnp.arange(z_bcv.shape[-1])
    picked_bc = jnp.sum(jnp.where(tokens_bc[..., None] == ids_v, z_bcv, 0.0), axis=-1)
    return m_bc, e_bcv.sum(-1), jnp.sum(e_bcv * z_bcv, axis=-1), picked_bc


def _combine(a, b):
    """Merges two (max, sum exp, sum exp * z, picked) summaries of disjoint vocabulary slices."""
    m_bc = jnp.maximum(a[0], b[0])
    sa, sb = jnp.exp(a[0] - m_bc), jnp.exp(b[0] - m_bc)
    return m_bc, a[1] * sa + b[1] * sb, a[2] * sa + b[2] * sb, a[3] + b[3]


def _chunk_stats(hidden_bcd, tokens_bc, w, vocab_axis, config, temperature, vocab_chunk):
    """The summary of one sequence chunk over the whole vocabulary, V in slices if asked."""
    vocab = w.shape[vocab_axis]
    if vocab_chunk is None or vocab_chunk >= vocab:
        z_bcv = controls.scale(head_logits(hidden_bcd, w, vocab_axis, config), temperature)
        return _stats(z_bcv, tokens_bc, 0)
    n = -(-vocab // vocab_chunk)
    if n * vocab_chunk != vocab:  # a copy of W_U padded to whole slices
        pad = [(0, 0), (0, 0)]
        pad[vocab_axis] = (0, n * vocab_chunk - vocab)
        w = jnp.pad(w, pad)

    @jax.checkpoint
    def step(carry, j):
        w_slice = jax.lax.dynamic_slice_in_dim(w, j * vocab_chunk, vocab_chunk, vocab_axis)
        z_bcv = controls.scale(head_logits(hidden_bcd, w_slice, vocab_axis, config), temperature)
        real_v = j * vocab_chunk + jnp.arange(vocab_chunk) < vocab
        z_bcv = jnp.where(real_v, z_bcv, _PAD_LOGIT)
        return _combine(carry, _stats(z_bcv, tokens_bc, j * vocab_chunk)), None

    shape = tokens_bc.shape
    init = (jnp.full(shape, _PAD_LOGIT, jnp.float32),) + (jnp.zeros(shape, jnp.float32),) * 3
    out, _ = jax.lax.scan(step, init, jnp.arange(n))
    return out


def _finish(stats, with_entropy: bool):
    """(log-probs, entropies or None) from a summary: log p = z_o - lse, H = lse - E_p[z]."""
    m_bc, sum_e_bc, sum_ez_bc, picked_bc = stats
    lse_bc = m_bc + jnp.log(sum_e_bc)
    entropy_bc = lse_bc - sum_ez_bc / sum_e_bc if with_entropy else None
    return picked_bc - lse_bc, entropy_bc


def chunked_logps(hidden_btd: jax.Array, tokens_bt: jax.Array, w: jax.Array, vocab_axis: int,
                  config: config_lib.ModelConfig, *, temperature: float, chunk_size: int,
                  vocab_chunk_size: int | None = None, with_entropy: bool = False):
    """log pi(token) and optionally the entropy at each position, never forming [B, T, V].

    Equal to `controls.policy_logps(hidden @ W_U, tokens, temperature)` and to the entropy of
    softmax(hidden @ W_U / temperature) (module docstring), gradients included; the backward
    recomputes each chunk's logits.

    Args:
      hidden_btd: the final-norm output [B, T, d] (`Transformer.hidden`).
      tokens_bt: int [B, T], the token whose log-prob is taken at each position.
      w, vocab_axis: the output head (`unembedding`).
      config: the model config (compute and accumulation dtypes).
      temperature: tau (0 leaves the logits unscaled, as the sampler does).
      chunk_size: positions per step (T is padded up to a multiple, padding dropped after).
      vocab_chunk_size: vocabulary columns per step, or None for the whole vocabulary.
      with_entropy: also return the entropies.

    Returns:
      (logps_bt float32 [B, T], entropy_bt float32 [B, T] or None).
    """
    if chunk_size < 1 or (vocab_chunk_size is not None and vocab_chunk_size < 1):
        raise ValueError(f"chunk_size={chunk_size} and vocab_chunk_size={vocab_chunk_size} "
                         "must be >= 1")
    b, t, d = hidden_btd.shape
    c = min(chunk_size, t)
    n = -(-t // c)
    hidden_btd = jnp.pad(hidden_btd, ((0, 0), (0, n * c - t), (0, 0)))
    tokens_bt = jnp.pad(tokens_bt, ((0, 0), (0, n * c - t)))
    hidden_nbcd = hidden_btd.reshape(b, n, c, d).swapaxes(0, 1)
    tokens_nbc = tokens_bt.reshape(b, n, c).swapaxes(0, 1)

    # Under checkpoint the scan keeps only each chunk's inputs for the backward, not its
    # [B, C, V] logits (prevent_cse is not needed inside a scan).
    @functools.partial(jax.checkpoint, prevent_cse=False)
    def step(_, xs):
        stats = _chunk_stats(*xs, w, vocab_axis, config, temperature, vocab_chunk_size)
        return None, _finish(stats, with_entropy)

    _, (logps_nbc, entropy_nbc) = jax.lax.scan(step, None, (hidden_nbcd, tokens_nbc))
    unchunk = lambda x_nbc: x_nbc.swapaxes(0, 1).reshape(b, n * c)[:, :t]  # noqa: E731
    return unchunk(logps_nbc), None if entropy_nbc is None else unchunk(entropy_nbc)


def full_logps(logits_btv: jax.Array, tokens_bt: jax.Array, temperature: float,
               with_entropy: bool = False):
    """The same two quantities from materialised logits [B, T, V] (the reference the chunked
    path is tested against, and what the old step computed)."""
    logps_bt = controls.policy_logps(logits_btv, tokens_bt, temperature)
    if not with_entropy:
        return logps_bt, None
    return logps_bt, controls.entropy(logits_btv, temperature)
