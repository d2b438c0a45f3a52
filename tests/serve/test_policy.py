"""RoutingPolicy and stop strings as pure logic, with a real fitted router (no HTTP)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dynroute.llm.routers import make_query_router
from dynroute.serve.backends import (
    Backend,
    load_backend_file,
    map_to_router,
    parse_backend_args,
)
from dynroute.serve.errors import ApiError
from dynroute.serve.policy import RoutingPolicy, parse_model_field
from dynroute.serve.stops import visible_text
from serve_helpers import BIG, SMALL, toy_table

POEM, SUM = "write a poem about fire and love", "what is 7 plus 2"


@pytest.fixture(scope="module")
def router():
    r = make_query_router("knn:k=3").fit(toy_table())
    r.lam = 20.0
    return r


def backends(prices: bool = False) -> list[Backend]:
    out = parse_backend_args([f"{SMALL}=http://127.0.0.1:1", f"{BIG}=http://127.0.0.1:2"], {})
    if prices:
        out[0].prompt_price, out[0].completion_price = 1.0, 2.0
        out[1].prompt_price, out[1].completion_price = 10.0, 30.0
    map_to_router(out, [SMALL, BIG])
    return out


def test_lambda_mode_orders_by_utility_and_failed_backends_go_last(router):
    policy = RoutingPolicy(router, backends())
    d = policy.decide("auto", POEM, None)
    assert [b.name for b in d.order] == [BIG, SMALL] and d.knob == 20.0
    for _ in range(3):  # the breaker's threshold: 3 consecutive faults open it
        policy.mark_down(policy.by_name[BIG])
    assert [b.name for b in policy.decide("auto", POEM, None).order] == [SMALL, BIG]
    policy.mark_up(policy.by_name[BIG])
    assert policy.decide("router-knn-inf", POEM, None).order[0].name == SMALL


def test_cascade_takes_the_cheapest_good_enough_then_escalates(router):
    policy = RoutingPolicy(router, backends(), cascade=True, threshold=0.5)
    assert [b.name for b in policy.decide("auto", SUM, None).order] == [SMALL, BIG]
    assert [b.name for b in policy.decide("auto", POEM, None).order] == [BIG, SMALL]
    # threshold 0 from the model field: the cheapest always qualifies
    assert policy.decide("router-knn-0", POEM, None).order[0].name == SMALL


@given(
    st.lists(st.sampled_from([POEM, SUM, "a poem about snow", "what is 1 plus 1"]), max_size=30),
    st.floats(0.0002, 0.02),
    st.lists(st.floats(0.0, 2.0), min_size=30, max_size=30),
)
def test_budget_keeps_the_mean_cost_under_the_limit(router, queries, budget, scale):
    """With realised costs at most the estimates, the mean cost stays within the budget
    whenever the cheapest model fits it."""
    policy = RoutingPolicy(router, backends(prices=True), budget=budget)
    spent, cheapest_fits = 0.0, True
    for q, s in zip(queries, scale, strict=False):
        d = policy.decide("auto", q, 16)
        est = d.estimated[d.order[0].name]
        cheapest_fits &= min(d.estimated.values()) <= budget
        policy.settle(d, est * min(s, 1.0))  # realised ≤ estimate: the estimate is an upper bound
        spent += est * min(s, 1.0)
    if queries and cheapest_fits:
        assert spent / len(queries) <= budget * (1 + 1e-9)
    assert policy.spent == pytest.approx(spent)


def test_direct_and_unknown_models(router):
    policy = RoutingPolicy(router, backends())
    d = policy.decide(SMALL, POEM, None)
    assert d.mode == "direct" and [b.name for b in d.order] == [SMALL]
    with pytest.raises(ApiError, match="router-knn"):
        policy.decide("router-mf-1", POEM, None)
    assert parse_model_field("router-sw_ranking-1e-3") == ("sw_ranking", 1e-3)
    assert parse_model_field("router-knn-x") is None
    assert parse_model_field("router-knn-inf") == ("knn", float("inf"))
    with pytest.raises(ApiError, match="too large") as refused:
        policy.decide("router-knn-1e999", POEM, None)  # was λ = inf, Infinity in the log
    assert refused.value.status == 400 and refused.value.param == "model"


def test_cost_never_overflows():
    small = backends(prices=True)[0]
    assert small.cost(1000, 500) == pytest.approx(0.002)
    assert small.cost(10**400, 1) is None and small.cost(1e308, 1e308) is None
    assert small.cost(None, 1) is None  # type: ignore[arg-type]  # a backend's odd usage


def test_backend_errors_name_what_to_do(tmp_path):
    with pytest.raises(ValueError, match=r"router's models \['a', 'b'\]"):
        map_to_router(backends(), ["a", "b"])
    with pytest.raises(ValueError, match="NAME=URL"):
        parse_backend_args(["small:8001"], {})
    bad = tmp_path / "prices.toml"
    bad.write_text("[backends.small]\nprompt_price = -1\n")
    with pytest.raises(ValueError, match=r"prices.toml: backends.small.prompt_price"):
        load_backend_file(bad)
    bad.write_text("[backends.small]\nprice = 1\n")
    with pytest.raises(ValueError, match="unknown key"):
        load_backend_file(bad)
    good = tmp_path / "prices.json"
    good.write_text(
        '{"backends": {"cheap": {"router_model": "small", '
        '"prompt_price": 1, "completion_price": 2}}}'
    )
    b = parse_backend_args(["cheap=http://127.0.0.1:9/v1"], load_backend_file(good))
    map_to_router(b, [SMALL, BIG])
    assert b[0].router_model == SMALL and b[0].cost(1e6, 1e6) == 3.0


@given(
    st.text("ab\ufffd", max_size=12), st.lists(st.text("ab", min_size=1, max_size=3), max_size=3)
)
def test_streamed_text_adds_up_to_the_final_text(text, stops):
    """As the engine does: show the visible part of each longer prefix until a stop string
    appears (generation ends there). Every piece shown is a prefix of the final text,
    which holds no stop string."""
    shown, final = "", None
    for n in range(1, len(text) + 1):
        part, stopped = visible_text(text[:n], stops, final=False)
        assert part.startswith(shown)  # nothing shown is ever taken back
        shown = part
        if stopped:
            final = part
            break
    if final is None:
        final, _ = visible_text(text, stops, final=True)
    assert final.startswith(shown)
    assert not any(s in final for s in stops)
