"""LinUCB: online updates equal a batch ridge fit; exploration is bounded; a new model that
is best for part of the traffic is found online."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dynroute.llm.bandit import LinUCB, reward_matrix, simulate


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(0, 2**31 - 1))
def test_online_updates_equal_a_batch_ridge_fit(n, seed):
    rng = np.random.default_rng(seed)
    x, r = rng.normal(size=(n, 4)), rng.normal(size=n)
    online, batch = LinUCB(["a"], 4, ridge=0.5), LinUCB(["a"], 4, ridge=0.5)
    for xi, ri in zip(x, r, strict=True):
        online.update(0, xi, float(ri))
    batch.warm_start("a", x, r)
    z = LinUCB.features(x)
    theta = np.linalg.solve(z.T @ z + 0.5 * np.eye(5), z.T @ r)  # ridge regression
    probe = rng.normal(size=4)
    for b in (online, batch):
        mean, width = b.estimate(probe)
        assert mean[0] == pytest.approx(theta @ LinUCB.features(probe), abs=1e-8)
        zp = LinUCB.features(probe)
        want = np.sqrt(zp @ np.linalg.inv(z.T @ z + 0.5 * np.eye(5)) @ zp)
        assert width[0] == pytest.approx(want, abs=1e-8)


def test_a_new_model_is_explored_until_the_budget_is_spent():
    rng = np.random.default_rng(0)
    b = LinUCB(["old"], 3, alpha=2.0, explore_budget=5)
    b.warm_start("old", rng.normal(size=(50, 3)), np.full(50, 0.5))
    new = b.add_model("new")
    picks = []
    for _ in range(40):
        x = rng.normal(size=3)
        greedy = int(np.argmax(b.estimate(x)[0]))
        arm = b.choose(x)
        picks.append((arm, greedy))
        b.update(arm, x, 0.0 if arm == new else 0.5)  # the new model is worse
    assert picks[0] == (new, 0)  # tried first, for its bonus
    assert b.explored == 5  # exactly the budget, then greedy ever after
    spent_at = [i for i, (a, g) in enumerate(picks) if a != g][-1]
    assert all(a == g for a, g in picks[spent_at + 1 :])


def test_the_stream_finds_a_model_best_for_part_of_the_traffic():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 2))
    # Model 0 is fair everywhere; model 1 (the new one) is far better where x0 > 0.
    quality = np.stack([np.full(600, 0.5), np.where(x[:, 0] > 0, 1.0, 0.0)], 1)
    rewards = reward_matrix(quality, np.zeros_like(quality), 0.0)
    res = simulate(x[:200], rewards[:200], x[200:], rewards[200:], new_model=1,
                   alpha=1.0, explore_budget=50)  # fmt: skip
    s = res.summary()["mean_reward"]
    assert res.new_model_pulls > 100 and res.explored <= 50
    assert s["offline_without"] == 0.5 and s["bandit"] > 0.6  # learnt online
    assert s["bandit"] <= s["oracle"]


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="alpha"):
        LinUCB(["a"], 2, alpha=-1)
    with pytest.raises(ValueError, match="λ"):
        reward_matrix(np.zeros((1, 1)), np.zeros((1, 1)), float("nan"))
