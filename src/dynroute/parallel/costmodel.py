"""The cost model of scheduled expert parallelism: time = α + β·size, fitted per task.

FSMoE models every task of an MoE layer as a straight line in its size: a collective in
the bytes each rank sends, a GEMM in its FLOPs, the gate / order / inverse-order tasks in
the FLOPs or bytes they touch. :class:`LinearFit` is that line, :func:`fit` finds it by
least squares, and :class:`Profile` keeps every fit measured on one machine (written by
``dynroute profile``, read by ``dynroute plan --profile`` and ``--ep-schedule auto``).

Units of the fits in a :class:`Profile`:

=====================  ===================================================================
fit                    size n
=====================  ===================================================================
``all_to_all``         bytes of each rank's send buffer (``all_to_all_single``)
``all_reduce``         bytes of the tensor reduced
``all_gather``         bytes of each rank's output (the whole gathered tensor)
``gemm``               FLOPs of the expert GEMMs (SwiGLU: 6·rows·d_model·d_ff forward)
``gemm_backward``      the same forward FLOPs; seconds of the backward
``gate``               FLOPs of the gate (2·tokens·d_model·experts)
``order``              bytes of rows gathered into expert order (rows·d_model·element)
``inverse_order``      bytes of rows combined back to tokens (rows·d_model·element)
=====================  ===================================================================

Example:
    >>> line = fit([1e3, 1e4, 1e5], [2e-5 + 1e-9 * n for n in (1e3, 1e4, 1e5)])
    >>> round(line.alpha_s * 1e6, 3), round(line.beta_s_per_unit * 1e9, 3)
    (20.0, 1.0)
    >>> round(line.time(5e4) * 1e6, 1)
    70.0
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dynroute.common.files import atomic_write_text

__all__ = [
    "COLLECTIVES",
    "LINKS",
    "ROW_TASKS",
    "LinearFit",
    "Profile",
    "fit",
]

COLLECTIVES = ("all_to_all", "all_reduce", "all_gather")
#: ``flat``: the whole group; ``intra``: ranks of one node; ``inter``: one rank per node.
LINKS = ("flat", "intra", "inter")
#: The per-row tasks of a layer and the unit of their fits.
ROW_TASKS = {"gate": "flops", "order": "bytes", "inverse_order": "bytes"}
PROFILE_VERSION = 1


@dataclass(frozen=True)
class LinearFit:
    """``time(n) = alpha_s + beta_s_per_unit · n`` seconds.

    Example:
        >>> LinearFit(1e-5, 2e-9).time(1000)
        1.2e-05
    """

    alpha_s: float
    beta_s_per_unit: float

    def time(self, n: float) -> float:
        """Seconds for a task of size ``n`` (in the fit's unit)."""
        return self.alpha_s + self.beta_s_per_unit * n

    def to_dict(self) -> dict[str, float]:
        return {"alpha_s": self.alpha_s, "beta_s_per_unit": self.beta_s_per_unit}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LinearFit:
        return cls(float(data["alpha_s"]), float(data["beta_s_per_unit"]))


def fit(sizes: Sequence[float], seconds: Sequence[float]) -> LinearFit:
    """Line through (size, seconds) of least squared *relative* error, with α ≥ 0, β ≥ 0.

    Why relative: profiled sizes span orders of magnitude, and an ordinary least-squares
    line is set by its largest points, leaving α (what every extra chunk pays) to the
    noise of the big ones; weighting each point by 1/seconds² makes the line as good, in
    per cent, at a 4 KB message as at a 1 MB one. A negative intercept (noise at small
    sizes) refits through the origin; a negative slope (sizes too small to see bandwidth)
    gives a constant.

    Raises:
        ValueError: fewer than one point, or sizes and seconds of different lengths.

    Example:
        >>> line = fit([1, 2, 3], [3.0, 5.0, 7.0])
        >>> round(line.alpha_s, 9), round(line.beta_s_per_unit, 9)
        (1.0, 2.0)
    """
    xs, ys = [float(s) for s in sizes], [float(t) for t in seconds]
    if len(xs) != len(ys) or not xs:
        raise ValueError(
            f"fit: need as many sizes as times, at least one; got {len(xs)}, {len(ys)}"
        )
    ws = [1.0 / y**2 if y > 0 else 1.0 for y in ys]
    total = sum(ws)
    mx = sum(w * x for w, x in zip(ws, xs, strict=True)) / total
    my = sum(w * y for w, y in zip(ws, ys, strict=True)) / total
    sxx = sum(w * (x - mx) ** 2 for w, x in zip(ws, xs, strict=True))
    sxy = sum(w * (x - mx) * (y - my) for w, x, y in zip(ws, xs, ys, strict=True))
    beta = sxy / sxx if sxx else 0.0
    alpha = my - beta * mx
    if beta < 0:
        return LinearFit(my, 0.0)
    if alpha < 0:  # through the origin
        sxy0 = sum(w * x * y for w, x, y in zip(ws, xs, ys, strict=True))
        return LinearFit(0.0, sxy0 / sum(w * x * x for w, x in zip(ws, xs, strict=True)))
    return LinearFit(alpha, beta)


def _optional_fit(data: dict[str, Any], key: str) -> LinearFit | None:
    return LinearFit.from_dict(data[key]) if data.get(key) else None


@dataclass
class Profile:
    """Every fit measured on one machine: collectives per link, GEMMs, per-row tasks.

    Attributes:
        machine: where it was measured (host name, CPU or GPU model).
        world_size, nnodes: the process group measured; ``intra`` groups have
            ``world_size // nnodes`` ranks, ``inter`` groups ``nnodes``.
        backend: "gloo" or "nccl".
        collectives: link -> collective -> fit (bytes); ``flat`` always, ``intra`` and
            ``inter`` when ``nnodes > 1``.
        gemm: expert grouped-GEMM seconds vs FLOPs (forward).
        gemm_backward: their backward's seconds vs the forward FLOPs (None: not measured;
            the planner then takes twice the forward).
        row_tasks: ``gate`` (FLOPs), ``order`` and ``inverse_order`` (bytes).
        dense, dense_backward: the dense part's plain GEMMs, forward and backward, seconds
            vs forward FLOPs (None: not measured; the planner then uses the expert fits).
        hierarchical_exchange: the whole hierarchical all-to-all as
            ``parallel.hierarchy`` runs it on the ``nnodes`` nodes measured (split sizes,
            inter-node stage, reorder, intra-node stage, reorder), seconds vs bytes a rank
            sends (None: not measured, or one node; the planner then adds up the stages).
        element_bytes: bytes per activation element measured (4 for float32).
        points: the raw measurements, for the record.

    Example:
        >>> p = Profile("here", 2, 1, "gloo", {"flat": {"all_to_all": LinearFit(1e-4, 1e-9)}},
        ...             LinearFit(0.0, 1e-10), {})
        >>> p.collective("all_to_all").time(0)
        0.0001
        >>> p.collective("all_to_all", "inter")
        Traceback (most recent call last):
        ValueError: profile measured on here has no inter all_to_all fit (measured: flat); \
profile with --nnodes > 1 for intra/inter links
    """

    machine: str
    world_size: int
    nnodes: int
    backend: str
    collectives: dict[str, dict[str, LinearFit]]
    gemm: LinearFit
    row_tasks: dict[str, LinearFit]
    element_bytes: int = 4
    points: dict[str, Any] = field(default_factory=dict)
    gemm_backward: LinearFit | None = None
    dense: LinearFit | None = None
    dense_backward: LinearFit | None = None
    hierarchical_exchange: LinearFit | None = None

    def group_size(self, link: str) -> int:
        """Ranks in a group of ``link`` as measured."""
        return {"flat": self.world_size, "intra": self.world_size // self.nnodes}.get(
            link, self.nnodes
        )

    def collective(self, name: str, link: str = "flat") -> LinearFit:
        """The fit of collective ``name`` on ``link``; a clear error when not measured."""
        found = self.collectives.get(link, {}).get(name)
        if found is None:
            have = ", ".join(sorted(self.collectives)) or "none"
            raise ValueError(
                f"profile measured on {self.machine} has no {link} {name} fit (measured: {have}); "
                "profile with --nnodes > 1 for intra/inter links"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = PROFILE_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        return cls(
            machine=str(data["machine"]),
            world_size=int(data["world_size"]),
            nnodes=int(data["nnodes"]),
            backend=str(data["backend"]),
            collectives={
                link: {name: LinearFit.from_dict(f) for name, f in fits.items()}
                for link, fits in data["collectives"].items()
            },
            gemm=LinearFit.from_dict(data["gemm"]),
            row_tasks={k: LinearFit.from_dict(f) for k, f in data["row_tasks"].items()},
            element_bytes=int(data.get("element_bytes", 4)),
            points=dict(data.get("points", {})),
            gemm_backward=_optional_fit(data, "gemm_backward"),
            dense=_optional_fit(data, "dense"),
            dense_backward=_optional_fit(data, "dense_backward"),
            hierarchical_exchange=_optional_fit(data, "hierarchical_exchange"),
        )

    def save(self, path: Path | str) -> None:
        """Write the profile as JSON (atomically)."""
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path | str) -> Profile:
        """Read a profile JSON written by :meth:`save` (``dynroute profile``).

        Raises:
            FileNotFoundError: no such file (the message names it).
            ValueError: not a profile (the message names the file and what is wrong).
        """
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"{path}: no such profile file; write one with dynroute profile"
            )
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path}: not a JSON profile ({err})") from None
        if not isinstance(data, dict) or data.get("version") != PROFILE_VERSION:
            raise ValueError(
                f"{path}: not a dynroute profile (version {PROFILE_VERSION}); "
                "write one with dynroute profile"
            )
        try:
            return cls.from_dict(data)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"{path}: broken profile, missing or bad field {err}") from None
