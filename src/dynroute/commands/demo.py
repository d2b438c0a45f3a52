"""`dynroute demo`: the main job (for now: how top-k and top-p spend experts on one batch)."""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table


def routing_demo(tokens: int = 2048, experts: int = 16, seed: int = 0) -> Table:
    """Route one random batch with each router and tabulate experts per token and losses."""
    import torch

    from dynroute.layers import MoE

    torch.manual_seed(seed)
    x = torch.randn(tokens, 64)
    table = Table(title=f"{tokens} random tokens, {experts} experts, one MoE layer")
    for col in ("router", "mean experts/token", "min", "max", "load balance", "entropy"):
        table.add_column(col, justify="right" if col != "router" else "left")
    settings = [
        ("top_k", {"k": 2}),
        ("top_p", {"p": 0.4}),
        ("top_p", {"p": 0.6}),
        ("null_experts", {"k": 3, "num_null": 4}),
        ("expert_choice", {"capacity_factor": 2.0}),
    ]
    for name, kwargs in settings:
        torch.manual_seed(seed)
        moe = MoE(64, 128, experts, router=name, **kwargs)
        with torch.no_grad():
            _, aux = moe(x)
        per_token = aux.routing.experts_per_token()
        label = name + "(" + ", ".join(f"{k}={v}" for k, v in kwargs.items()) + ")"
        table.add_row(
            label,
            f"{aux.mean_experts:.2f}",
            str(int(per_token.min())),
            str(int(per_token.max())),
            f"{aux.load_balance.item():.3f}",
            f"{aux.dynamic.item():.3f}",
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        tokens: int = typer.Option(2048, help="Tokens in the random batch."),
        experts: int = typer.Option(16, help="Number of experts."),
        seed: int = typer.Option(0, help="Random seed."),
    ) -> None:
        """Show how each router spends experts on one batch."""
        Console().print(routing_demo(tokens, experts, seed))
