"""What a training loop needs to run on N data- or expert-parallel ranks — and nothing on one.

``TrainingRanks`` bundles the calls a single-process loop makes differently under
data parallelism (DDP or FSDP2) and expert parallelism (wrap the model, skip gradient
sync while accumulating, clip, checkpoint, log on rank 0). With one
process every method is the plain single-process operation, so a loop can call
them unconditionally.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel

from dynroute.parallel.autoschedule import schedule_expert_parallel
from dynroute.parallel.ddp import (
    clip_grad_norm_,
    full_optimizer_state_dict,
    full_state_dict,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    wrap_ddp,
)
from dynroute.parallel.fsdp import (
    fsdp_model_state,
    fsdp_optimizer_state,
    load_fsdp_model_state,
    load_fsdp_optimizer_state,
    shard_dense,
)
from dynroute.parallel.moe import shard_model_experts
from dynroute.parallel.partition import PartitionedDataParallel
from dynroute.parallel.runtime import (
    ParallelContext,
    destroy_if_initialized,
    init_from_env,
    timeout_from_env,
)


@dataclass
class TrainingRanks:
    """The ranks of a data- and/or expert-parallel training run (or a single process).

    Build it with :meth:`from_env`. Attributes: ``ctx`` (None on one process),
    ``expert_parallel`` (experts sharded over the ranks), ``parallel`` (``"ddp"`` or
    ``"fsdp"``: how the dense parameters are shared), and the properties ``rank``,
    ``world_size``, ``is_main`` (rank 0: logs, progress bars, files).

    Example:
        >>> ranks = TrainingRanks.from_env(1)  # one process: every method is a no-op
        >>> ranks.world_size, ranks.is_main, ranks.mean([2.0, 4.0])
        (1, True, [2.0, 4.0])
    """

    ctx: ParallelContext | None = None
    expert_parallel: bool = True
    parallel: str = "ddp"
    ep_schedule: str = "off"

    @classmethod
    def from_env(
        cls,
        expert_parallel: int = 1,
        nproc: int = 1,
        parallel: str = "ddp",
        backend: str | None = None,
        ep_schedule: str = "off",
    ) -> TrainingRanks:
        """One process when both sizes are 1; else join torchrun's job of that size.

        Args:
            expert_parallel: ranks the experts are sharded over (1 = replicated).
            nproc: data-parallel processes; with ``expert_parallel > 1`` it must be 1
                or the same number (the experts are sharded over the whole job).
            parallel: ``"ddp"`` or ``"fsdp"`` for the dense parameters.
            backend: ``"gloo"`` or ``"nccl"`` (default: NCCL when CUDA is present).
            ep_schedule: ``"off"`` or ``"auto"`` (FSMoE's schedule; see :meth:`wrap`).

        Raises:
            ValueError: sizes that do not fit together, FSDP with expert parallelism.
            RuntimeError: not started by torchrun, or its world size is not the job's.
        """
        if expert_parallel > 1 and nproc > 1 and expert_parallel != nproc:
            raise ValueError(
                f"--expert-parallel {expert_parallel} with --nproc {nproc}: experts are "
                "sharded over every process, so use the same number (or leave one at 1)"
            )
        if parallel not in ("ddp", "fsdp"):
            raise ValueError(f'parallel = {parallel!r}: use "ddp" or "fsdp"')
        if parallel == "fsdp" and expert_parallel > 1:
            raise ValueError(
                "parallel = 'fsdp' with --expert-parallel is not supported yet; "
                "use parallel = 'ddp' (the default) with expert parallelism"
            )
        if ep_schedule == "auto" and expert_parallel <= 1:
            raise ValueError(
                "--ep-schedule auto schedules expert-parallel exchanges: use it with "
                "--expert-parallel N (N > 1), or leave it off"
            )
        world = max(expert_parallel, nproc)
        if world <= 1:
            return cls(None, False, parallel)
        ctx = init_from_env(backend)
        if ctx.world_size != world:
            flag = "--expert-parallel" if expert_parallel > 1 else "--nproc"
            raise RuntimeError(
                f"{flag} {world} but torchrun started {ctx.world_size} processes; "
                "use the same number"
            )
        return cls(ctx, expert_parallel > 1, parallel, ep_schedule)

    @property
    def rank(self) -> int:
        return self.ctx.rank if self.ctx else 0

    @property
    def world_size(self) -> int:
        return self.ctx.world_size if self.ctx else 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def fsdp(self) -> bool:
        return self.ctx is not None and self.parallel == "fsdp"

    def wrap(self, model: nn.Module, seq_len: int = 1024, batch_size: int = 2) -> nn.Module:
        """Shard the experts and/or dense parameters; return the module to call for training.

        Move the model to its device first, and build the optimizer from
        ``model.parameters()`` *after* this call; evaluate with ``model`` itself (every
        rank, same batches). ``seq_len`` and ``batch_size`` (a rank's micro-batch) size
        the ``--ep-schedule auto`` plan.
        """
        if self.ctx is None:
            return model
        ddp_kwargs: dict[str, Any] = {}
        if self.ctx.device.type == "cuda":
            ddp_kwargs["device_ids"] = [self.ctx.device.index]
        if self.expert_parallel:
            # The all-to-alls get their own group (same ranks), so they never queue behind
            # DDP's asynchronous gradient all-reduces on the default group.
            group = dist.new_group(timeout=timeout_from_env())
            shard_model_experts(model, group)
            if self.ep_schedule == "auto":
                schedule = schedule_expert_parallel(model, group, seq_len, batch_size)
                if self.is_main:
                    print(f"--ep-schedule auto: {schedule.summary()}", file=sys.stderr)
                return schedule.wrapped
            return wrap_ddp(model, **ddp_kwargs)
        if self.parallel == "fsdp":
            return shard_dense(model)
        if getattr(getattr(model, "config", None), "expert_layout", None) == "per_expert":
            # Idle experts' own parameters get no gradient in a step; DDP must not wait.
            ddp_kwargs["find_unused_parameters"] = True
        return DistributedDataParallel(model, **ddp_kwargs)

    def gradient_sync(
        self, run_model: nn.Module, sync: bool
    ) -> contextlib.AbstractContextManager[Any]:
        """Context for one micro-batch's forward and backward: ``sync=False`` skips the
        gradient all-reduce / reduce-scatter (gradient accumulation), ``True`` does it."""
        if self.ctx is None:
            return contextlib.nullcontext()
        if self.fsdp:
            run_model.set_requires_gradient_sync(sync)  # type: ignore[operator]
            return contextlib.nullcontext()
        if not sync and isinstance(run_model, DistributedDataParallel | PartitionedDataParallel):
            return run_model.no_sync()
        return contextlib.nullcontext()

    def finish_gradient_sync(self, run_model: nn.Module) -> None:
        """After the step's last backward, before clipping: wait for the partitioned
        all-reduce (``--ep-schedule auto``); DDP and FSDP have finished already."""
        if isinstance(run_model, PartitionedDataParallel):
            run_model.finish()

    def clip_grad_norm_(self, model: nn.Module, max_norm: float) -> Tensor:
        """Clip by the global gradient norm (all ranks' experts and shards included)."""
        if self.ctx is None or not self.expert_parallel:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
            return norm.full_tensor() if isinstance(norm, DTensor) else norm
        return clip_grad_norm_(model, max_norm)

    def model_state(self, model: nn.Module) -> dict[str, Tensor]:
        """The unsharded state dict (a collective when sharded; FSDP: rank 0 only)."""
        if self.fsdp:
            return fsdp_model_state(model)
        return full_state_dict(model) if self.expert_parallel and self.ctx else model.state_dict()

    def load_model_state(self, model: nn.Module, state: dict[str, Tensor]) -> None:
        """Load an unsharded state dict; each rank keeps its experts / shards."""
        if self.fsdp:
            load_fsdp_model_state(model, state)
        elif self.ctx is not None and self.expert_parallel:
            load_full_state_dict(model, state)
        else:
            model.load_state_dict(state)

    def optimizer_state(self, optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
        """The unsharded optimizer state (a collective when sharded; FSDP: rank 0 only)."""
        if self.fsdp:
            return fsdp_optimizer_state(optimizer, model)
        if self.ctx is not None and self.expert_parallel:
            return full_optimizer_state_dict(optimizer, model)
        return optimizer.state_dict()

    def load_optimizer_state(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, state: dict[str, Any]
    ) -> None:
        """Load an unsharded optimizer state; each rank keeps its experts' / shards' part."""
        if self.fsdp:
            load_fsdp_optimizer_state(optimizer, model, state)
        elif self.ctx is not None and self.expert_parallel:
            load_full_optimizer_state_dict(optimizer, model, state)
        else:
            optimizer.load_state_dict(state)

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.ctx is None:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def mean(self, values: Sequence[float]) -> list[float]:
        """Element-wise mean over ranks (for logging losses and statistics)."""
        if self.ctx is None:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64)
        dist.all_reduce(t)
        return (t / self.world_size).tolist()

    def barrier(self) -> None:
        """Wait for every rank (bounded by the process group's timeout)."""
        if self.ctx is not None:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group (at the end of the run)."""
        if self.ctx is not None:
            destroy_if_initialized()
