"""The MoE-layer speed suite: dynroute and transformers' expert implementations vs the GEMM bound.

For one cell (router, E experts, N tokens, fwd or fwd+bwd) every implementation runs
on the same weights (shared storage) and the same routing, interleaved, median of
repeats (``timing.time_interleaved``). Two references frame the numbers:

- ``bound``: one dense SwiGLU GEMM chain over the A = N·k̄ assigned rows with one
  expert's weights: the arithmetic an MoE layer cannot avoid (the issue's speed limit);
- ``grad_zeros`` (fwd+bwd only): allocating and zeroing one gradient the size of all E
  experts' weights, which every layer with stacked [E, ...] weights (dynroute, and
  transformers' ``eager``/``batched_mm``/``grouped_mm``) must produce in backward;
- ``floor``: the per-expert GEMM chains on rows already gathered and sorted, each
  expert's weights a separate tensor: what any exact dropless MoE must run on this
  machine (it reads every active expert's weights and writes every expert's weight
  gradient), with no routing, gather or scatter at all.

``seconds / bound_seconds`` is the issue's ratio; ``seconds / floor_seconds`` is the
dispatch waste.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import statistics
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dynbench.hf_experts import (
    available_implementations,
    hf_experts,
    mixtral_loop,
    to_top_k_format,
)
from dynbench.memory import peak_memory
from dynbench.scattermoe_impl import scattermoe_layer
from dynbench.timing import Bench, time_interleaved
from dynroute.dispatch import dense, grouped, loop
from dynroute.layers.experts import ExpertWeights
from dynroute.routing import Routing, top_k, top_p

Record = dict[str, Any]

ROUTERS = ("top2", "top8", "top_p")
MODES = ("fwd", "fwd+bwd")
HF_IMPLS = ("hf_eager", "hf_batched_mm", "hf_grouped_mm", "mixtral_loop")
DYNROUTE_IMPLS = ("grouped", "grouped_per_expert", "loop", "dense")
REFERENCES = ("bound", "floor", "grad_zeros")
TARGET_MEAN_EXPERTS = 1.5


@dataclass(frozen=True)
class Cell:
    """One benchmark cell.

    Example:
        >>> Cell("top2", 8, 512, "fwd").key()
        ('top2', 8, 512, 'fwd')
    """

    router: str
    num_experts: int
    tokens: int
    mode: str

    def key(self) -> tuple[str, int, int, str]:
        return (self.router, self.num_experts, self.tokens, self.mode)


@dataclass(frozen=True)
class Setup:
    """Shape, device and budgets shared by all cells of a run."""

    d_model: int = 1024
    d_ff: int = 2816
    device: str = "cpu"
    dtype: str = "float32"
    repeats: int = 5
    budget_s: float = 60.0
    memory: bool = True
    # skip implementations that would allocate more than this (batched_mm's per-token
    # weight copies, eager loops' full-size per-expert gradients)
    max_bytes: float = 6e9
    seed: int = 0
    # written before every timed call so that weights are not timed from cache
    flush_bytes: int = 256 * 2**20
    skip: tuple[str, ...] = ()

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


QUICK = {"experts": (8,), "tokens": (8, 512), "routers": ("top2", "top_p"), "modes": MODES}
FULL = {
    "experts": (8, 64),
    "tokens": (1, 8, 64, 512, 4096, 16384),
    "routers": ROUTERS,
    "modes": MODES,
}


def grid(
    experts: Iterable[int],
    tokens: Iterable[int],
    routers: Iterable[str] = ROUTERS,
    modes: Iterable[str] = MODES,
) -> list[Cell]:
    """Cells in run order (small first, so a partial run covers every router and E).

    top-8 only runs where E > 8.

    Example:
        >>> [c.router for c in grid([8], [1], ["top2", "top8"], ["fwd"])]
        ['top2']
    """
    cells = [
        Cell(r, e, n, m)
        for n in sorted(tokens)
        for e in sorted(experts)
        for r in routers
        for m in modes
        if not (r == "top8" and e <= 8)
    ]
    for c in cells:
        if c.router not in ROUTERS or c.mode not in MODES:
            raise ValueError(f"unknown router {c.router!r} or mode {c.mode!r}")
    return cells


def tune_top_p(num_experts: int, target: float = TARGET_MEAN_EXPERTS, seed: int = 0) -> float:
    """The top-p threshold p giving ``target`` mean experts per token on standard-normal logits.

    Bisection on 8192 sample tokens, so every N (even N=1) uses the same p.
    (Logits of each cell are drawn the same way.)

    Example:
        >>> p = tune_top_p(8)
        >>> abs(top_p(torch.randn(8192, 8), p).mean_experts() - 1.5) < 0.05
        True
    """
    g = torch.Generator().manual_seed(seed + 1)
    probs = torch.randn(8192, num_experts, generator=g).softmax(-1)
    # top_p keeps experts until the cumulative probability reaches p, the crossing one
    # included: k = #(cumsum < p) + 1, so k̄(p) is cheap to evaluate for many p
    # (numpy: 40 tiny steps, no thread-pool start-up per op)
    cumulative = probs.sort(-1, descending=True).values.cumsum(-1).numpy()
    lo, hi = 1e-4, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        k = np.minimum((cumulative < mid).sum(-1) + 1, num_experts).mean()
        lo, hi = (mid, hi) if k < target else (lo, mid)
    return (lo + hi) / 2


def make_routing(router: str, logits: Tensor, p: float | None) -> Routing:
    """The cell's routing: top-2, top-8, or top-p at the tuned ``p``."""
    if router == "top_p":
        assert p is not None
        return top_p(logits, p)
    return top_k(logits, 2 if router == "top2" else 8)


