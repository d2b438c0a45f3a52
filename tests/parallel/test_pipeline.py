"""The pipelined expert-parallel schedule: equal to the unpipelined layer and to one process."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from dynroute.layers import MoE
from dynroute.parallel import (
    TASKS,
    ExpertParallelMoE,
    FlatExchange,
    local_group,
    measure_tasks,
    set_ep_schedule,
    shard_experts,
    shard_model_experts,
)
from dynroute.parallel.pipeline import chunk_bounds
from dynroute.parallel.selftest import CASES, build_moe
from dynroute.parallel.spawn import run_ranks

sys.path.insert(0, str(Path(__file__).parent))  # so spawned ranks can import the workers
import itertools

import pipeline_workers

TOL = 1e-5
KEYS = ("output", "x_grad", "gate_grad", "expert_grad")


def _outputs_and_grads(ep: ExpertParallelMoE, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y, aux = ep(x)
    (y.square().sum() + aux.loss).backward()
    return [y.detach(), x.grad, *(p.grad for p in ep.parameters())]


@pytest.mark.parametrize("case", list(CASES))
def test_world_of_one_gives_the_same_results_for_any_chunk_count(case):
    moe = build_moe(case, 16, 24, 4, world=1, seed=0)
    x = torch.randn(11, 16)
    with local_group():
        results = {}
        for chunks in (1, 2, 3):
            ep = shard_experts(copy.deepcopy(moe))
            set_ep_schedule(ep, chunks)
            results[chunks] = _outputs_and_grads(ep, x)
    for chunks in (2, 3):
        for got, want in zip(results[chunks], results[1], strict=True):
            torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_pipelined_layer_runs_without_grad_and_with_an_input_that_needs_none():
    moe = build_moe("top_p", 8, 16, 4, world=1, seed=0)
    x = torch.randn(7, 8)
    with local_group():
        ep = shard_experts(copy.deepcopy(moe))
        set_ep_schedule(ep, 3)
        with torch.no_grad():
            torch.testing.assert_close(ep(x)[0], moe(x)[0], atol=1e-6, rtol=1e-6)
        y, aux = ep(x)  # x needs no gradient: the experts' weights still get theirs
        (y.sum() + aux.loss).backward()
    assert all(p.grad is not None for p in ep.experts.parameters())


def test_pipelined_backward_can_run_twice_on_a_retained_graph():
    torch.manual_seed(0)
    with local_group():
        ep = shard_experts(MoE(8, 16, 4))
        set_ep_schedule(ep, 3)
        x = torch.randn(9, 8, requires_grad=True)
        y, _ = ep(x)
        y.sum().backward(retain_graph=True)
        once = x.grad.clone()
        y.sum().backward()
    torch.testing.assert_close(x.grad, 2 * once)


def test_chunk_bounds_cover_every_token_once():
    for n in (0, 1, 5, 9):
        for r in (1, 2, 4, 7):
            b = chunk_bounds(n, r)
            assert len(b) == r + 1 and b[0] == 0 and b[-1] == n
            assert all(hi - lo in (n // r, n // r + 1) for lo, hi in itertools.pairwise(b))


def test_set_ep_schedule_per_layer_and_clear_errors():
    with local_group():
        net = shard_model_experts(nn.Sequential(MoE(8, 16, 2), nn.Linear(8, 8), MoE(8, 16, 2)))
        assert set_ep_schedule(net, 2) == {"0": 2, "2": 2}
        flat = FlatExchange()
        assert set_ep_schedule(net, {"2": 3}, exchange=flat) == {"0": 2, "2": 3}
        assert net[0].exchange is flat and net[2].exchange is flat
        assert "chunks=3, exchange=flat" in repr(net[2])
        with pytest.raises(ValueError, match=r"integer >= 1.*got 0 for layer '0'"):
            set_ep_schedule(net, 0)
        with pytest.raises(
            ValueError, match=r"\['1'\] are not expert-parallel layers.*\['0', '2'\]"
        ):
            set_ep_schedule(net, {"1": 2})
        with pytest.raises(ValueError, match=r"integer >= 1.*got 1.5"):
            set_ep_schedule(net, {"0": 1.5})  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="must be an Exchange"):
            set_ep_schedule(net, 2, exchange="flat")  # type: ignore[arg-type]
        # the failed calls changed nothing
        assert set_ep_schedule(net, {"0": 2}) == {"0": 2, "2": 3}
    with pytest.raises(ValueError, match=r"no ExpertParallelMoE layer.*shard_model_experts"):
        set_ep_schedule(nn.Linear(2, 2), 2)


def test_measure_tasks_records_one_dict_per_layer_call_and_nothing_outside():
    moe = build_moe("top_k", 8, 16, 4, world=1, seed=0)
    with local_group():
        ep = shard_experts(moe)
        ep(torch.randn(5, 8))  # outside the block: nothing recorded, nothing fails
        with measure_tasks() as outer:
            set_ep_schedule(ep, 1)
            ep(torch.randn(5, 8))
            with measure_tasks() as inner:
                set_ep_schedule(ep, 2)
                ep(torch.randn(5, 8))
    assert len(outer.calls) == 2 and len(inner.calls) == 1
    assert inner.calls[0] == outer.calls[1]
    for call in outer.calls:
        assert list(call) == list(TASKS) and all(v >= 0 for v in call.values())
        assert call["experts"] > 0 and call["gate"] > 0


# ---------------------------------------------------------------------------------------------
# Real processes (gloo over 127.0.0.1): every check of a world size in one launch


def _launch(world: int) -> list[dict]:
    return run_ranks(
        pipeline_workers.schedule_checks, world, timeout_s=240, collective_timeout_s=60, threads=1
    )


def _check_equivalence(results: list[dict]) -> None:
    world = len(results)
    for rank, res in enumerate(results):
        for case in CASES:
            for split in pipeline_workers.TOKEN_SPLITS[world]:
                r = res[f"{case}/{split}"]
                for schedule in pipeline_workers.SCHEDULES:
                    for ref in ("single", "r1"):
                        diffs = r[f"{ref}/{schedule}"]
                        for key in KEYS:
                            assert diffs[key] <= TOL, (case, split, schedule, ref, rank, diffs)


def _check_edge_cases_happened(results: list[dict]) -> None:
    world = len(results)
    received = [res["skewed/uneven"]["received"] for res in results]
    assert received[0] == sum(pipeline_workers.TOKEN_SPLITS[world]["uneven"])  # top-1 to rank 0
    assert received[1:] == [0] * (world - 1)  # ranks that receive no tokens
    assert [res["top_p/empty_rank"]["tokens"] for res in results][1] == 0
    assert max(res["top_k/fewer_than_chunks"]["tokens"] for res in results) < 4


def _check_timing(results: list[dict]) -> None:
    for res in results:
        timing = res["timing"]
        assert timing["tasks"] == list(TASKS)
        for chunks in ("r1", "r2"):
            calls = timing[chunks]
            assert len(calls) == 2  # one dict per layer call
            for call in calls:
                assert list(call) == list(TASKS) and all(v >= 0 for v in call.values())
                assert call["experts"] > 0 and call["dispatch"] > 0


@pytest.fixture(scope="module")
def two_ranks(two_rank_checks) -> list[dict]:
    return [res["pipeline"] for res in two_rank_checks]  # the folder's one 2-process launch


def test_two_ranks_pipelined_equals_unpipelined_and_single_process(two_ranks):
    _check_equivalence(two_ranks)


def test_two_ranks_cover_empty_and_idle_ranks(two_ranks):
    _check_edge_cases_happened(two_ranks)


def test_two_ranks_record_task_times(two_ranks):
    _check_timing(two_ranks)


@pytest.mark.slow
def test_four_ranks_pipelined_equals_unpipelined_and_single_process():
    results = _launch(4)
    _check_equivalence(results)
    _check_edge_cases_happened(results)
    _check_timing(results)
