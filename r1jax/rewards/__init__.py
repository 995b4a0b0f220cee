"""Rule-based rewards for R1-style RL (DeepSeek-R1 Sec. 2.2.2, 2.3.3).

Per-item entry points live in the task modules (`countdown.accuracy`, `math.accuracy`,
`numeric.accuracy`, `code.pass_rate`, `format.strict`, `language.consistency`, ...); the batched,
weighted, pooled interface is `registry` (re-exported here): `get(name)`, `combine(spec, ...)`.
"""

from r1jax.rewards.pool import WorkerPool
from r1jax.rewards.registry import RewardFn, Rewards, Spec, combine, get, names

__all__ = ["RewardFn", "Rewards", "Spec", "WorkerPool", "combine", "get", "names"]
