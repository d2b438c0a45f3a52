"""Process groups: start one from torchrun's environment, a one-process group, or a launch."""

from __future__ import annotations

import atexit
import datetime
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist

from dynroute.common.net import free_port

DEFAULT_TIMEOUT_S = 180.0
"""Collective timeout when neither the caller nor DYNROUTE_DIST_TIMEOUT says otherwise."""

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class ParallelContext:
    """Where this process sits in the job.

    Attributes:
        rank, world_size: in the default (world) group.
        local_rank: index on this machine (selects the GPU under NCCL).
        backend: "gloo" or "nccl".
        device: where this rank's tensors live (cpu, or cuda:local_rank under NCCL).
        group: the expert-parallel group (None = the world).
    """

    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    group: dist.ProcessGroup | None = None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, plots and writes checkpoints."""
        return self.rank == 0


def timeout_from_env(seconds: float | None = None) -> datetime.timedelta:
    """The collective timeout: ``seconds``, else $DYNROUTE_DIST_TIMEOUT, else 180 s.

    Example:
        >>> timeout_from_env(5).total_seconds()
        5.0
    """
    if seconds is None:
        seconds = float(os.environ.get("DYNROUTE_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    if not seconds > 0:
        raise ValueError(f"distributed timeout must be > 0 seconds, got {seconds}")
    return datetime.timedelta(seconds=seconds)


def is_launched() -> bool:
    """Whether this process was started by torchrun (its rendezvous variables are set).

    Example:
        >>> import os
        >>> is_launched() == all(v in os.environ for v in ("RANK", "WORLD_SIZE"))
        True
    """
    return all(v in os.environ for v in ("RANK", "WORLD_SIZE"))


def context_of(backend: str, group: dist.ProcessGroup | None = None) -> ParallelContext:
    """This process's :class:`ParallelContext` in the running process group."""
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    device = torch.device("cuda", local_rank) if backend == "nccl" else torch.device("cpu")
    return ParallelContext(
        dist.get_rank(), dist.get_world_size(), local_rank, backend, device, group
    )


def init_from_env(backend: str | None = None, timeout_s: float | None = None) -> ParallelContext:
    """Join the job torchrun started: read RANK, WORLD_SIZE, MASTER_ADDR/PORT, init the group.

    NCCL when CUDA is available (one GPU per process, cuda:LOCAL_RANK), else gloo.
    Every collective of the group fails after ``timeout_s`` (default 180 s or
    $DYNROUTE_DIST_TIMEOUT) instead of hanging. Calling it again returns the
    context of the group already running. The group is destroyed when the program
    exits: left to the interpreter's teardown, gloo's worker threads were once torn
    down mid-way and the process aborted ("terminate called without an active
    exception") after all its work was done.

    Returns:
        ParallelContext for this process.

    Raises:
        RuntimeError: when not started by torchrun (the variables are missing).

    Example (under ``torchrun --nproc-per-node 2 script.py``)::

        ctx = init_from_env()
        model = shard_model_experts(build_model(seed=0), ctx.group)
    """
    if dist.is_initialized():
        return context_of(dist.get_backend())
    missing = [v for v in _TORCHRUN_VARS if v not in os.environ and v != "LOCAL_RANK"]
    if missing:
        raise RuntimeError(
            f"init_from_env: environment variable(s) {', '.join(missing)} are not set; start "
            "the program with `python -m torch.distributed.run --nproc-per-node N ...` "
            "(or dynroute.parallel.launch(N, argv, module)), or call "
            "torch.distributed.init_process_group yourself"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend=backend, timeout=timeout_from_env(timeout_s))
    atexit.register(destroy_if_initialized)
    return context_of(backend)


def destroy_if_initialized() -> None:
    """Destroy the default process group if one is running (safe to call twice).

    Example:
        >>> destroy_if_initialized()  # no group: nothing to do
    """
    if dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def local_group(timeout_s: float = 30.0) -> Iterator[ParallelContext]:
    """A gloo world of one process, for doctests, debugging and single-machine runs.

    Does nothing when a process group already exists (yields its context).

    Example:
        >>> with local_group() as ctx:
        ...     ctx.world_size
        1
    """
    if dist.is_initialized():
        yield context_of(dist.get_backend())
        return
    dist.init_process_group(
        "gloo", store=dist.HashStore(), rank=0, world_size=1, timeout=timeout_from_env(timeout_s)
    )
    try:
        yield context_of("gloo")
    finally:
        dist.destroy_process_group()


def launch_command(
    nproc: int,
    argv: Sequence[str],
    module: str,
    rendezvous: Mapping[str, str] | None = None,
) -> list[str]:
    """The torchrun command line ``launch`` runs: N processes on this machine, loopback rendezvous.

    ``rendezvous`` replaces the one-machine defaults with torchrun's multi-node flags
    (``{"--nnodes": "2", "--node-rank": "0", "--master-addr": ..., "--master-port": ...}``).

    Example:
        >>> cmd = launch_command(2, ["train", "--steps", "10"], "dynroute.cli")
        >>> cmd[1:5]
        ['-m', 'torch.distributed.run', '--nproc-per-node', '2']
        >>> cmd[-4:]
        ['dynroute.cli', 'train', '--steps', '10']
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"launch: nproc must be an int >= 1, got {nproc!r}")
    flags = {"--nnodes": "1", "--master-addr": "127.0.0.1", "--master-port": str(free_port())}
    if rendezvous:
        flags = {"--master-port": "29500", **dict(rendezvous)}
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        str(nproc),
        "--max-restarts",
        "0",
        *(item for pair in flags.items() for item in pair),
        "-m",
        module,
        *argv,
    ]


def launch(
    nproc: int,
    argv: Sequence[str],
    module: str,
    timeout_s: float | None = None,
    env: Mapping[str, str] | None = None,
    rendezvous: Mapping[str, str] | None = None,
) -> int:
    """Re-run ``python -m <module> <argv>`` as ``nproc`` processes under torchrun; wait for them.

    Meant for ``dynroute train --nproc N``: the command calls
    ``launch(N, argv, "dynroute.cli")`` when ``is_launched()`` is False, and each child
    (where it is True) calls ``init_from_env()``. CPU threads are split between the
    processes (OMP_NUM_THREADS), DYNROUTE_EXPERT_PARALLEL=N is set for the children.

    Args:
        nproc: processes (expert-parallel ranks) on this machine.
        argv: arguments after the module, e.g. ``["train", "--expert-parallel", "2"]``.
        module: the ``-m`` module each process runs.
        timeout_s: kill the whole job after this many seconds (None = no limit).
        env: extra environment variables for the children.
        rendezvous: torchrun's multi-node flags (see :func:`launch_command`).

    Returns:
        torchrun's exit code (0 when every rank succeeded; 124 on timeout).

    Example::

        if expert_parallel > 1 and not is_launched():
            raise typer.Exit(launch(expert_parallel, sys.argv[1:], "my_program"))
    """
    cmd = launch_command(nproc, argv, module, rendezvous)
    child_env = dict(os.environ)
    child_env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    child_env["DYNROUTE_EXPERT_PARALLEL"] = str(nproc)
    child_env.update(env or {})
    # Own session, so a timeout can stop torchrun and every rank it started, and nothing else.
    proc = subprocess.Popen(cmd, env=child_env, start_new_session=True)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        print(f"launch: job exceeded {timeout_s} s and was stopped", file=sys.stderr)
        return 124
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait()
        raise
