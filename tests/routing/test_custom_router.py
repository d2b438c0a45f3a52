"""A router defined in a test-only module runs everywhere a built-in one does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from dynroute.layers import MoE
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.routing import ROUTERS, make_router, parse_router
from hf.tiny_models import build_tiny
from routing.my_router_plugin import MyRouter
from tiny_runs import CLI_TRAIN, cli_env, run_cli, tiny_run

HERE = Path(__file__).parent


def test_registered_and_round_trips_through_dict_and_text() -> None:
    assert ROUTERS["my_router"] is MyRouter
    router = make_router("my_router:k=1")
    assert router == MyRouter(k=1) and router.to_dict() == {"name": "my_router", "k": 1}
    assert make_router(router.to_dict()) == router
    assert parse_router("my_router:k=1") == {"name": "my_router", "k": 1}
    assert router.describe() == "my_router(k=1)" and router.extra_logits == 0


def test_moe_layer_uses_it() -> None:
    moe = MoE(16, 32, num_experts=4, router="my_router", k=1)
    y, aux = moe(torch.randn(5, 16))
    assert y.shape == (5, 16) and aux.mean_experts == 1.0
    assert moe.gate.out_features == 4 and "my_router(k=1)" in repr(moe)


def test_config_survives_save_and_load(tmp_path: Path) -> None:
    cfg = DynMoEConfig(
        vocab_size=32, d_model=16, n_layers=1, n_heads=2, d_ff=16, num_experts=4,
        router={"name": "my_router", "k": 1},
    )  # fmt: skip
    DynMoEForCausalLM(cfg).save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["router"]
    assert saved == {"name": "my_router", "k": 1}
    loaded = DynMoEForCausalLM.from_pretrained(tmp_path)
    assert loaded.config.router == {"name": "my_router", "k": 1}
    out = loaded(torch.randint(0, 32, (1, 6)))
    assert out.experts_per_layer.tolist() == [1.0]


def test_apply_routing_on_a_transformers_model() -> None:
    from dynroute.hf import apply_routing, reset_routing_stats, routing_config, routing_stats

    ids = torch.randint(0, 64, (1, 8))
    model = apply_routing(build_tiny("olmoe"), "my_router", k=1)
    with torch.no_grad():
        model(ids)
    assert routing_stats(model)["mean_experts"] == 1.0
    layers = routing_config(model)["layers"].values()
    assert all(entry == {"router": "my_router", "k": 1} for entry in layers)
    # a field k left out takes the model's own k (2 in the tiny models), as top_k does
    apply_routing(model, "my_router")
    reset_routing_stats(model)
    with torch.no_grad():
        model(ids)
    assert routing_stats(model)["mean_experts"] == 2.0


def _cli(args: list[str], cwd: Path, plugins: bool = True) -> subprocess.CompletedProcess[str]:
    env = cli_env(HERE, plugins="my_router_plugin" if plugins else None)
    return run_cli(*args, env=env, cwd=cwd, timeout=300)


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_cli_train_with_the_plugin_router(tmp_path: Path) -> None:
    config = tiny_run(tmp_path, ["textwrap.py"], train=CLI_TRAIN)
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--out", str(out), "--no-progress", "--steps", "4"]
    done = _cli([*args, "--router", "my_router:k=1"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "1.00 experts/token" in done.stdout
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["router"] == {"name": "my_router", "k": 1}
    saved = json.loads((out / "model" / "config.json").read_text())["router"]
    assert saved == {"name": "my_router", "k": 1}

    # without the plugin the name is unknown: one clear line, no traceback, nothing written
    other = tmp_path / "other"
    args = ["train", "--config", str(config), "--out", str(other), "--router", "my_router:k=1"]
    done = _cli(args, tmp_path, plugins=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown router 'my_router'" in done.stderr and "DYNROUTE_PLUGINS" in done.stderr
    assert not other.exists()

    # the trained model read without the plugin: the whole advice, not "damaged"
    done = _cli(["eval", str(out), "--no-progress"], tmp_path, plugins=False)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    line = done.stderr.strip()
    assert len(line.splitlines()) == 1 and "files are intact" in line, line
    assert line.endswith("entry point)") and "DYNROUTE_PLUGINS=your.module" in line, line
    assert str(out / "model" / "config.json") in line and "corrupt" not in line


@pytest.mark.parametrize(
    ("router", "message"),
    [
        ("top_k:k=0", "k must be in"),
        ("my_router:q=1", "unknown argument"),
        ("top_p:p", "key=value"),
    ],
)
def test_bad_router_text_fails_clearly(router: str, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        make_router(router)
