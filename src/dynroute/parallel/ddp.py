"""Data parallelism for the replicated parameters, and checkpoints of sharded models."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from dynroute.parallel.moe import ExpertParallelMoE, require_group


def _expert_keys(model: nn.Module) -> list[tuple[ExpertParallelMoE, list[str]]]:
    """Each ExpertParallelMoE with the state-dict keys of its experts (all of them sharded)."""
    out = []
    for prefix, module in model.named_modules():
        if isinstance(module, ExpertParallelMoE):
            head = f"{prefix}.experts." if prefix else "experts."
            out.append((module, [head + k for k in module.experts.state_dict()]))
    return out


def expert_parameter_names(model: nn.Module) -> list[str]:
    """Names (as in ``model.state_dict()``) of the sharded expert tensors: every tensor
    of the ``experts`` module of each ExpertParallelMoE, whatever the expert kind.

    Example:
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():
        ...     expert_parameter_names(shard_model_experts(nn.Sequential(MoE(8, 16, 2))))
        ['0.experts.gate_up', '0.experts.down']
    """
    return [key for _, keys in _expert_keys(model) for key in keys]


def wrap_ddp(
    model: nn.Module, average_expert_grads: bool = True, **ddp_kwargs: Any
) -> DistributedDataParallel:
    """DistributedDataParallel over the replicated parameters only; experts stay sharded.

    Expert tensors are excluded from DDP (no broadcast from rank 0 at start-up, no
    all-reduce): each rank's shard already receives the gradient from every rank's
    tokens through the all-to-all backward. DDP *averages* the other gradients over
    ranks; with ``average_expert_grads`` the expert gradients are divided by the
    world size too, so every parameter's gradient is that of the mean of the
    ranks' losses (the single-process loss on all tokens when the ranks' batches
    are equal in size). Assumes the expert-parallel group is the whole world.

    Args:
        model: a model after ``shard_model_experts``.
        average_expert_grads: scale expert gradients by 1 / world size.
        **ddp_kwargs: passed to DistributedDataParallel (e.g. ``device_ids``).

    Example::

        model = wrap_ddp(shard_model_experts(model))
        loss = model(batch).loss; loss.backward(); opt.step()
    """
    require_group(None, "wrap_ddp")
    names = expert_parameter_names(model)
    if not names:
        raise ValueError(
            "wrap_ddp: the model has no ExpertParallelMoE; call shard_model_experts first "
            "(or use DistributedDataParallel directly for a model without experts)"
        )
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, names)
    if average_expert_grads:
        average_expert_grads_over_ranks(model, names)
    return DistributedDataParallel(model, **ddp_kwargs)


def average_expert_grads_over_ranks(model: nn.Module, names: list[str] | None = None) -> None:
    """Divide every incoming gradient of the sharded expert tensors by the world size.

    Each shard's gradient is the sum over every rank's tokens; with this hook it is that of
    the mean of the ranks' losses, like the averaged replicated parameters. Idempotent: a
    tensor already scaled is left alone. ``names`` defaults to ``expert_parameter_names``.
    """
    world = dist.get_world_size()
    params = dict(model.named_parameters())
    for n in expert_parameter_names(model) if names is None else names:
        p = params.get(n)  # buffers have no gradient
        if p is not None and not getattr(p, "_dynroute_grad_averaged", False):
            # A tensor hook scales each incoming gradient, so accumulation still adds up.
            p.register_hook(lambda g, w=world: g / w)
            p._dynroute_grad_averaged = True  # type: ignore[attr-defined]


def clip_grad_norm_(model: nn.Module, max_norm: float) -> Tensor:
    """``torch.nn.utils.clip_grad_norm_`` for a sharded model: one global norm over all ranks.

    Replicated gradients (identical on every rank after DDP) count once; the
    expert shards' squared norms are summed over the expert-parallel group, so
    every rank computes the norm of the whole model's gradient and scales by the
    same factor. A collective: call it on every rank, after ``backward``.

    Returns:
        The total norm before clipping (float32 scalar, same on every rank).

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():  # a bound above the norm: nothing is scaled
        ...     _ = torch.manual_seed(0)
        ...     net = shard_model_experts(nn.Sequential(MoE(8, 16, 2)))
        ...     net(torch.randn(4, 8))[0][0].sum().backward()
        ...     norm = clip_grad_norm_(net, 1e9)
        ...     full = torch.cat([p.grad.flatten() for p in net.parameters()]).norm()
        >>> torch.allclose(norm, full) and float(full) > 0
        True
    """
    model = _unwrap(model)
    sharded = {key: module.group for key, module in _expert_params(model).items()}
    params = [p for p in model.parameters() if p.grad is not None]
    replicated = [p.grad for p in params if id(p) not in sharded]
    device = params[0].grad.device if params else torch.device("cpu")
    sq = torch.zeros((), dtype=torch.float64, device=device)
    if replicated:
        sq += torch.nn.utils.get_total_norm(replicated, 2.0).double() ** 2
    groups = {id(g): g for g in sharded.values()}
    for key, group in groups.items():
        shard = [p.grad for p in params if id(p) in sharded and id(sharded[id(p)]) == key]
        part = torch.zeros((), dtype=torch.float64, device=device)
        if shard:
            part += torch.nn.utils.get_total_norm(shard, 2.0).double() ** 2
        dist.all_reduce(part, group=group)
        sq += part
    total = sq.sqrt().float()
    torch.nn.utils.clip_grads_with_norm_([p for p in params], max_norm, total)
    return total


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, DistributedDataParallel) else model


def _gather_experts(shard: Tensor, module: ExpertParallelMoE) -> Tensor:
    """A tensor of ``module``'s expert shard, all-gathered along the expert dimension."""
    shard = shard.detach().contiguous()
    parts = [torch.empty_like(shard) for _ in range(module.world_size)]
    dist.all_gather(parts, shard, group=module.group)
    return torch.cat(parts)


