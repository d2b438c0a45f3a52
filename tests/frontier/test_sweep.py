"""The sweep table, router settings from the command line, and up-front checks."""

from __future__ import annotations

import pytest

from dynroute.frontier import SWEEPS, TARGETS, Point, point_from_text, sweep_points
from dynroute.frontier.benchmark import parse_routers
from dynroute.frontier.runs import check_frontier_config
from dynroute.routing import ROUTERS, make_router
from dynroute.train import RunConfig

ALL_POINTS = [p for family in SWEEPS for p in SWEEPS[family].points(family, TARGETS)]


@pytest.mark.parametrize(
    "point", ALL_POINTS, ids=lambda p: ",".join(f"{k}={v}" for k, v in p.router.items())
)
def test_every_sweep_entry_builds(point: Point) -> None:
    # Fails (never skips) while a router of the table is not registered (dtop_p: routers17).
    make_router(dict(point.router))


def test_sweep_folder_names_are_distinct_and_safe() -> None:
    # (a name needs the router built; unregistered ones fail test_every_sweep_entry_builds)
    names = [p.name for p in ALL_POINTS if p.router["name"] in ROUTERS]
    assert len(set(names)) == len(names)
    assert all(n.replace("-", "").replace("_", "").replace(".", "").isalnum() for n in names)


def test_sweeps_aim_at_the_issue_targets_in_order() -> None:
    for family, sweep in SWEEPS.items():
        assert set(sweep.values) <= set(TARGETS), family
        # a knob at its default is left out of the router (one run folder for both spellings)
        knob = [make_router(dict(p.router)).params()[sweep.knob] for p in sweep.points(family)]
        assert knob == sorted(knob), f"{family}: a larger k̄ needs a larger {sweep.knob}"


def test_families_group_settings_that_differ_only_in_the_knob() -> None:
    assert point_from_text("top_p:p=0.3").family == point_from_text("top_p:p=0.5").family
    assert point_from_text("top_p:p=0.3,normalize=true").family == "top_p(normalize=True)"
    assert point_from_text("top_k:k=1,normalize=false").family == "top_k"  # on the frontier
    assert point_from_text("top_k:k=1,normalize=false").is_frontier
    with pytest.raises(ValueError, match="unknown router 'top_q'"):
        point_from_text("top_q:p=1")


def test_parse_routers_mixes_families_and_settings() -> None:
    points = parse_routers(["top_k,top_p:p=0.4,normalize=true", "null_experts"], [1.5])
    assert [p.label for p in points] == [
        "top_k(k=1, normalize=False)",
        "top_k(k=2)",
        "top_k(k=3)",  # the frontier always spans every top-k setting
        "top_p(p=0.4, normalize=True)",
        "null_experts(k=2, num_null=4)",
    ]
    assert sweep_points(["top_p"], [2.0])[0].router == {"name": "top_p", "p": 0.3}
    with pytest.raises(ValueError, match="no sweep for router 'nope'"):
        parse_routers(["nope"])


def test_checks_before_training() -> None:
    k = [point_from_text(f"top_k:k={k}") for k in (1, 2)]
    check_frontier_config(RunConfig(), k, [0, 1, 2])
    with pytest.raises(ValueError, match="distinct"):
        check_frontier_config(RunConfig(), k, [0, 0])
    with pytest.raises(ValueError, match="top_p"):
        check_frontier_config(RunConfig(), [*k, Point("top_p", {"name": "top_p", "p": 2.0})], [0])
