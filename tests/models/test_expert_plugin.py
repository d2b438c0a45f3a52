"""An expert kind defined as one module outside dynroute (only ``@register_experts``) is
found through ``DYNROUTE_PLUGINS`` and works from a model config and a TOML run config."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from dynroute.layers import MoE
from dynroute.layers.experts import EXPERT_KINDS
from dynroute.models import DynMoEConfig, DynMoEForCausalLM
from dynroute.train import load_config

MODULE = "dynroute_test_expert_plugin"
KIND = "scaled_relu_mlp"
PLUGIN = f'''
import torch
from torch import nn

from dynroute.dispatch.gemm import grouped_linear
from dynroute.layers.experts import Experts, register_experts


@register_experts("{KIND}")
class ScaledReLUMLPExperts(Experts):
    """E experts: relu(x @ w1[e]) @ w2[e] * scale."""

    def __init__(self, d_model, d_ff, num_experts, scale=1.0):
        super().__init__(num_experts, d_model)
        self.scale = scale
        self.w1 = nn.Parameter(torch.randn(num_experts, d_model, d_ff) / d_model**0.5)
        self.w2 = nn.Parameter(torch.randn(num_experts, d_ff, d_model) / d_ff**0.5)

    def forward(self, rows, offsets):
        h = torch.relu(grouped_linear(rows, self.w1, offsets))
        return grouped_linear(h, self.w2, offsets) * self.scale
'''
SIZES = dict(d_model=16, n_layers=1, n_heads=2, d_ff=24, num_experts=4)


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The plugin module in a temporary folder on sys.path, named in DYNROUTE_PLUGINS;
    unknown before each test, unregistered after it."""
    (tmp_path / f"{MODULE}.py").write_text(textwrap.dedent(PLUGIN))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("DYNROUTE_PLUGINS", MODULE)
    EXPERT_KINDS.pop(KIND, None)
    sys.modules.pop(MODULE, None)
    yield tmp_path
    EXPERT_KINDS.pop(KIND, None)
    sys.modules.pop(MODULE, None)


def test_a_plugin_kind_is_found_by_name_and_runs_in_the_layer(plugin: Path) -> None:
    assert KIND not in EXPERT_KINDS
    moe = MoE(16, 24, 4, experts=f"{KIND}:scale=0.5", router="top_k", k=2)
    assert EXPERT_KINDS[KIND].__module__ == MODULE and moe.experts.scale == 0.5
    reference = MoE(16, experts=moe.experts, router="top_k", k=2, dispatch="loop")
    reference.gate = moe.gate
    x = torch.randn(7, 16)
    torch.testing.assert_close(moe(x)[0], reference(x)[0])


def test_a_plugin_kind_from_a_model_config_survives_save_and_load(plugin: Path) -> None:
    config = DynMoEConfig(vocab_size=32, **SIZES, experts={"name": KIND, "scale": 0.5})
    model = DynMoEForCausalLM(config).eval()
    model.save_pretrained(plugin / "model")
    loaded = DynMoEForCausalLM.from_pretrained(plugin / "model").eval()
    assert loaded.config.experts == {"name": KIND, "scale": 0.5}
    assert type(loaded.moe_layers()[0].experts).__name__ == "ScaledReLUMLPExperts"
    ids = torch.randint(0, 32, (1, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_a_plugin_kind_from_a_toml_model_table(plugin: Path) -> None:
    path = plugin / "run.toml"
    sizes = "\n".join(f"{k} = {v}" for k, v in SIZES.items())
    path.write_text(f'[model]\n{sizes}\nexperts = {{name = "{KIND}", scale = 0.5}}\n')
    cfg = load_config(path)
    assert cfg.model["experts"] == {"name": KIND, "scale": 0.5}
    model = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, **cfg.model))
    assert model.moe_layers()[0].experts.scale == 0.5


def test_a_wrong_experts_spec_in_toml_fails_at_load_naming_the_file(plugin: Path) -> None:
    path = plugin / "bad.toml"
    path.write_text(f'[model]\nexperts = {{name = "{KIND}", scal = 0.5}}\n')
    with pytest.raises(ValueError, match=r"bad.toml \[model\]: .*unknown argument\(s\) \['scal'\]"):
        load_config(path)
