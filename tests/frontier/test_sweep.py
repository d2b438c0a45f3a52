"""The sweep table, router settings from the command line, and up-front checks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from dynroute.frontier import (
    FRONTIER_FAMILY,
    SWEEPS,
    TARGETS,
    Point,
    Sweep,
    point_from_text,
    sweep_points,
)
from dynroute.frontier.benchmark import parse_routers
from dynroute.frontier.runs import check_frontier_config
from dynroute.routing import ROUTERS, Router, SweepSpec, make_router, register_router, top_k
from dynroute.train import RunConfig

ALL_POINTS = [p for family in SWEEPS for p in SWEEPS[family].points(family, TARGETS)]

#: run folder names of the sweeps before the table moved into the routers (issue 22): a
#: finished sweep is reused only while its folders keep their names
FOLDERS_BEFORE = [
    "top_k-k1-normalizeFalse",
    "top_k-k2",
    "top_k-k3",
    "top_p-p0.05",
    "top_p-p0.2",
    "top_p-p0.3",
    "top_p-p0.5",
    "top_p-p0.1-normalizeTrue",
    "top_p-p0.3-normalizeTrue",
    "top_p-p0.4-normalizeTrue",
    "top_p-p0.6-normalizeTrue",
    "null_experts-k2-num_null4",
    "null_experts-k3-num_null4",
    "null_experts-k4-num_null4",
    "dtop_p-target1.0",
    "dtop_p-target1.5",
    "dtop_p-target2.0",
    "dtop_p-target3.0",
    "relu-target1.5",
    "relu",
    "relu-target3.0",
    "deepseek_v3-k1",
    "deepseek_v3",
    "deepseek_v3-k3",
    "rmoe-k1",
    "rmoe",
    "rmoe-k3",
    "graph_of_tokens-k1",
    "graph_of_tokens",
    "graph_of_tokens-k3",
    "smoe_dropout-k_end1",
    "smoe_dropout-k_end2",
    "smoe_dropout-k_end3",
    "thor",
]


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
    # (a larger k̄ needs a larger knob for every built-in rule; a threshold runs the other way)
    for family, sweep in SWEEPS.items():
        assert set(sweep.values) <= set(TARGETS), family
        # a knob at its default is left out of the router (one run folder for both spellings)
        knob = [make_router(dict(p.router)).params()[sweep.knob] for p in sweep.points(family)]
        assert knob in (sorted(knob), sorted(knob, reverse=True)), f"{family}: k̄ not monotone"


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


def test_the_table_is_the_routers_declarations() -> None:
    declared = {
        family: (cls.name, spec) for cls in ROUTERS.values() for family, spec in cls.sweeps.items()
    }
    assert set(SWEEPS) == set(declared)
    assert next(iter(SWEEPS)) == FRONTIER_FAMILY
    for family, (router, spec) in declared.items():
        assert SWEEPS[family] == Sweep.declared(router, spec)


def test_folder_names_and_settings_are_unchanged() -> None:
    names = [p.name for p in ALL_POINTS]
    assert set(FOLDERS_BEFORE) <= set(names)
    assert SWEEPS["top_k"].points("top_k")[0].router == {
        "name": "top_k",
        "k": 1,
        "normalize": False,
    }
    assert [p.target for p in SWEEPS["relu"].points("relu")] == [1.5, 2.0, 3.0]
    assert SWEEPS["top_p"].source.startswith("BENCHMARKS.md section 2")


def test_a_family_set_by_hand_adds_to_the_table_and_goes() -> None:
    SWEEPS["expert_choice"] = Sweep("expert_choice", "capacity_factor", {1.0: 1.0, 2.0: 2.0})
    try:
        assert [p.label for p in sweep_points(["expert_choice"])] == [
            "expert_choice()",
            "expert_choice(capacity_factor=2.0)",
        ]
    finally:
        del SWEEPS["expert_choice"]
    assert "expert_choice" not in SWEEPS
    with pytest.raises(KeyError, match="declared by router 'top_p'"):
        del SWEEPS["top_p_normalized"]


def test_two_routers_declaring_one_family_fail_clearly() -> None:
    @register_router("doc_clash_top_k")
    @dataclass(frozen=True)
    class Clash(Router):
        sweeps: ClassVar = {"top_k": SweepSpec("k", {1.0: 1})}
        k: int = 1

        def __call__(self, logits):  # type: ignore[no-untyped-def]
            return top_k(logits, self.k)

    try:
        with pytest.raises(ValueError, match="declared by routers 'top_k' and 'doc_clash_top_k'"):
            list(SWEEPS)
    finally:
        ROUTERS.pop("doc_clash_top_k")
