"""Expert kinds by name: :data:`EXPERT_KINDS`, ``@register_experts``, :func:`make_experts`.

An expert kind registered here is built from a spec, ``"mlp:d_ff=64"`` (command lines) or
``{"name": "mlp", "d_ff": 64}`` (configs, ``config.json``). The layer fills in what the
spec leaves out: ``d_model``, ``d_ff`` and ``num_experts`` (each only if the kind's
``__init__`` takes it), so ``{"name": "mlp"}`` is "MLP experts of the model's sizes" and
``{"name": "mlp", "d_ff": 64}`` overrides the hidden width. Every module of
``dynroute/layers/experts/`` is imported on the first lookup of an unknown name, then the
plugins (``DYNROUTE_PLUGINS=my.module`` or a ``dynroute.plugins`` entry point).

Example:
    >>> experts = make_experts("mlp:d_ff=12", d_model=8, d_ff=32, num_experts=4)
    >>> type(experts).__name__, experts.d_ff, experts.num_experts
    ('MLPExperts', 12, 4)
    >>> check_experts_spec("mlp:width=12")
    Traceback (most recent call last):
    TypeError: mlp: unknown argument(s) ['width']; accepted: activation
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from dynroute.common.registry import Registry, takes
from dynroute.layers.experts.base import Experts

__all__ = [
    "EXPERT_KINDS",
    "ExpertsSpec",
    "check_experts_spec",
    "make_experts",
    "register_experts",
]

#: Registered expert kinds by name (filled by :func:`register_experts`).
EXPERT_KINDS: Registry[Experts] = Registry(
    "expert kind", Experts, package="dynroute.layers.experts", example="mlp:d_ff=64"
)

#: ``"name:key=value,..."`` or ``{"name": ..., **params}``.
ExpertsSpec = str | Mapping[str, Any]

#: What the layer fills in when the spec leaves it out (and the kind takes it).
SIZES = ("d_model", "d_ff", "num_experts")

E = TypeVar("E", bound=type[Experts])


def register_experts(name: str) -> Callable[[E], E]:
    """Class decorator: register an :class:`Experts` subclass as expert kind ``name``.

    The kind is then buildable from ``{"name": name, **params}`` in ``MoE(experts=...)``,
    ``DynMoEConfig(experts=...)``, a run config's ``[model] experts`` and saved models.
    Its ``__init__`` takes the spec's parameters as keywords, plus any of ``d_model``,
    ``d_ff``, ``num_experts`` it needs (filled by the layer).
    """
    return EXPERT_KINDS.register(name)


def _kind_and_params(spec: ExpertsSpec) -> tuple[type[Experts], dict[str, Any]]:
    """(registered class, parameters) of a spec; ``d_model`` is never the spec's to set."""
    params = EXPERT_KINDS.spec(spec)
    name = params.pop("name")
    cls = EXPERT_KINDS.lookup(name)
    if "d_model" in params:
        raise TypeError(f"{name}: d_model comes from the model; drop it from the spec")
    return cls, params


def make_experts(
    spec: ExpertsSpec, *, d_model: int, d_ff: int | None = None, num_experts: int | None = None,
    **defaults: Any,
) -> Experts:  # fmt: skip
    """Build an expert kind from its spec.

    Args:
        spec: ``"name:key=value,..."`` or ``{"name": ..., **params}``.
        d_model, d_ff, num_experts: the layer's sizes, given to the kind where its
            ``__init__`` takes them and the spec does not set them (a spec may set
            ``d_ff`` or ``num_experts``, never ``d_model``).
        **defaults: further parameters filled the same way (``MoE`` passes
            ``layout=expert_layout``, which only kinds with a ``layout`` take).

    Raises:
        ValueError: unknown kind (naming the known ones and how to register yours).
        TypeError: unknown or missing parameters.

    Example:
        >>> swiglu = make_experts("swiglu", d_model=8, d_ff=16, num_experts=2, layout="per_expert")
        >>> swiglu.layout, make_experts({"name": "mlp", "d_ff": 4}, d_model=8, num_experts=2)
        ('per_expert', MLPExperts(num_experts=2, d_model=8, d_ff=4))
    """
    cls, params = _kind_and_params(spec)
    fill = {"d_model": d_model, "d_ff": d_ff, "num_experts": num_experts, **defaults}
    fill = {k: v for k, v in fill.items() if v is not None and k not in params and takes(cls, k)}
    EXPERT_KINDS.check(cls, params, given=tuple(fill))
    return cls(**fill, **params)  # type: ignore[no-any-return]


def check_experts_spec(spec: ExpertsSpec) -> dict[str, Any]:
    """Check that a spec names a known kind with parameters it takes; return it as
    ``{"name": ..., **params}`` (the form configs store). Nothing is built: how the kind
    fits a layer's sizes is checked when one is (``DynMoEConfig`` does so on the meta
    device).

    Raises:
        ValueError: not a spec, or an unknown kind (naming the known ones).
        TypeError: unknown or missing parameters, or ``d_model`` in the spec.

    Example:
        >>> check_experts_spec("mlp:d_ff=64")
        {'name': 'mlp', 'd_ff': 64}
        >>> check_experts_spec({"name": "mixed"})
        Traceback (most recent call last):
        TypeError: mixed: missing required argument(s) ['parts']
    """
    cls, params = _kind_and_params(spec)
    EXPERT_KINDS.check(cls, params, given=SIZES)
    return EXPERT_KINDS.spec(spec)
