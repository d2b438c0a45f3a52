"""Expert-parallel MoE: each rank holds E / W experts, tokens travel by all-to-all."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from dynroute.dispatch.combine import combine
from dynroute.layers import MoE, MoEAux
from dynroute.parallel.comm import Group, all_to_all, exchange_counts
from dynroute.parallel.exchange import Exchange, FlatExchange
from dynroute.parallel.pipeline import pipelined_exchange_and_run, task_clock, timed_layer_call
from dynroute.routing import Routing


def require_group(group: Group, fn: str) -> tuple[int, int]:
    """(rank, world size) in ``group``; a clear error when torch.distributed is not set up.

    Example:
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     require_group(None, "demo")
        (0, 1)
    """
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            f"{fn}: torch.distributed is not initialised; call "
            "dynroute.parallel.init_from_env() in a process started by torchrun "
            "(python -m torch.distributed.run --nproc-per-node N ...), or "
            "torch.distributed.init_process_group(...) first"
        )
    rank = dist.get_rank(group)
    if rank < 0:
        raise RuntimeError(
            f"{fn}: this process (global rank {dist.get_rank()}) is not in the group"
        )
    return rank, dist.get_world_size(group)


def check_expert_parallel(num_experts: int, world_size: int, fn: str = "expert parallel") -> None:
    """Raise a clear error unless ``num_experts`` splits evenly over ``world_size`` ranks.

    Call it before starting processes (e.g. in a CLI) to fail early.

    Example:
        >>> check_expert_parallel(8, 4)
        >>> check_expert_parallel(4, 3)
        Traceback (most recent call last):
        ...
        ValueError: expert parallel: 4 experts cannot be split evenly over 3 ranks; use a world size that divides 4 (e.g. 1, 2, 4)
    """  # noqa: E501
    if num_experts % world_size:
        divisors = ", ".join(str(w) for w in range(1, num_experts + 1) if num_experts % w == 0)
        raise ValueError(
            f"{fn}: {num_experts} experts cannot be split evenly over {world_size} ranks; "
            f"use a world size that divides {num_experts} (e.g. {divisors})"
        )


def _comm_device(group: Group, fallback: torch.device) -> torch.device:
    if "nccl" in str(dist.get_backend(group)) and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return fallback if fallback.type == "cpu" else torch.device("cpu")


def _check_identical(moe: MoE, group: Group, fn: str) -> None:
    """Fail on every rank when the ranks were given different layers (e.g. other seeds)."""
    g, experts = moe.gate.weight, list(moe.experts.parameters())
    device = _comm_device(group, g.device)
    stats = [
        float(moe.num_experts),
        float(g.shape[0]),
        float(g.shape[1]),
        float(sum(p.numel() for p in experts)),
        g.detach().double().sum().item(),
        *(p.detach().double().abs().sum().item() for p in experts),
    ]
    mine = torch.tensor(stats, dtype=torch.float64, device=device)
    every = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
    dist.all_gather(every, mine, group=group)
    for other, theirs in enumerate(every):
        if not torch.allclose(theirs, every[0], rtol=1e-9, atol=0.0):
            raise ValueError(
                f"{fn}: rank {other} holds a different MoE layer than rank 0 (shape or weights "
                "differ); build the model identically on every rank (same config, same "
                "torch.manual_seed) before sharding, or load the same checkpoint"
            )


class ExpertParallelMoE(MoE):
    """An MoE whose experts are spread over the ranks of a process group.

    Built by :func:`shard_experts` from a full ``MoE``. Rank r keeps experts
    r·E/W … (r+1)·E/W − 1 and a replica of the router. A forward pass on this
    rank's tokens: route locally; exchange per-expert counts; send each assigned
    row to the rank owning its expert with ``all_to_all_single`` (variable splits);
    run the local experts with the layer's dispatch (grouped GEMMs by default);
    send the outputs back the same way; scale by the combine weights and sum per
    token. Dropless, for any router (top-k, top-p, null experts, expert choice).
    The backward pass moves gradients over the same routes.

    Semantics (equal to ``MoE`` with the same weights, to float tolerance):
        - output of rank r = ``MoE(x_r)``: routing and the auxiliary losses
          (load balance, dynamic, z) use this rank's tokens only, as in
          DeepSpeed-MoE and Megatron (expert choice picks among local tokens).
        - expert gradients = gradient of Σ_r loss_r: each shard collects the
          contributions of every rank's tokens. Router gradients hold this rank's
          part only; sum (or average, see ``wrap_ddp``) them over ranks.

    Every rank of the group must call forward, and backward, the same number of
    times (as with DDP); a missing rank makes the others fail after the
    process group's timeout.

    Schedule (:func:`set_ep_schedule`): with ``chunks`` = r > 1 the tokens are cut into
    r contiguous ranges whose exchanges overlap the experts of other chunks, forward and
    backward (:mod:`dynroute.parallel.pipeline`); the results equal r = 1's to float
    tolerance. ``exchange`` moves the rows (:class:`~dynroute.parallel.exchange.FlatExchange`
    by default, or a hierarchical one). r = 1 with the flat exchange runs the plain,
    unpipelined path.

    Attributes:
        group, rank, world_size: the expert-parallel group and this rank in it.
        num_experts: E (global); ``experts`` holds ``num_local_experts`` = E / W.
        expert_offset: global index of this rank's first expert.
        chunks: r, the pipeline degree (1 = no pipelining).
        exchange: the :class:`~dynroute.parallel.exchange.Exchange` of the rows.
    """

    def __init__(self, moe: MoE, group: Group = None) -> None:
        rank, world = require_group(group, "ExpertParallelMoE")
        if isinstance(moe, ExpertParallelMoE):
            raise TypeError("ExpertParallelMoE: this MoE is already expert-parallel")
        if not isinstance(moe, MoE):
            raise TypeError(f"ExpertParallelMoE: expected dynroute.layers.MoE, got {type(moe)}")
        if not moe.experts.stacked:
            raise ValueError(
                "ExpertParallelMoE: expert parallelism shards stacked [E, ...] expert weights; "
                f"this MoE's {type(moe.experts).__name__} is not stacked "
                f"(expert_layout={getattr(moe.experts, 'layout', None)!r}). Build it with "
                "expert_layout='stacked' (the default)"
            )
        e = moe.num_experts
        check_expert_parallel(e, world, "ExpertParallelMoE")
        nn.Module.__init__(self)
        # Copy the router, dispatch and loss settings (and whatever else MoE keeps), share
        # the gate and any other submodule; only the experts are replaced by a shard.
        for name, value in vars(moe).items():
            if not name.startswith("_") and name != "training":
                setattr(self, name, value)
        for name, module in moe.named_children():
            if name != "experts":
                self.add_module(name, module)
        for name, param in moe.named_parameters(recurse=False):
            self.register_parameter(name, param)
        for name, buf in moe.named_buffers(recurse=False):
            self.register_buffer(name, buf)
        self.group, self.rank, self.world_size = group, rank, world
        self.num_local_experts = e // world
        self.expert_offset = rank * self.num_local_experts
        lo, hi = self.expert_offset, self.expert_offset + self.num_local_experts
        # a copy of this rank's experts (any kind), so the full [E, ...] tensors can be freed
        self.experts = moe.experts.shard(lo, hi)
        self.chunks = 1
        self.exchange: Exchange = FlatExchange(group)
        self.train(moe.training)

    def __deepcopy__(self, memo: dict[int, Any]) -> ExpertParallelMoE:
        # A process group cannot be copied (or pickled): copies (EMA, references in
        # tests) share it, everything else is copied as usual.
        if self.group is not None:
            memo[id(self.group)] = self.group
        # an exchange holds process groups too (a hierarchical one, its subgroups): shared
        memo[id(self.exchange)] = self.exchange
        cls = type(self)
        clone = cls.__new__(cls)
        memo[id(self)] = clone
        for name, value in vars(self).items():
            setattr(clone, name, copy.deepcopy(value, memo))
        return clone

    def forward(self, x: Tensor, carry: Any = None) -> tuple[Tensor, MoEAux]:
        """``MoE.forward``; inside :func:`~dynroute.parallel.pipeline.measure_tasks` its six
        tasks are timed."""
        with timed_layer_call(x.device):
            return super().forward(x, carry)

    def run_experts(self, flat: Tensor, routing: Routing) -> Tensor:
        # MoE.forward routes and computes the losses locally; only the experts are remote.
        task_clock().lap("gate")
        return self.exchange_and_run(flat, routing)

    def run_local_experts(self, rows: Tensor, recv_counts: Tensor) -> Tensor:
        """This rank's experts on received rows [R, d] (counts [W, E_local]), arrival order."""
        return self.dispatch(rows, local_routing(recv_counts, rows), self.experts)

    def exchange_and_run(self, flat: Tensor, routing: Routing) -> Tensor:
        """Send the assigned rows of ``flat`` [N, d] to their experts' ranks and combine.

        Runs the layer's schedule: ``chunks`` > 1 or a non-flat ``exchange`` go through
        :func:`~dynroute.parallel.pipeline.pipelined_exchange_and_run`.

        Returns:
            [N, d]: Σ over each token's assignments of weight · expert(x), like
            ``dispatch(flat, routing, all_experts)`` on one process.
        """
        if self.chunks != 1 or not isinstance(self.exchange, FlatExchange):
            return pipelined_exchange_and_run(
                flat, routing, self.run_local_experts, self.exchange, self.chunks, self.group
            )
        clock, world, local_e = task_clock(), self.world_size, self.num_local_experts
        # Assignments are sorted by expert, so the rows for rank j are one contiguous block.
        send_counts = routing.expert_counts()
        recv_counts = exchange_counts(send_counts, self.group)  # [W, E_local]
        in_splits = send_counts.view(world, local_e).sum(1).tolist()
        out_splits = recv_counts.sum(1).tolist()
        clock.lap("dispatch")
        send = flat[routing.token]
        if torch.is_grad_enabled() and not send.requires_grad:
            # Every rank must run the same backward collectives. Whether this exchange has a
            # backward would otherwise depend on this rank's input alone (a rank whose x needs
            # no gradient would skip it while its peers wait), so always record it.
            send = send.detach().requires_grad_(True)
        clock.lap("order")
        rows = all_to_all(send, out_splits, in_splits, self.group)
        clock.lap("dispatch")
        out = self.dispatch(rows, local_routing(recv_counts, rows), self.experts)
        clock.lap("experts")
        back = all_to_all(out, in_splits, out_splits, self.group)  # [A], routing's order
        clock.lap("combine")
        # Combine weights are applied here, at the token's own rank, so the router's
        # gradient never crosses the network.
        y = combine(back, routing.token, routing.weight, flat.shape[0])
        clock.lap("inverse_order")
        return y

    def extra_repr(self) -> str:
        lo = self.expert_offset
        return (
            f"{super().extra_repr()}, experts={lo}..{lo + self.num_local_experts - 1} "
            f"of {self.num_experts}, rank={self.rank}/{self.world_size}, "
            f"chunks={self.chunks}, exchange={self.exchange.name}"
        )


