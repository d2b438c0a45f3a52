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
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from dynroute.common.registry import load_plugins
from dynroute.routing import ROUTERS, make_router, parse_router
from dynroute.routing.sweep import SweepSpec

__all__ = [
    "FRONTIER_FAMILY",
    "SWEEPS",
    "TARGETS",
    "Point",
    "Sweep",
    "SweepTable",
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
    """How one router family reaches each target k̄: the
    :class:`~dynroute.routing.sweep.SweepSpec` a router declares (its attributes, the
    same names), with ``router``, the registered router name, in front.
    """

    router: str
    knob: str
    values: Mapping[float, Any]
    fixed: Mapping[str, Any] = field(default_factory=dict)
    per_value: Mapping[Any, Mapping[str, Any]] = field(default_factory=dict)
    source: str = ""

    @classmethod
    def declared(cls, router: str, spec: SweepSpec) -> Sweep:
        """The sweep a router declares in ``Router.sweeps``.

        Example:
            >>> Sweep.declared("top_p", SweepSpec("p", {2.0: 0.3})).values
            {2.0: 0.3}
        """
        return cls(router, spec.knob, spec.values, spec.fixed, spec.per_value, spec.source)

    def points(self, family: str, targets: Iterable[float] = TARGETS) -> list[Point]:
        """The points of this sweep at ``targets`` (those it can reach), in k̄ order.

        Example:
            >>> [p.router for p in SWEEPS["top_k"].points("top_k", targets=(1, 1.5))]
            [{'name': 'top_k', 'k': 1, 'normalize': False}]
        """
        wanted = {float(t) for t in targets}
        spec = SweepSpec(self.knob, self.values, self.fixed, self.per_value)
        return [
            Point(family, _canonical({"name": self.router, **params}), target)
            for target, params in spec.settings()
            if target in wanted
        ]


def _canonical(spec: Mapping[str, Any]) -> dict[str, Any]:
    # Only the values off their defaults: `relu:target=2.0` from a sweep and `relu` typed
    # on a command line are one run (one folder, one run.json), not two that clash.
    return {"name": spec["name"], **make_router(dict(spec)).key_params()}  # type: ignore[union-attr]


class SweepTable(MutableMapping[str, Sweep]):
    """Family name -> :class:`Sweep`: every registered router's ``Router.sweeps``, read
    from the registry on each use (a router registered later, a plugin, is in it), the
    frontier's family first, then in the order the routers registered.

    Entries set by hand (``SWEEPS["expert_choice"] = Sweep(...)``) add a family or
    override a declared one for this process; declared families cannot be deleted.

    Example:
        >>> list(SWEEPS)[0], SWEEPS["top_p_normalized"].fixed
        ('top_k', {'normalize': True})
    """

    def __init__(self) -> None:
        self._set: dict[str, Sweep] = {}

    def _declared(self) -> dict[str, Sweep]:
        declared: dict[str, Sweep] = {}
        for cls in list(ROUTERS.values()):
            for family, spec in cls.sweeps.items():
                other = declared.get(family)
                if other is not None and other.router != cls.name:
                    raise ValueError(
                        f"sweep family {family!r} is declared by routers {other.router!r} and "
                        f"{cls.name!r}; rename it in one of their `sweeps`"
                    )
                declared[family] = Sweep.declared(cls.name, spec)
        # the frontier first (a stable sort keeps the others in registration order)
        return dict(sorted(declared.items(), key=lambda item: item[0] != FRONTIER_FAMILY))

    def _table(self) -> dict[str, Sweep]:
        return {**self._declared(), **self._set}

    def __getitem__(self, family: str) -> Sweep:
        return self._table()[family]

    def __setitem__(self, family: str, sweep: Sweep) -> None:
        self._set[family] = sweep

    def __delitem__(self, family: str) -> None:
        declared = self._declared().get(family)
        if declared is not None:
            raise KeyError(
                f"sweep family {family!r} is declared by router {declared.router!r}; change "
                "its `sweeps` instead"
            )
        del self._set[family]

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())

    def __repr__(self) -> str:
        return f"SweepTable({self._table()!r})"


#: Sweep table keyed by family name, built from the routers' own declarations
#: (``Router.sweeps`` in each router's module): a new router brings its sweep with it.
#: ``tests/frontier`` builds every entry with :func:`~dynroute.routing.make_router`, so a
#: wrong name or knob fails there.
SWEEPS: MutableMapping[str, Sweep] = SweepTable()


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
            load_plugins()  # a router of the user's own may declare it
        if family not in SWEEPS:
            raise ValueError(
                f"no sweep for router {family!r}; known: {', '.join(SWEEPS)} "
                "(a router declares its sweeps in its class: `sweeps = {family: SweepSpec(...)}`)"
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