def full_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of the unsharded model, gathered from every rank (a collective).

    Expert tensors are all-gathered along the expert dimension, so the result
    loads into the plain model (``MoE`` layers, E experts each) on one process.
    Every rank must call it; every rank gets the full dict (save it on rank 0).

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():
        ...     sd = full_state_dict(shard_model_experts(nn.Sequential(MoE(8, 16, 2))))
        >>> sd["0.experts.down"].shape
        torch.Size([2, 16, 8])
    """
    model = _unwrap(model)
    state = model.state_dict()
    for module, keys in _expert_keys(model):
        for key in keys:
            state[key] = _gather_experts(state[key], module)
    return state


def load_full_state_dict(
    model: nn.Module, state_dict: Mapping[str, Tensor], strict: bool = True
) -> Any:
    """Load an unsharded state dict (e.g. a checkpoint) into a sharded model: no collective.

    Each ExpertParallelMoE takes its own slice of the experts.

    Example:
        >>> import torch
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> full = nn.Sequential(MoE(8, 16, 2))
        >>> with local_group():
        ...     ep = shard_model_experts(nn.Sequential(MoE(8, 16, 2)))
        ...     _ = load_full_state_dict(ep, full.state_dict())
        >>> torch.equal(ep[0].experts.down, full[0].experts.down)
        True
    """
    model = _unwrap(model)
    state = dict(state_dict)
    for module, keys in _expert_keys(model):
        lo, hi = module.expert_offset, module.expert_offset + module.num_local_experts
        for key in keys:
            if key in state:
                if state[key].shape[0] != module.num_experts:
                    raise ValueError(
                        f"load_full_state_dict: {key} has {state[key].shape[0]} experts, "
                        f"the model has {module.num_experts}; pass an unsharded state dict"
                    )
                state[key] = state[key][lo:hi]
    return model.load_state_dict(state, strict=strict)


def _expert_params(model: nn.Module) -> dict[int, ExpertParallelMoE]:
    out: dict[int, ExpertParallelMoE] = {}
    for module in model.modules():
        if isinstance(module, ExpertParallelMoE):
            for p in module.experts.parameters():
                out[id(p)] = module
    return out


def _optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    # optimizer.state_dict() numbers parameters in param_groups order.
    return [p for group in optimizer.param_groups for p in group["params"]]


def full_optimizer_state_dict(optimizer: torch.optim.Optimizer, model: nn.Module) -> dict[str, Any]:
    """``optimizer.state_dict()`` with expert states gathered: the unsharded run's format.

    Per-parameter state tensors shaped like an expert shard (Adam's ``exp_avg``,
    ``exp_avg_sq``, SGD's ``momentum_buffer``) are all-gathered along the expert
    dimension; scalars (``step``) are kept. A collective: call it on every rank.
    The result loads into the same optimizer of a one-process model, or back into
    a sharded one with :func:`load_full_optimizer_state_dict`.

    Example:
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():
        ...     net = shard_model_experts(nn.Sequential(MoE(8, 16, 2)))
        ...     opt = torch.optim.Adam(net.parameters())
        ...     net(torch.randn(3, 8))[0][0].sum().backward()
        ...     opt.step()
        ...     sd = full_optimizer_state_dict(opt, net)
        >>> sd["state"][1]["exp_avg"].shape  # experts.gate_up of 2 experts
        torch.Size([2, 8, 32])
    """
    state = optimizer.state_dict()
    experts = _expert_params(model)
    for index, param in enumerate(_optimizer_params(optimizer)):
        module = experts.get(id(param))
        if module is None or index not in state["state"]:
            continue
        entry = dict(state["state"][index])
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.shape == param.shape:
                entry[key] = _gather_experts(value, module)
        state["state"][index] = entry
    return state


def load_full_optimizer_state_dict(
    optimizer: torch.optim.Optimizer, model: nn.Module, state_dict: dict[str, Any]
) -> None:
    """Load an unsharded optimizer state into the optimizer of a sharded model (no collective).

    Example:
        >>> from dynroute.layers import MoE
        >>> from dynroute.parallel import local_group, shard_model_experts
        >>> with local_group():
        ...     net = shard_model_experts(nn.Sequential(MoE(8, 16, 2)))
        ...     opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        ...     net(torch.randn(3, 8))[0][0].sum().backward()
        ...     opt.step()
        ...     load_full_optimizer_state_dict(opt, net, full_optimizer_state_dict(opt, net))
    """
    state = {**state_dict, "state": dict(state_dict["state"])}
    experts = _expert_params(model)
    for index, param in enumerate(_optimizer_params(optimizer)):
        module = experts.get(id(param))
        if module is None or index not in state["state"]:
            continue
        lo, hi = module.expert_offset, module.expert_offset + module.num_local_experts
        entry = dict(state["state"][index])
        for key, value in entry.items():
            if isinstance(value, Tensor) and value.dim() and value.shape[1:] == param.shape[1:]:
                if value.shape[0] != module.num_experts:
                    raise ValueError(
                        f"load_full_optimizer_state_dict: state {key!r} of parameter {index} has "
                        f"{value.shape[0]} experts, the model has {module.num_experts}"
                    )
                entry[key] = value[lo:hi]
        state["state"][index] = entry
    optimizer.load_state_dict(state)
