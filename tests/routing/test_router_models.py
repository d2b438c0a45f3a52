"""Every registered router inside DynMoEForCausalLM (the first of its ``Router.examples``):
state saved and loaded, causality, the HF adapters, and a `dynroute train` smoke run per
router in a subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.routing import ROUTERS, make_router, step_routers
from router_cases import FIRST, declared
from tiny_runs import SMOKE_DATA, SMOKE_TRAIN, cli_env, run_cli, tiny_run

V = 40


def tiny(router: str, **kw: object) -> DynMoEForCausalLM:
    cfg = DynMoEConfig(
        vocab_size=V, d_model=16, n_layers=2, n_heads=2, d_ff=16, num_experts=4, router=router, **kw
    )
    return DynMoEForCausalLM(cfg)


@pytest.mark.parametrize("spec", FIRST)
def test_router_state_round_trips_through_save_and_load(spec, tmp_path):
    torch.manual_seed(0)
    model = tiny(spec).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for step in range(1, 4):  # moves p, the bias, λ, k, the GRU, the scales
        ids = torch.randint(0, V, (2, 8))
        model(ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        step_routers(model, step, 4)
    model.save_pretrained(tmp_path)
    loaded = DynMoEForCausalLM.from_pretrained(tmp_path)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert torch.equal(want[key], got[key]), key
    ids = torch.randint(0, V, (2, 8))
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(ids).logits, model.eval()(ids).logits)


@pytest.mark.parametrize("spec", [s for s in FIRST if declared(s).causal])
def test_future_tokens_do_not_change_past_logits(spec):
    model = tiny(spec).eval()
    ids = torch.randint(0, V, (2, 10))
    changed = ids.clone()
    changed[:, 6:] = torch.randint(0, V, (2, 4))
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :6], b[:, :6])


@pytest.fixture(scope="module")
def cli_config(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("cli")
    config = tiny_run(root, ["textwrap.py"], data=SMOKE_DATA, train=SMOKE_TRAIN)
    return config, cli_env(cache=root / "cache")


def _train(config: Path, env: dict[str, str], out: Path, router: str):
    module = ROUTERS[router.partition(":")[0]].__module__
    if not module.startswith("dynroute."):  # a test's plugin router, registered
        env = {**env, "DYNROUTE_PLUGINS": module}  # in this process: the CLI imports it too
    args = ["train", "--config", config, "--out", out, "--router", router, "--no-progress"]
    return run_cli(*args, env=env, timeout=300)


@pytest.mark.slow
@pytest.mark.parametrize("spec", FIRST)
def test_cli_trains_every_router(spec, cli_config, tmp_path):
    config, env = cli_config
    done = _train(config, env, tmp_path / "run", spec)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "experts/token" in done.stdout
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())["router"]
    assert saved == make_router(spec).to_dict()
    model = DynMoEForCausalLM.from_pretrained(tmp_path / "run" / "model")
    assert model.config.router == saved


def test_cli_bad_router_knob_fails_in_one_line(cli_config, tmp_path):
    config, env = cli_config
    bad = _train(config, env, tmp_path / "bad", "dtop_p:target=9")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "target 9 exceeds the layer's 4 experts" in bad.stderr


def stateless_refusal(spec: str) -> str | None:
    """The message of a router that cannot route without its layer (RMoE, SMoE-Dropout)."""
    router = make_router(spec)
    try:
        router(torch.zeros(2, 4 + router.extra_logits))
    except ValueError as err:
        return str(err)
    return None


@pytest.mark.parametrize("spec", FIRST)
def test_hf_adapters_route_with_the_stateless_rule_or_say_they_cannot(spec):
    from dynroute.hf import apply_routing, routing_stats
    from hf.tiny_models import build_tiny

    model = build_tiny("olmoe")
    refusal = stateless_refusal(spec)
    if refusal is not None:
        assert "not supported in the HF adapters" in refusal
        with pytest.raises(ValueError, match="not supported in the HF adapters"):
            apply_routing(model, spec)
        return
    if make_router(spec).extra_logits:  # a pretrained gate has no null columns
        with pytest.raises(TypeError, match="null_logit"):
            apply_routing(model, spec)
        return
    apply_routing(model, spec)
    with torch.no_grad():
        model(torch.randint(0, 64, (1, 8)))
    stats = routing_stats(model)
    assert stats["tokens"] == 8 and 0.0 <= stats["mean_experts"] < float("inf")
