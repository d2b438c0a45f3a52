"""The library-router base class, its registry and the two score functions."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.common.registry import Registry
from dynroute.routing import Routing

if TYPE_CHECKING:
    from dynroute.lora.library.layer import LibraryLinear

__all__ = [
    "LIBRARY_ROUTERS",
    "LibraryRouter",
    "arrow_scores",
    "phatgoose_scores",
    "register_library_router",
    "routing_from_top_k",
]


class LibraryRouter:
    """Base of the library routers (frozen dataclasses; fields are their parameters).

    Subclasses define ``__call__(layer, x) -> Routing`` and may override :meth:`check`
    (refuse a library they cannot route, with the remedy), :meth:`for_domain` (the oracle
    picks the evaluated domain's adapter) and :meth:`evaluation_specs` (the settings
    ``dynroute lora library eval`` runs).
    """

    name: ClassVar[str] = ""

    def __call__(self, layer: LibraryLinear, x: Tensor) -> Routing:
        raise NotImplementedError

    def check(self, layer: LibraryLinear) -> None:
        """Raise ``ValueError`` when this router cannot route ``layer``'s library."""
        k = getattr(self, "top_k", None)
        if k is not None and not 1 <= int(k) <= layer.num_adapters:
            raise ValueError(
                f"{self.name}: top_k={k} but the library holds {layer.num_adapters} "
                f"adapter(s); choose 1..{layer.num_adapters}"
            )

    def for_domain(self, domain: str, names: list[str]) -> LibraryRouter | None:
        """The router to evaluate on ``domain`` (None: not defined there)."""
        return self

    @classmethod
    def evaluation_specs(cls, num_adapters: int, top_k: int, gates: bool) -> list[dict[str, Any]]:
        """The settings to evaluate on a library of ``num_adapters`` (``gates``: PHATGOOSE
        gates present), ``top_k`` the user's k."""
        return [{"name": cls.name}]

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **params}`` (``LIBRARY_ROUTERS.build`` reads it back)."""
        return {"name": self.name, **dataclasses.asdict(self)}  # type: ignore[call-overload]

    def label(self) -> str:
        """A short row label: ``name(key=value, ...)`` with the parameters not at their
        defaults."""
        fields = dataclasses.fields(self)  # type: ignore[arg-type]
        changed = [f for f in fields if getattr(self, f.name) != f.default]
        params = ", ".join(f"{f.name}={getattr(self, f.name)}" for f in changed)
        return f"{self.name}({params})" if params else self.name


LIBRARY_ROUTERS: Registry[LibraryRouter] = Registry(
    "library router", LibraryRouter, package="dynroute.lora.library.routers",
    frozen_dataclass=True, example="arrow:top_k=2",
)  # fmt: skip


def register_library_router(name: str) -> Callable[[type], type]:
    """Class decorator: register a library router (a frozen dataclass) under ``name``."""
    return LIBRARY_ROUTERS.register(name)


def arrow_scores(layer: LibraryLinear, x: Tensor) -> Tensor:
    """Arrow's sign-free alignment ``|⟨x, v_e⟩|`` of each token with each prototype.

    Shapes: x [N, d_in] -> [N, E] (x's dtype, as peft).
    """
    return (x @ layer.prototypes.to(x.dtype).T).abs()


def _standardize(t: Tensor) -> Tensor:
    return F.layer_norm(t.float(), t.shape[-1:])


def phatgoose_scores(layer: LibraryLinear, x: Tensor) -> Tensor:
    """PHATGOOSE's affinity: standardized token · standardized gate vector, over ``√d``.

    Both sides are standardized over the feature dimension (zero mean, unit variance) so
    that gates trained separately compare; the scale ``1/√d`` keeps the softmax's
    temperature near 1 (the paper's and mttl's default). Shapes: [N, d_in] -> [N, E] f32.
    """
    return _standardize(x) @ _standardize(layer.gates).T / math.sqrt(x.shape[-1])


def routing_from_top_k(scores: Tensor, k: int, temperature: float = 1.0) -> Routing:
    """Top-k adapters by score, weights ``softmax(score / temperature)`` over the chosen.

    The weights equal peft's Arrow coefficients (softmax over all E with the others at
    -inf). ``probs`` is the softmax over all E (statistics). No host sync.

    Example:
        >>> r = routing_from_top_k(torch.tensor([[3.0, 1.0, 2.0]]), k=2)
        >>> r.expert.tolist(), [round(w, 3) for w in r.weight.tolist()]
        ([0, 2], [0.731, 0.269])
    """
    n, e = scores.shape
    top, idx = torch.topk(scores, k, dim=1)
    weight = torch.softmax(top.float() / temperature, dim=1)
    token = torch.arange(n, device=scores.device).repeat_interleave(k)
    probs = torch.softmax(scores.float() / temperature, dim=1)
    return Routing.from_assignments(token, idx.reshape(-1), weight.reshape(-1), probs, e)
