"""Preference reward model: the policy's transformer trunk with a scalar head, trained on pairs.

DeepSeek-R1 (arXiv:2501.12948, Sec. 2.3.4) scores general (non-reasoning) prompts in its
all-scenario RL stage with reward models of human preference, trained as in DeepSeek-V3 (Sec.
5.2.1) and InstructGPT (Ouyang et al. 2022, Sec. 3.5): the language model with its output head
replaced by a scalar r_theta(x, y), trained on (x, y_w, y_l) with the Bradley-Terry loss

    L(theta) = -E_{(x, y_w, y_l)} [ log sigma(r_theta(x, y_w) - r_theta(x, y_l)) ],

y_w the chosen and y_l the rejected response. Helpfulness is judged on the final summary only
(the text after `</think>`), harmlessness on the whole response: `span` picks which.

    scorer = reward_model.load("runs/rm")                # or Scorer(config, params, tok, ...)
    scorer.score(responses, questions)                   # float32 [N]
    registry.register(scorer); registry.combine({"reward_model": 1.0, ...}, completions,
                                                question=questions)

The input is `<|User|>question<|Assistant|>response` + EOS, right-padded; r is read from the
final (normed) hidden state of the EOS, the last real token. Parameters are the transformer's
tree plus `score_head/{kernel [d, 1], bias [1]}`, so a policy checkpoint initialises the trunk
and the policy's partition rules shard it (`param_shardings`).

Deviations: a text longer than `max_len` keeps its *last* max_len - 1 tokens (the end of the
response, which is what is judged, rather than the question); the head starts at zero, so every
r is 0 (L = log 2) before training; no reward normalisation (GRPO's group advantages are
invariant to a shift and scale of the total reward; next to rule rewards, its weight sets r's
scale).
"""

from __future__ import annotations

import functools
import json
import math
import pathlib
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from r1jax import sharding
from r1jax.data import templates
from r1jax.data import tokenizer as tokenizer_lib
from r1jax.models import config as config_lib
from r1jax.models import layers, transformer
from r1jax.train import base

SPANS = ("summary", "response")
HEAD = "score_head"
KIND = "reward_model"


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


def select_span(response: str, span: str) -> str:
    """The part of a response that is judged: "response" (all of it, for harmlessness) or
    "summary" (the text after the last `</think>`, stripped; all of it when there is none, as
    in a non-reasoning answer)."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {SPANS}, got {span!r}")
    if span == "response":
        return response
    end = response.rfind(templates.THINK_CLOSE)
    return response if end < 0 else response[end + len(templates.THINK_CLOSE):].strip()


def _clean(text) -> str:
    # Model output may be anything: non-strings score as empty, lone surrogates are replaced.
    if not isinstance(text, str):
        return ""
    return text.encode("utf-8", "replace").decode("utf-8")


def format_input(question: str | None, response: str) -> str:
    """The reward model's text for (x, y): `<|User|>x<|Assistant|>y` (no question: `<|Assistant|>y`)."""
    user = "" if question is None else f"<|User|>{_clean(question)}"
    return f"{user}<|Assistant|>{_clean(response)}"


