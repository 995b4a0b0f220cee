"""Continuous batching: a fixed pool of W decode slots that take rows from a queue.

The static sampler (`sampler.sample_fn`) decodes all R = B * G rows until its slowest row, so on
a long-tailed workload (a few rows much longer than the median) most of its rows x steps are
spent on finished rows. Here W slots decode at once; a slot whose row finished (EOS, a stop
sequence, or max_new_tokens) takes the next pending row at the next step, until all R rows are
done. The whole run is one compiled function:

1. every prompt is prefilled once into a prompt cache [B, P] (as the static sampler does, P + N
   slots, the first P kept);
2. a slot taking row r = b * G + g copies prompt b's P cache slots into its own row of the
   running cache, just before the shared write index k (slots [k - P, k)), clears the rest of
   its row, and then decodes as the static sampler does: step t of row r feeds one token at its
   real position (length_b - 1 + t) with key fold_in(fold_in(rng, r), t), so a row's tokens and
   log-probs do not depend on its slot or on when it started;
3. the running cache has S = P + N + M slots and one write index shared by all slots (the model's
   `Transformer.decode` writes every row at the same slot), starting at P. Whenever the index
   reaches S, the last P + t_max slots before it (t_max: the longest live row's step; a live
   row's prompt and tokens lie there) are moved to the front and the index goes back to
   P + t_max < S - M (t_max < N): at most one copy of the cache per M steps.

Attention is masked by the cache's validity flags and positions are the rows' own, so where a
row's slots lie in the cache changes nothing but the order of float32 sums (a row's log-probs
equal the static sampler's to rounding). Cost: each step attends over the slots below the index,
P + t_max + up to M (the static sampler: P + t; keeping P + N instead of P + t_max made
continuous batching x1.35 slower on the long-tail benchmark), and the rows x steps computed are
W * num_steps instead of R * max(lengths).
"""

from __future__ import annotations

import dataclasses
import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import transformer
from r1jax.sampling import controls, stops
from r1jax.sampling import sampler as sampler_lib


@flax.struct.dataclass
class _Slots:
    """while_loop carry. Slot w holds row row_w[w] (R = none) at its step step_w[w]."""

    cache: transformer.Cache
    row_w: jax.Array
    step_w: jax.Array
    last_w: jax.Array
    recent_wk: jax.Array
    next_row: jax.Array
    num_steps: jax.Array
    tokens_rn: jax.Array
    logps_rn: jax.Array
    mask_rn: jax.Array
    stopped_r: jax.Array