def swiglu(rows: Tensor, gate_up: Tensor, down: Tensor) -> Tensor:
    """One expert's SwiGLU on rows [n, d] with gate_up [d, 2f], down [f, d] -> [n, d].

    Example:
        >>> swiglu(torch.ones(3, 4), torch.zeros(4, 8), torch.ones(4, 4)).shape
        torch.Size([3, 4])
    """
    h = rows @ gate_up
    f = down.shape[0]
    return (torch.nn.functional.silu(h[:, :f]) * h[:, f:]) @ down


def _leaf(t: Tensor, grad: bool) -> Tensor:
    """A new autograd leaf over t's storage (no copy)."""
    return t.detach().requires_grad_(grad)


class _CellRun:
    """Everything one cell needs: tensors, routing, and a Bench per implementation."""

    def __init__(self, cell: Cell, setup: Setup, p: float | None) -> None:
        self.cell, self.setup = cell, setup
        self.backward = cell.mode == "fwd+bwd"
        dev, dt = torch.device(setup.device), setup.torch_dtype
        g = torch.Generator().manual_seed(setup.seed)
        n, e, d, f = cell.tokens, cell.num_experts, setup.d_model, setup.d_ff
        self.x = torch.randn(n, d, generator=g).to(dev, dt).requires_grad_(self.backward)
        logits = torch.randn(n, e, generator=g).to(dev)
        base = make_routing(cell.router, logits, p)
        # the router's output is a leaf here so that every implementation pays for the
        # combine-weight gradient and nothing upstream of it
        self.routing = dataclasses.replace(base, weight=_leaf(base.weight, self.backward))
        gate_up = (torch.randn(e, d, 2 * f, generator=g) * d**-0.5).to(dev, dt)
        down = (torch.randn(e, f, d, generator=g) * f**-0.5).to(dev, dt)
        self.gate_up, self.down = _leaf(gate_up, self.backward), _leaf(down, self.backward)
        self.weights = ExpertWeights(self.gate_up, self.down)
        self.grad_out = torch.randn(n, d, generator=g).to(dev, dt)
        self.mean_experts = self.routing.mean_experts()
        self.skipped: dict[str, str] = {}
        self.params: dict[str, list[Tensor]] = {}
        self.benches: dict[str, Bench] = {}
        self._build()

    # -- helpers -------------------------------------------------------------------------
    def _add(self, name: str, fn: Callable[[], Tensor], leaves: list[Tensor], grad: Tensor) -> None:
        leaves = [t for t in leaves if t.requires_grad]
        self.params[name] = leaves

        def reset() -> None:
            for t in leaves:
                t.grad = None

        if self.backward:

            def run() -> None:
                fn().backward(grad)

        else:

            def run() -> None:
                with torch.no_grad():
                    fn()

        self.benches[name] = Bench(run, reset)

    def _element_bytes(self) -> int:
        return torch.tensor([], dtype=self.setup.torch_dtype).element_size()

    def _expert_bytes(self) -> int:
        return 3 * self.setup.d_model * self.setup.d_ff * self._element_bytes()

    # -- implementations -----------------------------------------------------------------
    def _build(self) -> None:
        x, r, w = self.x, self.routing, self.weights
        dyn_leaves = [x, r.weight, self.gate_up, self.down]
        e, a = self.cell.num_experts, r.num_assignments
        active = int((r.expert_counts() > 0).sum())

        # the bound: A rows through one expert, every operand its own leaf
        rows = _leaf(x[r.token], self.backward)
        g0, d0 = _leaf(self.gate_up[0], self.backward), _leaf(self.down[0], self.backward)
        grad_rows = torch.randn_like(rows)
        self._add("bound", lambda: swiglu(rows, g0, d0), [rows, g0, d0], grad_rows)

        # the floor: per-expert GEMM chains on pre-sorted rows, per-expert weight leaves
        sizes = r.expert_counts().tolist()
        gl = [_leaf(self.gate_up[i], self.backward) for i in range(e)]
        dl = [_leaf(self.down[i], self.backward) for i in range(e)]

        def floor() -> Tensor:
            chunks = rows.split(sizes)
            return torch.cat([swiglu(c, gl[i], dl[i]) for i, c in enumerate(chunks) if len(c)])

        self._add("floor", floor, [rows, *gl, *dl], grad_rows)

        if self.backward:
            # what any layer with stacked [E, ...] weights pays in backward however few
            # experts ran: allocating and zeroing a gradient the size of all E experts
            gu_, dn_ = self.gate_up, self.down
            self.benches["grad_zeros"] = Bench(
                lambda: (gu_.new_zeros(gu_.shape), dn_.new_zeros(dn_.shape))
            )
            self.params["grad_zeros"] = []

        self._add("grouped", lambda: grouped(x, r, w), dyn_leaves, self.grad_out)
        # the same dispatch on per-expert weight tensors (expert_layout="per_expert")
        per = ExpertWeights(tuple(gl), tuple(dl))
        leaves = [x, r.weight, *gl, *dl]
        self._add("grouped_per_expert", lambda: grouped(x, r, per), leaves, self.grad_out)
        waste = active * e * self._expert_bytes()  # full-size gradient per indexed expert
        if self.backward and waste > self.setup.max_bytes:
            self.skipped["loop"] = _gb("backward materialises", waste, "of per-expert zeros")
        else:
            self._add("loop", lambda: loop(x, r, w), dyn_leaves, self.grad_out)
        dense_cost = e / max(self.mean_experts, 1e-9)
        if dense_cost * a * self._expert_bytes() > 64 * self.setup.max_bytes:
            self.skipped["dense"] = f"skipped: {dense_cost:.0f}x the bound's arithmetic"
        else:
            self._add("dense", lambda: dense(x, r, w), dyn_leaves, self.grad_out)
        self._build_hf(active, waste)

    def _build_hf(self, active: int, waste: int) -> None:
        impls = available_implementations()
        if not impls:
            for name in HF_IMPLS:
                self.skipped[name] = "skipped: transformers not installed"
            return
        x, r = self.x, self.routing
        index, weight = to_top_k_format(r)
        weight = _leaf(weight, self.backward)
        padded = bool((index == r.num_experts).any())
        for impl in ("eager", "batched_mm", "grouped_mm"):
            name = f"hf_{impl}"
            if impl not in impls:
                self.skipped[name] = "skipped: not in the installed transformers"
                continue
            if impl == "batched_mm":
                copies = index.numel() * self._expert_bytes() * (2 if self.backward else 1)
                if copies > self.setup.max_bytes:
                    self.skipped[name] = _gb("copies", copies, "of per-token expert weights")
                    continue
            if impl == "eager" and self.backward and waste > self.setup.max_bytes:
                self.skipped[name] = _gb("backward materialises", waste, "of per-expert zeros")
                continue
            module = hf_experts(self.gate_up, self.down, impl, padded)
            if not self.backward:
                module.requires_grad_(False)
            leaves = [x, weight, module.gate_up_proj, module.down_proj]
            self._add(name, _bind(module, x, index, weight), leaves, self.grad_out)
        fn, expert_leaves = mixtral_loop(self.gate_up, self.down)
        if not self.backward:
            for t in expert_leaves:
                t.requires_grad_(False)
        leaves = [x, weight, *expert_leaves]
        self._add("mixtral_loop", lambda: fn(x, index, weight), leaves, self.grad_out)
        if torch.device(self.setup.device).type == "cuda":
            self._build_scattermoe(index, weight, padded)

    def _build_scattermoe(self, index: Tensor, weight: Tensor, padded: bool) -> None:
        if padded:
            self.skipped["scattermoe"] = "skipped: ScatterMoE takes a fixed k per token"
            return
        s = self.setup
        made = scattermoe_layer(
            self.cell.num_experts, s.d_model, s.d_ff, index.shape[1], s.device, s.torch_dtype
        )
        if isinstance(made, str):
            self.skipped["scattermoe"] = made
            return
        fn, params = made
        if not self.backward:
            for t in params:
                t.requires_grad_(False)
        x = self.x
        self._add("scattermoe", lambda: fn(x, weight.to(x.dtype), index), [x, weight, *params],
                  self.grad_out)  # fmt: skip

    # -- running -------------------------------------------------------------------------
    def run(self, on_step: Callable[[], object] | None = None) -> list[Record]:
        for name in self.setup.skip:
            if name in self.benches:
                del self.benches[name]
                self.skipped[name] = "skipped: excluded from this run (--skip)"
        samples = time_interleaved(
            self.benches,
            self.setup.repeats,
            self.setup.budget_s,
            self.setup.device,
            on_step,
            self.setup.flush_bytes,
        )
        peaks: dict[str, tuple[int, int]] = {}
        if self.setup.memory and self.backward:
            for name, bench in self.benches.items():
                if name != "grad_zeros" and samples[name].median * 2 < self.setup.budget_s:
                    bench.reset()
                    m = peak_memory(bench.run, self.params[name])
                    peaks[name] = (m.total, m.activations)
                    bench.reset()
        bound, floor = samples["bound"].median, samples["floor"].median
        common = {
            "router": self.cell.router,
            "num_experts": self.cell.num_experts,
            "tokens": self.cell.tokens,
            "mode": self.cell.mode,
            "bound_seconds": bound,
            "floor_seconds": floor,
            "bound_cpu_seconds": samples["bound"].cpu_median,
            "mean_experts": self.mean_experts,
            "assignments": self.routing.num_assignments,
            "active_experts": int((self.routing.expert_counts() > 0).sum()),
            **environment(self.setup),
        }
        if "bound" in peaks:
            common["bound_activation_bytes"] = peaks["bound"][1]
        records: list[Record] = []
        for name, s in samples.items():
            rec: Record = {"impl": name, **common, "seconds": s.median, "seconds_min": s.best}
            rec.update(cpu_seconds=s.cpu_median, repeats=len(s.wall))
            # ratio within each round (both ran back to back, under the same load), then
            # the median: steadier than a ratio of medians when the machine is shared
            pairs = zip(s.wall, samples["bound"].wall, strict=False)
            rec["paired_x_bound"] = statistics.median(a / b for a, b in pairs)
            if name in peaks:
                rec.update(peak_bytes=peaks[name][0], activation_bytes=peaks[name][1])
            records.append(rec)
        for name, why in self.skipped.items():
            records.append({"impl": name, **common, "seconds": None, "skipped": why})
        return records