def encode(tok: tokenizer_lib.Tokenizer, texts: Sequence[str], max_len: int,
           width: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Token ids + EOS, the last `max_len` kept, right-padded.

    Returns int32 ids [N, W], int32 lengths [N] and bool truncated [N]. W = `width`, default
    the longest row rounded up to a power of two (>= 16), at most max_len: few distinct shapes,
    so few compilations.
    """
    if max_len < 2:
        raise ValueError(f"max_len must be >= 2, got {max_len}")
    ids = [tok.encode(t) for t in texts]
    truncated = np.array([len(s) > max_len - 1 for s in ids], bool)
    seqs = [s[len(s) - min(len(s), max_len - 1):] + [tok.eos_id] for s in ids]
    if width is None:
        longest = max((len(s) for s in seqs), default=1)
        width = min(max_len, 2 ** max(4, math.ceil(math.log2(longest))))
    tokens, lengths = tokenizer_lib.pad_sequences(seqs, width, tok.pad_id)
    return tokens, lengths, truncated


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


class RewardModel(transformer.Transformer):
    """`Transformer` trunk + scalar head. `apply({'params': p}, tokens_bt, lengths_b)` -> r [B].

    tokens_bt: int [B, T] right-padded; lengths_b: real tokens per row (>= 1). Padding is masked
    out of attention, so r does not depend on it. MoE statistics are sown as in `Transformer`.
    """

    def setup(self):
        super().setup()
        self.score_head = layers.Dense(1, ("embed", None), self.config, use_bias=True)

    def final_hidden(self, tokens_bt: jax.Array, lengths_b: jax.Array) -> jax.Array:
        """The trunk's normed final hidden states [B, T, d] (the input of the LM head)."""
        b, t = tokens_bt.shape
        positions_bt = jnp.broadcast_to(jnp.arange(t), (b, t))
        mask_bts = transformer.attention_mask(positions_bt < lengths_b[:, None],
                                              jnp.zeros((b, t), jnp.int32))
        h_btd, _ = self._backbone(self.embed_tokens(tokens_bt), positions_bt, mask_bts,
                                  (None,) * len(self.blocks), None)
        return self.norm(h_btd)

    def __call__(self, tokens_bt: jax.Array, lengths_b: jax.Array) -> jax.Array:
        h_btd = self.final_hidden(tokens_bt, lengths_b)
        last_b = jnp.maximum(lengths_b - 1, 0)
        h_bd = jnp.take_along_axis(h_btd, last_b[:, None, None], axis=1)[:, 0]
        return self.score_head(h_bd)[:, 0].astype(jnp.float32)


def _init(config: config_lib.ModelConfig, key: jax.Array):
    return RewardModel(config).init(key, jnp.zeros((1, 1), jnp.int32),
                                    jnp.ones((1,), jnp.int32))["params"]


def param_shardings(config: config_lib.ModelConfig, mesh: jax.sharding.Mesh):
    """(abstract params with shardings, NamedSharding tree) under the policy's logical rules."""
    boxed = jax.eval_shape(lambda: _init(config, jax.random.key(0)))
    return sharding.boxed_shardings(boxed, mesh)


def init_params(config: config_lib.ModelConfig, seed: int = 0, trunk=None) -> dict:
    """Host parameters: the trunk from `trunk` (a policy's params: its LM head and MTP modules
    are dropped) or from `init` with `seed`; the score head at zero."""
    abstract = nn.unbox(jax.eval_shape(lambda: _init(config, jax.random.key(seed))))
    if trunk is None:
        init = jax.jit(lambda key: nn.unbox(_init(config, key)))
        params = dict(jax.device_get(init(jax.random.key(seed))))
    else:
        params = {}
        for name in abstract:
            if name == HEAD:
                continue
            if name not in trunk:
                raise ValueError(f"init_params: trunk has no {name!r}; is it this config's model?")
            if jax.tree.map(np.shape, trunk[name]) != jax.tree.map(np.shape, abstract[name]):
                raise ValueError(f"init_params: trunk {name!r} has other shapes than the config")
            params[name] = trunk[name]
    params[HEAD] = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract[HEAD])
    return params


@functools.lru_cache(maxsize=16)
def make_forward(config: config_lib.ModelConfig, mesh: jax.sharding.Mesh | None = None):
    """A compiled `forward(params, tokens [B, T], lengths [B]) -> r [B]`; with a mesh, rows are
    batch-sharded (B must divide by the batch shards) and params are expected placed by
    `param_shardings`. Memoised on (config, mesh): scorers of one model share compilations."""
    model = RewardModel(config)
    jitted = jax.jit(lambda p, tokens, lengths: model.apply({"params": p}, tokens, lengths))
    if mesh is None:
        return jitted
    rows, rows2 = sharding.batch_sharding(mesh, 1), sharding.batch_sharding(mesh, 2)

    def forward(params, tokens, lengths):
        with jax.set_mesh(mesh):
            return jitted(params, jax.device_put(tokens, rows2), jax.device_put(lengths, rows))

    return forward


def batch_shards(mesh: jax.sharding.Mesh | None) -> int:
    """How many devices a batch is split over (1 without a mesh)."""
    if mesh is None:
        return 1
    return sharding.batch_sharding(mesh).num_devices // mesh.shape["tensor"]


def rewards_of(forward, params, tokens: np.ndarray, lengths: np.ndarray,
               batch_size: int) -> np.ndarray:
    """r for every row, `batch_size` rows per call (the last call padded with copies of row 0,
    so one shape compiles). Returns float32 [N]."""
    n = tokens.shape[0]
    out = np.zeros([n], np.float32)
    for start in range(0, n, batch_size):
        rows = np.arange(start, start + batch_size)
        rows = np.where(rows < n, rows, 0)
        r = np.asarray(jax.device_get(forward(params, tokens[rows], lengths[rows])))
        take = min(batch_size, n - start)
        out[start:start + take] = r[:take]
    return out


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def bradley_terry_loss(r_chosen_n: jax.Array, r_rejected_n: jax.Array):
    """L = -mean_n log sigma(r_w - r_l) over N pairs (InstructGPT eq. 1, one pair per prompt).

    Args:
      r_chosen_n: r_theta(x, y_w), float [N]. r_rejected_n: r_theta(x, y_l), float [N].
    Returns:
      (loss, {"accuracy": fraction with r_w > r_l (ties count as wrong), "margin": mean r_w - r_l}).
    """
    margin_n = (r_chosen_n - r_rejected_n).astype(jnp.float32)
    loss = -jnp.mean(jax.nn.log_sigmoid(margin_n))
    return loss, {"accuracy": jnp.mean(margin_n > 0), "margin": jnp.mean(margin_n)}