def roll_period(max_new_tokens: int) -> int:
    """M: the fewest steps between two moves of the running cache (its slots beyond P + N)."""
    return max(1, -(-max_new_tokens // 4))


def _batch_axis(scan_layers: bool) -> int:
    return 1 if scan_layers else 0


def _prompt_cache(config, sampling, params, prompt_bp, lengths_b) -> transformer.Cache:
    """Each prompt once, all but its last real token, written as the static sampler writes it
    (a cache of P + N slots, so the prefill's sums are the same); the first P slots kept."""
    p = prompt_bp.shape[1]
    one = dataclasses.replace(sampling, num_samples=1)
    cache, _ = sampler_lib._prefill(config, one, params, prompt_bp, lengths_b)
    axis = _batch_axis(config.scan_layers) + 1
    layers_ = jax.tree.map(lambda a: jax.lax.slice_in_dim(a, 0, p, axis=axis), cache.layers)
    return transformer.Cache(layers_, cache.valid_bs[:, :p], cache.index)


def _put_rows(main, prompt, b_w, take_w, start, axis: int):
    """Rows take_w of `main` (batch axis `axis`, slot axis after it) get prompt row b_w at slots
    [start, start + P)."""
    p = prompt.shape[axis + 1]
    new = jnp.take(prompt, b_w, axis=axis)
    old = jax.lax.dynamic_slice_in_dim(main, start, p, axis + 1)
    take = take_w.reshape((1,) * axis + (-1,) + (1,) * (main.ndim - axis - 1))
    return jax.lax.dynamic_update_slice_in_dim(main, jnp.where(take, new, old), start, axis + 1)


def _refill(sampling, slots: _Slots, prompt_cache, prompt_bp, lengths_b, num_rows: int,
            scan_layers: bool) -> _Slots:
    """Free slots take the next pending rows, in slot order; prompt b's cache slots go to
    [k - P, k) of the slot's row, whose other slots become empty."""
    g, p = sampling.num_samples, prompt_bp.shape[1]
    free_w = slots.row_w >= num_rows
    candidate_w = slots.next_row + jnp.cumsum(free_w) - 1
    take_w = free_w & (candidate_w < num_rows)
    row_w = jnp.where(take_w, candidate_w, slots.row_w)
    b_w = jnp.minimum(row_w // g, prompt_bp.shape[0] - 1)
    start = slots.cache.index - p
    axis = _batch_axis(scan_layers)
    layers_ = jax.tree.map(lambda a, q: _put_rows(a, q, b_w, take_w, start, axis),
                           slots.cache.layers, prompt_cache.layers)
    valid_ws = jnp.where(take_w[:, None], False, slots.cache.valid_bs)
    valid_ws = _put_rows(valid_ws, prompt_cache.valid_bs, b_w, take_w, start, 0)
    cache = sampler_lib._constrain(transformer.Cache(layers_, valid_ws, slots.cache.index),
                                   scan_layers)
    last_w = prompt_bp[b_w, lengths_b[b_w] - 1]
    return slots.replace(
        cache=cache, row_w=row_w, step_w=jnp.where(take_w, 0, slots.step_w),
        last_w=jnp.where(take_w, last_w, slots.last_w),
        recent_wk=jnp.where(take_w[:, None], stops.WILDCARD, slots.recent_wk),
        next_row=jnp.minimum(slots.next_row + free_w.sum(), num_rows).astype(jnp.int32))
def _record(sampling, slots: _Slots, tokens_w, logps_w, hit_w, num_rows: int) -> _Slots:
    """Writes each active slot's token at (row, step); frees the slots whose row finished."""
    active_w = slots.row_w < num_rows
    row_w, step_w = slots.row_w, slots.step_w  # inactive: row R, out of bounds, dropped

    def put(buffer_rn, value_w):
        return buffer_rn.at[row_w, step_w].set(value_w.astype(buffer_rn.dtype), mode="drop")

    finished_w = active_w & (hit_w | (step_w + 1 >= sampling.max_new_tokens))
    return slots.replace(
        row_w=jnp.where(finished_w, num_rows, row_w), step_w=step_w + active_w,
        last_w=tokens_w, num_steps=slots.num_steps + 1,
        tokens_rn=put(slots.tokens_rn, tokens_w),
        logps_rn=put(slots.logps_rn, jnp.where(active_w, logps_w, 0.0)),
        mask_rn=put(slots.mask_rn, active_w),
        stopped_r=slots.stopped_r.at[row_w].set(hit_w, mode="drop"))


def _step(config, sampling, params, rng, prompt_cache, prompt_bp, lengths_b, num_rows: int,
          slots: _Slots) -> _Slots:
    """One decode step of every slot (refilling free ones first)."""
    needs_refill = jnp.any(slots.row_w >= num_rows) & (slots.next_row < num_rows)
    slots = jax.lax.cond(
        needs_refill,
        lambda s: _refill(sampling, s, prompt_cache, prompt_bp, lengths_b, num_rows,
                          config.scan_layers),
        lambda s: s, slots)
    active_w = slots.row_w < num_rows
    b_w = jnp.minimum(slots.row_w // sampling.num_samples, prompt_bp.shape[0] - 1)
    positions_w1 = (lengths_b[b_w] - 1 + slots.step_w)[:, None]
    logits_w1v, cache = transformer.Transformer(config).apply(
        {"params": params}, slots.last_w[:, None], positions_w1, slots.cache, active_w[:, None],
        method=transformer.Transformer.decode)
    # The static sampler's key of (row, step) (`controls.row_step_keys`), per slot's own step.
    keys_w = jax.vmap(lambda r, t: jax.random.fold_in(jax.random.fold_in(rng, r), t))(
        slots.row_w, slots.step_w)
    tokens_w, logps_w = controls.sample(logits_w1v[:, 0], keys_w, sampling.temperature,
                                        sampling.top_k, sampling.top_p, sampling.min_p)
    tokens_w = jnp.where(active_w, tokens_w, sampling.pad_id)
    recent_wk = stops.push(slots.recent_wk, tokens_w)
    hit_w = stops.matches(recent_wk, stops.stop_table(sampling.stop_token_sequences))
    if sampling.eos_id is not None:
        hit_w = hit_w | (tokens_w == sampling.eos_id)
    slots = slots.replace(cache=cache, recent_wk=recent_wk)
    return _record(sampling, slots, tokens_w, logps_w, active_w & hit_w, num_rows)


def _roll(slots: _Slots, prompt_width: int, num_rows: int, scan_layers: bool) -> _Slots:
    """Moves the last `keep` = P + (the longest live row's step) slots before the write index to
    the front (every live row's prompt and tokens are there) and marks the rest empty; the
    index becomes `keep`. Keeping only what live rows use (not P + N) keeps the attended
    prefix short while the live rows are short."""
    live_w = slots.row_w < num_rows
    keep = prompt_width + jnp.max(jnp.where(live_w, slots.step_w, 0))
    shift = slots.cache.index - keep
    axis = _batch_axis(scan_layers) + 1
    cache = slots.cache
    kept_s = jnp.arange(cache.valid_bs.shape[1]) < keep
    # Slots >= keep hold rolled-around data: flagged empty, never attended, overwritten next.
    moved = transformer.Cache(jax.tree.map(lambda a: jnp.roll(a, -shift, axis), cache.layers),
                              jnp.roll(cache.valid_bs, -shift, 1) & kept_s[None, :],
                              keep.astype(jnp.int32))
    return slots.replace(cache=sampler_lib._constrain(moved, scan_layers))


def _initial_slots(config, sampling, num_slots: int, prompt_width: int, num_rows: int) -> _Slots:
    n = sampling.max_new_tokens
    dtype = sampling.cache_dtype and jnp.dtype(sampling.cache_dtype)
    cache = transformer.init_cache(config, num_slots, prompt_width + n + roll_period(n), dtype)
    # Index P: the first refill puts the prompts at [0, P).
    cache = sampler_lib._constrain(cache.replace(index=jnp.asarray(prompt_width, jnp.int32)),
                                   config.scan_layers)
    width = stops.stop_table(sampling.stop_token_sequences).shape[1]
    return _Slots(
        cache=cache, row_w=jnp.full((num_slots,), num_rows, jnp.int32),
        step_w=jnp.zeros((num_slots,), jnp.int32), last_w=jnp.zeros((num_slots,), jnp.int32),
        recent_wk=jnp.full((num_slots, width), stops.WILDCARD, jnp.int32),
        next_row=jnp.zeros((), jnp.int32), num_steps=jnp.zeros((), jnp.int32),
        tokens_rn=jnp.full((num_rows, n), sampling.pad_id, jnp.int32),
        logps_rn=jnp.zeros((num_rows, n), jnp.float32),
        mask_rn=jnp.zeros((num_rows, n), jnp.bool_), stopped_r=jnp.zeros((num_rows,), jnp.bool_))


def continuous_sample_fn(config: config_lib.ModelConfig, sampling: sampler_lib.SamplingConfig,
                         num_slots: int, num_rows: int, params, prompt_bp: jax.Array,
                         lengths_b: jax.Array, rng: jax.Array) -> sampler_lib.SampleResult:
    """The un-jitted continuous sampler (module docstring); `make_continuous_sampler` jits it.

    Args:
      num_slots: W, rows decoded at once. num_rows: R <= B * G rows to sample (row r is sample
        r % G of prompt r // G; prompts past the last row's are padding, never decoded).
      prompt_bp, lengths_b, rng: as `sampler.sample_fn`.
    Returns:
      SampleResult with R rows; num_steps = decode steps of the pool (W rows each).
    """
    budget = sampling.prompt_budget(config)
    if prompt_bp.shape[1] > budget and sampling.overlong == "error":
        raise ValueError(f"prompt width P={prompt_bp.shape[1]} > prompt budget {budget}; trim "
                         "the padding or set overlong='truncate'")
    lengths_b = lengths_b.astype(jnp.int32)
    if sampling.pad_side == "left":
        prompt_bp = sampler_lib.right_align(prompt_bp, lengths_b)
    prompt_bp, lengths_b, truncated_b = sampler_lib.keep_last(prompt_bp.astype(jnp.int32),
                                                              lengths_b, budget)
    prompt_cache = _prompt_cache(config, sampling, params, prompt_bp, lengths_b)
    slots = _initial_slots(config, sampling, num_slots, prompt_bp.shape[1], num_rows)
    capacity = slots.cache.valid_bs.shape[1]
    step = functools.partial(_step, config, sampling, params, rng, prompt_cache, prompt_bp,
                             lengths_b, num_rows)

    def unfinished(s: _Slots):
        return (s.next_row < num_rows) | jnp.any(s.row_w < num_rows)

    def epoch(s: _Slots):  # M steps between two moves of the cache
        s = _roll(s, prompt_bp.shape[1], num_rows, config.scan_layers)
        return jax.lax.while_loop(lambda s: (s.cache.index < capacity) & unfinished(s), step, s)

    slots = jax.lax.while_loop(unfinished, epoch, slots)
    return sampler_lib.SampleResult(
        tokens=slots.tokens_rn, logps=slots.logps_rn, mask=slots.mask_rn,
        lengths=slots.mask_rn.sum(axis=1).astype(jnp.int32),
        finish_reason=jnp.where(slots.stopped_r, sampler_lib.FINISH_STOP,
                                sampler_lib.FINISH_LENGTH).astype(jnp.int32),
        prompt_truncated=jnp.repeat(truncated_b, sampling.num_samples)[:num_rows],
        num_steps=slots.num_steps)


def make_continuous_sampler(config: config_lib.ModelConfig,
                            sampling: sampler_lib.SamplingConfig, num_slots: int,
                            mesh: jax.sharding.Mesh | None = None):
    """A compiled `sampler(params, prompt_tokens, prompt_lengths, rng) -> SampleResult` with W =
    `num_slots` decode slots: the same rows as `sampler.make_sampler`'s (B * G of them, same
    keys), computed W at a time. Any number of prompts works on any mesh: prompts are padded to
    a multiple of the batch shards (`sampler.pad_prompts`; never decoded), and W is rounded up to one.

    Args:
      config, sampling: as `sampler.make_sampler`. num_slots: W >= 1.
      mesh: optional; slots and prompts are batch-sharded, params placed by the logical rules.
    """
    if num_slots < 1:
        raise ValueError(f"num_slots={num_slots}: must be >= 1")
    if sampling.record_routing:
        raise ValueError("SamplingConfig.record_routing: routing replay records come from the "
                         "static sampler (sampler.make_sampler) only")
    shards = sampler_lib.batch_shards(mesh)
    num_slots = -(-num_slots // shards) * shards
    jitted = jax.jit(functools.partial(continuous_sample_fn, config, sampling, num_slots),
                     static_argnums=0)

    def sampler(params, prompt_tokens, prompt_lengths, rng):
        num_rows = np.shape(prompt_tokens)[0] * sampling.num_samples
        prompt_bp, lengths_b = sampler_lib.pad_prompts(prompt_tokens, prompt_lengths, shards)
        if mesh is None:
            return jitted(num_rows, params, prompt_bp, lengths_b, rng)
        args = jax.device_put(
            (params, prompt_bp, lengths_b, rng),
            (sampler_lib.param_shardings(config, mesh), sharding.batch_sharding(mesh, 2),
             sharding.batch_sharding(mesh, 1), sharding.replicated(mesh)))
        with jax.set_mesh(mesh):
            return jitted(num_rows, *args)

    sampler.jitted = jitted
    sampler.num_slots = num_slots
    return sampler


def stops_for_lengths(free_tokens_rn: np.ndarray, lengths_r, width: int = 3
                      ) -> tuple[tuple[int, ...], ...]:
    """Stop sequences that end row r of a free run (no stops) at lengths_r[r] tokens: its last
    `width` tokens there (rows at or past the free run's width get none). Builds long-tailed
    workloads from a random model; a sequence that also occurs earlier in some row stops that
    row earlier, so callers measure the lengths they get."""
    n = free_tokens_rn.shape[1]
    return tuple(tuple(int(x) for x in free_tokens_rn[r, length - width:length])
                 for r, length in enumerate(lengths_r) if width <= length < n)
