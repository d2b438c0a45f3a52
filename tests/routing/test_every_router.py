"""What every registered router must do, read from the registry (``Router.examples``):
valid Routings, float32 weights with gradients, the layer's dispatch paths agreeing, its
state saved with the layer, a config that validates. A router added as one module (or a
plugin) runs through all of it; the last test checks that it does."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import dispatch_cases
import router_cases
from dynroute.frontier import SWEEPS, sweep_points
from dynroute.layers import MoE
from dynroute.routing import ROUTERS, make_router, router_class, router_layers, step_routers
from dynroute.train.config import RunConfig
from dynroute.train.validate import check_run_config
from router_cases import EXAMPLES, declared, route_fresh
from routing_checks import check_invariants
from strategies import logits as logits_st


def with_extra_columns(spec: str, logits: torch.Tensor) -> torch.Tensor:
    """``logits`` [N, E] with the router's extra gate columns appended (copies of the first
    ones: ties between a real and an extra column are part of the test)."""
    extra = make_router(spec).extra_logits
    return torch.cat([logits, logits[:, :extra]], dim=1)


@given(logits_st(min_experts=4), st.sampled_from(EXAMPLES), st.booleans())
def test_routing_invariants(logits, spec, training):
    logits = logits[:, : logits.shape[1] // 2 * 2]  # examples hold for every even E >= 4
    n, e = logits.shape
    r = route_fresh(spec, with_extra_columns(spec, logits), training=training)
    check_invariants(r, n)
    assert r.num_experts == e


@pytest.mark.parametrize("spec", EXAMPLES)
def test_weights_are_float32_and_differentiable(spec):
    logits = with_extra_columns(spec, torch.randn(24, 6) * 2).requires_grad_()
    r = route_fresh(spec, logits, seq_len=6)
    assert torch.isfinite(r.weight).all() and r.weight.dtype == torch.float32
    if declared(spec).constant_weights:  # random or frozen routing: no gradient to the gate
        assert not r.weight.requires_grad
        return
    (r.weight * torch.arange(r.num_assignments)).sum().backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    if not torch.all(r.weight == 1):  # renormalised top-1: weights of 1 carry no gradient
        assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("spec", EXAMPLES)
def test_empty_input_and_any_logit_dtype(spec):
    assert route_fresh(spec, with_extra_columns(spec, torch.zeros(0, 4))).num_assignments == 0
    for dtype in (torch.bfloat16, torch.float16, torch.float64):
        r = route_fresh(spec, with_extra_columns(spec, torch.randn(5, 4)).to(dtype))
        assert r.weight.dtype == torch.float32 and r.probs.dtype == torch.float32


@pytest.mark.parametrize("spec", EXAMPLES)
def test_layer_paths_agree_and_state_is_a_submodule(spec):
    x = torch.randn(2, 7, 16)
    outs, grads = [], []
    for dispatch in ("loop", "grouped", "dense"):
        torch.manual_seed(0)
        moe = MoE(16, 24, 4, router=spec, dispatch=dispatch).train()
        y, aux = moe(x)
        ((y * torch.linspace(-1, 1, y.numel()).reshape(y.shape)).sum() + aux.loss).backward()
        outs.append(y)
        grads.append([p.grad for p in moe.parameters()])
    for y, g in zip(outs[1:], grads[1:], strict=True):
        torch.testing.assert_close(y, outs[0], atol=1e-5, rtol=1e-5)
        for a, b in zip(g, grads[0], strict=True):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if not moe.route.stateful:
        assert moe.router_state is None and router_layers(moe) == []
    else:
        state_keys = [k for k in moe.state_dict() if k.startswith("router_state.")]
        assert state_keys, "the router's state is saved with the layer"
        assert router_layers(moe) == [(moe.route, moe.router_state)]
    if not declared(spec).constant_weights:
        assert grads[0][0].abs().sum() > 0, "the gate learns"


@pytest.mark.parametrize("spec", EXAMPLES)
def test_stateful_means_a_state(spec):
    router = make_router(spec)
    assert (router.make_state(4, 4) is not None) == router.stateful


def test_stateless_routers_are_unchanged_by_the_seam():
    moe = MoE(16, 24, 4, router="top_p:p=0.4")
    assert moe.router_state is None and not make_router("top_p:p=0.4").stateful
    step_routers(moe, 1, 10)  # a no-op


def tiny_run_config(spec: str) -> RunConfig:
    model = {"router": spec, "d_model": 16, "n_layers": 1, "n_heads": 2, "num_experts": 4}
    return RunConfig.from_dict({"model": model})


@pytest.mark.parametrize("spec", EXAMPLES)
def test_every_example_passes_run_validation(spec):
    """``dynroute train`` validates the router the way its layer runs it (the stateful
    path), so no registered router stops there (RMoE and SMoE-Dropout did)."""
    check_run_config(tiny_run_config(spec), "tiny.toml")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("rmoe:k=5", "k must be in"),
        ("smoe_dropout:k_end=5", "k_end must be in"),
        ("dtop_p:target=9", "exceeds the layer's 4 experts"),
    ],
)
def test_validation_runs_the_checks_of_the_layer_path(spec, message):
    with pytest.raises(ValueError, match=f"tiny.toml \\[model\\]: .*{message}"):
        check_run_config(tiny_run_config(spec), "tiny.toml")


ONE_FILE_ROUTERS = '''
from dataclasses import dataclass
from typing import ClassVar

from dynroute.routing import Router, SweepSpec, register_router, top_k


@register_router("one_file_plain")
@dataclass(frozen=True)
class Plain(Router):
    """Declares nothing: tested with its default construction, no sweep."""

    def __call__(self, logits):
        return top_k(logits, 1, normalize=False)


@register_router("one_file_swept")
@dataclass(frozen=True)
class Swept(Router):
    """Declares its examples and a sweep."""

    examples: ClassVar[tuple[str, ...]] = ("one_file_swept:k=2",)
    sweeps: ClassVar = {"one_file_swept": SweepSpec("k", {1.0: 1, 2.0: 2}, source="exact")}
    host_syncs: ClassVar = 0

    k: int

    def __call__(self, logits):
        return top_k(logits, self.k, normalize=False)
'''


@pytest.fixture
def one_file_routers(tmp_path, monkeypatch):
    """Two routers in a module of their own, found the way a user's are (a plugin)."""
    (tmp_path / "one_file_routers.py").write_text(textwrap.dedent(ONE_FILE_ROUTERS))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DYNROUTE_PLUGINS", "one_file_routers")
    names = ("one_file_plain", "one_file_swept")
    try:
        yield [router_class(name) for name in names]  # unknown names: the plugins load
    finally:
        for name in names:
            ROUTERS.pop(name, None)
        sys.modules.pop("one_file_routers", None)