def local_routing(recv_counts: Tensor, rows: Tensor) -> Routing:
    """The Routing that runs received rows through this rank's local experts.

    Rows arrive grouped by source rank, then by local expert; the returned Routing
    lists them sorted by local expert (stable), with weight 1 (combine weights are
    applied at the source), so ``dispatch(rows, routing, local_weights)`` returns
    each row's expert output in arrival order.

    Args:
        recv_counts: LongTensor [W, E_local] from ``exchange_counts``.
        rows: [R, d] received rows, R = recv_counts.sum().

    Example:
        >>> import torch
        >>> r = local_routing(torch.tensor([[1, 2], [1, 0]]), torch.zeros(4, 8))
        >>> r.expert.tolist(), r.token.tolist()
        ([0, 0, 1, 1], [0, 3, 1, 2])
    """
    local_e = recv_counts.shape[1]
    ids = torch.arange(local_e, device=rows.device).repeat(recv_counts.shape[0])
    expert_of_row = ids.repeat_interleave(recv_counts.reshape(-1).to(rows.device))
    expert, order = torch.sort(expert_of_row, stable=True)
    n = rows.shape[0]
    weight = torch.ones(n, dtype=torch.float32, device=rows.device)
    # probs are only read by losses, never by dispatch: a zero-stride view costs no memory.
    probs = torch.zeros((), device=rows.device).expand(n, local_e)
    return Routing(order, expert, weight, probs, local_e)


