"""Every registered query router: shapes, save/load round trips, decisions."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynroute.llm import (
    QUERY_ROUTERS,
    OutcomeTable,
    calibrate_to_budget,
    calibrate_to_share,
    decide,
    evaluate,
    load_router,
    make_embedder,
    make_query_router,
)
from dynroute.llm.routers.cascade import run_cascade

#: Every registered query router (the shipped ones and any plugin loaded at collection).
NAMES = sorted(QUERY_ROUTERS)


def quick(name):
    """The spec of router ``name`` with its hyperparameters for a fast fit on a tiny table."""
    return {"name": name, **QUERY_ROUTERS[name].quick_params}


def toy(n=60, seed=0):
    """Math questions suit model 'math', geography 'geo'; 'big' is good at both, dear."""
    rng = np.random.default_rng(seed)
    queries, quality = [], []
    for i in range(n):
        if i % 2:
            queries.append(f"add {rng.integers(100)} and {rng.integers(100)} sum number")
            quality.append([1, 0, 1])
        else:
            queries.append(f"capital city of country {rng.integers(100)} geography")
            quality.append([0, 1, 1])
    cost = [[1.0 + len(q) / 100, 1.0 + len(q) / 100, 10.0] for q in queries]
    return OutcomeTable.from_rows(queries, ["math", "geo", "big"], quality, cost)


@pytest.fixture(scope="module")
def fitted():
    train, test = toy(60, 0), toy(20, 1)
    emb = make_embedder({"name": "tfidf_svd", "dim": 16}).fit(train.queries)
    return train, test, {n: make_query_router(quick(n)).fit(train, emb) for n in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_predict_shape_and_roundtrip(fitted, name, tmp_path):
    _, test, routers = fitted
    r = routers[name]
    pred = r.predict(test.queries)
    assert pred.shape == (test.num_queries, 3) and torch.isfinite(pred).all()
    r.lam = 0.25
    r.save(tmp_path / name)
    r2 = load_router(tmp_path / name)
    assert r2.to_dict() == r.to_dict() and r2.models == r.models and r2.lam == 0.25
    assert torch.equal(r2.predict(test.queries), pred)
    assert r2.route(test.queries) == r.route(test.queries)
    assert r2.sweep(test) == r.sweep(test)
    assert set(r.route(test.queries)) <= set(test.models)


@pytest.mark.parametrize("name", [n for n in NAMES if QUERY_ROUTERS[n].uses_embedding])
def test_routers_reading_the_query_learn_the_toy_task(fitted, name):
    _, test, routers = fitted
    pred = routers[name].predict(test.queries)
    right = torch.tensor([0 if "add" in q else 1 for q in test.queries])
    # Among the two cheap models, the right specialist is preferred.
    assert (pred[:, :2].argmax(1) == right).float().mean() >= 0.9


def test_oracle_beats_everyone_and_random_is_below(fitted):
    train, test, _ = fitted
    r = evaluate([quick(n) for n in NAMES], train, test)
    by = {x["router"]: x["aiq"] for x in r["routers"]}
    assert max(by.values()) == pytest.approx(r["baselines"]["oracle"]["aiq"])
    assert by["knn"] > r["baselines"]["zero_router"]["aiq"]
    for x in r["routers"]:
        assert x["points"] and all(set(p) == {"lambda", "cost", "quality"} for p in x["points"])


def test_cascade_chain_and_cost():
    train = toy(40)
    c = make_query_router("cascade").fit(train)
    assert c.chain[-1] == "big" and len(c.chain) >= 2
    pred = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    cost = torch.tensor([[1.0, 10.0], [1.0, 10.0]])
    stop, paid = run_cascade(pred, cost, [0, 1], 0.5)
    assert stop.tolist() == [0, 1] and paid.tolist() == [1.0, 11.0]


def test_cascade_scorer_is_any_query_router_spec():
    train = toy(40)
    c = make_query_router({"name": "cascade", "scorer": "knn:k=3"}).fit(train)
    assert c.base is not None and c.base.to_dict() == {"name": "knn", "seed": 0, "k": 3}


def test_unfitted_router_cannot_be_saved(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a fitted query router"):
        load_router(tmp_path / "nonexistent")
    with pytest.raises(RuntimeError, match="not fitted"):
        make_query_router("knn").save(tmp_path / "r")


matrices = st.integers(1, 6).flatmap(
    lambda q: st.integers(1, 5).flatmap(
        lambda m: st.tuples(
            st.lists(st.floats(0, 1), min_size=q * m, max_size=q * m),
            st.lists(st.floats(0.01, 10), min_size=q * m, max_size=q * m),
            st.just((q, m)),
        )
    )
)


@settings(max_examples=60, deadline=None)
@given(matrices, st.floats(0, 100))
def test_decide_properties(data, lam):
    p, c, shape = data
    pred, cost = torch.tensor(p).reshape(shape), torch.tensor(c).reshape(shape)
    pick = decide(pred, cost, lam)
    assert pick.shape == (shape[0],) and ((pick >= 0) & (pick < shape[1])).all()
    rows = torch.arange(shape[0])
    # λ = 0: a predicted-best model (up to decide's 1e-12 tie tolerance, within which the
    # cheaper model wins); λ = ∞: a cheapest model.
    gap = pred.max(1).values.double() - pred[rows, decide(pred, cost, 0.0)].double()
    assert (gap <= 1e-12).all()
    assert torch.equal(cost[rows, decide(pred, cost, float("inf"))], cost.min(1).values)
    # A larger λ never spends more.
    spent = cost[rows, pick].sum()
    assert cost[rows, decide(pred, cost, lam * 2 + 1)].sum() <= spent + 1e-9


def test_calibration():
    pred = torch.tensor([[0.5, 0.9], [0.5, 0.6], [0.5, 0.95], [0.5, 0.7]])
    cost = torch.tensor([[1.0, 3.0]] * 4)
    cal = calibrate_to_share(pred, cost, model=1, share=0.5)
    assert (decide(pred, cost, cal.lam) == 1).float().mean() <= 0.5
    assert (decide(pred, cost, cal.lam) == 1).sum() == 2  # the two clearest cases
    assert cal.met and cal.reached == 0.5 and (cal.lowest, cal.highest) == (0.0, 1.0)
    cal = calibrate_to_budget(pred, cost, budget=1.5)
    rows = torch.arange(4)
    assert cost[rows, decide(pred, cost, cal.lam)].mean() <= 1.5
    assert cal.met and cal.reached <= 1.5
    cal = calibrate_to_budget(pred, cost, budget=0.5)
    assert cal.lam == float("inf") and not cal.met and cal.reached == cal.lowest == 1.0
    assert cal.to_dict()["lambda"] is None  # JSON-safe


def test_a_share_no_lambda_reaches_is_not_met():
    # Model 1 is predicted best on half the queries only: at most half can go there.
    pred = torch.tensor([[0.9, 0.5], [0.5, 0.9], [0.9, 0.5], [0.5, 0.9]])
    cost = torch.tensor([[1.0, 3.0]] * 4)
    cal = calibrate_to_share(pred, cost, model=1, share=0.8)
    assert not cal.met and cal.lam == 0.0 and cal.reached == cal.highest == 0.5
    # Model 0 is the cheapest: λ = ∞ sends every query there, never fewer than half.
    cal = calibrate_to_share(pred, cost, model=0, share=0.2)
    assert not cal.met and cal.lam == float("inf") and cal.lowest == 0.5
    for share in (-0.5, 1.5, float("nan")):
        with pytest.raises(ValueError, match="between 0 and 1"):
            calibrate_to_share(pred, cost, model=1, share=share)


def test_evaluate_reports_each_stage_and_each_router():
    train, test = toy(30, 0), toy(10, 1)
    stages, scored = [], []
    r = evaluate(["best_single", {"name": "knn", "k": 3}], train, test,
                 on_step=stages.append, on_router=scored.append)  # fmt: skip
    assert scored == r["routers"]  # each router's result, as it is scored
    assert stages[-4:] == ["fitting best_single", "scoring best_single", "fitting knn",
                           "scoring knn"]  # fmt: skip
    assert any(s.startswith("embedding") for s in stages)
