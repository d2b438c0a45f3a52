"""Hierarchical all-to-all: first across nodes, then within each node (Tutel's 2-D exchange).

The expert-parallel group of W = nnodes × ranks_per_node processes is laid out node-major:
rank r lives on node ``r // ranks_per_node`` with local index ``r % ranks_per_node``. A
flat all-to-all sends W − 1 messages per rank, W − ranks_per_node of them across nodes;
the hierarchical one sends each rank's rows for a whole node in ONE inter-node message
(to the rank of that node with the same local index), then forwards them inside the node:

1. **inter** (async): rank (n, l) sends to (n', l) every row bound for node n'.
2. a local permutation groups what arrived by destination local rank;
3. **intra**: rank (n, l) sends to (n, l') every row bound for (n, l');
4. a final permutation puts the rows in exactly the flat order (by source rank, then the
   source's own order), so the result equals ``FlatExchange`` bit for bit.

Stage 1 is started asynchronously in ``start`` (so the slow part runs while the caller
computes); ``wait`` finishes it and runs stage 2. Same rows, fewer and larger inter-node
messages; the price is that intra-node links carry most rows twice (``stage_bytes``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

from dynroute.parallel.exchange import AsyncWork, Group, PendingExchange, Ready
from dynroute.parallel.runtime import timeout_from_env


@dataclass(frozen=True)
class Topology:
    """``nnodes`` × ``ranks_per_node`` processes of one expert-parallel group, node-major.

    Attributes:
        nnodes: number of nodes.
        ranks_per_node: processes per node.
        rank: this process's rank in ``group``.
        group: the expert-parallel group (None: the world).
        intra: the group of this rank's node (ranks_per_node processes).
        inter: the group of the ranks with this rank's local index, one per node.

    Example:
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     t = topology(1)
        ...     t.nnodes, t.ranks_per_node, t.node, t.local, t.world_size
        (1, 1, 0, 0, 1)
    """

    nnodes: int
    ranks_per_node: int
    rank: int
    group: Group
    intra: dist.ProcessGroup
    inter: dist.ProcessGroup

    @property
    def world_size(self) -> int:
        return self.nnodes * self.ranks_per_node

    @property
    def node(self) -> int:
        return self.rank // self.ranks_per_node

    @property
    def local(self) -> int:
        return self.rank % self.ranks_per_node


def check_nnodes(nnodes: int, world_size: int) -> int:
    """Ranks per node for ``world_size`` processes on ``nnodes`` nodes, or a ValueError.

    Example:
        >>> check_nnodes(2, 4)
        2
        >>> check_nnodes(3, 4)
        Traceback (most recent call last):
        ...
        ValueError: --nnodes 3 does not divide 4 expert-parallel processes: use one of 1, 2, 4
    """
    divisors = ", ".join(str(d) for d in range(1, world_size + 1) if world_size % d == 0)
    if isinstance(nnodes, bool) or not isinstance(nnodes, int) or nnodes < 1:
        raise ValueError(f"--nnodes must be an integer >= 1, got {nnodes!r}")
    if world_size % nnodes:
        raise ValueError(
            f"--nnodes {nnodes} does not divide {world_size} expert-parallel processes: "
            f"use one of {divisors}"
        )
    return world_size // nnodes


def topology(nnodes: int, group: Group = None, timeout_s: float | None = None) -> Topology:
    """Split ``group`` into ``nnodes`` nodes and build the intra- and inter-node subgroups.

    Every process of the world must call it, with the same arguments, at the same point
    (``torch.distributed.new_group`` is collective): it creates every node's group, then
    every local index's group, in that order. ``group`` must hold all processes of the
    world (None, or a ``new_group()`` of every rank as ``--expert-parallel`` makes).

    Args:
        nnodes: nodes to declare (``--nnodes``); 1 ≤ nnodes, dividing the group size.
        group: the expert-parallel group (default: the world).
        timeout_s: the subgroups' collective timeout (default: $DYNROUTE_DIST_TIMEOUT or 180 s).

    Raises:
        RuntimeError: no process group is initialized.
        ValueError: ``nnodes`` < 1, does not divide the group size, or ``group`` is part
            of the world.
    """
    if not dist.is_initialized():
        raise RuntimeError(
            "topology: torch.distributed is not initialized: call it under torchrun after "
            "dynroute.parallel.init_from_env(), or inside dynroute.parallel.local_group()"
        )
    world = dist.get_world_size(group)
    per_node = check_nnodes(nnodes, world)
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(world))
    if world != dist.get_world_size() or ranks != sorted(ranks):
        raise ValueError(
            f"topology: the expert-parallel group has {world} of {dist.get_world_size()} "
            "processes; a hierarchy needs a group of every process (group=None or "
            "dist.new_group() of all ranks), since every process must create its subgroups"
        )
    timeout = timeout_from_env(timeout_s)
    nodes = [ranks[n * per_node : (n + 1) * per_node] for n in range(nnodes)]
    locals_ = [ranks[lo::per_node] for lo in range(per_node)]
    # new_group is collective over the world: every rank creates every subgroup, same order.
    node_groups = [dist.new_group(members, timeout=timeout) for members in nodes]
    local_groups = [dist.new_group(members, timeout=timeout) for members in locals_]
    rank = dist.get_rank(group)
    return Topology(
        nnodes=nnodes,
        ranks_per_node=per_node,
        rank=rank,
        group=group,
        intra=node_groups[rank // per_node],
        inter=local_groups[rank % per_node],
    )


@dataclass
class StageBytes:
    """Bytes one rank sends to other processes in each stage (its own share excluded).

    Attributes:
        inter: stage 1, to ranks on other nodes.
        intra: stage 2, to other ranks of its node.
    """

    inter: int = 0
    intra: int = 0


def stage_bytes(
    splits: Sequence[Sequence[int]], nnodes: int, row_bytes: int = 1
) -> list[StageBytes]:
    """What each rank of a hierarchical exchange sends, from the whole split matrix.

    For a planner: ``splits[s][d]`` = rows rank s sends to rank d (every rank's
    ``in_splits``), W × W; ``row_bytes`` = bytes per row. A flat exchange sends the same
    inter-node bytes, in ``W − ranks_per_node`` messages per rank instead of ``nnodes − 1``.

    Returns:
        One ``StageBytes`` per rank.

    Example:
        >>> [(b.inter, b.intra) for b in stage_bytes([[1, 2, 3, 4]] * 4, 2)]
        [(7, 4), (7, 2), (3, 8), (3, 6)]
    """
    world = len(splits)
    per_node = check_nnodes(nnodes, world)
    out = []
    for r in range(world):
        n, lo = divmod(r, per_node)
        mine = range(n * per_node, (n + 1) * per_node)
        inter = sum(c for d, c in enumerate(splits[r]) if d not in mine)
        # after stage 1, rank r holds every row from (n'', lo) bound for node n
        held = [splits[m * per_node + lo][d] for m in range(nnodes) for d in mine if d != r]
        out.append(StageBytes(inter * row_bytes, sum(held) * row_bytes))
    return out


def transpose_blocks(rows: Tensor, counts: Sequence[Sequence[int]]) -> Tensor:
    """Reorder rows laid out in blocks (a, b), a-major, to b-major.

    Args:
        rows: [sum of counts, ...].
        counts: A × B block sizes; block (a, b) has ``counts[a][b]`` rows.

    Example:
        >>> transpose_blocks(torch.arange(5), [[1, 1], [1, 2]]).tolist()
        [0, 2, 1, 3, 4]
    """
    if len(counts) <= 1 or len(counts[0]) <= 1:
        return rows  # one block row or column: already in order
    blocks = rows.split([c for row in counts for c in row])
    width = len(counts[0])
    return torch.cat([blocks[a * width + b] for b in range(width) for a in range(len(counts))])


class PendingHierarchical:
    """A hierarchical exchange whose inter-node stage is in flight; ``wait`` does the rest."""

    def __init__(
        self,
        stage1: PendingExchange,
        held: list[list[int]],
        out_splits: list[int],
        topo: Topology,
    ) -> None:
        self.stage1, self.held, self.out_splits, self.topo = stage1, held, out_splits, topo
        self.rows: Tensor | None = None

    def wait(self) -> Tensor:
        """Finish stage 1, forward the rows inside the node, put them in flat order.

        A second call returns the same rows (stage 2 is a collective: it runs once).
        """
        if self.rows is None:
            self.rows = self._finish()
        return self.rows

    def _finish(self) -> Tensor:
        t, held = self.topo, self.held  # held[m][l']: rows from (m, local) bound for (node, l')
        by_local = transpose_blocks(self.stage1.wait(), held)  # now (l', m)-major
        per_node, nnodes = t.ranks_per_node, t.nnodes
        if per_node == 1:
            return by_local
        send = [sum(held[m][lo] for m in range(nnodes)) for lo in range(per_node)]
        # from (node, l'') come the rows of sources (m, l''), m-major at the sender
        arriving = [
            [self.out_splits[m * per_node + lo] for m in range(nnodes)] for lo in range(per_node)
        ]
        out = by_local.new_empty((sum(self.out_splits), *by_local.shape[1:]))
        recv = [sum(row) for row in arriving]
        dist.all_to_all_single(out, by_local, recv, send, group=t.intra)
        return transpose_blocks(out, arriving)  # (l'', m) -> (m, l''): the flat order


class HierarchicalExchange:
    """Inter-node then intra-node all-to-all over a ``Topology``; equals ``FlatExchange``.

    ``sent`` adds up the bytes this rank sent in each stage, ``calls`` counts the exchanges.
    Each ``start`` runs one small synchronous count exchange on the inter-node group (to size
    stage 1's buffer), then returns with stage 1 in flight.

    Example:
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     ex = HierarchicalExchange(topology(1))
        ...     ex.start(torch.arange(3.0), [3], [3]).wait().tolist()
        [0.0, 1.0, 2.0]
    """

    name = "hierarchical"

    def __init__(self, topo: Topology) -> None:
        self.topo, self.group = topo, topo.group
        self.sent = StageBytes()
        self.calls = 0

    def start(
        self, x: Tensor, out_splits: Sequence[int], in_splits: Sequence[int]
    ) -> PendingExchange:
        t = self.topo
        out_splits, in_splits = list(out_splits), list(in_splits)
        if len(out_splits) != t.world_size or len(in_splits) != t.world_size:
            raise ValueError(
                f"HierarchicalExchange: splits of {len(out_splits)} and {len(in_splits)} "
                f"ranks for a group of {t.world_size}: give one count per rank"
            )
        per_node = t.ranks_per_node
        mine = torch.tensor(in_splits, dtype=torch.long, device=x.device).view(t.nnodes, per_node)
        held_t = mine
        if t.nnodes > 1:  # held[m][l'] = rows (m, local) sends to (node, l')
            held_t = torch.empty_like(mine)
            dist.all_to_all_single(held_t, mine, group=t.inter)
        held: list[list[int]] = held_t.tolist()
        self._count(x, in_splits, held)
        x = x.contiguous()
        if t.nnodes == 1:
            return PendingHierarchical(Ready(x), held, out_splits, t)
        rows = x.new_empty((int(held_t.sum()), *x.shape[1:]))
        to_nodes = [sum(row) for row in mine.tolist()]
        work = dist.all_to_all_single(
            rows, x, [sum(row) for row in held], to_nodes, group=t.inter, async_op=True
        )
        return PendingHierarchical(AsyncWork(work, rows), held, out_splits, t)

    def _count(self, x: Tensor, in_splits: list[int], held: list[list[int]]) -> None:
        t = self.topo
        row_bytes = math.prod(x.shape[1:]) * x.element_size()
        node = range(t.node * t.ranks_per_node, (t.node + 1) * t.ranks_per_node)
        inter = sum(c for d, c in enumerate(in_splits) if d not in node)
        intra = sum(sum(row) - row[t.local] for row in held)
        self.sent.inter += inter * row_bytes
        self.sent.intra += intra * row_bytes
        self.calls += 1


__all__ = [
    "HierarchicalExchange",
    "PendingHierarchical",
    "StageBytes",
    "Topology",
    "check_nnodes",
    "stage_bytes",
    "topology",
    "transpose_blocks",
]