def shard_experts(moe: MoE, group: Group = None, check: bool = True) -> ExpertParallelMoE:
    """Turn a full ``MoE`` (identical on every rank) into its expert-parallel form.

    Rank r keeps experts r·E/W … (r+1)·E/W − 1 (copied) and shares the router.
    Call it on every rank of ``group``; then each rank calls the result on its
    own tokens. State-dict keys stay those of ``MoE`` (``gate.weight``,
    ``experts.gate_up``, ``experts.down`` for SwiGLU), the expert tensors hold E/W rows.
    Any ``stacked`` expert kind is sharded with its own ``experts.shard(lo, hi)``.

    Args:
        moe: the layer, built with the same config and seed on every rank.
        group: expert-parallel process group (default: the world).
        check: compare shapes and weight checksums across ranks (one all_gather)
            and raise on a mismatch instead of training silently wrong.

    Raises:
        RuntimeError: torch.distributed is not initialised.
        ValueError: E is not divisible by the group size, or the ranks' layers differ.

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     _ = torch.manual_seed(0)
        ...     ep = shard_experts(MoE(8, 16, num_experts=4, router="top_p", p=0.5))
        ...     y, aux = ep(torch.randn(3, 8))
        ...     ep.num_local_experts, tuple(y.shape)
        (4, (3, 8))
    """
    ep = ExpertParallelMoE(moe, group)
    if check:
        _check_identical(moe, group, "shard_experts")
    return ep


