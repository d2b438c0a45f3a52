"""`dynroute llm ...`: fit, evaluate and use routers that send each query to one LLM."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

DATA_HELP = "A shipped dataset: llmrouter, routellm-mmlu, routellm-gsm8k."
TRAIN_HELP = "Outcome table to train on (long JSONL/CSV, RouterBench CSV/pickle, wide JSONL)."


def _fail(err: Exception) -> typer.Exit:
    from rich.console import Console

    Console(stderr=True, soft_wrap=True).print(f"[red]error:[/red] {err}", markup=True)
    return typer.Exit(2)


def _names(router: str) -> list[str]:
    from dynroute.llm.routers import ROUTERS

    return sorted(ROUTERS) if router == "all" else [r for r in router.split("+") if r]


def register(app: typer.Typer) -> None:
    llm = typer.Typer(
        help="Route queries among LLMs: fit, evaluate, report, route, serve.",
        no_args_is_help=True,
        add_completion=False,
    )
    app.add_typer(llm, name="llm")

    def _evaluate(data, train, test, router, seed, test_size, quiet):  # type: ignore[no-untyped-def]
        from rich.progress import Progress

        from dynroute.llm.data import resolve_tables, split_by_query
        from dynroute.llm.evaluate import evaluate

        tr, te = resolve_tables(data, train, test, test_size=test_size, seed=seed)
        if te is None:  # one file: split it by query
            tr, te = split_by_query(tr, test_size, seed)
        names = _names(router)
        with Progress(disable=quiet, transient=True) as bar:
            task = bar.add_task("routers", total=len(names))

            done = iter(range(len(names)))

            def advance(name: str) -> None:
                bar.update(task, completed=next(done), description=f"fitting {name}")

            result = evaluate(names, tr, te, seed=seed, on_step=advance)
        return result

    @llm.command("eval")
    def eval_(
        data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
        train: Annotated[Path | None, typer.Option(help=TRAIN_HELP)] = None,
        test: Annotated[
            Path | None, typer.Option(help="Test table (default: split --train by query).")
        ] = None,
        router: Annotated[str, typer.Option(help="A router name, a+b+..., or all.")] = "all",
        seed: Annotated[int, typer.Option(help="Seed of the split and the routers.")] = 0,
        test_size: Annotated[float, typer.Option(help="Test share when splitting.")] = 0.2,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    ) -> None:
        """Fit routers on the training table and score their cost–quality curves (AIQ)."""
        import json

        from rich.console import Console
        from rich.table import Table

        try:
            result = _evaluate(data, train, test, router, seed, test_size, json_out)
        except (FileNotFoundError, ValueError) as err:
            raise _fail(err) from err
        base = result["baselines"]
        if json_out:
            if len(result["routers"]) == 1:  # one router: its fields at the top level
                result = {
                    **result["routers"][0],
                    "baselines": base,
                    "train": result["train"],
                    "test": result["test"],
                    "models": result["models"],
                }
            print(json.dumps(result))
            return
        table = Table(title=f"{result['test']['source']} ({result['test']['queries']} queries)")
        for col in ("router", "AIQ", "vs zero router", "best quality", "cost saved"):
            table.add_column(col, justify="left" if col == "router" else "right")
        for r in sorted(result["routers"], key=lambda r: -r["aiq"]):
            saved = r["cost_saved_at_best_single"]
            table.add_row(
                r["router"],
                f"{r['aiq']:.4f}",
                f"{r['aiq'] - base['zero_router']['aiq']:+.4f}",
                f"{r['best_quality']:.4f}",
                "–" if saved is None else f"{saved:.1%}",
            )
        table.add_row("zero router", f"{base['zero_router']['aiq']:.4f}", "", "", "")
        Console().print(table)

    @llm.command("fit")
    def fit(
        out: Annotated[Path, typer.Option(help="Folder to save the fitted router in.")],
        data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
        train: Annotated[Path | None, typer.Option(help=TRAIN_HELP)] = None,
        router: Annotated[str, typer.Option(help="Router name (name:key=value,...).")] = "knn",
        seed: Annotated[int, typer.Option(help="Seed of the router.")] = 0,
        lam: Annotated[
            float, typer.Option("--lambda", help="Willingness to pay: quality per USD.")
        ] = 0.0,
        budget: Annotated[
            float | None, typer.Option(help="Calibrate λ to this mean USD per query.")
        ] = None,
        strong_share: Annotated[
            float | None,
            typer.Option(help="Calibrate λ so this share of queries goes to the best model."),
        ] = None,
    ) -> None:
        """Fit a router on the training table and save it (safetensors + JSON)."""
        import torch

        from dynroute.llm.data import resolve_tables
        from dynroute.llm.decide import calibrate_to_budget, calibrate_to_share
        from dynroute.llm.routers import make_router

        try:
            tr, _ = resolve_tables(data, train, None, seed=seed)
            r = make_router(router)
            r.seed = seed
            r.fit(tr)
            r.lam = lam
            if budget is not None or strong_share is not None:
                pred, cost = r.predict(tr.queries), r.estimate_cost(tr.queries)
                if budget is not None:
                    r.lam = calibrate_to_budget(pred, cost, budget)
                else:
                    best = int(torch.from_numpy(tr.quality.mean(0)).argmax())
                    r.lam = calibrate_to_share(pred, cost, best, float(strong_share))
            r.save(out)
        except (FileNotFoundError, ValueError) as err:
            raise _fail(err) from err
        print(f"saved {r.name} over {len(r.models)} models to {out} (lambda={r.lam:g})")

    @llm.command("route")
    def route(
        model_dir: Annotated[Path, typer.Argument(help="A `dynroute llm fit` --out folder.")],
        query: Annotated[list[str], typer.Argument(help="One or more queries.")],
        lam: Annotated[float | None, typer.Option("--lambda", help="Override the saved λ.")] = None,
    ) -> None:
        """Print the chosen model for each QUERY."""
        from dynroute.llm.routers import load_router

        try:
            r = load_router(model_dir)
        except (FileNotFoundError, ValueError) as err:
            raise _fail(err) from err
        for name in r.route(query, lam):
            print(name)

    @llm.command("report")
    def report(
        out: Annotated[Path, typer.Option(help="Folder for report.html and the PNG.")],
        data: Annotated[str | None, typer.Option(help=DATA_HELP)] = None,
        train: Annotated[Path | None, typer.Option(help=TRAIN_HELP)] = None,
        test: Annotated[Path | None, typer.Option(help="Test table.")] = None,
        router: Annotated[str, typer.Option(help="A router name, a+b+..., or all.")] = "all",
        seed: Annotated[int, typer.Option(help="Seed of the split and the routers.")] = 0,
        test_size: Annotated[float, typer.Option(help="Test share when splitting.")] = 0.2,
    ) -> None:
        """Evaluate routers and write an HTML report with the cost–quality plot."""
        import json

        from dynroute.llm.report import write_report

        try:
            result = _evaluate(data, train, test, router, seed, test_size, False)
        except (FileNotFoundError, ValueError) as err:
            raise _fail(err) from err
        path = write_report(result, out)
        (Path(out) / "result.json").write_text(json.dumps(result))
        print(f"wrote {path}")

    @llm.command("serve")
    def serve(
        router: Annotated[Path, typer.Option(help="A `dynroute llm fit` --out folder.")],
        backend: Annotated[
            list[str],
            typer.Option(help="NAME=URL of an OpenAI-compatible server; NAME is a router model."),
        ],
        prices: Annotated[
            Path | None,
            typer.Option(help="TOML/JSON: per-backend prices (USD/1M tokens), ids, mapping."),
        ] = None,
        port: Annotated[int, typer.Option(help="Port to listen on.")] = 8100,
        host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
        lam: Annotated[
            float | None, typer.Option("--lambda", help="Default λ (default: the saved one).")
        ] = None,
        budget: Annotated[
            float | None, typer.Option(help="Keep the mean USD per request under this.")
        ] = None,
        cascade: Annotated[
            bool, typer.Option(help="Cheapest backend predicted good enough answers.")
        ] = False,
        threshold: Annotated[
            float | None, typer.Option(help="Cascade threshold on predicted quality.")
        ] = None,
        log: Annotated[Path | None, typer.Option(help="JSONL decision log to append to.")] = None,
        timeout: Annotated[float, typer.Option(help="Seconds to wait for a backend.")] = 60.0,
        threads: Annotated[
            int, typer.Option(min=1, help="torch threads for the router's predictions.")
        ] = 1,
    ) -> None:
        """An OpenAI-compatible proxy sending each request to the backend the router picks."""
        from dynroute.serve.backends import load_backend_file, map_to_router, parse_backend_args
        from dynroute.serve.runner import check_port, run_app

        try:  # the cheap checks first: torch loads with the router
            if budget is not None and budget <= 0:
                raise ValueError(f"--budget must be > 0 USD per request, got {budget}")
            backends = parse_backend_args(backend, load_backend_file(prices))
            check_port(host, port)
            import torch

            from dynroute.llm.routers import load_router
            from dynroute.serve.decisions import DecisionLog
            from dynroute.serve.policy import RoutingPolicy
            from dynroute.serve.proxy import create_proxy_app

            # One query at a time: more threads only add synchronisation (on a busy
            # 2-core machine, 48 ms instead of 0.4 ms per prediction of a knn router).
            torch.set_num_threads(threads)
            r = load_router(router)
            map_to_router(backends, r.models)
            policy = RoutingPolicy(
                r, backends, lam=lam, cascade=cascade, threshold=threshold, budget=budget
            )
            decisions = DecisionLog(log)
        except (FileNotFoundError, ValueError, OSError) as err:
            raise _fail(err) from err
        app_ = create_proxy_app(policy, decisions, timeout_s=timeout)
        names = ", ".join(f"{b.name}→{b.base_url}" for b in backends)
        run_app(app_, host, port, f"routing with {r.name} over {names} on http://{host}:{port}/v1")
