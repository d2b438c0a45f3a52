"""Name → class registries with plugin discovery, and the ``name:key=value`` spec form.

One mechanism for every seam that is "one module": MoE routers
(:data:`dynroute.routing.ROUTERS`), expert kinds (:data:`dynroute.layers.experts.EXPERT_KINDS`),
query routers (:data:`dynroute.llm.routers.QUERY_ROUTERS`) and model types of the checkpoint
loader (:data:`dynroute.checkpoints.MODEL_TYPES`). A registry:

- is a ``dict`` of name → class, filled by its ``register(name)`` class decorator;
- imports every module of its own package the first time a name is asked for (dropping a
  file in the package is enough);
- then imports the plugins: the modules named in ``DYNROUTE_PLUGINS`` (comma-separated) and
  the ``dynroute.plugins`` entry points of installed packages (dynroute's own
  ``dynroute.adaptive`` is one: the loader finds its model type without importing it);
- builds an instance from ``"name:key=value,..."`` or ``{"name": ..., **params}``, checking
  the parameters against the class's dataclass fields or ``__init__`` signature first.

Example:
    >>> from dataclasses import dataclass
    >>> class Shape: pass
    >>> SHAPES = Registry("shape", Shape)
    >>> @SHAPES.register("square")
    ... @dataclass(frozen=True)
    ... class Square(Shape):
    ...     side: float = 1.0
    >>> SHAPES.build("square:side=2")
    Square(side=2)
    >>> SHAPES.build({"name": "square", "edge": 2})
    Traceback (most recent call last):
    TypeError: square: unknown argument(s) ['edge']; accepted: side
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import pkgutil
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

__all__ = [
    "ENTRY_POINT_GROUP",
    "PLUGINS_ENV",
    "Registry",
    "UnknownNameError",
    "load_plugins",
    "parse_spec",
    "parse_value",
    "spec_name",
    "takes",
]

PLUGINS_ENV = "DYNROUTE_PLUGINS"
ENTRY_POINT_GROUP = "dynroute.plugins"

T = TypeVar("T")
C = TypeVar("C", bound=type)


class UnknownNameError(ValueError):
    """A name no registry entry, module of the package or plugin defines; the message lists
    the known names and how to register one of your own."""


def load_plugins() -> None:
    """Import the modules named in ``DYNROUTE_PLUGINS`` and the ``dynroute.plugins``
    entry points (each registers what it defines; importing twice is a no-op).

    Raises:
        ImportError: naming the module and what to do when one cannot be imported.
    """
    names = [m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(",") if m.strip()]
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as err:
            raise ImportError(
                f"{PLUGINS_ENV} names module {name!r}, which cannot be imported ({err}); "
                "fix the name or put its folder on PYTHONPATH"
            ) from err
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        ep.load()


def parse_value(text: str) -> Any:
    """A spec value: int, float, ``true``/``false``, ``none``/``null``, else the text.

    Example:
        >>> [parse_value(t) for t in ("2", "0.5", "True", "none", "a.b")]
        [2, 0.5, True, None, 'a.b']
    """
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_spec(text: str, kind: str = "router", example: str = "top_p:p=0.4") -> dict[str, Any]:
    """``"name:key=value,key=value"`` → ``{"name": ..., key: value}``.

    Example:
        >>> parse_spec("top_p:p=0.4,max_experts=2")
        {'name': 'top_p', 'p': 0.4, 'max_experts': 2}
        >>> parse_spec("knn:k=", "query router", "knn:k=10")
        Traceback (most recent call last):
        ValueError: query router 'knn:k=': expected name:key=value,... (e.g. knn:k=10), got 'k='
    """
    name, _, rest = text.partition(":")
    out: dict[str, Any] = {"name": name.strip()}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip():
            raise ValueError(
                f"{kind} {text!r}: expected name:key=value,... (e.g. {example}), got {item!r}"
            )
        out[key.strip()] = parse_value(value.strip())
    return out


def spec_name(spec: str | Mapping[str, Any]) -> str:
    """The name of a spec in either form.

    Example:
        >>> spec_name("top_p:p=0.4"), spec_name({"name": "mlp", "d_ff": 64})
        ('top_p', 'mlp')
    """
    if isinstance(spec, str):
        return spec.partition(":")[0].strip()
    return str(spec.get("name", ""))


def _origin(cls: type) -> tuple[str | None, str]:
    # the defining file, not the module name: one file imported under two names (a test
    # module seen by pytest's doctest collection and by an import) is the same class
    module = sys.modules.get(cls.__module__)
    return getattr(module, "__file__", cls.__module__), cls.__qualname__


def _accepted(cls: type) -> tuple[list[str], list[str], bool]:
    """(parameter names, required names, takes **kwargs) of a dataclass or an __init__."""
    if dataclasses.is_dataclass(cls):
        fields = [f for f in dataclasses.fields(cls) if f.init]
        missing = dataclasses.MISSING
        required = [f.name for f in fields if f.default is missing and f.default_factory is missing]
        return [f.name for f in fields], required, False
    params = list(inspect.signature(cls).parameters.values())
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    required = [p.name for p in named if p.default is p.empty]
    return [p.name for p in named], required, any(p.kind is p.VAR_KEYWORD for p in params)


def takes(cls: type, name: str) -> bool:
    """Whether ``cls(...)`` accepts the keyword ``name`` (a field, a parameter or ``**kwargs``).

    Example:
        >>> takes(complex, "imag"), takes(complex, "x")
        (True, False)
    """
    names, _, open_ended = _accepted(cls)
    return open_ended or name in names


class Registry(dict[str, type], Generic[T]):
    """A ``dict`` of name → class for one seam, filled by :meth:`register`.

    Args:
        kind: what the entries are, for messages (``"router"``, ``"expert kind"``).
        base: the class every entry subclasses (``None``: anything).
        package: the package whose modules are imported on the first lookup of an
            unknown name (its own entries register themselves on import).
        frozen_dataclass: entries must be frozen dataclasses (their fields are their
            parameters and round-trip through :meth:`build`).
        example: a spec shown in parse errors.
        set_name: set ``cls.name`` to the registered name (routers and expert kinds
            report it in ``to_dict``); off for classes that own the attribute.
    """

    def __init__(
        self,
        kind: str,
        base: type | None = None,
        package: str | None = None,
        frozen_dataclass: bool = False,
        example: str = "",
        set_name: bool = True,
    ) -> None:
        super().__init__()
        self.kind = kind
        self.base = base
        self.package = package
        self.frozen_dataclass = frozen_dataclass
        self.example = example or f"{kind.replace(' ', '_')}:key=value"
        self.set_name = set_name
        self._discovered = False

    def register(
        self, name: str, *, hook: Callable[[str, Any], None] | None = None
    ) -> Callable[[C], C]:
        """Class decorator: register ``cls`` under ``name`` (``cls.name`` is set to it).

        Re-registering the same class (its module imported again) replaces it; another
        class under a taken name raises. ``hook(name, cls)`` runs after registering.
        """
        if not name.isidentifier():
            raise ValueError(
                f"register {self.kind} {name!r}: not a valid name (letters, digits, _)"
            )

        def decorate(cls: C) -> C:
            if self.base is not None and not (isinstance(cls, type) and issubclass(cls, self.base)):
                raise TypeError(
                    f"register {self.kind} {name!r}: {cls!r} must subclass {self.base.__name__}"
                )
            params = getattr(cls, "__dataclass_params__", None)
            if self.frozen_dataclass and (params is None or not params.frozen):
                raise TypeError(
                    f"register {self.kind} {name!r}: decorate a frozen dataclass "
                    "(the register decorator above @dataclass(frozen=True))"
                )
            old = super(Registry, self).get(name)
            if old is not None and _origin(old) != _origin(cls):
                raise ValueError(
                    f"{self.kind} {name!r} is taken by {old.__module__}.{old.__qualname__}"
                )
            if self.set_name:
                cls.name = name  # type: ignore[attr-defined]
            self[name] = cls
            if hook is not None:
                hook(name, cls)
            return cls

        return decorate

    def discover(self) -> None:
        """Import every module of the registry's own package (once)."""
        if self._discovered or self.package is None:
            return
        self._discovered = True
        package = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{self.package}.{info.name}")

    def lookup(self, name: str) -> type:
        """The class registered as ``name``: the package's modules, then plugins, on a miss.

        Raises:
            UnknownNameError: naming every known entry and how to register one of your own.
        """
        if name not in self:
            self.discover()
        if name not in self:
            load_plugins()
        if name not in self:
            raise UnknownNameError(
                f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self))}. "
                f"One defined in your own module: set {PLUGINS_ENV}=your.module (or install "
                f"its package with a {ENTRY_POINT_GROUP!r} entry point)"
            )
        return self[name]

    def knows(self, name: str | None) -> bool:
        """Whether ``name`` is registered (after discovery and plugins, like :meth:`lookup`)."""
        try:
            self.lookup(str(name))
        except ValueError:
            return False
        return True

    def parse(self, text: str) -> dict[str, Any]:
        """:func:`parse_spec` with this registry's wording."""
        return parse_spec(text, self.kind, self.example)

    def spec(self, spec: str | Mapping[str, Any]) -> dict[str, Any]:
        """``{"name": ..., **params}`` of a spec in either form (only the form is checked).

        Example:
            >>> Registry("shape").spec("square:side=2"), Registry("shape").spec({"name": "disc"})
            ({'name': 'square', 'side': 2}, {'name': 'disc'})
        """
        if isinstance(spec, str):
            return self.parse(spec)
        if not isinstance(spec, Mapping):
            article = "an" if self.kind[0] in "aeiou" else "a"
            raise TypeError(
                f"{article} {self.kind} is a name or a dict (e.g. {self.example}), got {spec!r}"
            )
        if not isinstance(spec.get("name"), str):
            raise ValueError(f"{self.kind} {dict(spec)} has no 'name' (e.g. {self.example})")
        return dict(spec)

    def split(self, spec: str | Mapping[str, Any], **kwargs: Any) -> tuple[type, dict[str, Any]]:
        """(class, checked parameters) of a spec, ``kwargs`` adding to and overriding it."""
        params = self.spec(spec)
        cls = self.lookup(params.pop("name"))
        params.update(kwargs)
        self.check(cls, params)
        return cls, params

    def check(self, cls: type, params: Mapping[str, Any], given: tuple[str, ...] = ()) -> None:
        """Raise ``TypeError`` for unknown or missing parameters (``given``: filled by the
        caller, e.g. an expert kind's ``d_model``)."""
        names, required, open_ended = _accepted(cls)
        label = getattr(cls, "name", cls.__name__)
        unknown = sorted(set(params) - set(names))
        if unknown and not open_ended:
            accepted = [n for n in names if n not in given]
            raise TypeError(
                f"{label}: unknown argument(s) {unknown}; accepted: {', '.join(accepted) or 'none'}"
            )
        missing = [n for n in required if n not in params and n not in given]
        if missing:
            raise TypeError(f"{label}: missing required argument(s) {missing}")

    def build(self, spec: str | Mapping[str, Any], **kwargs: Any) -> T:
        """An instance from ``"name:key=value,..."`` or ``{"name": ..., **params}``."""
        cls, params = self.split(spec, **kwargs)
        return cls(**params)  # type: ignore[no-any-return]