# ---------------------------------------------------------------------------------------------
# Scoring (a reward with the rule rewards' interface)
# ---------------------------------------------------------------------------------------------


class Scorer:
    """A learned reward callable like a `registry.RewardFn`: batched, jitted, never raising.

    Args:
      model_config, params, tokenizer: the reward model.
      name: its registry name. span: "summary" or "response" (`select_span`).
      max_len: tokens read per (question, response) (the rest is cut from the front).
      batch_size: rows per compiled call (a multiple of the mesh's batch shards).
      mesh: optional device mesh; params are placed by `param_shardings`.
    """

    fields: tuple[str, ...] = ()
    optional: tuple[str, ...] = ("question",)
    low, high = -math.inf, math.inf
    pooled = False
    is_accuracy = False  # a preference score, not a correctness check

    def __init__(self, model_config: config_lib.ModelConfig, params, tokenizer, *,
                 name: str = KIND, span: str = "summary", max_len: int = 512,
                 batch_size: int = 32, mesh: jax.sharding.Mesh | None = None):
        select_span("", span)
        if batch_size % batch_shards(mesh):
            raise ValueError(f"Scorer.batch_size={batch_size} must be a multiple of the "
                             f"{batch_shards(mesh)} batch shards of the mesh")
        self.model_config, self.tokenizer, self.mesh = model_config, tokenizer, mesh
        self.name, self.span, self.max_len, self.batch_size = name, span, max_len, batch_size
        if mesh is not None:
            params = jax.device_put(params, param_shardings(model_config, mesh)[1])
        self.params = params
        self._forward = make_forward(model_config, mesh)

    def with_options(self, **options) -> Scorer:
        """A copy with other `name`, `span`, `max_len` or `batch_size` (same params)."""
        unknown = set(options) - {"name", "span", "max_len", "batch_size"}
        if unknown:
            raise ValueError(f"reward {self.name!r}: unknown option(s) {sorted(unknown)}")
        copy = object.__new__(Scorer)
        copy.__dict__.update(self.__dict__)
        for key, value in options.items():
            setattr(copy, key, value)
        select_span("", copy.span)
        return copy

    def __repr__(self) -> str:
        # What a run's config.json records for a Spec's `extra` reward: stable across runs.
        return (f"Scorer(name={self.name!r}, span={self.span!r}, max_len={self.max_len}, "
                f"batch_size={self.batch_size})")

    def __deepcopy__(self, memo) -> Scorer:
        # Immutable once built; `dataclasses.asdict` of a config holding it must not copy the
        # params (or the compiled forward) just to print the config.
        return self

    def score(self, responses: Sequence[str], questions: Sequence[str] | None = None
              ) -> np.ndarray:
        """r_theta(x, y) of each response (its `span`) to its question. Returns float32 [N]."""
        if questions is not None and len(questions) != len(responses):
            raise ValueError(f"{len(questions)} questions for {len(responses)} responses")
        if not len(responses):
            return np.zeros([0], np.float32)
        questions = [None] * len(responses) if questions is None else questions
        texts = [format_input(q, select_span(_clean(r), self.span))
                 for q, r in zip(questions, responses)]
        tokens, lengths, _ = encode(self.tokenizer, texts, self.max_len)
        r = rewards_of(self._forward, self.params, tokens, lengths, self.batch_size)
        return np.where(np.isfinite(r), r, 0.0).astype(np.float32)

    def __call__(self, completions: Sequence[str], *, pool=None, question=None,
                 **task_fields) -> np.ndarray:
        """The registry interface: `fn(completions, pool=..., question=[...], ...)` -> [N]."""
        del pool, task_fields  # runs in this process; other task fields are not read
        return self.score(completions, question)


# ---------------------------------------------------------------------------------------------
# Save and load
# ---------------------------------------------------------------------------------------------


def save(directory, model_config: config_lib.ModelConfig, params, tokenizer_file, *,
         span: str, max_len: int, info: dict | None = None) -> pathlib.Path:
    """Writes a reward-model directory in the `train.base` format (atomic, never replacing a
    complete one); `info.json` records kind, span, max_len and `info`."""
    select_span("", span)
    if HEAD not in params:
        raise ValueError(f"save: params have no {HEAD!r}; these are not reward-model params")
    extra = dict(info or {}, kind=KIND, span=span, max_len=int(max_len))
    return base.save_base(directory, model_config, params, tokenizer_file, extra=extra)


def load(directory, **options) -> Scorer:
    """A `Scorer` for a directory written by `save`; `options` override the saved span,
    max_len, name, batch_size, or set a mesh."""
    directory = pathlib.Path(directory)
    info_path = directory / "info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    if info.get("kind") != KIND:
        raise ValueError(f"{directory}: not a reward-model directory (info.json kind is "
                         f"{info.get('kind')!r}, want {KIND!r})")
    model_config, params, tok = base.load_base(directory)
    settings = dict(span=info["span"], max_len=info["max_len"])
    settings.update(options)
    return Scorer(model_config, params, tok, **settings)

