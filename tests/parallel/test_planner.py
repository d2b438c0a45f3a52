"""The cost model, the profile file and the FSMoE schedule simulator / layout search."""

from __future__ import annotations

import dataclasses
import json
import math
import random
import time
from pathlib import Path

import pytest
import torch

from dynroute.parallel.costmodel import LinearFit, Profile, fit
from dynroute.parallel.planner import (
    TASKS,
    Cluster,
    Layout,
    ModelShape,
    Task,
    backward_block,
    choose_chunks,
    exchange,
    forward_block,
    layouts,
    memory_gb,
    paper_comparison,
    run_schedule,
    search,
    simulate,
)
from dynroute.parallel.profile import (
    MAX_CALLS,
    task_seconds,
    time_dense,
    time_gemm,
    time_row_tasks,
    trimmed_mean,
)

SHAPE = ModelShape(layers=4, d_model=1024, d_ff=4096, experts=16, k=2.0, seq=1024, batch=4)
ONE_NODE = Cluster(nodes=1, gpus_per_node=8, intra_gbps=50.0)
TWO_NODES = Cluster(nodes=2, gpus_per_node=8, intra_gbps=50.0, inter_gbps=5.0)


# ------------------------------------------------------------------------- fits


def test_fit_recovers_alpha_and_beta() -> None:
    sizes = [2.0**i for i in range(10, 22)]
    line = fit(sizes, [3e-5 + 2e-10 * n for n in sizes])
    assert line.alpha_s == pytest.approx(3e-5, rel=1e-9)
    assert line.beta_s_per_unit == pytest.approx(2e-10, rel=1e-9)
    rng = random.Random(0)
    noisy = fit(sizes, [(3e-5 + 2e-10 * n) * (1 + rng.uniform(-0.02, 0.02)) for n in sizes])
    assert noisy.beta_s_per_unit == pytest.approx(2e-10, rel=0.05)
    assert noisy.time(1e6) == pytest.approx(3e-5 + 2e-4, rel=0.05)


def test_fit_weighs_relative_error() -> None:
    # the biggest point 20% low: ordinary least squares misses the smallest by 7.6%;
    # weighted by 1/t², both ends stay within a few per cent
    sizes = [1e3, 1e4, 1e5, 1e6]
    times = [1e-4 + 1e-9 * n for n in sizes]
    times[-1] *= 0.8
    line = fit(sizes, times)
    assert line.time(1e3) == pytest.approx(times[0], rel=0.04)
    assert line.time(1e6) == pytest.approx(times[-1], rel=0.05)


def test_fit_never_returns_negative_terms() -> None:
    through_origin = fit([1, 2, 3], [0.5, 1.9, 3.1])  # intercept < 0 by least squares
    assert through_origin.alpha_s == 0 and through_origin.beta_s_per_unit > 0
    flat = fit([1, 2, 3], [3.0, 2.0, 1.0])  # slope < 0: a constant
    assert flat.beta_s_per_unit == 0 and 1.0 < flat.alpha_s < 2.0  # weighted to the small
    assert fit([5], [1.0]) == LinearFit(1.0, 0.0)
    with pytest.raises(ValueError, match="as many sizes as times"):
        fit([1, 2], [1.0])


def _profile() -> Profile:
    fits = {"all_to_all": LinearFit(1e-4, 2e-9), "all_reduce": LinearFit(2e-4, 3e-9)}
    return Profile(
        "test-host (cpu)", 4, 2, "gloo",
        {"flat": fits, "intra": fits, "inter": {"all_to_all": LinearFit(5e-4, 8e-9)}},
        LinearFit(1e-5, 1e-10),
        {"gate": LinearFit(1e-6, 1e-11), "order": LinearFit(1e-6, 1e-10),
         "inverse_order": LinearFit(2e-6, 2e-10)},
        points={"gemm": [[1.0, 2.0, 3.0]]}, gemm_backward=LinearFit(2e-5, 2e-10),
        dense=LinearFit(3e-6, 5e-11), dense_backward=LinearFit(4e-6, 9e-11),
    )  # fmt: skip


def test_profile_json_round_trip(tmp_path: Path) -> None:
    profile = _profile()
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile
    assert json.loads((tmp_path / "p.json").read_text())["version"] == 1


