"""What an adapted block routes with: a named dynroute router or any callable.

A named router (any registered one: "top_k", "top_p", "null_experts", ...) only *selects*
(token, expert) pairs, on the family's selection logits; the weights are then the
model's own (softmax probability or sigmoid score, renormalised when the model
renormalises, times its routed scaling). A callable gets the router's raw logits and
its ``Routing`` is used unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from dynroute.hf.families import Family
from dynroute.models.config import router_fields
from dynroute.routing import Router, RouterFn, Routing, make_router, parse_router, router_class

__all__ = ["RouterSpec", "family_weights", "route"]

_DENOM_EPS = 1e-20  # DeepSeek-V3 adds this to its denominator; invisible for softmax families
#: Router fields an adapted block fills with the model's own k when the user leaves them out.
_MODEL_K_FIELDS = ("k", "num_null")


@dataclass(frozen=True)
class RouterSpec:
    """A router choice for an adapted block, serialisable when it is named.

    Attributes:
        name: a registered router's name, or None for a callable.
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
    def build(
        router: str | Router | RouterSpec | Callable[[Tensor], Routing], **kwargs: Any
    ) -> RouterSpec:
        """Check a router (name, ``name:key=value``, Router, RouterSpec or callable) and its
        arguments. Parsing and checking are :data:`dynroute.routing.ROUTERS`'s
        (``make_router``); what is added here: ``None`` arguments mean the default, ``k``
        left out means the model's own k, and routers that need extra gate columns
        (null experts without ``null_logit``) are refused.

        Raises before any forward pass.

        Example:
            >>> RouterSpec.build("top_p", q=0.5)
            Traceback (most recent call last):
            ...
            TypeError: top_p: unknown argument(s) ['q']; accepted: p, max_experts, normalize
            >>> RouterSpec.build("top_p:p=0.5").kwargs
            {'p': 0.5}
        """
        if isinstance(router, RouterSpec):
            if kwargs:
                raise TypeError(
                    f"apply_routing: keyword arguments {sorted(kwargs)} with a RouterSpec; "
                    "put them into the spec (RouterSpec.build(name, **kwargs))"
                )
            return router
        if isinstance(router, Router):
            router, kwargs = router.name, {**router.key_params(), **kwargs}
        elif callable(router) and not isinstance(router, str):
            if kwargs:
                raise TypeError(
                    f"apply_routing: keyword arguments {sorted(kwargs)} are only for named "
                    "routers; bind them into your callable instead (functools.partial)"
                )
            return RouterSpec(None, {}, router)
        if isinstance(router, str) and ":" in router:
            parsed = parse_router(router)
            router, kwargs = parsed.pop("name"), {**parsed, **kwargs}
        if not isinstance(router, str):
            raise ValueError(f"apply_routing: a router is a name or a callable, got {router!r}")
        try:
            router_class(router)
        except ValueError as err:
            raise ValueError(
                f"apply_routing: {err}; or pass a callable logits -> Routing"
            ) from None
        # None means "the default" for every router argument: drop it (keeps configs clean).
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        normalize = kwargs.pop("normalize", None)
        if normalize is not None and not isinstance(normalize, bool):
            raise TypeError(f"{router}: normalize must be True, False or None, got {normalize!r}")
        spec = RouterSpec(router, kwargs, None, normalize)
        extra = spec.bind(1).extra_logits  # checks the arguments now, with a stand-in k
        if extra:
            hint = ""
            if "null_logit" in router_fields(router):
                hint = (
                    "; pass null_logit=<float>, the logit every null expert gets: an expert "
                    "is kept only when its router logit beats it (higher = fewer experts)"
                )
            raise TypeError(
                f"{router}: needs {extra} router column(s) beyond the model's experts, which a "
                f"pretrained gate does not have{hint}"
            )
        return spec

    def bind(self, native_k: int) -> RouterFn:
        """The router for a block whose model routes each token to ``native_k`` experts.

        Fields named ``k`` or ``num_null`` that the user left out take ``native_k``; a
        ``normalize`` field is switched off, since the family reweights the kept pairs.

        Example:
            >>> RouterSpec.build("top_k").bind(4)
            TopK(k=4, normalize=False)
        """
        if self.fn is not None:
            return self.fn
        fields = router_fields(self.name)
        own = {name: native_k for name in _MODEL_K_FIELDS if name in fields}
        if "normalize" in fields:
            own["normalize"] = False
        return make_router({"name": self.name, **own, **self.kwargs})

    @property
    def serializable(self) -> bool:
        """True for named routers (they can go into config.json)."""
        return self.name is not None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in ``config.dynroute_routing``."""
        if self.name is None:
            raise ValueError(
                "a callable router cannot be saved into config.json; save with a named router "
                "(dynroute.routing.ROUTERS) or re-apply your callable after loading"
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
    # spelled out rather than dataclasses.replace: dynamo cannot trace dataclasses.fields
    return Routing(
        routing.token,
        routing.expert,
        w,
        routing.probs,
        routing.num_experts,
        routing.null_probs,
        routing.null_selected,
    )


def route(
    spec: RouterSpec,
    family: Family,
    gate: nn.Module,
    logits: Tensor,
    router: RouterFn | None = None,
) -> Routing:
    """Route the router's raw logits [N, E] of one block.

    ``router`` is ``spec.bind(family.native_k(gate))`` bound once by the caller (an
    adapted block binds it at ``set_router`` time, so nothing is introspected per
    forward and ``torch.compile`` can trace it); None binds it here.

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
    if router is None:
        router = spec.bind(family.native_k(gate))
    routing = router(family.selection_logits(gate, logits))
    return family_weights(routing, family, gate, logits, spec.normalize)
