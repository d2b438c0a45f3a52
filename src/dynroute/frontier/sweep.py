"""What a frontier sweep trains: router settings aimed at a mean experts per token (k̄).

A *point* is one router setting (``top_p:p=0.4``); a *family* groups the points of one
router rule that differ only in the knob that sets k̄, and is drawn as one line. The
sweep table :data:`SWEEPS` says, for each family, which knob value aims at which k̄.
Dynamic routers do not hit a k̄ exactly (top-p's k̄ depends on how peaked the router
becomes during training), so every plot and verdict uses the *measured* k̄; the table's
targets only decide what to train.

Example:
    >>> [p.name for p in sweep_points(["top_k"], targets=(1, 2))]
    ['top_k-k1-normalizeFalse', 'top_k-k2']
    >>> point_from_text("top_p:p=0.4,normalize=true").family
    'top_p(normalize=True)'
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dynroute.routing import make_router, parse_router

__all__ = [
    "FRONTIER_FAMILY",
    "SWEEPS",
    "TARGETS",
    "Point",
    "Sweep",
    "point_from_text",
    "sweep_points",
]

#: The mean experts per token each sweep aims at (issue 17).
TARGETS: tuple[float, ...] = (1.0, 1.5, 2.0, 3.0)
#: The family whose points, joined, are the frontier every other router is judged against.
FRONTIER_FAMILY = "top_k"


@dataclass(frozen=True)
class Point:
    """One router setting to train (with every seed).

    Attributes:
        family: the line it belongs to on the plot (``top_k``, ``top_p``, ...).
        router: the router as ``{"name": ..., **params}`` (what ``[model] router`` takes).
        target: the k̄ it aims at (None: not aimed, e.g. top-p's paper setting).
    """

    family: str
    router: Mapping[str, Any]
    target: float | None = None

    @property
    def label(self) -> str:
        """The router as text, e.g. ``top_p(p=0.4)``.

        Example:
            >>> Point("top_k", {"name": "top_k", "k": 2}).label
            'top_k(k=2)'
        """
        return make_router(dict(self.router)).describe()  # type: ignore[union-attr]

    @property
    def name(self) -> str:
        """A folder name: ``top_p-p0.4-normalizeTrue``.

        Example:
            >>> Point("top_p", {"name": "top_p", "p": 0.4, "normalize": True}).name
            'top_p-p0.4-normalizeTrue'
        """
        spec = make_router(dict(self.router)).key_params()  # type: ignore[union-attr]
        parts = [str(self.router["name"])] + [f"{k}{v}" for k, v in spec.items()]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts))

    @property
    def is_frontier(self) -> bool:
        """Whether this point is one of the frontier's (a top-k router)."""
        return self.family == FRONTIER_FAMILY


@dataclass(frozen=True)
class Sweep:
    """How one router family reaches each target k̄.

    Attributes:
        router: the registered router name.
        fixed: parameters shared by every point (``{"normalize": True}``).
        knob: the parameter that sets k̄.
        values: target k̄ -> knob value. Targets a rule cannot reach are left out.
        per_value: knob value -> parameters of that point only (top-1's ``normalize``).
        source: where the values come from (a measurement, the rule itself).
    """

    router: str
    knob: str
    values: Mapping[float, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    per_value: Mapping[Any, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""

    def points(self, family: str, targets: Iterable[float] = TARGETS) -> list[Point]:
        """The points of this sweep at ``targets`` (those it can reach), in k̄ order.

        Example:
            >>> [p.router for p in SWEEPS["top_k"].points("top_k", targets=(1, 1.5))]
            [{'name': 'top_k', 'k': 1, 'normalize': False}]
        """
        wanted = {float(t) for t in targets}
        return [
            Point(
                family,
                _canonical(
                    {"name": self.router, **self.fixed, self.knob: v, **self.per_value.get(v, {})}
                ),
                float(t),
            )
            for t, v in sorted(self.values.items())
            if float(t) in wanted
        ]


def _canonical(spec: Mapping[str, Any]) -> dict[str, Any]:
    # Only the values off their defaults: `relu:target=2.0` from a sweep and `relu` typed
    # on a command line are one run (one folder, one run.json), not two that clash.
    return {"name": spec["name"], **make_router(dict(spec)).key_params()}  # type: ignore[union-attr]


#: Sweep table keyed by family name. A router added later (``dtop_p`` and the other
#: routers of issue 17) plugs in with one entry; ``tests/frontier`` builds every entry
#: with :func:`~dynroute.routing.make_router`, so a wrong name or knob fails there.
SWEEPS: dict[str, Sweep] = {
    # k = 1 as in Switch Transformer: the weight is the router's probability, not
    # renormalised to 1 (which would leave the router no gradient from the LM loss).
    "top_k": Sweep(
        "top_k",
        "k",
        {1.0: 1, 2.0: 2, 3.0: 3},
        per_value={1: {"normalize": False}},
        source="exact: k̄ = k",
    ),
    # Paper-faithful top-p (weights not renormalised). k̄ at p = 0.2 / 0.3 / 0.5 measured
    # on configs/demo.toml (BENCHMARKS.md, section 2: 1.51 / 1.82 / 2.89); p = 0.05 aims
    # at 1 from below (top-p always keeps one expert).
    "top_p": Sweep(
        "top_p",
        "p",
        {1.0: 0.05, 1.5: 0.2, 2.0: 0.3, 3.0: 0.5},
        source="BENCHMARKS.md section 2 (k̄ 1.51 / 1.82 / 2.89 at p 0.2 / 0.3 / 0.5)",
    ),
    # Renormalised top-p: k̄ 1.55 at p = 0.4 and 2.29 at 0.55 (d_model 512, 31M tokens,
    # issue 17); 2.18 at p = 0.4 on configs/demo.toml. Smaller p for k̄ 1, larger for 3.
    "top_p_normalized": Sweep(
        "top_p",
        "p",
        {1.0: 0.1, 1.5: 0.3, 2.0: 0.4, 3.0: 0.6},
        fixed={"normalize": True},
        source="issue 17 (k̄ 1.55 at p 0.4, d_model 512) and BENCHMARKS.md section 2",
    ),
    # Null experts (AdaMoE): top-k over E real + num_null empty experts; a token's real
    # experts are those of its k picks that are not null, so k̄ <= k.
    "null_experts": Sweep(
        "null_experts",
        "k",
        {1.5: 2, 2.0: 3, 3.0: 4},
        fixed={"num_null": 4},
        source="aimed: k̄ ≈ k minus the null picks; measured k̄ is what counts",
    ),
    # Sparsity-controlled top-p (routers17): its PI controller holds k̄ at `target`.
    "dtop_p": Sweep(
        "dtop_p", "target", {1.0: 1.0, 1.5: 1.5, 2.0: 2.0, 3.0: 3.0}, source="controller"
    ),
    # ReLU routing (ReMoE): the adaptive L1 weight aims at `target`, but only pushes toward
    # sparsity (BENCHMARKS.md section 8: target 2 gave k̄ 1.53), so measured k̄ may fall short.
    "relu": Sweep("relu", "target", {1.5: 1.5, 2.0: 2.0, 3.0: 3.0}, source="L1 controller"),
    # Fixed-k rules: k̄ = k exactly; they compete with top-k at equal compute.
    "deepseek_v3": Sweep("deepseek_v3", "k", {1.0: 1, 2.0: 2, 3.0: 3}, source="exact: k̄ = k"),
    "rmoe": Sweep("rmoe", "k", {1.0: 1, 2.0: 2, 3.0: 3}, source="exact: k̄ = k"),
    "graph_of_tokens": Sweep(
        "graph_of_tokens", "k", {1.0: 1, 2.0: 2, 3.0: 3}, source="exact: k̄ = k"
    ),
    # SMoE-Dropout: k grows from 1 to k_end during training and is k_end at evaluation.
    "smoe_dropout": Sweep(
        "smoe_dropout", "k_end", {1.0: 1, 2.0: 2, 3.0: 3}, source="exact at evaluation: k_end"
    ),
    # THOR has no knob for k̄: two random experts in training, one at inference (k̄ = 1).
    "thor": Sweep("thor", "consistency_weight", {1.0: 1.0}, source="the rule: one expert"),
}


def sweep_points(families: Iterable[str], targets: Iterable[float] = TARGETS) -> list[Point]:
    """Every point of the named sweep families at ``targets``; unknown families raise.

    Example:
        >>> [p.label for p in sweep_points(["top_p_normalized"], targets=[2])]
        ['top_p(p=0.4, normalize=True)']
    """
    targets = list(targets)
    points: list[Point] = []
    for family in families:
        if family not in SWEEPS:
            raise ValueError(
                f"no sweep for router {family!r}; known: {', '.join(SWEEPS)} "
                "(add one to dynroute.frontier.SWEEPS)"
            )
        points += SWEEPS[family].points(family, targets)
    return points


def point_from_text(text: str) -> Point:
    """A point from a command-line router (``top_p:p=0.4``), checked by building it.

    Its family is the router with every parameter but the knob that sets k̄ (top-k's
    ``k``, top-p's ``p``, ...), so ``top_p:p=0.3`` and ``top_p:p=0.5`` share a line.

    Example:
        >>> point_from_text("top_k:k=3")
        Point(family='top_k', router={'name': 'top_k', 'k': 3}, target=None)
    """
    spec = parse_router(text)
    router = make_router(spec)  # unknown names and arguments raise here
    params = router.key_params()  # type: ignore[union-attr]
    knobs = {s.knob for s in SWEEPS.values() if s.router == spec["name"]}
    rest = {k: v for k, v in params.items() if k not in knobs}
    family = spec["name"]
    if rest and family != FRONTIER_FAMILY:  # every top-k setting is on the frontier
        family += f"({', '.join(f'{k}={v}' for k, v in rest.items())})"
    return Point(family, {"name": spec["name"], **params})