def test_profile_load_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json: no such profile file"):
        Profile.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json: not a JSON profile"):
        Profile.load(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text('{"version": 1, "machine": "x"}')
    with pytest.raises(ValueError, match=r"other\.json: broken profile"):
        Profile.load(tmp_path / "other.json")
    (tmp_path / "old.json").write_text("[]")
    with pytest.raises(ValueError, match=r"old\.json: not a dynroute profile"):
        Profile.load(tmp_path / "old.json")


def test_a_profiled_cluster_reproduces_the_fits_at_the_measured_size() -> None:
    profile = _profile()
    cluster = Cluster.from_profile(profile)
    assert (cluster.nodes, cluster.gpus_per_node) == (2, 2)
    for n in (1e3, 1e6):
        intra = cluster.link("all_to_all", "intra").time("all_to_all", n, 2)
        assert intra == pytest.approx(profile.collective("all_to_all", "intra").time(n))
        inter = cluster.link("all_to_all", "inter").time("all_to_all", n, 2)
        assert inter == pytest.approx(profile.collective("all_to_all", "inter").time(n))
        assert cluster.gemm_time(n) == profile.gemm.time(n)
        assert cluster.gemm_backward_time(n) == LinearFit(2e-5, 2e-10).time(n)
        assert cluster.dense_time(n) == LinearFit(3e-6, 5e-11).time(n)  # plain GEMMs
        assert cluster.dense_backward_time(n) == LinearFit(4e-6, 9e-11).time(n)
    assert Cluster(1, 2).gemm_backward_time(1e12) == 2 * Cluster(1, 2).gemm_time(1e12)
    without = dataclasses.replace(cluster, dense=None, dense_backward=None)
    assert without.dense_time(1e6) == cluster.gemm_time(1e6)  # no dense fit: the experts'
    assert without.dense_backward_time(1e6) == cluster.gemm_backward_time(1e6)
    bigger = Cluster.from_profile(profile, nodes=4, gpus_per_node=8)
    assert bigger.world == 32 and bigger.measured == cluster.measured


def test_a_measured_hierarchical_exchange_replaces_its_stages_for_its_span(
    tmp_path: Path,
) -> None:
    """Measured whole, the exchange includes the stages' waits for each other; the sum of
    the stages stands only for spans the profile did not measure."""
    whole = LinearFit(5e-3, 4e-9)
    profile = dataclasses.replace(_profile(), hierarchical_exchange=whole)
    profile.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == profile
    cluster = Cluster.from_profile(profile)
    assert cluster.hierarchical_exchange == (2, 2, whole)
    one = exchange(cluster, Layout(4, 1, 1, True), 1e6)
    assert [(name, seconds) for name, seconds, _ in one.stages] == [("", whole.time(1e6))]
    staged = exchange(Cluster.from_profile(_profile()), Layout(4, 1, 1, True), 1e6)
    assert [name for name, _, _ in staged.stages] == [
        "counts", "inter", "reorder", "intra", "reorder"
    ]  # fmt: skip
    bigger = Cluster.from_profile(profile, nodes=4, gpus_per_node=2)  # 4 nodes: not measured
    assert len(exchange(bigger, Layout(8, 1, 1, True), 1e6).stages) == 5
    flat = exchange(cluster, Layout(4, 1, 1, False), 1e6)
    assert flat == exchange(Cluster.from_profile(_profile()), Layout(4, 1, 1, False), 1e6)


def test_in_process_measurements_fit_lines() -> None:
    forward, backward, points = time_gemm([16, 32], 8, 16, 2, repeats=1)
    assert len(points) == 2 and all(len(p) == 3 for p in points)
    assert min(forward.alpha_s, forward.beta_s_per_unit, backward.alpha_s) >= 0
    fits, found = time_row_tasks([16, 32], 8, 4, repeats=1)
    assert set(fits) == {"gate", "order", "inverse_order"} and len(found["order"]) == 2
    forward, backward, points = time_dense([16, 32], 8, repeats=1)
    assert [p[0] for p in points] == [8.0 * 16 * 64, 8.0 * 32 * 64]  # 8·rows·d² FLOPs
    assert min(forward.alpha_s, forward.beta_s_per_unit, backward.alpha_s) >= 0


def test_task_seconds_times_short_tasks_back_to_back_and_reports_one_call() -> None:
    """A 1 ms task in runs of at least 20 ms: about 20 calls a run, one call's time back."""
    calls = []

    def task() -> None:
        calls.append(1)
        time.sleep(0.001)

    seconds = task_seconds(task, repeats=3, device=torch.device("cpu"), min_run_s=0.02)
    per_run = (len(calls) - 1) / 3  # the first call is the warm-up
    assert per_run == int(per_run) and 1 <= per_run <= 20, per_run  # sleep overshoots
    assert 0.001 <= seconds < 0.02 / per_run + 0.002, (seconds, per_run)  # one call's time
    calls.clear()
    task_seconds(lambda: calls.append(1), repeats=2, device=torch.device("cpu"), min_run_s=10)
    assert len(calls) == 1 + 2 * MAX_CALLS  # capped
    calls.clear()
    task_seconds(lambda: calls.append(time.sleep(0.03)), 2, torch.device("cpu"), min_run_s=0.02)
    assert len(calls) == 1 + 2  # already long enough: one call a run


def test_trimmed_mean_drops_the_stalls_at_both_ends() -> None:
    assert trimmed_mean([1.0] * 9 + [50.0], cut=0.1) == 1.0  # one stall in ten: dropped
    assert trimmed_mean([1.0, 3.0], cut=0.1) == 2.0  # too few to trim: the plain mean
    assert trimmed_mean([5.0], cut=0.4) == 5.0


# --------------------------------------------------------------------- schedule


def test_the_list_scheduler_overlaps_resources_and_respects_dependencies() -> None:
    tasks = [
        Task("a", "experts", 1.0, ("compute",)),
        Task("b", "dispatch", 2.0, ("intra",)),
        Task("c", "experts", 1.0, ("compute",), deps=(1,)),
        Task("d", "combine", 1.0, ("intra",), deps=(0, 2)),
    ]
    s = run_schedule(tasks)
    assert s.starts == (0.0, 0.0, 2.0, 3.0) and s.makespan == 4.0
    with pytest.raises(ValueError, match="cycle"):
        run_schedule([Task("x", "gate", 1.0, ("compute",), deps=(0,))])


@pytest.mark.parametrize("cluster", [ONE_NODE, TWO_NODES], ids=["one-node", "two-nodes"])
@pytest.mark.parametrize("hierarchical", [False, True])
def test_one_chunk_is_the_sum_of_the_tasks(cluster: Cluster, hierarchical: bool) -> None:
    layout = Layout(16, cluster.world // 16, 1, hierarchical)
    fwd = forward_block(SHAPE, cluster, layout, 2.0)
    assert fwd.makespan == pytest.approx(sum(t.seconds for t in fwd.tasks))
    bwd = backward_block(SHAPE, cluster, layout, 2.0, allreduce=False)
    assert bwd.makespan == pytest.approx(sum(t.seconds for t in bwd.tasks))
    assert {t.kind for t in fwd.tasks} == {*TASKS, "dense"}


@pytest.mark.parametrize("cluster", [ONE_NODE, TWO_NODES], ids=["one-node", "two-nodes"])
@pytest.mark.parametrize("chunks", [1, 2, 4, 8])
def test_pipelining_is_bounded_by_the_bottleneck_and_by_the_sum(
    cluster: Cluster, chunks: int
) -> None:
    for hierarchical in (False, True):
        layout = Layout(16, cluster.world // 16, chunks, hierarchical, partitioned=True)
        for block in (forward_block(SHAPE, cluster, layout, 2.0),
                      backward_block(SHAPE, cluster, layout, 2.0)):  # fmt: skip
            busiest = max(block.resource_busy(r) for r in ("compute", "intra", "inter"))
            assert busiest <= block.makespan + 1e-12
            assert block.makespan <= sum(t.seconds for t in block.tasks) + 1e-12
            for i, task in enumerate(block.tasks):  # every input is done before a task starts
                assert all(block.ends[d] <= block.starts[i] + 1e-12 for d in task.deps)


def test_without_overlap_every_block_is_the_sum_of_its_tasks() -> None:
    shared = dataclasses.replace(TWO_NODES, overlap=False)
    for layout in (Layout(16, 1, 4, True, True), Layout(8, 2, 8, False, False)):
        for block in (forward_block(SHAPE, shared, layout, 2.0),
                      backward_block(SHAPE, shared, layout, 2.0)):  # fmt: skip
            assert block.makespan == pytest.approx(sum(t.seconds for t in block.tasks))
    assert not Cluster.from_profile(_profile()).overlap  # gloo: ranks share the cores
    assert Cluster.from_profile(_profile(), overlap=True).overlap


def test_chunks_hide_communication_when_compute_and_exchange_are_comparable() -> None:
    times = [simulate(SHAPE, TWO_NODES, Layout(16, 1, r)).step_time_s for r in (1, 2, 4)]
    assert times[1] < times[0] and times[2] < times[0]
    # nothing to hide without an exchange: chunks only add per-chunk overheads
    solo = Cluster(nodes=1, gpus_per_node=1)
    assert (
        simulate(SHAPE, solo, Layout(1, 1, 4)).step_time_s
        >= simulate(SHAPE, solo, Layout(1, 1, 1)).step_time_s
    )


def test_faster_hardware_is_never_slower_and_bigger_models_take_longer() -> None:
    layout = Layout(16, 1, 4, True, True)
    base = simulate(SHAPE, TWO_NODES, layout).step_time_s
    for change in ({"inter_gbps": 10.0}, {"intra_gbps": 100.0}, {"tflops": 200.0},
                   {"inter_latency_us": 1.0}):  # fmt: skip
        faster = dataclasses.replace(TWO_NODES, **change)
        assert simulate(SHAPE, faster, layout).step_time_s <= base + 1e-12, change
    deeper = dataclasses.replace(SHAPE, layers=8)
    assert simulate(deeper, TWO_NODES, layout).step_time_s > base
    more_k = dataclasses.replace(SHAPE, k=4.0)
    assert simulate(more_k, TWO_NODES, layout).step_time_s > base


def test_hierarchical_changes_only_the_exchange() -> None:
    flat = simulate(SHAPE, TWO_NODES, Layout(16, 1, 1, False))
    hier = simulate(SHAPE, TWO_NODES, Layout(16, 1, 1, True))
    exchange = {"dispatch_s", "combine_s", "forward_s", "backward_s"}
    for key, value in flat.breakdown.items():
        if key not in exchange:
            assert hier.breakdown[key] == pytest.approx(value), key
    assert hier.breakdown["dispatch_s"] != pytest.approx(flat.breakdown["dispatch_s"])
    assert hier.memory_gb == flat.memory_gb
    within = simulate(SHAPE, ONE_NODE, Layout(8, 1, 2, True))  # one node: nothing to split
    assert within == dataclasses.replace(simulate(SHAPE, ONE_NODE, Layout(8, 1, 2, False)),
                                         layout=Layout(8, 1, 2, True))  # fmt: skip


def test_partitioning_fills_gaps_ddp_buckets_block_the_exchange() -> None:
    shape = dataclasses.replace(SHAPE, dense_params_per_layer=64 * 2**20)  # a big all-reduce
    ddp = simulate(shape, TWO_NODES, Layout(8, 2, 4, True, False))
    parts = simulate(shape, TWO_NODES, Layout(8, 2, 4, True, True))
    assert parts.step_time_s < ddp.step_time_s
    assert ddp.breakdown["forward_s"] == parts.breakdown["forward_s"]


def test_memory() -> None:
    tiny = ModelShape(1, 8, 16, 4, k=1, seq=4, batch=1)
    params = 4 * 64 + 8 * 4 + 3 * 8 * 16  # dense, gate, the one local expert
    acts = 4 * 8 * 16 + 4 * (2 * 8 + 3 * 16) * 2 + 4 * 4 * 4
    assert memory_gb(tiny, Layout(4, 1)) == pytest.approx((params * 16 + acts) / 1e9)
    sharded = [memory_gb(SHAPE, Layout(ep, 16 // ep)) for ep in (1, 2, 4, 8, 16)]
    assert sharded == sorted(sharded, reverse=True)
    assert simulate(SHAPE, TWO_NODES, Layout(16, 1, 8)).memory_gb == memory_gb(SHAPE, Layout(16, 1))


def test_search_returns_the_fastest_layout_that_fits() -> None:
    limit = memory_gb(SHAPE, Layout(4, 4)) + 1e-9  # ep >= 4 fits
    cluster = dataclasses.replace(TWO_NODES, memory_gb=limit)
    best = search(SHAPE, cluster)
    assert memory_gb(SHAPE, best) <= limit and best.ep >= 4
    fitting = [o for o in layouts(SHAPE, cluster) if memory_gb(SHAPE, o) <= limit]
    fastest = min(simulate(SHAPE, cluster, o).step_time_s for o in fitting)
    assert simulate(SHAPE, cluster, best).step_time_s == fastest
    with pytest.raises(ValueError, match=r"no layout fits 0.001 GB per GPU \(--memory-gb\)"):
        search(SHAPE, dataclasses.replace(TWO_NODES, memory_gb=0.001))


def test_choose_chunks_per_layer() -> None:
    shape = dataclasses.replace(SHAPE, k_per_layer=(1.0, 2.0, 2.0, 8.0))
    chosen = choose_chunks(shape, TWO_NODES, Layout(16, 1, hierarchical=True))
    assert len(chosen) == 4 and chosen[1] == chosen[2] and set(chosen) <= {1, 2, 4, 8}
    layout = Layout(16, 1, hierarchical=True)
    for layer, r in enumerate(chosen):
        k = shape.layer_k(layer)
        best = min(
            forward_block(shape, TWO_NODES, dataclasses.replace(layout, chunks=c), k).makespan
            + backward_block(shape, TWO_NODES, dataclasses.replace(layout, chunks=c), k).makespan
            for c in (1, 2, 4, 8)
        )
        trial = dataclasses.replace(layout, chunks=r)
        assert math.isclose(
            forward_block(shape, TWO_NODES, trial, k).makespan
            + backward_block(shape, TWO_NODES, trial, k).makespan,
            best,
        )


@pytest.mark.parametrize(
    ("layout", "needle"),
    [
        (Layout(4, 2), r"--ep 4 × --dp 2 must equal the GPUs, 2 nodes × 8 = 16"),
        (Layout(3, 5), "must equal the GPUs"),
        (Layout(16, 1, 0), r"chunks \(--chunks\) must be > 0"),
    ],
)
def test_a_layout_that_cannot_run_names_the_flag(layout: Layout, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        simulate(SHAPE, TWO_NODES, layout)


def test_bad_shapes_name_the_flag() -> None:
    with pytest.raises(ValueError, match=r"d_model \(--d-model\) must be > 0"):
        ModelShape(2, 0, 16, 4)
    with pytest.raises(ValueError, match=r"k \(--k\) must be <= experts"):
        ModelShape(2, 8, 16, 4, k=5)
    with pytest.raises(ValueError, match="--ep 3 must divide the experts"):
        simulate(ModelShape(2, 8, 16, 4), Cluster(1, 3), Layout(3, 1))
    assert ModelShape(2, 8, 16, 4, experts_per_token=(0.25, 0.25, 0.5)).layer_k(1) == 1.25


def test_paper_comparison_rows() -> None:
    rows = paper_comparison(["gpt2-a", "mixtral-b"])
    assert [r["setting"] for r in rows] == ["gpt2-a", "mixtral-b"]
    for row in rows:
        assert row["predicted_vs_deepspeed"] >= row["predicted_vs_tutel"] >= 1.0
        assert row["agrees"] == (row["paper_low"] <= row["predicted_vs_deepspeed"] <= row[
            "paper_high"])  # fmt: skip


def test_the_paper_table_in_the_docs_is_what_the_planner_predicts() -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "scaling.md").read_text()
    names = {"layer": "layer", "gpt2": "GPT-2", "mixtral": "Mixtral"}
    for row in paper_comparison():
        model, bed = row["setting"].split("-")
        line = (
            f"| {names[model]}, testbed {bed.upper()} | {row['paper_low']:.2f}–"
            f"{row['paper_high']:.2f} | {row['predicted_vs_deepspeed']:.2f} | "
            f"{row['predicted_vs_tutel']:.2f} |"
        )
        assert line in doc, line
