"""Routers as small frozen dataclasses, registered by name and found automatically.

A router is a :class:`Router` subclass decorated with :func:`register_router`: its fields
are its knobs, ``__call__(logits [N, E']) -> Routing`` its rule, ``extra_logits`` the gate
columns it needs beyond the E real experts. Every module in ``dynroute/routing/`` is
imported when the package is, so dropping a new module there is enough; routers that live
elsewhere are found through the ``DYNROUTE_PLUGINS`` environment variable (comma-separated
module names) or the ``dynroute.plugins`` entry-point group, imported the first time an
unknown name is asked for.

A router round-trips through ``{"name": ..., **params}`` (configs, ``config.json``) and
through ``"name:key=value,key=value"`` (command lines).

A router also *declares* what the project needs to know about it, as class attributes
with safe defaults (see :class:`Router`): ``examples`` (the specs the registry-driven
tests run), ``sweeps`` (its frontier sweep families), ``host_syncs``,
``constant_weights`` and ``causal``. Nothing outside the router's module names it.

A router whose behaviour changes during training keeps its knobs here and its state in
the layer: optional hooks ``make_state`` (parameters/buffers the layer owns),
``route(logits, state, ctx)`` (with a :class:`RouteContext`), ``combine``,
``after_step`` and ``on_progress`` (called by :func:`dynroute.routing.step_routers` once
per optimizer step). The defaults leave every stateless router as it was.

Example:
    >>> import torch
    >>> route = make_router("top_p:p=0.4")
    >>> route
    TopP(p=0.4, max_experts=None, normalize=False)
    >>> route(torch.zeros(2, 4)).experts_per_token().tolist()
    [2, 2]
    >>> make_router(route.to_dict()) == route
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

from torch import Tensor, nn

from dynroute.common.registry import Registry
from dynroute.routing.context import RouteContext
from dynroute.routing.sweep import SweepSpec
from dynroute.routing.types import Routing

__all__ = [
    "ROUTERS",
    "RouteContext",
    "Router",
    "RouterFn",
    "describe_router",
    "extra_logits",
    "layer_router",
    "make_router",
    "parse_router",
    "register_router",
    "router_class",
]

RouterFn = Callable[[Tensor], Routing]
_MISSING = dataclasses.MISSING


class Router:
    """Base of every router: a frozen dataclass whose fields are its parameters.

    Subclasses implement ``__call__(logits [N, E + extra_logits]) -> Routing`` (over the
    E real experts) and override ``extra_logits`` when the gate must emit more columns.

    Example:
        >>> from dataclasses import dataclass
        >>> from dynroute.routing import top_k
        >>> @register_router("doc_top1")
        ... @dataclass(frozen=True)
        ... class DocTop1(Router):
        ...     def __call__(self, logits): return top_k(logits, 1)
        >>> make_router("doc_top1").to_dict()
        {'name': 'doc_top1'}
    """

    name: ClassVar[str] = ""
    #: True when a token's experts depend on other tokens of its sequence (Graph of
    #: Tokens): left padding and KV-cache decoding then change its routing.
    mixes_tokens: ClassVar[bool] = False

    # --- declarations: what the tests and the frontier read (nothing else names a router) ---
    #: Specs (``"name:key=value"``) that the registry-driven tests run: the Routing
    #: invariants, the dispatch agreement (grouped = loop = dense), the layer and model
    #: tests, config validation and the sync count. Each must be valid for every even
    #: number of experts E >= 4 and any d_model >= E. Empty: the default construction, if
    #: the router has one (:meth:`example_specs`).
    examples: ClassVar[tuple[str, ...]] = ()
    #: Frontier sweep families: family name -> :class:`~dynroute.routing.sweep.SweepSpec`
    #: (the knob that sets k̄ and its value per target); ``dynroute.frontier.SWEEPS`` is
    #: built from them. Empty: the router has no sweep (it can still be trained as a
    #: single setting, ``--routers name:key=value``).
    sweeps: ClassVar[Mapping[str, SweepSpec]] = MappingProxyType({})
    #: Device-to-host syncs of one layer forward + backward on the ``grouped_mm`` path
    #: (0 where the number of assignments is static, 1 for the ``nonzero`` that sizes it);
    #: ``tests/diagnostics/test_syncs.py`` pins it. None: not pinned.
    host_syncs: ClassVar[int | None] = None
    #: True when the combine weights are constants (random or frozen routing: THOR,
    #: SMoE-Dropout): no gradient reaches the gate through them.
    constant_weights: ClassVar[bool] = False
    #: False when a token's experts depend on later tokens of the batch (expert choice):
    #: the causality test of the models then leaves the router out.
    causal: ClassVar[bool] = True

    @classmethod
    def example_specs(cls) -> tuple[str, ...]:
        """:attr:`examples`, or the bare name when the router builds with no arguments
        (a router that declares nothing), or () when it needs arguments.

        Example:
            >>> router_class("top_k").example_specs()[0]
            'top_k:k=2'
        """
        if cls.examples:
            return cls.examples
        try:
            cls()
        except (TypeError, ValueError):
            return ()
        return (cls.name,)

    def __call__(self, logits: Tensor) -> Routing:
        """Route without a layer's state or context: :meth:`route`, where a router overrides it."""
        if type(self).route is Router.route:
            raise NotImplementedError(f"{type(self).__name__} must implement __call__(logits)")
        return self.route(logits)

    @property
    def extra_logits(self) -> int:
        """Router columns beyond the E real experts that the gate must emit (0 for most)."""
        return 0

    def aux_loss(self, routing: Routing) -> Tensor | None:
        """A loss of the router's own, already weighted, that layers add to their auxiliary
        loss (None for most routers; DynMoLE's entropy term)."""
        return None

    # --- optional hooks of routers with state (DTop-p's controller, DeepSeek's bias, ...) ---
    # The defaults keep a stateless router stateless: no state module, ``route`` is
    # ``__call__``, nothing happens between steps. See docs/extending.md.

    def make_state(self, num_experts: int, d_model: int) -> nn.Module | None:
        """The router's learnable parameters and buffers for one layer (None: stateless).

        The layer keeps the module as its ``router_state`` submodule, so it is saved in
        ``state_dict`` and checkpoints, moved by ``.to()`` and trained by the optimizer.
        """
        return None

    def route(
        self, logits: Tensor, state: nn.Module | None = None, ctx: RouteContext | None = None
    ) -> Routing:
        """Route logits [N, E'] with this layer's ``state`` and the call's ``ctx``.

        Layers call this; the default ignores both and calls ``self(logits)``. A stateful
        router overrides it (and keeps ``__call__(logits)`` working without state where it
        can, e.g. with the state's initial values, for the HF adapters).
        """
        return self(logits)

    def combine(
        self,
        flat: Tensor,
        routing: Routing,
        run: Callable[[Tensor, Routing], Tensor],
        state: nn.Module | None = None,
        ctx: RouteContext | None = None,
    ) -> Tensor | None:
        """Expert outputs combined per token [N, d], for routers that combine themselves
        (THOR's consistency between two experts); ``run(flat, routing) -> [N, d]`` is the
        layer's own dispatch. None (the default): the layer runs ``routing`` as usual."""
        return None

    def after_step(self, states: list[nn.Module]) -> None:
        """Called once per optimizer step with the states of every layer this router
        routes (in layer order), after ``optimizer.step()``: read the statistics the
        forward passes accumulated in the states' buffers, update, reset them."""

    def on_progress(self, state: nn.Module, step: int, total_steps: int) -> None:
        """Called once per optimizer step for each layer's state: ``step`` optimizer steps
        of ``total_steps`` are done (schedules such as SMoE-Dropout's growing k)."""

    @property
    def stateful(self) -> bool:
        """Whether the router overrides :meth:`make_state`."""
        return type(self).make_state is not Router.make_state

    def params(self) -> dict[str, Any]:
        """The router's fields and their values."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """``{"name": ..., **params}``; :func:`make_router` turns it back into the router."""
        return {"name": self.name, **self.params()}

    def key_params(self) -> dict[str, Any]:
        """The required fields and those set off their defaults.

        Example:
            >>> make_router("top_p", p=0.3, normalize=True).key_params()
            {'p': 0.3, 'normalize': True}
        """
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)  # type: ignore[arg-type]
            if (f.default is _MISSING and f.default_factory is _MISSING)
            or getattr(self, f.name) != f.default
        }

    def describe(self) -> str:
        """Short text for tables and reports, e.g. ``top_p(p=0.3)``.

        Example:
            >>> make_router("top_p", p=0.3).describe(), make_router("top_k", k=2).describe()
            ('top_p(p=0.3)', 'top_k(k=2)')
        """
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.key_params().items())})"


#: Registered router classes by name (filled by :func:`register_router`; every module of
#: ``dynroute.routing`` is imported on the first unknown name, then the plugins).
ROUTERS: Registry[Router] = Registry(
    "router", Router, package="dynroute.routing", frozen_dataclass=True, example="top_p:p=0.4"
)

R = TypeVar("R", bound=type[Router])


def register_router(name: str) -> Callable[[R], R]:
    """Class decorator: register a frozen :class:`Router` dataclass under ``name``.

    Re-registering the same class (its module imported again) replaces it; another class
    under a taken name raises.
    """
    return ROUTERS.register(name)


def router_class(name: str) -> type[Router]:
    """The class registered as ``name``, loading plugins first if it is not known yet.

    Example:
        >>> router_class("top_p").__name__
        'TopP'
    """
    return ROUTERS.lookup(name)


def parse_router(text: str) -> dict[str, Any]:
    """``"name:key=value,key=value"`` -> ``{"name": ..., key: value}`` (values: int, float,
    bool, none or text).

    Example:
        >>> parse_router("top_p:p=0.4,max_experts=2")
        {'name': 'top_p', 'p': 0.4, 'max_experts': 2}
        >>> parse_router("top_k")
        {'name': 'top_k'}
    """
    return ROUTERS.parse(text)


def make_router(spec: str | Mapping[str, Any] | Router | RouterFn, **kwargs: Any) -> RouterFn:
    """A router from a name (``"top_p"``, ``"top_p:p=0.4"``), a dict, a Router or a callable.

    Keyword arguments add to (and override) the spec's parameters. Unknown names and
    unknown or missing arguments raise here, before any forward pass. A plain callable
    ``logits -> Routing`` is returned as is.

    Example:
        >>> make_router({"name": "null_experts", "k": 2, "num_null": 3}).extra_logits
        3
        >>> make_router("top_k:k=1", normalize=False)
        TopK(k=1, normalize=False)
    """
    if isinstance(spec, Router):
        return dataclasses.replace(spec, **kwargs) if kwargs else spec  # type: ignore[type-var]
    if isinstance(spec, str | Mapping):
        return ROUTERS.build(spec, **kwargs)
    if callable(spec):
        if kwargs:
            raise TypeError("router keyword arguments need a router name, not a callable")
        return spec
    raise TypeError(f"a router is a name, a dict, a Router or a callable; got {spec!r}")


def layer_router(
    router: str | Mapping[str, Any] | Router | RouterFn, num_experts: int, **kwargs: Any
) -> RouterFn:
    """:func:`make_router` for a layer of ``num_experts`` experts: a bare ``"top_k"`` means
    k = min(2, E), the layers' default.

    Example:
        >>> layer_router("top_k", 1), layer_router("top_p", 4, p=0.5)
        (TopK(k=1, normalize=True), TopP(p=0.5, max_experts=None, normalize=False))
    """
    if router == "top_k" and not kwargs:
        kwargs = {"k": min(2, num_experts)}
    return make_router(router, **kwargs)


def extra_logits(router: RouterFn) -> int:
    """How many router columns beyond the E real experts a router consumes (null experts);
    0 for a plain callable without an ``extra_logits`` attribute.

    Example:
        >>> extra_logits(make_router("null_experts", k=2, num_null=3))
        3
    """
    return int(getattr(router, "extra_logits", 0))


def describe_router(router: RouterFn) -> str:
    """``top_p(p=0.4)`` for a Router, the function's name for a plain callable.

    Example:
        >>> describe_router(make_router("top_p", p=0.4)), describe_router(len)
        ('top_p(p=0.4)', 'len')
    """
    if isinstance(router, Router):
        return router.describe()
    fn = getattr(router, "func", router)
    return getattr(fn, "__name__", type(fn).__name__)
