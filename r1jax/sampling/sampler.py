"""Batched rollout sampling with a KV cache: one prefill, then a `lax.while_loop` of decode steps.

Most of GRPO's wall-clock is sampling G completions per prompt (DeepSeekMath Sec. 4.1.2,
DeepSeek-R1 Sec. 2.2), so the whole rollout is one compiled function:

1. prompts (right-padded [B, P]; left-padded ones are rotated to the right first) are written
   into a fresh cache with `Transformer.decode`, all but each row's last real token (padding and
   that token are masked out, never attended to);
2. the cache of each prompt is repeated G = `num_samples` times (prefill runs once per prompt);
3. each step feeds one token per row (first the last prompt token, then the previous sample) at
   its real position (prompt_length - 1 + t) and cache slot P + t, and samples the next token
   (`r1jax.sampling.controls`); the loop ends after `max_new_tokens` steps or as soon as every row
   has produced EOS or completed a stop sequence (`r1jax.sampling.stops`).

Because the last prompt token is fed by the loop, the prefill's logits are unused and XLA drops
the output head over all P prompt positions ([B, P, V] would dominate memory for big vocabs).
A row's completion depends only on its own prompt tokens, not on the padding width: pads are
masked and positions are the real ones. The cache has P + max_new_tokens slots; for MLA it holds
the latent c^KV and the RoPE key only (`cache_bytes_per_token`).

Deviations: stopping on strings is done on token ids (see `stops`); log-probs are those of the
untruncated policy at the sampling temperature (see `controls`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import ClassVar

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.models import config as config_lib
from r1jax.models import layers, transformer
from r1jax.sampling import controls, routing_record, stops

FINISH_LENGTH = 0  # max_new_tokens reached
FINISH_STOP = 1  # EOS or a stop sequence
FINISH_REASONS = ("length", "stop")
PAD_SIDES = ("right", "left")
OVERLONG = ("error", "truncate")


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
    """What a user sets about sampling: the `sampling` section of a GRPO config, and the
    first fields of every `SamplingConfig` (their defaults are written here only).

    Attributes:
      max_new_tokens: completion budget N (the GRPO max completion length L_max).
      temperature: tau (R1-Zero trains at 1); 0 = greedy.
      top_k, top_p: truncations (None = off); log-probs are those before truncation.
    """

    #: How errors name the class: `sampling.top_p=0.0: ...` (the config section).
    _NAME: ClassVar[str] = "sampling"

    max_new_tokens: int = 1024
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        def bad(field: str, why: str):
            raise ValueError(f"{self._NAME}.{field}={getattr(self, field)!r}: {why}")

        if not isinstance(self.max_new_tokens, numbers.Integral) or self.max_new_tokens < 1:
            bad("max_new_tokens", "must be an int >= 1")
        for field in ("temperature", "top_p"):
            value = getattr(self, field)
            if (value is not None or field == "temperature") and not (
                    isinstance(value, numbers.Real) and math.isfinite(value)):
                bad(field, "must be a finite number")
        if self.temperature < 0:
            bad("temperature", "must be >= 0 (0 = greedy)")
        if self.top_k is not None and self.top_k < 1:
            bad("top_k", "must be >= 1 or None")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            bad("top_p", "must be in (0, 1] or None")


@dataclasses.dataclass(frozen=True)
class SamplingConfig(SamplingOptions):
    """Static sampling settings (hashable: one compiled sampler per distinct value).

    Attributes:
      max_new_tokens, temperature, top_k, top_p: see `SamplingOptions`.
      min_p: truncation (None = off).
      eos_id: stop token (kept in the completion). stop_token_sequences: id tuples that also
        stop a row, the last token included (`stops.stop_token_sequences` builds them).
      num_samples: G completions per prompt; output row b * G + g is sample g of prompt b.
      pad_id: the token written after a row stops. pad_side: padding of the *input* prompts.
      overlong: "error" (ValueError) or "truncate" (keep each prompt's last tokens, flagged in
        `SampleResult.prompt_truncated`) when a prompt exceeds the prompt budget
        min(max_position_embeddings - max_new_tokens, max_prompt_length).
      cache_dtype: None = the model's activation dtype.
      record_routing: also return each MoE router's top-k selection of every token
        (`SampleResult.routing`, `routing_record`), for routing replay in the trainer.
    """

    _NAME: ClassVar[str] = "SamplingConfig"

    min_p: float | None = None
    eos_id: int | None = None
    stop_token_sequences: tuple[tuple[int, ...], ...] = ()
    num_samples: int = 1
    pad_id: int = 0
    pad_side: str = "right"
    overlong: str = "error"
    max_prompt_length: int | None = None
    cache_dtype: str | None = None
    record_routing: bool = False

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "stop_token_sequences",
                           tuple(tuple(int(t) for t in s) for s in self.stop_token_sequences))
        checks = {
            "min_p": self.min_p is None or 0 <= self.min_p <= 1,
            "num_samples": self.num_samples >= 1,
            "pad_side": self.pad_side in PAD_SIDES,
            "overlong": self.overlong in OVERLONG,
            "max_prompt_length": self.max_prompt_length is None or self.max_prompt_length >= 1,
        }
        for field, ok in checks.items():
            if not ok:
                raise ValueError(f"SamplingConfig.{field}: invalid value {getattr(self, field)!r}")
        stops.stop_table(self.stop_token_sequences)  # Validates the sequences.

    def prompt_budget(self, config: config_lib.ModelConfig) -> int:
        """The longest prompt that leaves room for max_new_tokens in the context window."""
        budget = config.max_position_embeddings - self.max_new_tokens
        if self.max_prompt_length is not None:
            budget = min(budget, self.max_prompt_length)
        if budget < 1:
            raise ValueError(f"max_new_tokens={self.max_new_tokens} leaves no room for a prompt in "
                             f"max_position_embeddings={config.max_position_embeddings}")
        return budget


@flax.struct.dataclass
class SampleResult:
    """Completions of `generate` / `make_sampler` (R = B * num_samples rows, N = max_new_tokens).

    tokens: int32 [R, N], pad_id after the stop. logps: float32 [R, N] policy log-probs at the
    sampled tokens (0 where masked). mask: bool [R, N], True for real completion tokens, the
    EOS / stop-sequence token included. lengths: int32 [R] = mask.sum(1). finish_reason: int32 [R],
    FINISH_STOP or FINISH_LENGTH. prompt_truncated: bool [R]. num_steps: int32 scalar, decode
    steps run (< N when every row stopped early). routing: with `record_routing`, {router path:
    int16 [R, P + N, (layers,) K]} in the update's [prompt ; completion] layout (`routing_record`);
    else None.
    """

    tokens: jax.Array
    logps: jax.Array
    mask: jax.Array
    lengths: jax.Array
    finish_reason: jax.Array
    prompt_truncated: jax.Array
    num_steps: jax.Array
    routing: dict | None = None

    def finish_reason_names(self) -> list[str]:
        return [FINISH_REASONS[int(c)] for c in np.asarray(self.finish_reason)]


@flax.struct.dataclass
class _Loop:
    """while_loop carry. step t = tokens sampled so far; last_b = the token fed at step t."""

    step: jax.Array
    cache: transformer.Cache
    last_b: jax.Array
    done_b: jax.Array
    stopped_b: jax.Array
    recent_bk: jax.Array
    tokens_bn: jax.Array
    logps_bn: jax.Array
    mask_bn: jax.Array
    routes: dict | None = None


def cache_bytes_per_token(config: config_lib.ModelConfig, dtype=None) -> int:
    """Cache bytes per token of one sequence, all layers: (d_c + d_h^R) * L * bytes for MLA,
    2 * n_kv * d_h * L * bytes for GQA (plus 1 byte for the cache's validity flag, not counted)."""
    itemsize = jnp.dtype(dtype or layers.dtype_of(config.dtype)).itemsize
    return config.kv_cache_values_per_token * config.num_hidden_layers * itemsize


# ---------------------------------------------------------------------------------------------
# Prompt preparation (on device; shapes static).


def right_align(prompt_bp: jax.Array, lengths_b: jax.Array) -> jax.Array:
    """Left-padded prompts [B, P] -> right-padded (real tokens first, same lengths)."""
    p = prompt_bp.shape[1]
    index_bp = (jnp.arange(p)[None, :] + (p - lengths_b)[:, None]) % p
    return jnp.take_along_axis(prompt_bp, index_bp, axis=1)


def keep_last(prompt_bp: jax.Array, lengths_b: jax.Array, budget: int):
    """Right-padded prompts cut to their last `budget` tokens. Returns (prompt [B, min(P,
    budget)], lengths, truncated bool [B])."""
    truncated_b = lengths_b > budget
    if prompt_bp.shape[1] <= budget:
        return prompt_bp, lengths_b, truncated_b
    start_b = jnp.maximum(lengths_b - budget, 0)
    index_bq = start_b[:, None] + jnp.arange(budget)[None, :]
    return (jnp.take_along_axis(prompt_bp, index_bq, axis=1), jnp.minimum(lengths_b, budget),
            truncated_b)


def _constrain(cache: transformer.Cache, scan_layers: bool) -> transformer.Cache:
    """Batch-shards the cache (and GQA's K/V heads as the attention shards them); a no-op
    without a mesh. Keeps the while_loop carry's sharding fixed."""
    lead = (None,) * scan_layers

    def one(a):
        rest = ("act_heads", "act_kv") if a.ndim - len(lead) == 4 else ("act_kv",)
        return sharding.constrain(a, lead + ("act_batch", "act_length") + rest)

    return transformer.Cache(jax.tree.map(one, cache.layers),
                             sharding.constrain(cache.valid_bs, ("act_batch", "act_length")),
                             cache.index)


def _repeat(cache: transformer.Cache, g: int, scan_layers: bool) -> transformer.Cache:
    """Each sequence's cache G times, adjacent (row b * G + g)."""
    axis = 1 if scan_layers else 0
    layers_ = jax.tree.map(lambda a: jnp.repeat(a, g, axis=axis), cache.layers)
    return _constrain(transformer.Cache(layers_, jnp.repeat(cache.valid_bs, g, axis=0),
                                        cache.index), scan_layers)


# ---------------------------------------------------------------------------------------------
# The compiled sampler.


def _decode(config, sampling, params, tokens_bt, positions_bt, cache, mask_bt):
    """`Transformer.decode` -> (logits, cache, the routers' `routing_record.selections`, or None
    without sampling.record_routing)."""
    model = transformer.Transformer(config)
    args = ({"params": params}, tokens_bt, positions_bt, cache, mask_bt)
    if not sampling.record_routing:
        return *model.apply(*args, method=transformer.Transformer.decode), None
    (logits, cache), variables = model.apply(*args, mutable=["intermediates"],
                                             method=transformer.Transformer.decode)
    return logits, cache, routing_record.selections(variables["intermediates"])


def _prefill(config, sampling, params, prompt_bp, lengths_b):
    """Writes every prompt token but the last real one into a cache of P + N slots. Returns
    (the cache repeated G times, the prefill's router selections or None)."""
    b, p = prompt_bp.shape
    dtype = sampling.cache_dtype and jnp.dtype(sampling.cache_dtype)
    cache = _constrain(transformer.init_cache(config, b, p + sampling.max_new_tokens, dtype),
                       config.scan_layers)
    positions_bp = jnp.broadcast_to(jnp.arange(p), (b, p))
    mask_bp = positions_bp < (lengths_b - 1)[:, None]
    _, cache, selected = _decode(config, sampling, params, prompt_bp, positions_bp, cache,
                                 mask_bp)
    return _repeat(cache, sampling.num_samples, config.scan_layers), selected


def _sample_step(sampling, rng, table_mk, loop: _Loop, logits_bv) -> _Loop:
    """Samples token `loop.step` for the rows still running and records it."""
    t = loop.step
    rows_b = jnp.arange(logits_bv.shape[0])
    keys_b = controls.row_step_keys(rng, rows_b, t)
    tokens_b, logps_b = controls.sample(logits_bv, keys_b, sampling.temperature, sampling.top_k,
                                        sampling.top_p, sampling.min_p)
    active_b = ~loop.done_b
    tokens_b = jnp.where(active_b, tokens_b, sampling.pad_id)
    recent_bk = stops.push(loop.recent_bk, tokens_b)
    hit_b = stops.matches(recent_bk, table_mk)
    if sampling.eos_id is not None:
        hit_b = hit_b | (tokens_b == sampling.eos_id)
    hit_b = active_b & hit_b

    def put(buffer_bn, value_b):
        return jax.lax.dynamic_update_slice(buffer_bn, value_b[:, None].astype(buffer_bn.dtype),
                                            (0, t))

    return loop.replace(
        step=t + 1, last_b=tokens_b, done_b=loop.done_b | hit_b, stopped_b=loop.stopped_b | hit_b,
        recent_bk=recent_bk, tokens_bn=put(loop.tokens_bn, tokens_b),
        logps_bn=put(loop.logps_bn, jnp.where(active_b, logps_b, 0.0)),
        mask_bn=put(loop.mask_bn, active_b))


def _initial_loop(sampling, cache, prompt_bp, lengths_b, table_mk) -> _Loop:
    r, n = lengths_b.shape[0], sampling.max_new_tokens
    last_b = jnp.take_along_axis(prompt_bp, jnp.maximum(lengths_b - 1, 0)[:, None], axis=1)[:, 0]
    return _Loop(
        step=jnp.zeros((), jnp.int32), cache=cache, last_b=last_b.astype(jnp.int32),
        done_b=jnp.zeros((r,), jnp.bool_), stopped_b=jnp.zeros((r,), jnp.bool_),
        recent_bk=jnp.full((r, table_mk.shape[1]), stops.WILDCARD, jnp.int32),
        tokens_bn=jnp.full((r, n), sampling.pad_id, jnp.int32),
        logps_bn=jnp.zeros((r, n), jnp.float32), mask_bn=jnp.zeros((r, n), jnp.bool_))


def _decode_loop(config, sampling, params, rng, loop: _Loop, lengths_b) -> _Loop:
    table_mk = stops.stop_table(sampling.stop_token_sequences)

    def cond(loop: _Loop):
        return (loop.step < sampling.max_new_tokens) & ~jnp.all(loop.done_b)

    def body(loop: _Loop):
        positions_b1 = (lengths_b - 1 + loop.step)[:, None]
        logits_b1v, cache, selected = _decode(config, sampling, params, loop.last_b[:, None],
                                              positions_b1, loop.cache, ~loop.done_b[:, None])
        if selected is not None:  # the fed token's slot in [prompt ; completion]
            slot_b = jnp.where(loop.step == 0, lengths_b - 1, loop.cache.index - 1)
            loop = loop.replace(routes=routing_record.put_step(loop.routes, selected, slot_b,
                                                               ~loop.done_b))
        return _sample_step(sampling, rng, table_mk, loop.replace(cache=cache), logits_b1v[:, 0])

    return jax.lax.while_loop(cond, body, loop)


def sample_fn(config: config_lib.ModelConfig, sampling: SamplingConfig, params,
              prompt_bp: jax.Array, lengths_b: jax.Array, rng: jax.Array) -> SampleResult:
    """The un-jitted sampler (see the module docstring); `make_sampler` jits it."""
    budget = sampling.prompt_budget(config)
    if prompt_bp.shape[1] > budget and sampling.overlong == "error":
        raise ValueError(
            f"prompt width P={prompt_bp.shape[1]} + max_new_tokens={sampling.max_new_tokens} > "
            f"max_position_embeddings={config.max_position_embeddings} (or P > max_prompt_length="
            f"{sampling.max_prompt_length}); trim the padding or set overlong='truncate'")
    lengths_b = lengths_b.astype(jnp.int32)
    if sampling.pad_side == "left":
        prompt_bp = right_align(prompt_bp, lengths_b)
    prompt_bp, lengths_b, truncated_b = keep_last(prompt_bp.astype(jnp.int32), lengths_b, budget)
    cache, selected = _prefill(config, sampling, params, prompt_bp, lengths_b)
    g = sampling.num_samples
    prompt_rp, lengths_r = jnp.repeat(prompt_bp, g, axis=0), jnp.repeat(lengths_b, g)
    table_mk = stops.stop_table(sampling.stop_token_sequences)
    loop = _initial_loop(sampling, cache, prompt_rp, lengths_r, table_mk)
    if selected is not None:
        loop = loop.replace(routes=routing_record.from_prefill(
            selected, lengths_b, prompt_bp.shape[1], sampling.max_new_tokens, g))
    loop = _decode_loop(config, sampling, params, rng, loop, lengths_r)
    return SampleResult(
        tokens=loop.tokens_bn, logps=loop.logps_bn, mask=loop.mask_bn,
        lengths=loop.mask_bn.sum(axis=1).astype(jnp.int32),
        finish_reason=jnp.where(loop.stopped_b, FINISH_STOP, FINISH_LENGTH).astype(jnp.int32),
        prompt_truncated=jnp.repeat(truncated_b, g), num_steps=loop.step, routing=loop.routes)


# ---------------------------------------------------------------------------------------------
# Public entry points.


def param_shardings(config: config_lib.ModelConfig, mesh: jax.sharding.Mesh):
    """The NamedSharding tree of `transformer.param_shardings` (no memory allocated)."""
    return transformer.param_shardings(config, mesh)[1]


def batch_shards(mesh: jax.sharding.Mesh | None) -> int:
    """How many ways the batch dimension is split on `mesh` (1 without one)."""
    if mesh is None:
        return 1
    spec = sharding.batch_sharding(mesh, 2).spec[0]
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    return int(np.prod([mesh.shape[a] for a in axes]))


def pad_prompts(prompt_bp, lengths_b, multiple: int):
    """Host prompts [B, P] and lengths [B] padded with copies of the first prompt to a multiple
    of `multiple` rows (so any batch shards evenly; callers drop the copies' rows)."""
    prompt_bp, lengths_b = np.asarray(prompt_bp), np.asarray(lengths_b)
    extra = -prompt_bp.shape[0] % multiple
    if not extra:
        return prompt_bp, lengths_b
    return (np.concatenate([prompt_bp, np.repeat(prompt_bp[:1], extra, 0)]),
            np.concatenate([lengths_b, np.repeat(lengths_b[:1], extra)]))


def make_sampler(config: config_lib.ModelConfig, sampling: SamplingConfig,
                 mesh: jax.sharding.Mesh | None = None):
    """A compiled `sampler(params, prompt_tokens, prompt_lengths, rng) -> SampleResult`.

    Params are an argument (not closed over), so a trainer calls the same sampler every step
    with new weights and never recompiles while shapes stay the same. With a mesh, prompts are
    batch-sharded over the data axes (`sharding.batch_sharding`; B * G must divide evenly),
    params are placed by the logical rules, and the model's activation constraints apply.
    Any B works: a batch that the batch shards do not divide is padded with copies of its first
    prompt (`pad_prompts`; they are sampled too, with their own row keys) and their rows dropped.
    """
    jitted = jax.jit(functools.partial(sample_fn, config, sampling))
    if mesh is None:
        return jitted
    shards = batch_shards(mesh)
    shardings = (param_shardings(config, mesh), sharding.batch_sharding(mesh, 2),
                 sharding.batch_sharding(mesh, 1), sharding.replicated(mesh))

    def sampler(params, prompt_tokens, prompt_lengths, rng):
        rows = prompt_tokens.shape[0] * sampling.num_samples
        if prompt_tokens.shape[0] % shards:
            prompt_tokens, prompt_lengths = pad_prompts(prompt_tokens, prompt_lengths, shards)
        args = jax.device_put((params, prompt_tokens, prompt_lengths, rng), shardings)
        with jax.set_mesh(mesh):
            result = jitted(*args)
        if result.tokens.shape[0] == rows:
            return result
        return jax.tree.map(lambda x: x[:rows] if x.ndim else x, result)

    sampler.jitted = jitted
    return sampler


#: `make_sampler` memoised on (config, sampling, mesh): what `generate` calls.
cached_sampler = functools.lru_cache(maxsize=32)(make_sampler)


def check_prompts(config: config_lib.ModelConfig, sampling: SamplingConfig, prompt_tokens,
                  prompt_lengths) -> tuple[np.ndarray, np.ndarray]:
    """Host-side checks of concrete prompts; drops padding columns beyond the prompt budget.

    Raises ValueError for bad shapes, lengths outside [1, P], and (overlong="error") a prompt
    longer than the budget, naming the row and the numbers."""
    prompt_bp, lengths_b = np.asarray(prompt_tokens), np.asarray(prompt_lengths)
    if prompt_bp.ndim != 2 or lengths_b.shape != prompt_bp.shape[:1]:
        raise ValueError(f"prompt_tokens must be [B, P] and prompt_lengths [B]; got "
                         f"{prompt_bp.shape} and {lengths_b.shape}")
    p = prompt_bp.shape[1]
    bad = np.flatnonzero((lengths_b < 1) | (lengths_b > p))
    if bad.size:
        raise ValueError(f"prompt_lengths[{bad[0]}]={lengths_b[bad[0]]} is outside [1, P={p}]")
    budget = sampling.prompt_budget(config)
    longest = int(lengths_b.max(initial=0))
    if longest > budget and sampling.overlong == "error":
        row = int(np.argmax(lengths_b))
        raise ValueError(
            f"prompt {row} has {longest} tokens > prompt budget {budget} (max_position_embeddings="
            f"{config.max_position_embeddings} - max_new_tokens={sampling.max_new_tokens}, "
            f"max_prompt_length={sampling.max_prompt_length}); set overlong='truncate' to keep "
            "its last tokens")
    if p > budget and longest <= budget:  # Only padding is dropped.
        prompt_bp = prompt_bp[:, :budget] if sampling.pad_side == "right" else prompt_bp[:, -budget:]
    return prompt_bp.astype(np.int32), lengths_b.astype(np.int32)


def generate(config: config_lib.ModelConfig, params, prompt_tokens, prompt_lengths,
             rng: jax.Array, *, max_new_tokens: int,
             temperature: float = SamplingOptions.temperature,
             top_k: int | None = None, top_p: float | None = None, eos_id: int | None = None,
             min_p: float | None = None, stop_token_sequences=(), num_samples: int = 1,
             pad_id: int = 0, pad_side: str = "right", overlong: str = "error",
             max_prompt_length: int | None = None, mesh: jax.sharding.Mesh | None = None,
             record_routing: bool = False) -> SampleResult:
    """Samples completions of a prompt batch (the stable entry point).

    Args:
      config: the model's ModelConfig. params: its parameter tree.
      prompt_tokens: int32 [B, P], right-padded (left-padded with pad_side="left").
      prompt_lengths: int [B], real tokens per prompt (>= 1).
      rng: a PRNG key; row r's key at step t is fold_in(fold_in(rng, r), t).
      max_new_tokens .. max_prompt_length: see `SamplingConfig` (temperature 0 = greedy).
      mesh: optional device mesh; see `make_sampler`.
      record_routing: also return the MoE routing record (`SampleResult.routing`).
    Returns:
      SampleResult with [B * num_samples, max_new_tokens] tokens / logps / mask, lengths,
      finish_reason (`FINISH_REASONS`), prompt_truncated, num_steps. Compiled samplers are
      cached per (config, settings, mesh), so repeated calls with equal shapes do not recompile.
    """
    sampling = SamplingConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
        min_p=min_p, eos_id=eos_id, stop_token_sequences=tuple(map(tuple, stop_token_sequences)),
        num_samples=num_samples, pad_id=pad_id, pad_side=pad_side, overlong=overlong,
        max_prompt_length=max_prompt_length, record_routing=record_routing)
    prompt_bp, lengths_b = check_prompts(config, sampling, prompt_tokens, prompt_lengths)
    return cached_sampler(config, sampling, mesh)(params, prompt_bp, lengths_b, rng)
