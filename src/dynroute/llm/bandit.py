"""A router that keeps learning: LinUCB over the query embedding, one arm per model.

Each model (arm) keeps a ridge regression of the reward ``quality − λ·cost`` on the
query's embedding ``x`` (``[d]``, a bias appended). A query goes to the arm with the
highest ``θ_a·x + α·sqrt(xᵀ A_a⁻¹ x)``: the predicted reward plus a bonus that is large
where the arm has seen few similar queries. Arms start from offline outcomes
(:meth:`LinUCB.warm_start`, e.g. an outcome table's rows); a model added later starts
empty, so its bonus makes the router try it. Exploration is bounded: a choice that
differs from the greedy one (``α = 0``) spends one unit of ``explore_budget``; once it is
spent, the router is greedy and keeps learning only from what it picks.

:func:`simulate` replays an outcome table as a stream of queries (each answer's quality
and cost revealed only for the model picked) and records the reward of the bandit and of
fixed routers beside it.

Example:
    >>> import numpy as np
    >>> b = LinUCB(["small", "big"], dim=2, alpha=1.0, explore_budget=3)
    >>> b.warm_start("small", np.array([[1.0, 0.0]] * 5), np.full(5, 0.2))
    >>> b.choose(np.array([1.0, 0.0]))  # "big" has no data: its bonus wins
    1
    >>> b.update(1, np.array([1.0, 0.0]), 0.9); b.explored
    1
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["LinUCB", "StreamResult", "reward_matrix", "simulate"]


class LinUCB:
    """One ridge regression per arm, chosen by upper confidence bound.

    Args:
        models: the arms' names.
        dim: embedding size ``d`` (a bias feature is appended: ``d + 1`` weights).
        alpha: width of the confidence bonus (0: greedy).
        ridge: the prior's precision (``A = ridge·I`` before any data).
        explore_budget: how many choices may differ from the greedy one (None: no limit).
    """

    def __init__(
        self,
        models: Sequence[str],
        dim: int,
        alpha: float = 1.0,
        ridge: float = 1.0,
        explore_budget: int | None = None,
    ) -> None:
        if alpha < 0 or ridge <= 0 or (explore_budget is not None and explore_budget < 0):
            raise ValueError("LinUCB needs alpha ≥ 0, ridge > 0 and explore_budget ≥ 0")
        self.models = list(models)
        self.alpha, self.explore_budget, self.explored = alpha, explore_budget, 0
        n = dim + 1
        self.a_inv = np.stack([np.eye(n) / ridge for _ in self.models])  # [M, n, n]
        self.b = np.zeros((len(self.models), n))  # [M, n]
        self.pulls = np.zeros(len(self.models), dtype=np.int64)

    @staticmethod
    def features(x: np.ndarray) -> np.ndarray:
        """``[..., d]`` → ``[..., d + 1]``: the embedding and a bias of 1."""
        x = np.asarray(x, dtype=np.float64)
        return np.concatenate([x, np.ones((*x.shape[:-1], 1))], axis=-1)

    def add_model(self, name: str, ridge: float = 1.0) -> int:
        """A new arm with no data (its index)."""
        n = self.b.shape[1]
        self.models.append(name)
        self.a_inv = np.concatenate([self.a_inv, (np.eye(n) / ridge)[None]])
        self.b = np.concatenate([self.b, np.zeros((1, n))])
        self.pulls = np.append(self.pulls, 0)
        return len(self.models) - 1

    def warm_start(self, model: str, x: np.ndarray, rewards: np.ndarray) -> None:
        """Fit arm ``model`` on ``[n, d]`` embeddings and their ``[n]`` rewards at once."""
        i = self.models.index(model)
        z = self.features(x)
        a = np.linalg.inv(self.a_inv[i]) + z.T @ z
        self.a_inv[i] = np.linalg.inv(a)
        self.b[i] += z.T @ np.asarray(rewards, dtype=np.float64)

    def estimate(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``([M] predicted reward, [M] bonus width)`` for one ``[d]`` embedding."""
        z = self.features(x)
        theta = np.einsum("mij,mj->mi", self.a_inv, self.b)
        width = np.sqrt(np.maximum(np.einsum("i,mij,j->m", z, self.a_inv, z), 0.0))
        return theta @ z, width

    def choose(self, x: np.ndarray) -> int:
        """The arm for one query; a choice made for the bonus spends the budget."""
        mean, width = self.estimate(x)
        greedy = int(np.argmax(mean))
        left = self.explore_budget is None or self.explored < self.explore_budget
        if not left or self.alpha == 0:
            return greedy
        pick = int(np.argmax(mean + self.alpha * width))
        if pick != greedy:
            self.explored += 1
        return pick

    def update(self, arm: int, x: np.ndarray, reward: float) -> None:
        """Learn the reward the chosen ``arm`` earned (Sherman–Morrison: O(d²))."""
        z = self.features(x)
        a_inv = self.a_inv[arm]
        az = a_inv @ z
        self.a_inv[arm] = a_inv - np.outer(az, az) / (1.0 + z @ az)
        self.b[arm] += reward * z
        self.pulls[arm] += 1


