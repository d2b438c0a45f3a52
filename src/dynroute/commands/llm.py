"""`dynroute llm ...`: fit, evaluate and use routers that send each query to one LLM.

Query routers are ``--query-router name:key=value,...`` (``--router`` is always an MoE
router); the fitted router a command uses (route, serve) is its first argument.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 80

llm = typer.Typer(
    help="Route queries among LLMs: collect, fit, eval, report, route, serve, update, add-model.",
    no_args_is_help=True,
    add_completion=False,
)

Dataset = Annotated[
    str | None,
    typer.Option("--data", help="A shipped dataset: llmrouter, routellm-mmlu, routellm-gsm8k."),
]
TrainTable = Annotated[
    Path | None,
    typer.Option(
        help="Outcome table to train on (long JSONL/CSV, RouterBench CSV/pickle, wide JSONL)."
    ),
]
TestTable = Annotated[
    Path | None, typer.Option(help="Test table (default: split --train by query).")
]
TestSize = Annotated[float, typer.Option(help="Test share when splitting.")]
EmbedderName = Annotated[
    str,
    typer.Option(
        "--embedder",
        help="View of the query: tfidf_svd (fitted on the training queries), wordllama "
        "(a static 256-d embedding shipped in its wheel) or both joined: tfidf_svd+wordllama.",
    ),
]
Lambda = Annotated[
    float | None, typer.Option("--lambda", help="Willingness to pay: quality per USD.")
]
BudgetUsd = Annotated[
    float | None, typer.Option("--budget-usd", help="Mean USD per query to stay under.")
]
FittedRouter = Annotated[Path, typer.Argument(help="A `dynroute llm fit` --out folder.")]


def query_router_specs(given: list[str] | None, default: str) -> list[str]:
    """The ``--query-router`` specs; ``all`` (alone) is every registered query router.

    Example:
        >>> query_router_specs(["knn:k=3", "best_single"], "all")
        ['knn:k=3', 'best_single']
        >>> "knn" in query_router_specs(None, "all")
        True
    """
    from dynroute.llm.routers import QUERY_ROUTERS

    specs = given or [default]
    if "all" in specs:
        if len(specs) > 1:
            raise ValueError("--query-router all stands alone (it means every query router)")
        return sorted(QUERY_ROUTERS)
    return specs


@llm.command("eval")
@options.command
def eval_(
    data: Dataset = None,
    train: TrainTable = None,
    test: TestTable = None,
    query_router: options.QueryRouters = None,
    seed: options.Seed = None,
    test_size: TestSize = 0.2,
    embedder: EmbedderName = "tfidf_svd",
    json_out: options.Json = False,
    progress: options.Progress = True,
    threads: options.Threads = None,
) -> None:
    """Fit query routers on the training table and score their cost–quality curves (AIQ).

    Default: every registered query router (--query-router all).
    """

    show = progress and not json_out
    result = evaluate(data, train, test, query_router, seed, test_size, show, threads, embedder)
    base = result["baselines"]
    if json_out:
        if len(result["routers"]) == 1:  # one router: its fields at the top level
            result = {**result["routers"][0], "baselines": base, "train": result["train"],
                      "test": result["test"], "models": result["models"],
                      "embedder": result["embedder"]}  # fmt: skip
        options.print_json(result)
        return
    zero = base["zero_router"]["aiq"]
    from dynroute.common.numbers import format_number as num

    rows = [
        (r["router"], num(r["aiq"]), num(r["aiq"] - zero, "+.4f"), num(r["best_quality"]),
         num(r["cost_saved_at_best_single"], ".1%"))
        for r in sorted(result["routers"], key=lambda r: -r["aiq"])
    ]  # fmt: skip
    rows.append(("zero router", num(zero), "", "", ""))
    title = f"{result['test']['source']} ({result['test']['queries']} queries)"
    columns = ("router", "AIQ", "vs zero router", "best quality", "cost saved")
    options.print_table(options.table(title, columns, rows))


def evaluate(
    data: str | None,
    train: Path | None,
    test: Path | None,
    query_routers: list[str] | None,
    seed: int | None,
    test_size: float,
    progress: bool,
    threads: int | None,
    embedder: str = "tfidf_svd",
) -> dict[str, Any]:
    """Fit and score the ``--query-router`` specs (default: all) on the tables (one file:
    split by query) with the ``--embedder`` view of the queries: what ``llm eval`` and
    ``llm report`` show. With ``progress``: a bar on stderr (what is being fitted or
    scored) and one line per router scored."""
    from dynroute.llm.data import resolve_tables, split_by_query
    from dynroute.llm.embed import make_embedder
    from dynroute.llm.evaluate import evaluate as evaluate_routers
    from dynroute.train.progress import progress_bar

    options.set_threads(threads)
    specs = query_router_specs(query_routers, "all")
    make_embedder(embedder)  # a wrong name fails here, before the tables are read
    seed = seed or 0
    tr, te = resolve_tables(data, train, test, test_size=test_size, seed=seed)
    if te is None:  # one file: split it by query
        tr, te = split_by_query(tr, test_size, seed)
    if not progress:
        return evaluate_routers(specs, tr, te, seed=seed, embedder=embedder)
    with contextlib.ExitStack() as stack:
        bar: list[Callable[[int, str], None] | None] = []
        scored: list[str] = []

        def show(stage: str) -> None:
            # Started by the first stage, once the tables and specs are checked: a bad one
            # stays one line on stderr, without a bar printed above it.
            if not bar:
                bar.append(stack.enter_context(progress_bar(True, len(specs), 0, "query routers")))
            update = bar[0]
            if update is not None:
                update(len(scored), stage)

        def on_router(res: dict[str, Any]) -> None:
            scored.append(res["router"])
            show("")
            say(
                f"{res['router']}: AIQ {res['aiq']:.4f}  (fitted in {res['fit_seconds']:.1f} s, "
                f"scored in {res['eval_seconds']:.1f} s)"
            )

        return evaluate_routers(
            specs, tr, te, seed=seed, embedder=embedder, on_step=show, on_router=on_router
        )


def say(line: str, style: str | None = None) -> None:
    """One plain line on stderr (above a running progress bar; never read as markup)."""
    from rich.console import Console
    from rich.text import Text

    Console(stderr=True, soft_wrap=True).print(Text(line, style=style or ""))


def check_lambda(lam: float | None) -> None:
    """``--lambda`` is quality per USD, >= 0 (0: the best predicted model; inf: the cheapest).

    Example:
        >>> check_lambda(-1.0)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ValueError: --lambda must be >= 0 (quality per USD; ...), got -1.0
    """
    if lam is not None and not lam >= 0:
        raise ValueError(
            f"--lambda must be >= 0 (quality per USD; 0: the best model, inf: the cheapest), "
            f"got {lam}"
        )


def check_budget(budget_usd: float | None) -> None:
    """``--budget-usd`` is a mean cost per query, > 0."""
    if budget_usd is not None and not budget_usd > 0:
        raise ValueError(f"--budget-usd must be > 0 USD per query, got {budget_usd}")


def check_fit_flags(lam: float | None, budget_usd: float | None, share: float | None) -> None:
    """At most one way to set λ, each in its range (before anything is read or written).

    Example:
        >>> check_fit_flags(None, None, 1.5)
        Traceback (most recent call last):
        ValueError: --strong-share is a share of the queries, from 0 to 1, got 1.5
    """
    flags = {"--lambda": lam, "--budget-usd": budget_usd, "--strong-share": share}
    given = [flag for flag, value in flags.items() if value is not None]
    if len(given) > 1:
        raise ValueError(
            f"{' and '.join(given)} each set λ: give one of --lambda, --budget-usd, --strong-share"
        )
    check_lambda(lam)
    check_budget(budget_usd)
    if share is not None and not 0 <= share <= 1:
        raise ValueError(f"--strong-share is a share of the queries, from 0 to 1, got {share}")


@llm.command("fit")
@options.command
def fit(
    out: Annotated[Path, typer.Option(help="Folder to save the fitted router in.")],
    data: Dataset = None,
    train: TrainTable = None,
    query_router: options.QueryRouters = None,
    seed: options.Seed = None,
    lam: Lambda = None,
    budget_usd: BudgetUsd = None,
    strong_share: Annotated[
        float | None,
        typer.Option(
            help="Calibrate λ so this share of the training queries (0 to 1) goes to the "
            "best model."
        ),
    ] = None,
    embedder: EmbedderName = "tfidf_svd",
    json_out: options.Json = False,
    threads: options.Threads = None,
    progress: options.Progress = True,
) -> None:
    """Fit one query router (default knn) on the training table and save it.

    λ: --lambda, or calibrated to --budget-usd (mean USD per query) or --strong-share;
    a target no λ reaches is said on stderr and saved with the router (config.json).
    """
    check_fit_flags(lam, budget_usd, strong_share)
    specs = query_router_specs(query_router, "knn")
    if len(specs) != 1:
        raise ValueError(f"llm fit fits one --query-router, got {len(specs)}: {' '.join(specs)}")
    options.set_threads(threads)
    with options.status(f"fitting {specs[0]}", progress and not json_out):
        r = fit_router(
            specs[0], data, train, seed or 0, lam or 0.0, budget_usd, strong_share, embedder
        )
    cal = r.calibration
    if cal is not None and not cal["met"]:
        say(unmet(r.name, cal), "yellow")
    r.save(out)
    if json_out:
        options.print_json(
            {"out": str(out), "router": r.to_dict(), "models": list(r.models),
             "lambda": None if r.lam == float("inf") else r.lam, "calibration": cal}
        )  # fmt: skip
        return
    reached = "" if cal is None else f"; {described(cal)}"
    print(f"saved {r.name} over {len(r.models)} models to {out} (lambda={r.lam:g}{reached})")


def described(cal: dict[str, Any]) -> str:
    """What a calibrated λ reaches on the training table, in words.

    Example:
        >>> described({"target": "strong_share", "reached": 0.25, "model": "big"})
        '25.0% of the training queries to big'
    """
    if cal["target"] == "strong_share":
        return f"{cal['reached']:.1%} of the training queries to {cal['model']}"
    return f"mean {cal['reached']:.3g} USD per training query"


def unmet(router: str, cal: dict[str, Any]) -> str:
    """The warning for a ``--strong-share`` or ``--budget-usd`` that no λ reaches.

    Example:
        >>> line = unmet("knn", {"target": "strong_share", "asked": 0.3, "lambda": 0.0,
        ...     "reached": 0.25, "above": None, "above_lam": None, "lowest": 0.0,
        ...     "highest": 0.25, "model": "big"})
        >>> line.split(":")[1], "knn sends at most 25.0% of the training queries" in line
        (' --strong-share 0.3 cannot be reached', True)
    """
    lam = "inf" if cal["lambda"] is None else f"{cal['lambda']:g}"
    if cal["target"] == "budget_usd":
        return (
            f"warning: --budget-usd {cal['asked']:g} cannot be met: the cheapest choices cost "
            f"{cal['lowest']:.3g} USD per training query; saved λ={lam} (always the cheapest "
            f"model). Ask for at least {cal['lowest']:.3g}."
        )
    to = f"of the training queries to {cal['model']}"
    if cal["reached"] > cal["asked"]:  # fewer than at λ = ∞
        sends = f"at least {cal['lowest']:.1%} {to} (λ=inf: always the cheapest model)"
    elif cal["above"] is None:  # more than at λ = 0
        sends = f"at most {cal['highest']:.1%} {to} (λ=0: the best predicted model)"
    else:
        sends = (
            f"{cal['reached']:.1%} {to} at λ={lam}, {cal['above']:.1%} at "
            f"λ={cal['above_lam']:g}, no share in between"
        )
    return (
        f"warning: --strong-share {cal['asked']:g} cannot be reached: {router} sends {sends}; "
        f"saved λ={lam} ({cal['reached']:.1%}). Ask for a share it reaches, set --lambda, or "
        "fit another --query-router."
    )


def fit_router(
    spec: str,
    data: str | None,
    train: Path | None,
    seed: int,
    lam: float,
    budget_usd: float | None,
    strong_share: float | None,
    embedder: str = "tfidf_svd",
) -> Any:
    """A fitted query router whose λ is ``lam`` or calibrated to a budget or a share (then
    ``router.calibration`` says what it reached, with ``model``: the best model's name),
    seeing the queries through ``embedder``."""
    import torch

    from dynroute.llm.data import resolve_tables
    from dynroute.llm.decide import calibrate_to_budget, calibrate_to_share
    from dynroute.llm.embed import make_embedder
    from dynroute.llm.routers import make_query_router

    view = make_embedder(embedder)
    tr, _ = resolve_tables(data, train, None, seed=seed)
    r = make_query_router(spec)
    r.seed = seed
    r.fit(tr, view.fit(tr.queries) if r.uses_embedding else None)
    r.lam = lam
    if budget_usd is not None or strong_share is not None:
        pred, cost = r.predict(tr.queries), r.estimate_cost(tr.queries)
        if budget_usd is not None:
            cal = calibrate_to_budget(pred, cost, budget_usd).to_dict()
        else:
            best = int(torch.from_numpy(tr.quality.mean(0)).argmax())
            cal = calibrate_to_share(pred, cost, best, float(strong_share)).to_dict()  # type: ignore[arg-type]
            cal["model"] = tr.models[best]
        r.lam = float("inf") if cal["lambda"] is None else cal["lambda"]
        r.calibration = cal
    return r


@llm.command("route")
@options.command
def route(
    router: FittedRouter,
    query: Annotated[list[str], typer.Argument(help="One or more queries.")],
    lam: Annotated[float | None, typer.Option("--lambda", help="Override the saved λ.")] = None,
) -> None:
    """Print the chosen model for each QUERY."""
    check_lambda(lam)
    from dynroute.llm.routers import load_router

    for name in load_router(router).route(query, lam):
        print(name)


@llm.command("report")
@options.command
def report(
    out: Annotated[
        Path,
        typer.Option(help="Folder for report.html (plot embedded), figures/ and result.json."),
    ],
    data: Dataset = None,
    train: TrainTable = None,
    test: TestTable = None,
    query_router: options.QueryRouters = None,
    seed: options.Seed = None,
    test_size: TestSize = 0.2,
    embedder: EmbedderName = "tfidf_svd",
    progress: options.Progress = True,
    threads: options.Threads = None,
) -> None:
    """Evaluate query routers (default: all) and write an HTML report with the cost–quality
    plot (also OUT/figures/cost_quality.png) and OUT/result.json."""

    from dynroute.common.jsonfile import write_json
    from dynroute.llm.report import write_report

    result = evaluate(data, train, test, query_router, seed, test_size, progress, threads, embedder)
    path = write_report(result, out)
    write_json(Path(out) / "result.json", result)
    print(f"wrote {path}")


Backends = Annotated[
    list[str],
    typer.Option(help="NAME=URL of an OpenAI-compatible server; NAME is a router model."),
]
Prices = Annotated[
    Path | None,
    typer.Option(help="TOML/JSON: per-backend prices (USD/1M tokens), ids, mapping."),
]
Cascade = Annotated[bool, typer.Option(help="Cheapest backend predicted good enough answers.")]
Threshold = Annotated[float | None, typer.Option(help="Cascade threshold on predicted quality.")]
DecisionLogFile = Annotated[
    Path | None, typer.Option("--log", help="JSONL decision log to append to.")
]
Timeout = Annotated[float, typer.Option(help="Seconds to wait for a backend.")]
LatencyPenalty = Annotated[
    float,
    typer.Option(
        help="Quality given up per second a backend is expected to take (its answer "
        "times' moving average × (1 + calls in flight)): a slow or overloaded backend "
        "is routed around. 0: latency plays no part.",
    ),
]

LogQueries = Annotated[
    bool,
    typer.Option(
        help="Keep each query's text in the --log / --db decision rows (default: only its "
        "sha256, for privacy): what `llm update` learns from POST /v1/feedback."
    ),
]


@llm.command("serve")
@options.command
def serve(
    router: FittedRouter,
    backend: Backends,
    prices: Prices = None,
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8100,
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    lam: Annotated[
        float | None, typer.Option("--lambda", help="Default λ (default: the saved one).")
    ] = None,
    budget_usd: BudgetUsd = None,
    cascade: Cascade = False,
    threshold: Threshold = None,
    log: DecisionLogFile = None,
    timeout: Timeout = 60.0,
    threads: options.Threads = None,
    api_key: options.ApiKeys = None,
    api_key_file: options.ApiKeyFile = None,
    allow_no_key: options.AllowNoKey = False,
    max_concurrent: options.MaxConcurrent = 0,
    db: options.Database = None,
    breaker_threshold: options.BreakerThreshold = 3,
    breaker_cooldown: options.BreakerCooldown = 5.0,
    drain_timeout: options.DrainTimeout = 30.0,
    admin_key: options.AdminKey = None,
    max_body_bytes: options.MaxBodyBytes = 1_000_000,
    max_tokens_cap: options.MaxTokensCap = None,
    latency_penalty: LatencyPenalty = 0.0,
    log_queries: LogQueries = False,
) -> None:
    """An OpenAI-compatible proxy sending each request to the backend ROUTER picks.

    Clients' keys: --api-key / --api-key-file / DYNROUTE_API_KEY (every path but /health
    needs one); a non-loopback --host without a key is refused unless --allow-no-key (the
    proxy spends its backends' keys for whoever reaches it). A keys file ending in .toml
    names each key and its budgets ([keys.NAME] key, usd_per_day, usd_per_month,
    requests_per_minute, prompt_tokens_per_minute), kept in --db across restarts.

    --threads defaults to 1 here: one query at a time, more threads only add
    synchronisation (busy 2 cores: 48 ms instead of 0.4 ms per knn prediction).
    """
    from dynroute.serve.backends import load_backend_file, map_to_router, parse_backend_args
    from dynroute.serve.runner import check_port, run_app

    # the cheap checks first: torch loads with the router
    check_lambda(lam)
    check_budget(budget_usd)
    backends = parse_backend_args(backend, load_backend_file(prices))
    keys = options.server_keys(host, api_key, api_key_file, allow_no_key)
    check_port(host, port)
    from dynroute.serve.budgets import open_proxy_store

    store = open_proxy_store(db, keys, api_key_file)
    options.set_threads(1 if threads is None else threads)
    from dynroute.llm.routers import load_router
    from dynroute.serve.decisions import DecisionLog
    from dynroute.serve.policy import RoutingPolicy
    from dynroute.serve.proxy import create_proxy_app
    from dynroute.serve.proxy_routes import ProxyLimits
    from dynroute.serve.reload import enable_reload

    def build_policy() -> RoutingPolicy:  # at the start, and again on each reload
        r = load_router(router)
        found = parse_backend_args(backend, load_backend_file(prices))
        map_to_router(found, r.models)
        return RoutingPolicy(
            r, found, lam=lam, cascade=cascade, threshold=threshold, budget=budget_usd,
            cooldown_s=breaker_cooldown, fault_threshold=breaker_threshold,
            latency_penalty=latency_penalty)  # fmt: skip

    policy = build_policy()
    app_ = create_proxy_app(
        policy, DecisionLog(log, store, log_queries), timeout_s=timeout, api_keys=keys,
        max_concurrent=max_concurrent, store=store,
        limits=ProxyLimits(max_body_bytes, max_tokens_cap),
    )  # fmt: skip
    enable_reload(app_, build_policy, options.admin_key(admin_key))
    names = ", ".join(f"{b.name}→{b.base_url}" for b in backends)
    keyed = (" (API key required)" if keys else "") + (f" (db: {store.url})" if store else "")
    banner = f"routing with {policy.router.name} over {names} on http://{host}:{port}/v1{keyed}"
    run_app(app_, host, port, banner, drain_timeout_s=drain_timeout)


@llm.command("export-log")
@options.command
def export_log(
    db: Annotated[str, typer.Option("--db", help="The database `llm serve --db` wrote.")],
    out: Annotated[Path, typer.Option(help="JSONL file to write (as `llm serve --log`).")],
) -> None:
    """Write the decision log kept in a `llm serve --db` database as JSONL (the lines
    `--log FILE` writes), oldest first."""
    from dynroute.serve.store import open_store

    store = open_store(db)
    try:
        count = store.export_decisions(out)
    finally:
        store.close()
    print(f"wrote {count} decisions to {out}")


@llm.command("collect")
@options.command
def collect(
    prompts: Annotated[
        Path,
        typer.Option(
            help='JSONL, a line each: {"prompt": ..., "reference": ...} '
            '("reference", "id", "score" optional).'
        ),
    ],
    backend: Annotated[
        list[str], typer.Option(help="NAME=URL of an OpenAI-compatible server (once each).")
    ],
    out: Annotated[
        Path, typer.Option(help="Outcome table to append to (long JSONL; rerun: resumes).")
    ],
    prices: Prices = None,
    judge: Annotated[
        str | None,
        typer.Option(help="NAME=URL of a backend rating answers 1-10 (lines without reference)."),
    ] = None,
    score: Annotated[
        str,
        typer.Option(
            help="Scoring by reference: exact, numeric, choice, regex (or judge); "
            'a line\'s "score" overrides it.'
        ),
    ] = "exact",
    concurrency: Annotated[int, typer.Option(help="Requests out at once.")] = 4,
    retries: Annotated[int, typer.Option(help="Tries more after a backend fault.")] = 2,
    timeout: Timeout = 120.0,
    max_tokens: Annotated[int | None, typer.Option(help="max_tokens of each answer.")] = None,
    temperature: Annotated[
        float, typer.Option(help="Sampling temperature of the answers (0: greedy).")
    ] = 0.0,
    json_out: options.Json = False,
    progress: options.Progress = True,
    threads: options.Threads = None,
) -> None:
    """Send every prompt to every backend; write the outcome table `llm eval/fit` read.

    Each row: the answer, its tokens, latency, cost (usage x the --prices file) and quality
    (by the line's reference, or the --judge's rating). A backend that does not answer is
    recorded as missing (its query is left out of eval/fit); a rerun sends only what is
    not recorded yet (and retries the missing).
    """
    import asyncio

    from dynroute.serve.backends import load_backend_file, parse_backend_args
    from dynroute.serve.collect import collect as collect_rows
    from dynroute.serve.collect import read_prompts
    from dynroute.train.progress import progress_bar

    options.set_threads(threads)
    config = load_backend_file(prices)
    found = parse_backend_args(backend, config)
    rater = None
    if judge is not None:
        named = {n: f for n, f in config.items() if judge.startswith(f"{n}=")}
        rater = parse_backend_args([judge], named)[0]
    lines = read_prompts(prompts, score)
    with contextlib.ExitStack() as stack:
        bar: list[Callable[[int, str], None] | None] = []
        missing = [0]

        def on_row(done: int, total: int, row: dict[str, Any]) -> None:
            if not bar:
                shown = progress and not json_out
                bar.append(stack.enter_context(progress_bar(shown, total, done - 1, "collect")))
            missing[0] += bool(row.get("missing"))
            if bar[0] is not None:
                bar[0](done, f"{missing[0]} missing" if missing[0] else "")

        result = asyncio.run(collect_rows(
            lines, found, out, judge=rater, concurrency=concurrency, retries=retries,
            timeout_s=timeout, max_tokens=max_tokens, temperature=temperature,
            on_row=on_row))  # fmt: skip
    if json_out:
        options.print_json(result)
        return
    print(collected(result))


def collected(result: dict[str, Any]) -> str:
    """The summary line of ``llm collect``.

    Example:
        >>> collected({"rows": 4, "missing": 1, "sent": 3, "out": "t.jsonl", "models": {
        ...     "a": {"answered": 2, "quality": 0.5, "cost": 2e-05, "latency_s": 0.25},
        ...     "b": {"answered": 1, "quality": 1.0, "cost": 1e-04, "latency_s": 1.5}}})
        't.jsonl: 4 rows (3 sent now), 1 missing; a: quality 0.500, $2e-05, 0.25 s; b: ...'
    """
    per = "; ".join(
        f"{m}: quality {s['quality']:.3f}, ${s['cost']:.3g}, {s['latency_s']:.2f} s"
        if s["answered"] else f"{m}: no answers"
        for m, s in result["models"].items()
    )  # fmt: skip
    return (
        f"{result['out']}: {result['rows']} rows ({result['sent']} sent now), "
        f"{result['missing']} missing; {per}"
    )


@llm.command("update")
@options.command
def update(
    router: FittedRouter,
    log: Annotated[
        Path,
        typer.Option(
            "--log", help="Decision log of `llm serve --log FILE --log-queries` with feedback."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder to save the updated router in.")],
    table: Annotated[
        Path | None,
        typer.Option(help="The outcome table ROUTER was fitted on: the feedback is added to it."),
    ] = None,
    json_out: options.Json = False,
    threads: options.Threads = None,
    progress: options.Progress = True,
) -> None:
    """Refit ROUTER with the feedback (POST /v1/feedback) in a proxy's decision log.

    Each usable feedback row is the quality of the model that answered its query (the
    other models: ROUTER's predictions), added to --table; the same router spec and
    embedder are refit on it and saved to --out (atomically). Feedback on a decision
    logged without its text (no --log-queries) is counted as skipped.
    """
    from dynroute.llm.feedback import update_router

    options.set_threads(threads)
    with options.status("updating the router", progress and not json_out):
        result = update_router(router, log, out, table)
    if json_out:
        options.print_json(result)
        return
    print(updated(result))


def updated(result: dict[str, Any]) -> str:
    """The summary line of ``llm update``.

    Example:
        >>> updated({"router": "knn", "out": "r2", "rows": 52, "queries": 4, "feedback": 6,
        ...     "used": 5, "skipped": {"its decision is not in the log": 1}, "unreadable": 0})
        'saved knn to r2: refit on 52 rows, 4 from feedback (5 of 6 feedback rows used; 1 ...'
    """
    skipped = "; ".join(f"{n} skipped: {reason}" for reason, n in result["skipped"].items())
    used = f"{result['used']} of {result['feedback']} feedback rows used"
    return (
        f"saved {result['router']} to {result['out']}: refit on {result['rows']} rows, "
        f"{result['queries']} from feedback ({used}{'; ' + skipped if skipped else ''})"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(llm, name="llm")


@llm.command("add-model")
@options.command
def onboard_model(
    router: FittedRouter,
    table: Annotated[
        str,
        typer.Option(
            help="Outcome table (file, or a shipped dataset name) with the new model's "
            "column; the router's models' columns, when present, are used too."
        ),
    ],
    model: Annotated[str, typer.Option(help="The new model: a column of --table.")],
    out: Annotated[Path, typer.Option(help="Folder to save the router with the new model.")],
    labels: Annotated[
        int | None,
        typer.Option(min=1, help="Use this many random rows of --table (default: all)."),
    ] = None,
    strength: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Weight of the prior, the average existing model (higher: trust labels less).",
        ),
    ] = 1.0,
    seed: options.Seed = None,
    json_out: options.Json = False,
    threads: options.Threads = None,
    progress: options.Progress = True,
) -> None:
    """Add a model to a fitted router from its outcomes on a few queries (10 to 50
    suffice), without refitting on every model: see docs/llm-routing.md."""
    import numpy as np

    from dynroute.llm.data import resolve_tables
    from dynroute.llm.feedback import save_router_atomically
    from dynroute.llm.onboard import add_model_from_table
    from dynroute.llm.routers import load_router

    options.set_threads(threads)
    r = load_router(router)
    labelled, _ = resolve_tables(None, table, None)
    if labels is not None and labels < labelled.num_queries:
        rows = np.random.default_rng(seed or 0).choice(labelled.num_queries, labels, False)
        labelled = labelled.subset(np.sort(rows))
    with options.status(f"adding {model} to {r.name}", progress and not json_out):
        new = add_model_from_table(r, labelled, model, strength=strength)
    save_router_atomically(new, out)
    if json_out:
        options.print_json({"out": str(out), "router": new.to_dict(), "models": list(new.models),
                            "labels": labelled.num_queries})  # fmt: skip
        return
    print(
        f"added {model} to {r.name} from {labelled.num_queries} labelled queries; saved "
        f"{len(new.models)} models to {out}"
    )
