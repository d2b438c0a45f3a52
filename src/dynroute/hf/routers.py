"""What an adapted block routes with: a named dynroute router or any callable.

A named router ("top_k", "top_p", "null_experts", "expert_choice") only *selects*
(token, expert) pairs, on the family's selection logits; the weights are then the
model's own (softmax probability or sigmoid score, renormalised when the model
renormalises, times its routed scaling). A callable gets the router's raw logits and
its ``Routing`` is used unchanged.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from dynroute.hf.families import Family
from dynroute.routing import ROUTERS, Routing, get_router

__all__ = ["RouterSpec", "family_weights", "route"]

_DENOM_EPS = 1e-20  # DeepSeek-V3 adds this to its denominator; invisible for softmax families
_SPEC_KEYS = ("normalize", "null_logit")


@dataclass(frozen=True)
class RouterSpec:
    """A router choice for an adapted block, serialisable when it is named.

    Attributes:
        name: a key of ``dynroute.routing.ROUTERS``, or None for a callable.
        kwargs: the router's keyword arguments as the user gave them; ``k`` left out
            means the model's own k.
        fn: the callable ``logits [N, E] -> Routing`` when ``name`` is None.
        normalize: renormalise kept weights per token; None follows the model.

    Example:
        >>> RouterSpec.build("top_p", p=0.5).to_dict()
        {'router': 'top_p', 'p': 0.5}
    """

    name: str | None
    kwargs: dict[str, Any] = field(default_factory=dict)
    fn: Callable[[Tensor], Routing] | None = None
    normalize: bool | None = None

    @staticmethod
    def build(router: str | Callable[[Tensor], Routing], **kwargs: Any) -> RouterSpec:
        """Check a router name (or callable) and its arguments; raise before any forward.

        Example:
            >>> RouterSpec.build("top_p", q=0.5)
            Traceback (most recent call last):
            ...
            TypeError: top_p: unknown argument(s) ['q']; accepted: p, max_experts, normalize
        """
        if callable(router) and not isinstance(router, str):
            if kwargs:
                raise TypeError(
                    f"apply_routing: keyword arguments {sorted(kwargs)} are only for named "
                    "routers; bind them into your callable instead (functools.partial)"
                )
            return RouterSpec(None, {}, router)
        if not isinstance(router, str) or router not in ROUTERS:
            raise ValueError(
                f"apply_routing: unknown router {router!r}; choose one of "
                f"{', '.join(ROUTERS)} or pass a callable logits [N, E] -> Routing"
            )
        # None means "the default" for every router argument: drop it (keeps configs clean).
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        normalize = kwargs.pop("normalize", None)
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"{router}: normalize must be True, False or None, got {normalize!r}")
        rest = {k: v for k, v in kwargs.items() if k != "null_logit"}
        if router == "null_experts":
            if "null_logit" not in kwargs:
                raise TypeError(
                    "null_experts: pass null_logit=<float>, the logit every null expert gets; "
                    "an expert is kept only when its router logit beats it (higher = fewer experts)"
                )
            if not isinstance(kwargs["null_logit"], int | float):
                got = kwargs["null_logit"]
                raise TypeError(f"null_experts: null_logit must be a float, got {got!r}")
        elif "null_logit" in kwargs:
            raise TypeError(f"{router}: null_logit is only for router='null_experts'")
        # k and num_null default to the model's own k at routing time: check the rest now.
        params = inspect.signature(ROUTERS[router]).parameters
        probe = {k: 1 for k in ("k", "num_null") if k in params and k not in rest}
        if "normalize" in params:
            probe["normalize"] = False
        try:
            get_router(router, **rest, **probe)
        except TypeError as err:
            accepted = [p for p in params if p not in ("logits",)]
            if router == "null_experts":
                accepted.append("null_logit")
            problem = str(err).split("; accepted")[0]
            raise TypeError(f"{problem}; accepted: {', '.join(accepted)}") from None
        return RouterSpec(router, kwargs, None, normalize)

    @property
    def serializable(self) -> bool:
        """True for named routers (they can go into config.json)."""
        return self.name is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``config.dynroute_routing``."""
        if self.name is None:
            raise ValueError(
                "a callable router cannot be saved into config.json; save with a named router "
                f"({', '.join(ROUTERS)}) or re-apply your callable after loading"
            )
        out: dict[str, Any] = {"router": self.name, **self.kwargs}
        if self.normalize is not None:
            out["normalize"] = self.normalize
        return out

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> RouterSpec:
        """Inverse of :meth:`to_dict`.

        Example:
            >>> RouterSpec.from_dict({"router": "top_k", "k": 1}).kwargs
            {'k': 1}
        """
        data = dict(data)
        if "router" not in data:
            raise ValueError(f"dynroute_routing entry {data} has no 'router' key")
        return RouterSpec.build(data.pop("router"), **data)

    def describe(self) -> str:
        """Short text for tables: ``top_p(p=0.5)``."""
        if self.name is None:
            return getattr(self.fn, "__name__", type(self.fn).__name__)
        args = ", ".join(f"{k}={v}" for k, v in self.to_dict().items() if k != "router")
        return f"{self.name}({args})"


