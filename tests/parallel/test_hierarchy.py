"""The hierarchical all-to-all on real gloo processes equals the flat one, row for row."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from dynroute.parallel import local_group
from dynroute.parallel.hierarchy import (
    HierarchicalExchange,
    check_nnodes,
    stage_bytes,
    topology,
    transpose_blocks,
)
from dynroute.parallel.spawn import run_ranks

sys.path.insert(0, str(Path(__file__).parent))  # so spawned ranks can import the workers
import hierarchy_workers as workers

CHECKS = len(workers.split_matrices(2)) * len(workers.ROW_SHAPES)


def launch(world: int) -> list[dict]:
    return run_ranks(workers.all_checks, world, timeout_s=180, collective_timeout_s=30, threads=1)


@pytest.fixture(scope="module")
def two() -> list[dict]:
    return launch(2)


@pytest.fixture(scope="module")
def four() -> list[dict]:
    return launch(4)


def check_layouts(results: list[dict], world: int) -> None:
    layouts = [k for k in results[0] if k.startswith(("world/", "group/"))]
    assert sorted(layouts) == sorted(
        [f"world/{n}" for n in range(1, world + 1) if world % n == 0] + ["group/2"]
    )
    for key in layouts:
        nnodes = int(key.split("/")[1])
        per_node = world // nnodes
        for rank, res in enumerate(results):
            r = res[key]
            assert r["mismatches"] == [], (key, rank, r["mismatches"])
            assert r["checked"] == CHECKS and r["calls"] == 2 * CHECKS
            assert r["node"] == (rank // per_node, rank % per_node)
            assert r["sent"] == r["expected_sent"], (key, rank)
        assert sum(res[key]["rows"] for res in results) > 0  # rows really moved
        if nnodes == 1:  # one node: nothing crosses nodes
            assert all(res[key]["sent"][0] == 0 for res in results)
        if per_node == 1:  # one rank per node: stage 2 forwards nothing
            assert all(res[key]["sent"][1] == 0 for res in results)
        else:
            assert any(res[key]["sent"][1] > 0 for res in results)


def check_timed(results: list[dict]) -> None:
    """The whole exchange timed for the profile: the same times on every rank (the
    slowest's), at the sizes asked for."""
    timed = [res["timed"] for res in results]
    assert all(t == timed[0] for t in timed)
    (small, t_small), (big, t_big) = timed[0]["points"]
    assert (small, big) == (1024.0, 65536.0) and min(t_small, t_big) > 0
    assert timed[0]["fit"]["alpha_s"] >= 0


def check_errors(results: list[dict], world: int) -> None:
    for res in results:
        errs = res["errors"]
        assert "must be an integer >= 1" in errs["0"] and "got -1" in errs["-1"]
        assert "got 2.0" in errs["2.0"]
        assert f"does not divide {world}" in errs[str(world + 1)]
        assert "one count per rank" in errs["splits"]


@pytest.mark.slow  # ~15 s of process starts; the 4-process test covers more
def test_two_processes_one_and_two_nodes(two):
    check_layouts(two, 2)
    check_errors(two, 2)
    check_timed(two)


@pytest.mark.slow
def test_four_processes_2x2_1x4_4x1(four):
    check_layouts(four, 4)
    check_errors(four, 4)
    check_timed(four)


def test_one_process_is_the_identity():
    with local_group():
        ex = HierarchicalExchange(topology(1))
        x = torch.randn(4, 3)
        assert torch.equal(ex.start(x, [4], [4]).wait(), x)
        assert torch.equal(ex.start(x[:0], [0], [0]).wait(), x[:0])
        assert (ex.sent.inter, ex.sent.intra, ex.calls) == (0, 0, 2)


def test_topology_needs_a_process_group():
    with pytest.raises(RuntimeError, match="local_group"):
        topology(1)


def test_check_nnodes():
    assert [check_nnodes(n, 8) for n in (1, 2, 4, 8)] == [8, 4, 2, 1]
    for bad in (0, 3, 16, True):
        with pytest.raises(ValueError, match="--nnodes"):
            check_nnodes(bad, 8)


def test_stage_bytes_counts_rows_once_across_nodes():
    splits = workers.split_matrices(4, trials=3)[0]
    for nnodes in (1, 2, 4):
        per_node = 4 // nnodes
        b = stage_bytes(splits, nnodes, row_bytes=4)
        pairs = [(s, d) for s in range(4) for d in range(4) if s // per_node != d // per_node]
        across = sum(splits[s][d] for s, d in pairs)
        assert sum(x.inter for x in b) == 4 * across  # same inter-node bytes as flat


def test_transpose_blocks_round_trip():
    counts = [[2, 0, 1], [3, 1, 0]]
    rows = torch.arange(7.0).view(7, 1).expand(7, 2)
    there = transpose_blocks(rows, counts)
    back = transpose_blocks(there, [list(col) for col in zip(*counts, strict=True)])
    assert torch.equal(back, rows) and not torch.equal(there, rows)
