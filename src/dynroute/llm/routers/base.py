"""The query-router interface, its registry, and save/load (safetensors + JSON).

A query router is a dataclass whose fields are its hyperparameters, registered by name
with :func:`register_query_router` in :data:`QUERY_ROUTERS` (a
:class:`~dynroute.common.registry.Registry`: every module of ``dynroute.llm.routers`` is
imported on the first unknown name, then the plugins named in ``DYNROUTE_PLUGINS`` or a
``dynroute.plugins`` entry point). :func:`make_query_router` builds one from
``"name:key=value,..."`` or ``{"name": ..., **params}``.

``fit(train)`` learns from an :class:`OutcomeTable`; ``predict(queries) -> [Q, M]``
predicts each model's quality; the decision rule in :mod:`dynroute.llm.decide` turns
predictions and costs into a choice. Every router also
fits a per-model cost model (cost ≈ a + b · characters of the query) so that
:meth:`QueryRouter.route` can decide for a new query whose cost nobody measured.

Saved routers are a folder with ``config.json`` (name, hyperparameters, models,
embedder and cost model) and ``tensors.safetensors``; no pickle.

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> from dynroute.llm.routers import make_query_router
    >>> t = OutcomeTable.from_rows(["a", "b"], ["small", "big"], [[0, 1], [1, 1]],
    ...                            [[1, 2], [1, 2]])
    >>> make_query_router("best_single").fit(t).route(["c"])
    ['big']
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from dynroute.common.files import atomic_path, atomic_write_text
from dynroute.common.folders import QUERY_ROUTER, describe_folder, folder_kind
from dynroute.common.registry import Registry
from dynroute.llm.data import OutcomeTable
from dynroute.llm.decide import decide, lambda_grid
from dynroute.llm.embed import Embedder, make_embedder

FORMAT = 1


@dataclasses.dataclass(eq=False)
class QueryRouter:
    """Base class: subclasses add hyperparameter fields and implement ``_fit(train, z)``
    and ``_predict(queries, z)`` (``z``: ``[Q, d]`` embeddings when ``uses_embedding``,
    else None). Fitted tensors live in ``self.tensors``; ``name`` is set by
    :func:`register_query_router`."""

    name: ClassVar[str] = ""
    #: Whether ``_fit``/``_predict`` read the query embeddings (``z``); False: ``z`` is None.
    uses_embedding: ClassVar[bool] = True
    #: What the sweep varies: "lambda" (argmax quality − λ·cost) or "threshold".
    knob: ClassVar[str] = "lambda"
    #: Hyperparameters that fit in well under a second on a tiny table (a few dozen
    #: queries); the registry-driven tests build every router with them.
    quick_params: ClassVar[Mapping[str, Any]] = {}

    seed: int = 0

    def __post_init__(self) -> None:
        self.models: tuple[str, ...] = ()
        self.embedder: Embedder | None = None
        self.tensors: dict[str, Tensor] = {}
        self.cost_coef = np.zeros((0, 2))  # [M, 2]: intercept, USD per character
        self.lam = 0.0  # decision λ used by route()
        #: How ``lam`` was calibrated (``decide.Calibration.to_dict()``); None: set directly.
        self.calibration: dict[str, Any] | None = None

    # ------------------------------------------------------------------ describe
    def params(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, **self.params()}

    @property
    def fitted(self) -> bool:
        return bool(self.models)

    # ------------------------------------------------------------------ fit / predict
    def fit(self, train: OutcomeTable, embedder: Embedder | None = None) -> QueryRouter:
        """Learn from ``train``; ``embedder``: an already fitted one to share (optional)."""
        self.models = train.models
        chars = np.array([len(q) for q in train.queries], dtype=np.float64)
        design = np.column_stack([np.ones_like(chars), chars])
        self.cost_coef = np.linalg.lstsq(design, train.cost, rcond=None)[0].T  # [M, 2]
        z = None
        if self.uses_embedding:
            self.embedder = embedder or make_embedder().fit(train.queries)
            z = self.embedder.encode(train.queries)
        self.tensors = {}
        self._fit(train, z)
        return self

    def predict(self, queries: Sequence[str]) -> Tensor:
        """Predicted quality ``[Q, M]`` (float32) of each model on each query."""
        if not self.fitted:
            raise RuntimeError(f"router {self.name!r} is not fitted; call fit(train) first")
        z = self.embedder.encode(queries) if self.embedder is not None else None
        return self._predict(queries, z)

    def predict_table(self, table: OutcomeTable) -> Tensor:
        """Predictions for a table's queries (the oracle also reads its outcomes)."""
        return self.predict(table.queries)

    def estimate_cost(self, queries: Sequence[str]) -> Tensor:
        """``[Q, M]`` cost estimated from the query length (for queries never run)."""
        chars = np.array([len(q) for q in queries], dtype=np.float64)
        est = self.cost_coef[:, 0][None, :] + chars[:, None] * self.cost_coef[:, 1][None, :]
        return torch.from_numpy(np.maximum(est, 0.0))

    def _fit(self, train: OutcomeTable, z: Tensor | None) -> None:
        raise NotImplementedError

    def _predict(self, queries: Sequence[str], z: Tensor | None) -> Tensor:
        raise NotImplementedError

    # ------------------------------------------------------------------ decide
    def route(self, queries: Sequence[str], lam: float | None = None) -> list[str]:
        """The chosen model per query with ``argmax predicted quality − λ·estimated cost``."""
        pick = decide(
            self.predict(queries), self.estimate_cost(queries), self.lam if lam is None else lam
        )
        return [self.models[i] for i in pick.tolist()]

    def sweep(self, table: OutcomeTable, n: int = 64) -> list[dict[str, float]]:
        """Operating points ``[{"lambda", "cost", "quality"}]`` on ``table`` over λ."""
        table = table.aligned_to(self.models)
        pred = self.predict_table(table)
        # Decide with the cost known before any model runs (estimated from the prompt);
        # score with the cost the table says was paid.
        est = self.estimate_cost(table.queries)
        quality, paid = torch.from_numpy(table.quality), torch.from_numpy(table.cost)
        rows = torch.arange(len(pred))
        out = []
        for lam in lambda_grid(pred, est, n):
            pick = decide(pred, est, lam)
            out.append(
                {
                    "lambda": lam,
                    "cost": float(paid[rows, pick].mean()),
                    "quality": float(quality[rows, pick].mean()),
                }
            )
        return out

    # ------------------------------------------------------------------ save / load
    def config(self) -> dict[str, Any]:
        """JSON-able extra state (subclasses add to it)."""
        return {}

    def load_config(self, config: dict[str, Any]) -> None:
        """Restore what :meth:`config` wrote."""

    def save(self, directory: str | Path) -> Path:
        """Write ``config.json`` and ``tensors.safetensors`` into ``directory``."""
        if not self.fitted:
            raise RuntimeError(f"router {self.name!r} is not fitted; nothing to save")
        out = Path(directory)
        tensors = {f"router.{k}": v.contiguous() for k, v in self.tensors.items()}
        if self.embedder is not None:
            tensors.update(
                {f"embedder.{k}": v.contiguous() for k, v in self.embedder.state().items()}
            )
        tensors["cost_coef"] = torch.from_numpy(self.cost_coef.copy())
        with atomic_path(out / "tensors.safetensors") as tmp:
            save_file(tensors, tmp)
        config = {
            "format": FORMAT,
            "router": self.to_dict(),
            "models": list(self.models),
            "lambda": self.lam,
            "calibration": self.calibration,
            "embedder": None if self.embedder is None else self.embedder.config(),
            "extra": self.config(),
        }
        atomic_write_text(out / "config.json", json.dumps(config, indent=1))
        return out


