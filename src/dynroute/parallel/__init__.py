"""Expert parallelism over torch.distributed (gloo on CPU, NCCL on GPU).

Each rank of a process group holds E / W experts of every MoE layer and routes its
own tokens; rows travel to their experts' ranks and back with variable-size
``all_to_all_single``, in the forward and the backward pass.

Example:
    >>> import torch
    >>> from dynroute.layers import MoE
    >>> with local_group():  # one process; under torchrun use init_from_env()
    ...     _ = torch.manual_seed(0)
    ...     moe = MoE(8, 16, num_experts=4, router="top_p", p=0.5)
    ...     ep = shard_experts(moe)
    ...     x = torch.randn(5, 8)
    ...     torch.allclose(ep(x)[0], moe(x)[0], atol=1e-6)
    True

See docs/scaling.md for torchrun, DDP and NCCL across nodes.
"""

from dynroute.parallel.comm import CommMeter, all_to_all, exchange_counts, measure_comm
from dynroute.parallel.ddp import (
    clip_grad_norm_,
    expert_parameter_names,
    full_optimizer_state_dict,
    full_state_dict,
    load_full_optimizer_state_dict,
    load_full_state_dict,
    wrap_ddp,
)
from dynroute.parallel.exchange import Exchange, FlatExchange, PendingExchange
from dynroute.parallel.hierarchy import (
    HierarchicalExchange,
    StageBytes,
    Topology,
    stage_bytes,
    topology,
)
from dynroute.parallel.moe import (
    ExpertParallelMoE,
    check_expert_parallel,
    local_routing,
    set_ep_schedule,
    shard_experts,
    shard_model_experts,
)
from dynroute.parallel.pipeline import (
    TASKS,
    TaskTimes,
    measure_tasks,
    pipelined_exchange_and_run,
    start_exchange,
    wait_exchange,
)
from dynroute.parallel.runtime import (
    ParallelContext,
    init_from_env,
    is_launched,
    launch,
    launch_command,
    local_group,
)
from dynroute.parallel.training import TrainingRanks

__all__ = [
    "TASKS",
    "CommMeter",
    "Exchange",
    "ExpertParallelMoE",
    "FlatExchange",
    "HierarchicalExchange",
    "ParallelContext",
    "PendingExchange",
    "StageBytes",
    "TaskTimes",
    "Topology",
    "TrainingRanks",
    "all_to_all",
    "check_expert_parallel",
    "clip_grad_norm_",
    "exchange_counts",
    "expert_parameter_names",
    "full_optimizer_state_dict",
    "full_state_dict",
    "init_from_env",
    "is_launched",
    "launch",
    "launch_command",
    "load_full_optimizer_state_dict",
    "load_full_state_dict",
    "local_group",
    "local_routing",
    "measure_comm",
    "measure_tasks",
    "pipelined_exchange_and_run",
    "set_ep_schedule",
    "shard_experts",
    "shard_model_experts",
    "stage_bytes",
    "start_exchange",
    "topology",
    "wait_exchange",
    "wrap_ddp",
]
