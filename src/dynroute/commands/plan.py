"""`dynroute plan`: predict an expert-parallel training step on a cluster; search layouts."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer

from dynroute.commands import options

RANK = 54

_MODEL = "Model"
_CLUSTER = "Cluster (hand-given; or --profile)"
_LAYOUT = "Layout (or --search)"


def _opt(help_text: str, panel: str, **kwargs: Any) -> Any:
    return typer.Option(help=help_text, rich_help_panel=panel, **kwargs)


Layers = Annotated[int | None, _opt("MoE transformer layers.", _MODEL)]
DModel = Annotated[int | None, _opt("Hidden size d_model.", _MODEL)]
DFF = Annotated[int | None, _opt("Expert FFN width d_ff (default 4·d_model).", _MODEL)]
NumExperts = Annotated[int | None, _opt("Experts per layer.", _MODEL, show_default=False)]
K = Annotated[float, _opt("Mean experts per token k̄ (top-k: k).", _MODEL)]
PerToken = Annotated[
    str | None,
    _opt("Measured experts-per-token distribution P(0),P(1),... (overrides --k).", _MODEL),
]
Seq = Annotated[int, _opt("Sequence length.", _MODEL)]
Batch = Annotated[int, _opt("Sequences per GPU per step.", _MODEL)]
DenseParams = Annotated[
    int | None, _opt("Dense (attention) parameters per layer (default 4·d_model²).", _MODEL)
]
Vocab = Annotated[int, _opt("Vocabulary (tied embedding and LM head); 0: leave out.", _MODEL)]
ElementBytes = Annotated[
    int, _opt("Bytes per activation / gradient element (2: bf16, 4: float32).", _MODEL)
]
Nodes = Annotated[int | None, _opt("Nodes (default: the profile's, else 1).", _CLUSTER)]
GpusPerNode = Annotated[
    int | None, _opt("GPUs per node (default: the profile's, else 8).", _CLUSTER)
]
ProfileFile = Annotated[
    Path | None,
    _opt("A profile JSON from `dynroute profile`: task times as measured there.", _CLUSTER),
]
IntraGbps = Annotated[float | None, _opt("Intra-node GB/s (gigabytes) per GPU.", _CLUSTER)]
InterGbps = Annotated[float | None, _opt("Inter-node GB/s (gigabytes) per GPU.", _CLUSTER)]
IntraLat = Annotated[float | None, _opt("Intra-node latency per message, µs.", _CLUSTER)]
InterLat = Annotated[float | None, _opt("Inter-node latency per message, µs.", _CLUSTER)]
Tflops = Annotated[float | None, _opt("Achieved GEMM TFLOP/s per GPU.", _CLUSTER)]
HbmGbps = Annotated[float | None, _opt("Memory bandwidth GB/s per GPU.", _CLUSTER)]
MemoryGb = Annotated[float, _opt("Memory per GPU, GB.", _CLUSTER)]
Overlap = Annotated[
    bool | None,
    typer.Option(
        "--overlap/--no-overlap",
        help="Communication runs beside computation (default: yes; no for a gloo profile, "
        "whose ranks share their CPU cores).",
        rich_help_panel=_CLUSTER,
    ),
]
Ep = Annotated[int | None, _opt("Expert-parallel group size.", _LAYOUT)]
Dp = Annotated[int | None, _opt("Data-parallel replicas (default GPUs / ep).", _LAYOUT)]
Chunks = Annotated[int, _opt("Pipeline degree r: token chunks per layer.", _LAYOUT)]
Hierarchical = Annotated[
    bool, _opt("Exchange inter-node then intra-node (two all-to-alls).", _LAYOUT)
]
Partitioned = Annotated[
    bool, _opt("Gradient all-reduce in pieces fitted into the backward's gaps.", _LAYOUT)
]
Search = Annotated[
    bool, _opt("Search ep × dp, r, hierarchical, partitioned for the fastest that fits.", _LAYOUT)
]
Paper = Annotated[
    bool, typer.Option(help="Print predictions for the FSMoE paper's settings beside its speedups.")
]

_HAND = ("--intra-gbps", "--inter-gbps", "--intra-latency-us", "--inter-latency-us",
         "--tflops", "--hbm-gbps")  # fmt: skip


@options.command
def plan(
    layers: Layers = None,
    d_model: DModel = None,
    d_ff: DFF = None,
    num_experts: NumExperts = None,
    k: K = 2.0,
    experts_per_token: PerToken = None,
    seq: Seq = 1024,
    batch: Batch = 8,
    dense_params: DenseParams = None,
    vocab: Vocab = 0,
    element_bytes: ElementBytes = 2,
    nodes: Nodes = None,
    gpus_per_node: GpusPerNode = None,
    profile: ProfileFile = None,
    intra_gbps: IntraGbps = None,
    inter_gbps: InterGbps = None,
    intra_latency_us: IntraLat = None,
    inter_latency_us: InterLat = None,
    tflops: Tflops = None,
    hbm_gbps: HbmGbps = None,
    memory_gb: MemoryGb = 80.0,
    overlap: Overlap = None,
    ep: Ep = None,
    dp: Dp = None,
    chunks: Chunks = 1,
    hierarchical: Hierarchical = False,
    partitioned: Partitioned = False,
    search: Search = False,
    paper: Paper = False,
    json_out: options.Json = False,
) -> None:
    """Predict step time, tokens/s, memory per GPU and the breakdown of an expert-parallel layout (FSMoE's schedule), or search the fastest one that fits."""  # noqa: E501 (one line for --help)
    from dynroute.parallel import planner

    if paper:
        show_paper(planner.paper_comparison(), json_out)
        return
    shape = model_shape(layers, d_model, d_ff, num_experts, k, experts_per_token, seq, batch,
                        dense_params, vocab)  # fmt: skip
    shape = dataclasses.replace(shape, element_bytes=element_bytes)
    hand = dict(zip(_HAND, (intra_gbps, inter_gbps, intra_latency_us, inter_latency_us,
                            tflops, hbm_gbps), strict=True))  # fmt: skip
    cluster = build_cluster(nodes, gpus_per_node, profile, hand, memory_gb, overlap)
    if search or ep is None:
        if search and (dp is not None or chunks != 1 or hierarchical or partitioned):
            raise ValueError("--search chooses --dp, --chunks, --hierarchical and "
                             "--partitioned; give them without --search, or drop them")  # fmt: skip
        layout = planner.search(shape, cluster, ep=ep)
    else:
        world = cluster.world
        layout = planner.Layout(ep, dp if dp is not None else max(1, world // ep), chunks,
                                hierarchical, partitioned)  # fmt: skip
    prediction = planner.simulate(shape, cluster, layout)
    result = {**prediction.to_dict(), "searched": search or ep is None, "cluster": cluster.name}
    if json_out:
        options.print_json(result)
        return
    show(result)


def model_shape(
    layers: int | None, d_model: int | None, d_ff: int | None, num_experts: int | None,
    k: float, per_token: str | None, seq: int, batch: int, dense: int | None, vocab: int,
) -> Any:  # fmt: skip
    """The ModelShape of the flags (the required ones named when missing)."""
    from dynroute.parallel.planner import ModelShape

    given = {"--layers": layers, "--d-model": d_model, "--num-experts": num_experts}
    missing = [flag for flag, value in given.items() if value is None]
    if missing:
        raise ValueError(f"pass {', '.join(missing)} (the model to plan for), or --paper")
    assert layers is not None and d_model is not None and num_experts is not None
    distribution = None
    if per_token is not None:
        try:
            distribution = tuple(float(p) for p in per_token.split(","))
        except ValueError:
            raise ValueError(
                f"--experts-per-token {per_token!r}: give probabilities P(0),P(1),... "
                "separated by commas"
            ) from None
    return ModelShape(
        layers, d_model, d_ff if d_ff is not None else 4 * d_model, num_experts, k=k, seq=seq,
        batch=batch, dense_params_per_layer=dense, vocab=vocab, experts_per_token=distribution,
    )  # fmt: skip


def build_cluster(
    nodes: int | None,
    gpus_per_node: int | None,
    profile: Path | None,
    hand: dict[str, float | None],
    memory_gb: float,
    overlap: bool | None = None,
) -> Any:
    """A Cluster from --profile, or from the hand-given link and GEMM flags."""
    from dynroute.parallel.costmodel import Profile
    from dynroute.parallel.planner import Cluster

    given = {flag: value for flag, value in hand.items() if value is not None}
    if profile is not None:
        if given:
            raise ValueError(
                f"--profile {profile} gives the link and GEMM times; drop {', '.join(given)}"
            )
        measured = Profile.load(profile)
        return Cluster.from_profile(measured, nodes, gpus_per_node, memory_gb, overlap)
    names = {flag: flag[2:].replace("-", "_") for flag in hand}
    return Cluster(nodes or 1, gpus_per_node or 8, memory_gb=memory_gb,
                   overlap=True if overlap is None else overlap,
                   **{names[flag]: value for flag, value in given.items()})  # fmt: skip


def _num(value: float) -> str:
    from dynroute.common.numbers import format_number

    return format_number(value)


def show(result: dict[str, Any]) -> None:
    """The layout and prediction, then the breakdown, as tables."""
    layout = result["layout"]
    rows = [(key, str(value)) for key, value in layout.items()]
    rows += [("step_time_s", _num(result["step_time_s"])),
             ("tokens_per_s", _num(result["tokens_per_s"])),
             ("memory_gb", _num(result["memory_gb"]))]  # fmt: skip
    title = f"plan on {result['cluster']}" + (" (searched)" if result["searched"] else "")
    options.print_table(options.table(title, ["", "value"], rows))
    parts = [(name, _num(seconds)) for name, seconds in result["breakdown"].items()]
    options.print_table(options.table("breakdown per step (task busy time, s)", ["", "s"], parts))


def show_paper(rows: list[dict[str, Any]], json_out: bool) -> None:
    """Our predicted speedups beside the FSMoE paper's reported ranges."""
    if json_out:
        options.print_json({"paper": rows})
        return
    table_rows = [
        (row["setting"], f"{row['paper_low']:.2f}–{row['paper_high']:.2f}",
         f"{row['predicted_vs_deepspeed']:.2f}", f"{row['predicted_vs_tutel']:.2f}",
         "yes" if row["agrees"] else "no")
        for row in rows
    ]  # fmt: skip
    columns = ["setting", "paper ×", "ours vs DeepSpeed-MoE ×", "ours vs Tutel ×", "in range"]
    options.print_table(options.table("FSMoE speedups: paper vs planner", columns, table_rows))


def register(app: typer.Typer) -> None:
    app.command("plan")(plan)
