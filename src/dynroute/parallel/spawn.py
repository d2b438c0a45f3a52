"""Run a function on W local processes joined by gloo over loopback, with a deadline."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from dynroute.common.net import free_port
from dynroute.parallel.runtime import ParallelContext, context_of, timeout_from_env


def _worker(
    rank: int,
    world_size: int,
    port: int,
    out_dir: str,
    fn: Callable[..., Any],
    args: Sequence[Any],
    collective_timeout_s: float,
    threads: int | None,
) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
    )
    if threads is not None:  # the caller's choice for these fresh processes, never a default
        torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timeout_from_env(collective_timeout_s)
    )
    try:
        result = fn(context_of("gloo"), *args)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_ranks(
    fn: Callable[..., Any],
    world_size: int,
    args: Sequence[Any] = (),
    timeout_s: float = 120.0,
    collective_timeout_s: float = 30.0,
    threads: int | None = None,
) -> list[Any]:
    """Call ``fn(ctx, *args)`` on ``world_size`` fresh CPU processes (gloo, 127.0.0.1).

    For tests, benchmarks and debugging on one machine. ``fn`` must be importable
    (a module-level function); its return value travels back with ``torch.save``.
    Every collective fails after ``collective_timeout_s``, and the whole run is
    killed after ``timeout_s``, so a broken exchange ends in an error, not a hang.
    ``threads`` sets torch's thread count in each rank (default: torch's own, which
    counts every core in every rank; W ranks on a small machine want ``threads=1``).

    Returns:
        The per-rank return values, in rank order.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank raised (its traceback).
        TimeoutError: the run passed ``timeout_s``.

    Example::

        >>> def world(ctx):                    # in an importable module
        ...     return ctx.world_size
        >>> run_ranks(world, 2)                # doctest: +SKIP
        [2, 2]
    """
    with tempfile.TemporaryDirectory(prefix="dynroute-ranks-") as out_dir:
        ctx = mp.start_processes(
            _worker,
            args=(world_size, free_port(), out_dir, fn, tuple(args), collective_timeout_s, threads),
            nprocs=world_size,
            join=False,
            start_method="spawn",
        )
        deadline = time.monotonic() + timeout_s
        while not ctx.join(timeout=max(0.05, min(1.0, deadline - time.monotonic()))):
            if time.monotonic() > deadline:
                for proc in ctx.processes:  # only the processes this call started
                    if proc.is_alive():
                        proc.kill()
                        proc.join()
                raise TimeoutError(f"run_ranks: {world_size} ranks did not finish in {timeout_s} s")
        return [
            torch.load(Path(out_dir) / f"rank{r}.pt", weights_only=False) for r in range(world_size)
        ]


__all__ = ["ParallelContext", "run_ranks"]
