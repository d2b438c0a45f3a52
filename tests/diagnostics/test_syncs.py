"""Host syncs of the MoE hot path, counted exactly on CPU (and in CUDA's error mode on a GPU)."""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dynroute.diagnostics import SyncCounter
from dynroute.dispatch import dense, grouped, loop
from dynroute.layers.moe import MoE
from dynroute.routing import make_router
from router_cases import EXAMPLES, declared

#: every router example whose router pins its syncs (``Router.host_syncs``: one forward +
#: backward on the device paths: 0 where A = N·k is static, 1 for the nonzero that sizes A
#: where the number of assignments depends on the data)
PINNED = [spec for spec in EXAMPLES if declared(spec).host_syncs is not None]
# dispatch path -> (dispatch, expert layout, extra syncs: the paths that read group sizes on
# the host to loop over experts, which the CUDA bf16 path never takes)
PATHS = {
    "grouped_mm": (grouped, "stacked", 0),
    "autograd": (functools.partial(grouped, path="autograd"), "stacked", 0),
    "dense": (dense, "stacked", 0),
    "slices": (functools.partial(grouped, path="slices"), "stacked", 1),
    "per_expert": (grouped, "per_expert", 1),
    "loop": (loop, "stacked", 1),
}


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def layer_syncs(router: str, path: str, tokens: int = 48, device: str = "cpu") -> SyncCounter:
    dispatch, layout, _ = PATHS[path]
    moe = MoE(16, 32, 8, router=make_router(router), dispatch=dispatch, expert_layout=layout)
    moe = moe.to(device)
    x = torch.randn(tokens, 16, device=device, requires_grad=True)
    with SyncCounter(trace=True) as syncs:
        y, aux = moe(x)
        (y.square().mean() + aux.loss).backward()
    assert x.grad is not None and moe.experts.parameters().__next__().grad is not None
    return syncs


# every path with one router of static and one of data-dependent A; every pinned router
# example on the grouped_mm path
CASES = list(
    dict.fromkeys(
        [(r, p) for r in ("top_k:k=2", "top_p:p=0.4") for p in PATHS]
        + [(r, "grouped_mm") for r in PINNED]
    )
)


@pytest.mark.parametrize(("router", "path"), CASES)
def test_layer_syncs_exact(router: str, path: str) -> None:
    syncs = layer_syncs(router, path)
    expected = declared(router).host_syncs + PATHS[path][2]
    assert syncs.total == expected, syncs.sites


def test_most_routers_pin_their_syncs() -> None:
    """The table is the routers' own declarations; it covers static and dynamic rules."""
    counts = {declared(spec).host_syncs for spec in PINNED}
    assert {0, 1} <= counts and len(PINNED) >= len(EXAMPLES) // 2


def test_top_k_grouped_has_no_sync_and_top_p_only_nonzero() -> None:
    assert layer_syncs("top_k:k=2", "grouped_mm").by_op == {}
    assert layer_syncs("top_p:p=0.4", "grouped_mm").by_op == {"nonzero": 1}


@settings(max_examples=5)
@given(
    tokens=st.integers(1, 40),
    k=st.integers(1, 4),
    p=st.floats(0.05, 1.0),
)
def test_sync_counts_do_not_depend_on_the_batch(tokens: int, k: int, p: float) -> None:
    assert layer_syncs(f"top_k:k={k}", "grouped_mm", tokens).total == 0
    assert layer_syncs(f"top_p:p={p}", "grouped_mm", tokens).total == 1


def test_counter_sees_each_kind_of_sync() -> None:
    x = torch.tensor([0, 2, 0, 1])
    mask = x > 0
    with SyncCounter() as syncs:
        x.sum().item()
        int(x[0])
        bool(x[1])
        x.nonzero()
        torch.bincount(x, minlength=8)
        torch.unique(x)
        x.masked_select(mask)
        x[mask]
        torch.repeat_interleave(x, x)
        x.tolist()
        x.cpu()
        x.to("cpu")
        x.numpy()
    assert syncs.by_op == {
        "item": 3,
        "nonzero": 1,
        "bincount": 1,
        "unique": 1,
        "masked_select": 1,
        "bool_index": 1,
        "repeat_interleave": 1,
        "tolist": 1,
        "cpu": 2,
        "numpy": 1,
    }
    assert syncs.total == 13


def test_counter_ignores_static_shape_ops_and_restores_tensor_methods() -> None:
    x = torch.tensor([3, 1, 2])
    tolist = torch.Tensor.tolist
    with SyncCounter() as syncs:
        order = x.argsort()
        torch.searchsorted(x[order], torch.arange(4))
        torch.repeat_interleave(x, x, output_size=6)
        torch.zeros(4, dtype=torch.long).scatter_add_(0, x, torch.ones_like(x))
        x.cumsum(0).to(torch.float32)
        torch.nonzero_static(x, size=3)
        torch.ones(5, 3)[order]
    assert syncs.total == 0
    assert torch.Tensor.tolist is tolist


def test_counter_counts_syncs_in_backward() -> None:
    class ReadsInBackward(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):  # type: ignore[no-untyped-def,override]
            return x * 2

        @staticmethod
        def backward(ctx, grad):  # type: ignore[no-untyped-def,override]
            grad.tolist()
            return grad * 2

    x = torch.ones(3, requires_grad=True)
    y = ReadsInBackward.apply(x).sum()
    with SyncCounter() as syncs:
        y.backward()
    assert syncs.by_op == {"tolist": 1}


def test_nan_logits_still_raise_a_clear_error_without_a_sync() -> None:
    moe = MoE(16, 32, 4, router="top_k", k=2)
    x = torch.randn(5, 16)
    x[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or inf in 1 of 5 token\(s\)"):
        moe(x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("router", ["top_k:k=2", "expert_choice"])
def test_cuda_top_k_runs_in_sync_error_mode(router: str) -> None:
    moe = MoE(256, 512, 8, router=make_router(router)).cuda().to(torch.bfloat16)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y, aux = moe(x)  # warm-up: lazy CUDA init and autotuning may sync once
    (y.float().square().mean() + aux.loss).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        y, aux = moe(x)
        (y.float().square().mean() + aux.loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_top_p_syncs_at_most_once() -> None:
    moe = MoE(256, 512, 8, router="top_p", p=0.4).cuda().to(torch.bfloat16)
    x = torch.randn(512, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    y, aux = moe(x)
    (y.float().square().mean() + aux.loss).backward()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            y, aux = moe(x)
            (y.float().square().mean() + aux.loss).backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    assert len(syncs) <= 1, [str(w.message) for w in syncs]