def shard_model_experts(model: nn.Module, group: Group = None, check: bool = True) -> nn.Module:
    """Replace every ``dynroute.layers.MoE`` inside ``model`` by its expert-parallel form.

    Works in place on submodules (and returns the new layer when ``model`` is
    itself an MoE). Call on every rank with a model built identically (same
    config, same seed or same checkpoint); then move each rank's batches through it.

    Returns:
        The model (same object unless it is an MoE).

    Raises:
        ValueError: the model contains no MoE layer (or ``shard_experts``' errors).

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     net = shard_model_experts(nn.Sequential(MoE(8, 16, 2), MoE(8, 16, 2)))
        ...     [type(m).__name__ for m in net]
        ['ExpertParallelMoE', 'ExpertParallelMoE']
    """
    if isinstance(model, MoE) and not isinstance(model, ExpertParallelMoE):
        return shard_experts(model, group, check)
    targets = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, MoE) and not isinstance(module, ExpertParallelMoE)
    ]
    if not targets:
        raise ValueError(
            "shard_model_experts: the model has no dynroute.layers.MoE layer to shard "
            f"({type(model).__name__})"
        )
    for name, module in targets:
        model.set_submodule(name, shard_experts(module, group, check))
    return model


def set_ep_schedule(
    model: nn.Module, chunks: int | Mapping[str, int], exchange: Exchange | None = None
) -> dict[str, int]:
    """Set the schedule of every :class:`ExpertParallelMoE` in ``model``.

    Args:
        model: a model after :func:`shard_model_experts` (or one expert-parallel layer).
        chunks: the pipeline degree r >= 1 of every layer, or per layer by module name
            (``model.named_modules()`` names; ``""`` for ``model`` itself); layers not
            named keep their r. r = 1 with the flat exchange is the unpipelined path.
        exchange: the :class:`~dynroute.parallel.exchange.Exchange` of every layer
            (e.g. ``FlatExchange(group)`` or a hierarchical one); None keeps each layer's.
            It must span the layers' expert-parallel group.

    Returns:
        {module name: chunks} of every expert-parallel layer, after the change.

    Raises:
        ValueError: no expert-parallel layer, a chunk count < 1, or a name in ``chunks``
            that is not an expert-parallel layer of ``model``.

    Example:
        >>> import torch
        >>> from dynroute.parallel import local_group
        >>> with local_group():
        ...     net = shard_model_experts(nn.Sequential(MoE(8, 16, 2), MoE(8, 16, 2)))
        ...     set_ep_schedule(net, {"1": 4})
        {'0': 1, '1': 4}
        >>> set_ep_schedule(net, 0)
        Traceback (most recent call last):
        ...
        ValueError: set_ep_schedule: chunks must be an integer >= 1 (1 = not pipelined), got 0 for layer '0'
    """  # noqa: E501
    layers = {n: m for n, m in model.named_modules() if isinstance(m, ExpertParallelMoE)}
    if not layers:
        raise ValueError(
            f"set_ep_schedule: {type(model).__name__} has no ExpertParallelMoE layer; "
            "shard it first with dynroute.parallel.shard_model_experts(model)"
        )
    wanted = dict(chunks) if isinstance(chunks, Mapping) else dict.fromkeys(layers, chunks)
    unknown = sorted(set(wanted) - set(layers))
    if unknown:
        raise ValueError(
            f"set_ep_schedule: {unknown} are not expert-parallel layers of the model; "
            f"its layers are {sorted(layers)}"
        )
    for name, r in wanted.items():
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(
                "set_ep_schedule: chunks must be an integer >= 1 (1 = not pipelined), "
                f"got {r!r} for layer {name!r}"
            )
    if exchange is not None and not callable(getattr(exchange, "start", None)):
        raise TypeError(
            f"set_ep_schedule: exchange must be an Exchange (with start(x, out_splits, "
            f"in_splits)), got {type(exchange).__name__}"
        )
    for name, layer in layers.items():
        layer.chunks = wanted.get(name, layer.chunks)
        if exchange is not None:
            layer.exchange = exchange
    return {name: layer.chunks for name, layer in layers.items()}