def family_weights(
    routing: Routing, family: Family, gate: nn.Module, logits: Tensor, normalize: bool | None
) -> Routing:
    """Replace a routing's weights by the model's own weighting of the same pairs.

    weight(t, e) = score(t, e) [/ sum of the token's kept scores] * routed scaling.
    Differentiable w.r.t. the logits.
    """
    scores = family.scores(gate, logits)
    w = scores[routing.token, routing.expert]
    if family.normalizes(gate) if normalize is None else normalize:
        denom = scores.new_zeros(scores.shape[0]).index_add(0, routing.token, w)
        w = w / (denom[routing.token] + _DENOM_EPS)
    scale = family.scale(gate)
    if scale != 1.0:
        w = w * scale
    return dataclasses.replace(routing, weight=w)


def route(spec: RouterSpec, family: Family, gate: nn.Module, logits: Tensor) -> Routing:
    """Route the router's raw logits [N, E] of one block.

    Example:
        >>> import torch
        >>> from dynroute.hf.families import FAMILIES
        >>> gate = torch.nn.Module(); gate.top_k = 2; gate.norm_topk_prob = False
        >>> r = route(RouterSpec.build("top_k"), FAMILIES[4], gate, torch.randn(3, 8))
        >>> r.experts_per_token().tolist()
        [2, 2, 2]
    """
    if spec.fn is not None:
        routing = spec.fn(logits)
        if not isinstance(routing, Routing):
            raise TypeError(
                "router callable must return dynroute.routing.Routing, "
                f"got {type(routing).__name__}"
            )
        if routing.num_experts != logits.shape[-1]:
            raise ValueError(
                f"router callable routed over {routing.num_experts} experts but the block has "
                f"{logits.shape[-1]}"
            )
        return routing
    kwargs = {k: v for k, v in spec.kwargs.items() if k not in _SPEC_KEYS}
    sel = family.selection_logits(gate, logits)
    if spec.name in ("top_k", "null_experts"):
        kwargs.setdefault("k", family.native_k(gate))
    if spec.name == "null_experts":
        kwargs.setdefault("num_null", family.native_k(gate))
        nulls = sel.new_full((sel.shape[0], kwargs["num_null"]), float(spec.kwargs["null_logit"]))
        sel = torch.cat([sel, nulls], dim=-1)
    if "normalize" in inspect.signature(ROUTERS[spec.name]).parameters:
        kwargs["normalize"] = False  # the family reweights below
    routing = ROUTERS[spec.name](sel, **kwargs)
    return family_weights(routing, family, gate, logits, spec.normalize)
