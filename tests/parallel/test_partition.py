"""Gradient partitioning: the planner's invariants, and the partitioned all-reduce = DDP."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from dynroute.layers import MoE
from dynroute.parallel import local_group, shard_model_experts
from dynroute.parallel.partition import (
    PartitionedDataParallel,
    allreduce_seconds,
    bucket_partitions,
    dense_parameters,
    plan_partitions,
    wrap_partitioned,
)
from dynroute.parallel.spawn import run_ranks

sys.path.insert(0, str(Path(__file__).parent))  # so spawned ranks can import the workers
import partition_workers

TOL = 1e-6

sizes = st.lists(st.integers(0, 20_000), max_size=30)
gaps = st.lists(st.floats(0.0, 2e-3, allow_nan=False), max_size=8)
alphas = st.floats(0.0, 5e-4, allow_nan=False)
betas = st.floats(0.0, 1e-7, allow_nan=False)
buckets = st.integers(1, 40_000)


@given(sizes, gaps, alphas, betas, buckets)
def test_plan_covers_every_parameter_once_in_backward_order(sizes, gaps, alpha, beta, bucket):
    plan = plan_partitions(sizes, gaps, (alpha, beta), bucket)
    assert [i for p in plan for i in p.params] == list(range(len(sizes)))
    assert all(p.params for p in plan)
    assert all(p.nbytes == sum(sizes[i] for i in p.params) for p in plan)


@given(sizes, gaps, alphas, betas, buckets)
def test_each_partition_fits_its_gap_unless_one_parameter_is_bigger(
    sizes, gaps, alpha, beta, bucket
):
    seconds = allreduce_seconds((alpha, beta))
    plan = plan_partitions(sizes, gaps, (alpha, beta), bucket)
    filled = [p for p in plan if p.gap is not None]
    assert plan[: len(filled)] == filled  # the gaps' partitions first, then the buckets
    assert [p.gap for p in filled] == sorted({p.gap for p in filled})  # one per gap, in order
    for p in filled:
        assert p.seconds == seconds(p.nbytes)
        if p.seconds > gaps[p.gap]:  # an overflow: one parameter, in a gap longer than alpha
            assert len(p.params) == 1 and gaps[p.gap] > alpha
        elif p.params[-1] + 1 < len(sizes):  # greedy: the next parameter would not fit
            assert seconds(p.nbytes + sizes[p.params[-1] + 1]) > gaps[p.gap]
    for p in plan[len(filled) :]:
        assert p.nbytes <= bucket or len(p.params) == 1


@given(sizes, buckets)
def test_without_gaps_the_plan_is_fixed_size_buckets(sizes, bucket):
    assert plan_partitions(sizes, bucket_bytes=bucket) == bucket_partitions(sizes, bucket)
    costed = plan_partitions(sizes, [], (1e-4, 1e-9), bucket_bytes=bucket)
    assert [p.params for p in costed] == [p.params for p in bucket_partitions(sizes, bucket)]
    assert all(p.gap is None and p.seconds == 1e-4 + 1e-9 * p.nbytes for p in costed)


class FittedCost:
    def time(self, nbytes: int) -> float:
        return 1e-4 + 2e-9 * nbytes


@given(sizes, gaps)
def test_a_cost_fit_can_be_a_pair_an_object_with_time_or_a_callable(sizes, gaps):
    plans = [
        plan_partitions(sizes, gaps, fit)
        for fit in ((1e-4, 2e-9), FittedCost(), lambda n: 1e-4 + 2e-9 * n)
    ]
    assert [p.params for p in plans[0]] == [p.params for p in plans[1]]
    assert [p.params for p in plans[0]] == [p.params for p in plans[2]]


def test_planner_errors_name_the_remedy():
    with pytest.raises(ValueError, match="without a fit"):
        plan_partitions([4, 4], gaps_s=[1.0])
    with pytest.raises(ValueError, match=">= 0 bytes"):
        plan_partitions([4, -1])
    with pytest.raises(ValueError, match="gaps_s must be finite"):
        plan_partitions([4], gaps_s=[float("nan")], fit=(0.0, 1.0))
    with pytest.raises(TypeError, match=r"\.time\(nbytes\)"):
        allreduce_seconds("fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bucket_bytes"):
        bucket_partitions([4], 0)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return shard_model_experts(nn.Sequential(nn.Linear(8, 8), MoE(8, 16, 2)))


def test_wrapper_rejects_bad_setups_with_the_remedy():
    with local_group():
        with pytest.raises(ValueError, match="shard_model_experts"):
            wrap_partitioned(nn.Linear(4, 4))
        with pytest.raises(ValueError, match="exactly once"):
            PartitionedDataParallel(_net(), [[0], [0, 1]])
        run = wrap_partitioned(_net())
        run(torch.randn(3, 8))[0].sum().backward()
        with pytest.raises(RuntimeError, match="arrived twice"):  # backward without forward
            run.module(torch.randn(3, 8))[0].sum().backward()


def test_no_sync_accumulates_and_the_next_step_reduces_the_sum():
    with local_group():
        net, ref = _net(), _net()
        run = wrap_partitioned(net, [[i] for i in range(len(dense_parameters(net)))])
        xs = [torch.randn(3, 8) for _ in range(2)]
        with run.no_sync():
            run(xs[0])[0].sum().backward()
        assert run.timeline == []  # nothing reduced yet
        run(xs[1])[0].sum().backward()
        for x in xs:
            ref(x)[0].sum().backward()
        assert len(run.timeline) == 3 and all(r["in_backward"] for r in run.timeline)
        for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, atol=TOL), name


@pytest.fixture(scope="module")
def launched() -> list[dict]:
    """One launch of 2 gloo ranks for every multi-process check (a start costs seconds)."""
    return run_ranks(
        partition_workers.compare_with_ddp, 2, timeout_s=120, collective_timeout_s=30, threads=1
    )


@pytest.mark.parametrize("partitioning", partition_workers.PARTITIONINGS)
@pytest.mark.slow  # one 2-process launch (~10-30 s of process starts)
def test_partitioned_gradients_and_weights_equal_ddp(launched, partitioning):
    for rank, result in enumerate(launched):
        got = result[partitioning]
        assert got["grads"] <= TOL, (rank, got)
        assert got["weights"] <= TOL, (rank, got)
        assert got["none_mismatch"] == [], (rank, got)


@pytest.mark.slow  # one 2-process launch (~10-30 s of process starts)
def test_the_comparison_has_teeth(launched):
    for result in launched:
        assert result["no_reduction"]["grads"] > 1e-3  # unreduced gradients do differ
        assert result["ddp_spare_grad_is_none"] == [False, True, False, False]
        assert result["moved"] > 0.1
        assert result["planned_sizes"] == [3, 1, 3, 4]  # gaps, an overflow, then buckets


@pytest.mark.slow  # one 2-process launch (~10-30 s of process starts)
def test_partitions_go_out_during_the_backward_in_order(launched):
    for result in launched:
        early = result["one_per_param"]["timeline"]
        assert all(r["in_backward"] for r in early)
        assert early[0]["issued_s"] < max(r["ready_s"] for r in early)  # before the last grad
        late = result["reversed"]["timeline"]  # partition 0 holds the last gradient to arrive
        assert min(r["issued_s"] for r in late) >= max(r["ready_s"] for r in late)
        assert all(r["done_s"] >= r["issued_s"] for r in early + late)


class MixedPrecision(nn.Module):
    """An MoE with a float64 dense parameter beside float32 ones (two buffers a partition)."""

    def __init__(self) -> None:
        super().__init__()
        self.moe = MoE(8, 16, 2)
        self.scale = nn.Parameter(torch.full((), 2.0, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.moe(x)[0].sum() * self.scale.float()


def test_a_partition_mixing_dtypes_reduces_each_dtype():
    with local_group():
        torch.manual_seed(0)
        net = shard_model_experts(MixedPrecision())
        torch.manual_seed(0)
        ref = MixedPrecision()
        run = wrap_partitioned(net)  # one 25 MiB bucket holding float32 and float64
        x = torch.randn(3, 8)
        run(x).backward()
        ref(x).backward()
        assert len(run.partitions) == 1 and run.timeline[0]["params"] == 2
        assert net.scale.grad.dtype == torch.float64
        for (name, p), q in zip(net.named_parameters(), ref.parameters(), strict=True):
            assert torch.allclose(p.grad, q.grad, atol=TOL), name
