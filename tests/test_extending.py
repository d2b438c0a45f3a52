"""docs/extending.md is true: a router, an expert kind and a query router are one module each.

A temporary package outside dynroute holds three modules, each with one class and its
``register_*`` decorator and nothing else; ``DYNROUTE_PLUGINS`` names them. Then, in real
``dynroute`` processes: a config file and the command-line flags train a model with the
router and the expert kind, the saved model evaluates, and the query router is fitted,
saved, loaded and evaluated from the command line.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tiny_runs import SMOKE_DATA, SMOKE_TRAIN, cli_env, run_cli, tiny_run

ROUTER = '''
from dataclasses import dataclass

import torch

from dynroute.routing import Router, Routing, register_router


@register_router("ext_threshold")
@dataclass(frozen=True)
class ExtThreshold(Router):
    """Every expert with probability over tau; at least the most probable one."""

    tau: float = 0.3

    def __call__(self, logits):
        probs = torch.softmax(logits.float(), dim=-1)
        mask = (probs > self.tau) | (probs == probs.amax(dim=-1, keepdim=True))
        return Routing.from_mask(mask, probs, probs)
'''

EXPERTS = '''
import torch
from torch import nn

from dynroute.dispatch.gemm import grouped_linear
from dynroute.layers.experts import Experts, register_experts


@register_experts("ext_relu")
class ExtReLUExperts(Experts):
    """E experts: relu(x @ w1[e]) @ w2[e]."""

    def __init__(self, d_model, d_ff, num_experts):
        super().__init__(num_experts, d_model)
        self.w1 = nn.Parameter(torch.randn(num_experts, d_model, d_ff) / d_model**0.5)
        self.w2 = nn.Parameter(torch.randn(num_experts, d_ff, d_model) / d_ff**0.5)

    def forward(self, rows, offsets):
        return grouped_linear(torch.relu(grouped_linear(rows, self.w1, offsets)), self.w2, offsets)
'''

QUERY_ROUTER = '''
import dataclasses

import torch

from dynroute.llm import QueryRouter, register_query_router


@register_query_router("ext_mean")
@dataclasses.dataclass(eq=False)
class ExtMean(QueryRouter):
    """Each model's mean quality on the training queries, the same for every query."""

    uses_embedding = False

    def _fit(self, train, z):
        self.tensors["mean"] = torch.as_tensor(train.quality, dtype=torch.float32).mean(0)

    def _predict(self, queries, z):
        return self.tensors["mean"].expand(len(queries), -1)
'''

#: the smoke run, with the plugin router and expert kind, evaluated at its end
MODEL = {
    "d_model": 16,
    "d_ff": 16,
    "router": {"name": "ext_threshold", "tau": 0.2},
    "experts": {"name": "ext_relu"},
}
TRAIN = {**SMOKE_TRAIN, "eval_interval": 3}

PLUGINS = "my_ext.routers,my_ext.experts,my_ext.query_routers"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A folder with the package ``my_ext`` (three modules) and a tiny run config."""
    package = tmp_path / "my_ext"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name, code in {
        "routers": ROUTER,
        "experts": EXPERTS,
        "query_routers": QUERY_ROUTER,
    }.items():
        (package / f"{name}.py").write_text(textwrap.dedent(code))
    tiny_run(
        tmp_path, ["textwrap.py"], config="run.toml", model=MODEL, data=SMOKE_DATA, train=TRAIN
    )
    return tmp_path


def dynroute(folder: Path, *args: str | Path, plugins: str | None = PLUGINS):
    env = cli_env(folder, cache=folder / "cache", plugins=plugins)
    return run_cli(*args, env=env, cwd=folder, timeout=300)


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_router_and_expert_kind_from_a_config_and_from_flags(project: Path) -> None:
    done = dynroute(project, "train", "--config", "run.toml", "--out", "a", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    saved = json.loads((project / "a" / "model" / "config.json").read_text())
    assert saved["router"] == {"name": "ext_threshold", "tau": 0.2}
    assert saved["experts"]["name"] == "ext_relu"
    evaluated = dynroute(project, "eval", "a", "--json")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout)["router"].startswith("ext_threshold")

    flags = ["--router", "ext_threshold:tau=0.5", "--experts", "ext_relu"]
    done = dynroute(project, "train", "--config", "run.toml", "--out", "b", "--no-progress", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((project / "b" / "run.json").read_text())
    assert run["model"]["router"] == {"name": "ext_threshold", "tau": 0.5}

    # without the plugins: one line naming the unknown name and the remedy, nothing written
    alone = dynroute(project, "train", "--config", "run.toml", "--out", "c", plugins=None)
    assert alone.returncode == 2 and "Traceback" not in alone.stderr
    assert "ext_threshold" in alone.stderr and "DYNROUTE_PLUGINS" in alone.stderr
    assert not (project / "c").exists()


@pytest.mark.slow  # ~20 s: the fast suite keeps under 15 min on 2 cores
def test_query_router_from_the_command_line_and_its_saved_config(project: Path) -> None:
    data = ["--data", "routellm-gsm8k"]
    done = dynroute(project, "llm", "fit", *data, "--query-router", "ext_mean", "--out", "qr")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((project / "qr" / "config.json").read_text())["router"]["name"] == "ext_mean"
    routed = dynroute(project, "llm", "route", "qr", "What is 17 * 23?")
    assert routed.returncode == 0, routed.stderr[-3000:]
    compared = dynroute(
        project, "llm", "eval", *data, "--query-router", "ext_mean", "--query-router", "best_single"
    )
    assert compared.returncode == 0, compared.stderr[-3000:]
    assert "ext_mean" in compared.stdout
