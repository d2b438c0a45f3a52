"""Adding a model to a fitted router from a few labels (``dynroute.llm.onboard``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dynroute.llm.data import OutcomeTable, write_wide_jsonl
from dynroute.llm.onboard import ONBOARD_FORMS, add_model, add_model_from_table
from dynroute.llm.routers import QUERY_ROUTERS, load_router, make_query_router

WORDS = ["red", "blue", "green", "small", "large", "old", "new", "fast", "slow", "warm"]


def queries(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """``n`` queries, half arithmetic and half geography; ``[n]`` True for arithmetic."""
    rng = np.random.default_rng(seed)
    out, math = [], []
    for i in range(n):
        if i % 2:
            a, b = rng.integers(0, 100, 2)
            out.append(f"add {a} plus {b} sum the numbers {rng.choice(WORDS)}")
        else:
            out.append(f"capital city of the {rng.choice(WORDS)} country {rng.choice(WORDS)}")
        math.append(bool(i % 2))
    return out, np.array(math)


def table(n: int, seed: int, models: tuple[str, ...]) -> OutcomeTable:
    """``small`` answers geography only, ``big`` geography and a third of the arithmetic
    (dearer), and ``mathy`` — the model to add — every arithmetic query, no geography."""
    qs, math = queries(n, seed)
    rng = np.random.default_rng(seed + 1)
    cols = {
        "small": (~math).astype(float),
        "big": np.where(math, rng.random(n) < 0.3, 1.0).astype(float),
        "mathy": math.astype(float),
    }
    cost = {"small": 1.0, "big": 3.0, "mathy": 1.0}
    return OutcomeTable.from_rows(
        qs,
        models,
        np.column_stack([cols[m] for m in models]),
        np.column_stack([np.full(n, cost[m]) for m in models]),
    )


@pytest.fixture(scope="module")
def pool() -> OutcomeTable:
    return table(160, 0, ("small", "big"))


@pytest.fixture(scope="module")
def labels() -> OutcomeTable:
    """40 labelled queries, other than the training ones, with every model's outcome."""
    return table(40, 7, ("small", "big", "mathy"))


@pytest.mark.parametrize("name", ["knn", "mlp", "mf"])
def test_the_added_model_gets_the_queries_it_is_best_at(
    pool: OutcomeTable, labels: OutcomeTable, name: str
) -> None:
    params = {"knn": {"k": 5}, "mlp": {"hidden": 32, "steps": 60}, "mf": {"dim": 16, "steps": 200}}
    router = make_query_router(name, **params[name]).fit(pool)
    j = labels.models.index("mathy")
    new = add_model(router, "mathy", labels.queries, labels.quality[:, j], labels.cost[:, j])
    assert new.models == ("small", "big", "mathy") and router.models == ("small", "big")
    test_queries, math = queries(40, 99)
    picked = np.array(new.route(test_queries, lam=0.0))
    # mf's model rows are unit vectors over a shared head: its new row separates the
    # clusters less sharply than kNN's column or the MLP's output column (measured 0.75)
    assert (picked[math] == "mathy").mean() >= (0.7 if name == "mf" else 0.9), picked[math]
    assert (picked[~math] != "mathy").all(), picked[~math]
    # the models the router knew are predicted as before
    before, after = router.predict(test_queries), new.predict(test_queries)
    assert after.shape == (40, 3)
    assert np.allclose(after[:, :2].numpy(), before.numpy(), atol=1e-5)


def test_known_outcomes_and_a_table_and_save_load(
    pool: OutcomeTable, labels: OutcomeTable, tmp_path: Path
) -> None:
    router = make_query_router("knn", k=5).fit(pool)
    new = add_model_from_table(router, labels, "mathy")  # small, big: the known outcomes
    loaded = load_router(new.save(tmp_path / "r"))
    qs, math = queries(20, 5)
    assert loaded.models == new.models
    assert np.array_equal(loaded.predict(qs).numpy(), new.predict(qs).numpy())
    assert loaded.route(qs, lam=0.0) == new.route(qs, lam=0.0)
    assert set(np.array(loaded.route(qs, lam=0.0))[math]) == {"mathy"}
    assert np.allclose(loaded.estimate_cost(qs)[:, 2].numpy(), 1.0)


def test_clear_errors(pool: OutcomeTable, labels: OutcomeTable) -> None:
    router = make_query_router("best_single").fit(pool)
    with pytest.raises(ValueError, match="'big' is already in the router's pool"):
        add_model(router, "big", ["q"], [1.0], [1.0])
    with pytest.raises(ValueError, match="2 queries, 1 qualities, 2 costs"):
        add_model(router, "new", ["q", "r"], [1.0], [1.0, 1.0])
    with pytest.raises(ValueError, match="no model 'nope'"):
        add_model_from_table(router, labels, "nope")
    with pytest.raises(ValueError, match="not fitted"):
        add_model(make_query_router("knn"), "new", ["q"], [1.0], [1.0])
    without = [n for n in QUERY_ROUTERS if n not in ONBOARD_FORMS]
    if without:
        other = make_query_router(without[0], **QUERY_ROUTERS[without[0]].quick_params)
        with pytest.raises(ValueError, match="refit it with the new model"):
            add_model(other.fit(pool), "new", ["q"], [1.0], [1.0])


def test_cli_refuses_a_model_the_router_has(
    pool: OutcomeTable, labels: OutcomeTable, tmp_path: Path
) -> None:
    folder = make_query_router("best_single").fit(pool).save(tmp_path / "r")
    write_wide_jsonl(labels, tmp_path / "labels.jsonl")
    args = ["llm", "add-model", str(folder), "--table", str(tmp_path / "labels.jsonl"),
            "--model", "big", "--out", str(tmp_path / "new")]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "dynroute.cli", *args], capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'big' is already in the router's pool" in lines[0], lines
    assert not (tmp_path / "new").exists()
