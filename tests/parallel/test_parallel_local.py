"""Expert parallelism pieces that need no second process: errors, bookkeeping, world of one."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import torch
from torch import nn

from dynroute.common.net import free_port
from dynroute.layers import MoE
from dynroute.parallel import (
    ExpertParallelMoE,
    HierarchicalExchange,
    expert_parameter_names,
    init_from_env,
    launch_command,
    local_group,
    local_routing,
    measure_comm,
    set_ep_schedule,
    shard_experts,
    shard_model_experts,
    topology,
    wrap_ddp,
)
from dynroute.parallel.selftest import CASES, build_moe


def test_clear_errors_without_a_process_group(monkeypatch):
    with pytest.raises(RuntimeError, match=r"not initialised.*init_from_env"):
        shard_experts(MoE(8, 16, 4))
    with pytest.raises(RuntimeError, match="not initialised"):
        wrap_ddp(nn.Linear(2, 2))
    for var in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(RuntimeError, match=r"RANK.*torch\.distributed\.run --nproc-per-node"):
        init_from_env()


def test_a_group_from_init_from_env_is_destroyed_at_exit():
    """Left to the interpreter's teardown, a gloo group once aborted a finished rank in CI
    ("terminate called without an active exception"). atexit hooks run last-in first-out,
    so a hook registered before init_from_env sees the state after dynroute's own."""
    code = (
        "import atexit, torch.distributed as dist\n"
        "from dynroute.parallel import init_from_env\n"
        "atexit.register(lambda: print('initialised at exit:', dist.is_initialized()))\n"
        "ctx = init_from_env()\n"
        "print('world', ctx.world_size, ctx.backend)\n"
    )
    env = dict(os.environ, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["world 1 gloo", "initialised at exit: False"]


@pytest.mark.parametrize("case", list(CASES))
def test_world_of_one_equals_moe_with_gradients(case):
    moe = build_moe(case, 16, 24, 4, world=1, seed=0)
    ref = copy.deepcopy(moe)
    x = torch.randn(11, 16)
    with local_group():
        ep = shard_experts(moe)
        y, aux = ep(x)
        (y.square().sum() + aux.loss).backward()
    y_ref, aux_ref = ref(x)
    (y_ref.square().sum() + aux_ref.loss).backward()
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    for (name, p), q in zip(ep.named_parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-5, msg=name)


def test_sharded_layer_keeps_moe_interface_and_state_dict_keys():
    moe = MoE(8, 16, 4, router="top_p", p=0.4)
    with local_group():
        ep = shard_experts(moe)
        assert isinstance(ep, MoE) and ep.gate is moe.gate
        assert ep.num_experts == 4 and ep.num_local_experts == 4 and ep.expert_offset == 0
        assert ep.state_dict().keys() == moe.state_dict().keys()
        assert ep.experts.gate_up.data_ptr() != moe.experts.gate_up.data_ptr()  # a copy
        with pytest.raises(TypeError, match="already expert-parallel"):
            shard_experts(ep)
        with pytest.raises(ValueError, match=r"no dynroute\.layers\.MoE"):
            shard_model_experts(nn.Sequential(nn.Linear(8, 8)))
        net = shard_model_experts(nn.Sequential(nn.Linear(8, 8), nn.Sequential(MoE(8, 16, 2))))
        assert isinstance(net[1][0], ExpertParallelMoE)
        assert expert_parameter_names(net) == ["1.0.experts.gate_up", "1.0.experts.down"]


def test_local_routing_sorts_received_rows_by_local_expert():
    # 3 source ranks x 2 local experts; rows arrive grouped by source, then expert.
    counts = torch.tensor([[2, 1], [0, 3], [1, 0]])
    rows = torch.arange(7.0)[:, None].expand(7, 4)
    r = local_routing(counts, rows)
    arrival_expert = [0, 0, 1, 1, 1, 1, 0]
    assert r.expert.tolist() == sorted(arrival_expert)
    assert [arrival_expert[t] for t in r.token.tolist()] == r.expert.tolist()
    assert r.expert_counts().tolist() == [3, 4] and r.num_tokens == 7
    assert local_routing(torch.zeros(2, 2, dtype=torch.long), rows[:0]).num_assignments == 0


def test_measure_comm_counts_every_exchange():
    moe = MoE(8, 16, 4, router="top_k", k=2)
    with local_group(), measure_comm() as meter:
        y, _ = shard_experts(moe)(torch.randn(5, 8))
        y.sum().backward()
    # forward: counts + rows out + rows back; backward: the two row exchanges reversed
    assert meter.calls == 5
    assert meter.bytes_sent == 0 and meter.rows_sent == 0  # one rank: nothing leaves it
    assert meter.seconds >= 0


def test_measure_comm_counts_the_pipelined_exchanges_too():
    moe = MoE(8, 16, 4, router="top_k", k=2)
    with local_group(), measure_comm() as meter:
        ep = shard_experts(moe)
        set_ep_schedule(ep, 2)
        y, _ = ep(torch.randn(5, 8))
        y.sum().backward()
    # one counts exchange for both chunks; per chunk rows out + back, forward and backward
    assert meter.calls == 1 + 2 * 2 * 2
    assert len(meter.exchanges) == 8 and meter.bytes_sent == 0


def test_launch_command_is_a_loopback_torchrun():
    cmd = launch_command(3, ["train", "--expert-parallel", "3"], "dynroute.cli")
    assert cmd[cmd.index("--nproc-per-node") + 1] == "3"
    assert cmd[cmd.index("--master-addr") + 1] == "127.0.0.1"
    assert cmd[-5:] == ["-m", "dynroute.cli", "train", "--expert-parallel", "3"]
    with pytest.raises(ValueError, match="nproc"):
        launch_command(0, [], "dynroute.cli")


def test_deepcopy_shares_the_process_group():
    with local_group():
        group = torch.distributed.new_group()
        ep = shard_experts(MoE(8, 16, 4), group)
        set_ep_schedule(ep, 2, HierarchicalExchange(topology(1, group)))
        twin = copy.deepcopy(ep)
        assert twin.group is group and twin.experts.down is not ep.experts.down
        assert twin.exchange is ep.exchange and twin.chunks == 2
        x = torch.randn(3, 8)
        torch.testing.assert_close(twin(x)[0], ep(x)[0])


def test_per_expert_layout_is_refused_with_a_clear_error():
    with local_group(), pytest.raises(ValueError, match="expert_layout='stacked'"):
        shard_experts(MoE(8, 16, 2, expert_layout="per_expert"))