#: Registered query routers by name (filled by :func:`register_query_router`; every module
#: of ``dynroute.llm.routers`` is imported on the first unknown name, then the plugins).
QUERY_ROUTERS: Registry[QueryRouter] = Registry(
    "query router", QueryRouter, package="dynroute.llm.routers", example="knn:k=10"
)

R = TypeVar("R", bound=type[QueryRouter])


def register_query_router(name: str) -> Callable[[R], R]:
    """Class decorator: register a :class:`QueryRouter` dataclass under ``name`` (and set
    its ``name``). Re-registering the same class (its module imported again) replaces it;
    another class under a taken name raises ``ValueError``.

    Example:
        >>> @register_query_router("doc_first")
        ... @dataclasses.dataclass(eq=False)
        ... class First(QueryRouter):  # always the first model of the pool
        ...     uses_embedding = False
        ...     def _fit(self, train, z): pass
        ...     def _predict(self, queries, z):
        ...         return torch.eye(len(self.models))[[0] * len(queries)]
        >>> make_query_router("doc_first").name
        'doc_first'
        >>> del QUERY_ROUTERS["doc_first"]  # keep the registry as shipped for other examples
    """
    return QUERY_ROUTERS.register(name)


def make_query_router(spec: str | Mapping[str, Any], **kwargs: Any) -> QueryRouter:
    """A router from ``"name"``, ``"name:key=value,..."`` or ``{"name": ..., **params}``;
    ``kwargs`` add to and override the spec's parameters.

    Raises:
        ValueError: an unknown name (listing the known ones and how to add a plugin) or a
            malformed spec (naming it and an example).
        TypeError: unknown or missing parameters (listing the accepted ones).

    Example:
        >>> make_query_router("knn:k=5")
        KNN(seed=0, k=5)
        >>> make_query_router({"name": "knn", "k": 5}, seed=1)
        KNN(seed=1, k=5)
    """
    return QUERY_ROUTERS.build(spec, **kwargs)


def load_router(directory: str | Path) -> QueryRouter:
    """A router saved by :meth:`QueryRouter.save`."""
    d = Path(directory)
    cfg_path, ten_path = d / "config.json", d / "tensors.safetensors"
    kind = folder_kind(d)
    if kind is not None and kind is not QUERY_ROUTER:  # a model, a run, a report
        raise FileNotFoundError(
            f"{describe_folder(d)}; pass the --out folder of `dynroute llm fit` (a fitted "
            "query router)"
        )
    for p in (cfg_path, ten_path):
        if not p.is_file():
            raise FileNotFoundError(
                f"{p} is missing; {d} is not a fitted query router: pass the --out folder of "
                "`dynroute llm fit` (fit one first)"
            )
    try:
        config = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_path} is not valid JSON ({err}); refit the router") from None
    tensors = load_file(ten_path)
    try:
        router = make_query_router(config["router"])
    except (TypeError, ValueError) as err:  # e.g. a plugin's router without its plugin
        raise ValueError(f"{cfg_path}: {err}") from None
    router.models = tuple(config["models"])
    router.lam = float(config["lambda"])
    router.calibration = config.get("calibration")  # absent in folders saved before it
    router.cost_coef = tensors.pop("cost_coef").numpy()
    router.tensors = {k[7:]: v for k, v in tensors.items() if k.startswith("router.")}
    if config["embedder"] is not None:
        state = {k[9:]: v for k, v in tensors.items() if k.startswith("embedder.")}
        router.embedder = make_embedder(config["embedder"], state)
    router.load_config(config["extra"])
    return router