def test_a_router_in_one_module_joins_every_registry_driven_list(one_file_routers):
    plain, _ = one_file_routers
    examples = router_cases.examples()
    assert examples[-2:] == ["one_file_plain", "one_file_swept:k=2"]
    assert router_cases.first_examples()[-2:] == ["one_file_plain", "one_file_swept:k=2"]
    # the test modules' lists are these, read when they are imported (before this test ran)
    assert list(dispatch_cases.ROUTERS) == router_cases.EXAMPLES
    assert set(router_cases.EXAMPLES) <= set(examples)
    # ... and each list's test passes for the new routers
    for spec in examples[-2:]:
        logits = torch.randn(9, 4)
        check_invariants(route_fresh(spec, logits), 9)
        check_run_config(tiny_run_config(spec), "tiny.toml")
        assert dispatch_cases.route_case(spec, logits).num_assignments > 0
    assert (plain.host_syncs, plain.constant_weights, dict(plain.sweeps)) == (None, False, {})
    # the frontier's sweep table reads the declarations
    assert "one_file_plain" not in SWEEPS and SWEEPS["one_file_swept"].router == "one_file_swept"
    assert [p.name for p in sweep_points(["one_file_swept"])] == [
        "one_file_swept-k1",
        "one_file_swept-k2",
    ]


def test_a_router_that_needs_arguments_and_declares_no_example_has_none():
    from dynroute.routing import TopP

    assert TopP.examples and type("Bare", (TopP,), {"examples": ()}).example_specs() == ()