@dataclass
class StreamResult:
    """Rewards per step of each policy (``[T]`` arrays) and what the bandit did."""

    rewards: dict[str, np.ndarray] = field(default_factory=dict)
    new_model_pulls: int = 0
    explored: int = 0

    def summary(self) -> dict[str, Any]:
        """Mean reward per policy, the bandit's regret against each, and its counts."""
        mean = {k: float(v.mean()) for k, v in self.rewards.items()}
        bandit = self.rewards["bandit"]
        regret = {k: float((v - bandit).sum()) for k, v in self.rewards.items() if k != "bandit"}
        return {"mean_reward": mean, "cumulative_regret": regret,
                "new_model_pulls": self.new_model_pulls, "explored": self.explored}  # fmt: skip


def simulate(
    train_x: np.ndarray,
    train_reward: np.ndarray,
    stream_x: np.ndarray,
    stream_reward: np.ndarray,
    new_model: int,
    *,
    alpha: float = 1.0,
    explore_budget: int | None = 100,
    ridge: float = 1.0,
) -> StreamResult:
    """Add model ``new_model`` to a router fitted offline without it, and stream queries.

    Args:
        train_x, train_reward: ``[N, d]`` embeddings and ``[N, M]`` rewards of the offline
            table (every model, the new one's column included: for the reference only).
        stream_x, stream_reward: ``[T, d]`` and ``[T, M]``: the queries as they arrive.
        new_model: the column that arrives with no outcomes.

    Returns:
        rewards per step of ``bandit`` (LinUCB, the new arm empty, learning online),
        ``offline_without`` (greedy, fitted offline on the others, never learning),
        ``offline_all`` (greedy, fitted offline on every model: what a full refit gives)
        and ``oracle`` (the best reward of each query).
    """
    m, dim = train_reward.shape[1], train_x.shape[1]
    others = [i for i in range(m) if i != new_model]
    names = [str(i) for i in others]
    bandit = LinUCB(names, dim, alpha=alpha, ridge=ridge, explore_budget=explore_budget)
    without = LinUCB(names, dim, alpha=0.0, ridge=ridge)
    full = LinUCB([str(i) for i in range(m)], dim, alpha=0.0, ridge=ridge)
    for i in range(m):
        full.warm_start(str(i), train_x, train_reward[:, i])
        if i != new_model:
            bandit.warm_start(str(i), train_x, train_reward[:, i])
            without.warm_start(str(i), train_x, train_reward[:, i])
    arm_new = bandit.add_model(str(new_model), ridge)
    column = [*others, new_model]  # bandit arm -> table column
    t = len(stream_x)
    out = StreamResult({k: np.zeros(t) for k in ("bandit", "offline_without", "offline_all")})
    for step in range(t):
        x, r = stream_x[step], stream_reward[step]
        arm = bandit.choose(x)
        bandit.update(arm, x, float(r[column[arm]]))
        out.rewards["bandit"][step] = r[column[arm]]
        out.new_model_pulls += int(arm == arm_new)
        out.rewards["offline_without"][step] = r[others[without.choose(x)]]
        out.rewards["offline_all"][step] = r[full.choose(x)]
    out.rewards["oracle"] = stream_reward.max(1).astype(np.float64)
    out.explored = bandit.explored
    return out


def reward_matrix(quality: np.ndarray, cost: np.ndarray, lam: float) -> np.ndarray:
    """``quality − λ·cost``, ``[Q, M]`` (what every policy of :func:`simulate` earns).

    Example:
        >>> reward_matrix(np.array([[1.0, 0.0]]), np.array([[2.0, 1.0]]), 0.25).tolist()
        [[0.5, -0.25]]
    """
    if not math.isfinite(lam) or lam < 0:
        raise ValueError(f"λ must be a finite number ≥ 0, not {lam}")
    return np.asarray(quality, dtype=np.float64) - lam * np.asarray(cost, dtype=np.float64)