def _bind(
    module: torch.nn.Module, x: Tensor, index: Tensor, weight: Tensor
) -> Callable[[], Tensor]:
    return lambda: module(x, index, weight)


def _gb(verb: str, nbytes: float, what: str) -> str:
    return f"skipped: {verb} {nbytes / 1e9:.1f} GB {what}"


def environment(setup: Setup) -> Record:
    """Where and how a record was measured (stored in every record)."""
    try:
        import transformers

        tf_version = transformers.__version__
    except ImportError:
        tf_version = None
    return {
        "d_model": setup.d_model,
        "d_ff": setup.d_ff,
        "device": setup.device,
        "dtype": setup.dtype,
        "threads": torch.get_num_threads(),
        "machine": machine_name(setup.device),
        "torch": torch.__version__,
        "transformers": tf_version,
        "thp_alloc": os.environ.get("THP_MEM_ALLOC_ENABLE") == "1",
    }


def machine_name(device: str = "cpu") -> str:
    """A short description of the device the suite runs on.

    Example:
        >>> isinstance(machine_name(), str)
        True
    """
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def run_cells(
    cells: list[Cell],
    setup: Setup,
    done: set[tuple[Any, ...]] = frozenset(),  # type: ignore[assignment]
    on_records: Callable[[list[Record]], object] | None = None,
    on_step: Callable[[], object] | None = None,
) -> Iterator[list[Record]]:
    """Run cells one by one (skipping keys in ``done``), yielding each cell's records.

    Example:
        >>> cells = grid([4], [8], ["top2"], ["fwd"])
        >>> recs = next(run_cells(cells, Setup(d_model=32, d_ff=64, repeats=1)))
        >>> {"grouped", "bound", "floor"} <= {r["impl"] for r in recs}
        True
    """
    p_cache: dict[int, float] = {}
    for cell in cells:
        if (*cell.key(), setup.d_model, setup.d_ff, setup.device, setup.dtype) in done:
            continue
        p = None
        if cell.router == "top_p":
            p = p_cache.setdefault(cell.num_experts, tune_top_p(cell.num_experts, seed=setup.seed))
        records = _CellRun(cell, setup, p).run(on_step)
        for rec in records:
            rec["p"] = p
        if on_records is not None:
            on_records(records)
        yield records


def record_key(r: Record) -> tuple[Any, ...]:
    """The identity of a cell a record belongs to (for resuming), on the machine that
    measured it: another machine's record of the same cell is not a measurement of this one.
    """
    keys = ("router", "num_experts", "tokens", "mode", "d_model", "d_ff", "device", "dtype")
    return (*(r[k] for k in keys), r.get("machine"))
