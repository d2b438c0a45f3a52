"""Re-running a command as a torchrun job: how many processes, which flags, which nodes.

A command that trains on several processes (``dynroute train --nproc N`` or
``--expert-parallel N``) checks its flags here, then re-runs itself under torchrun with
:func:`dynroute.parallel.launch` and the argument list :func:`relaunch_argv` builds;
each rank, where :func:`dynroute.parallel.is_launched` is true, runs the work itself.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

__all__ = ["data_parallel_size", "relaunch_argv", "rendezvous"]


def rendezvous(
    nnodes: int | None, node_rank: int | None, master_addr: str | None, master_port: int | None
) -> dict[str, str]:
    """torchrun's multi-node flags from the command's (empty when none was given).

    Example:
        >>> rendezvous(2, 0, "10.0.0.1", 29500)["--master-addr"]
        '10.0.0.1'
        >>> rendezvous(None, None, None, None)
        {}
    """
    given = {
        "--nnodes": nnodes,
        "--node-rank": node_rank,
        "--master-addr": master_addr,
        "--master-port": master_port,
    }
    flags = {k: str(v) for k, v in given.items() if v is not None}
    if flags and (nnodes is None or master_addr is None):
        raise ValueError(
            "multi-node training needs at least --nnodes and --master-addr (and --node-rank "
            "on every machine but the first); see docs/training.md"
        )
    if nnodes is not None and nnodes < 1:
        raise ValueError(f"--nnodes {nnodes}: use an integer >= 1")
    if node_rank is not None and nnodes is not None and not 0 <= node_rank < nnodes:
        raise ValueError(f"--node-rank {node_rank}: use 0..{nnodes - 1} for --nnodes {nnodes}")
    return flags


def data_parallel_size(expert_parallel: int, nproc: int) -> int:
    """Data-parallel processes of the job: ``nproc``, or the job's WORLD_SIZE in a rank.

    Under torchrun (a rank of our launch, or of the user's own torchrun) without expert
    parallelism, every process of the job trains on its own batches. Experts are sharded
    over every process, so ``--expert-parallel`` and ``--nproc`` must agree when both
    are above 1; the job has ``max(expert_parallel, data_parallel_size)`` processes.

    Example:
        >>> data_parallel_size(1, 4)
        4
        >>> data_parallel_size(2, 4)
        Traceback (most recent call last):
        ValueError: --expert-parallel 2 with --nproc 4: experts are sharded over every process, so use the same number (or leave one at 1)
    """  # noqa: E501 (a doctest's expected line)
    from dynroute.parallel.runtime import is_launched

    if expert_parallel > 1 and nproc > 1 and expert_parallel != nproc:
        raise ValueError(
            f"--expert-parallel {expert_parallel} with --nproc {nproc}: experts are "
            "sharded over every process, so use the same number (or leave one at 1)"
        )
    if is_launched() and expert_parallel == 1:
        # (--nproc itself is not passed to the ranks: torchrun's parser would take it for
        # its own --nproc-per-node)
        return int(os.environ["WORLD_SIZE"])
    return nproc


def relaunch_argv(command: list[str], flags: Mapping[str, Any]) -> list[str]:
    """``command`` followed by the given flags, as each torchrun rank runs it.

    ``None`` values are left out (the rank reads the config's), ``True`` / ``False``
    become ``--name`` / ``--no-name``, anything else ``--name value``.

    Example:
        >>> relaunch_argv(["train"], {"steps": 5, "compile": True, "seed": None, "progress": False})
        ['train', '--steps', '5', '--compile', '--no-progress']
    """
    argv = list(command)
    for name, value in flags.items():
        flag = "--" + name.replace("_", "-")
        if value is None:
            continue
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        else:
            argv += [flag, str(value)]
    return argv
