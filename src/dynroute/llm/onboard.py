"""Add a model to a fitted query router from a few labelled queries, without refitting.

A new model arrives with outcomes on a few dozen queries only. In the spirit of
EmbedLLM and IRT-Router (a model is a vector in a space the router already learned), the
new model's predicted quality is read off the existing models': a *head*

    score_new(q) = a + Σ_m w_m · score_m(q)

over the router's own scores of the ``M`` models it knows, fitted to the labels with a
prior ``w = 1/M`` (the average model) that the labels pull away from as they grow
(ridge with strength ``strength`` toward the prior; the intercept ``a``, the new model's
overall level, is free). Few parameters (``M + 1``) — so 10 to 50 labels suffice — and
the head is written *into the router's own form*, so the result is the same kind of router
over ``M + 1`` models that saves, loads and serves as any other:

- ``knn`` / ``oracle``: a new quality column on the stored training queries, ``a + Q w``
  (linear in quality, so kNN's mean of neighbours is exactly the head on its prediction);
- ``best_single``: a new mean, the labels' mean;
- ``mlp``: a new output column (logit link: ``W2 w``, ``b2·w + a``);
- ``mf``: a new model embedding and bias, fitted on the labels with the rest frozen and
  pulled toward the mean model embedding (its rows are normalised, so the head cannot be
  written in exactly);
- ``random``: nothing to learn.

Routers whose state has no place for one more model (``sw_ranking`` keeps pairwise
battles, ``dc`` and ``cascade`` their own forms) raise and say to refit. The cost model
of the new model is fitted on the labels' costs (cost ≈ a + b · characters).

Example:
    >>> from dynroute.llm.data import OutcomeTable
    >>> from dynroute.llm.routers import make_query_router
    >>> t = OutcomeTable.from_rows(["add 1 2", "add 3 4", "paris france", "rome italy"],
    ...     ["math", "geo"], [[1, 0], [1, 0], [0, 1], [0, 1]], [[1, 1]] * 4)
    >>> r = make_query_router("knn", k=1).fit(t)
    >>> r2 = add_model(r, "all", ["add 5 6", "rome"], [1.0, 1.0], [2.0, 2.0])
    >>> r2.models, r.models
    (('math', 'geo', 'all'), ('math', 'geo'))
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from dynroute.llm.data import OutcomeTable
from dynroute.llm.routers import QueryRouter

__all__ = ["ONBOARD_FORMS", "add_model", "add_model_from_table", "fit_head"]

#: Label counts at or below this are what onboarding is built for; more still work.
FEW_LABELS = 50
_EPS = 1e-6


def fit_head(
    features: Tensor, target: Tensor, strength: float = 1.0, link: str = "identity"
) -> tuple[Tensor, float]:
    """``(w [M], a)`` of ``target ≈ a + features @ w`` (``link="identity"``) or
    ``target ≈ sigmoid(a + features @ w)`` (``"logit"``, binary cross-entropy), with the
    penalty ``strength · ‖w − 1/M‖²`` (a prior: the average of the ``M`` columns) and a
    free intercept. ``features``: ``[n, M]``; ``target``: ``[n]``.

    Example:
        >>> f = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])
        >>> w, a = fit_head(f, f[:, 0], strength=1e-6)
        >>> [round(x, 3) for x in w.tolist()], round(a, 3)
        ([1.0, 0.0], 0.0)
    """
    x, y = features.double(), target.double()
    m = x.shape[1]
    prior = torch.full((m,), 1.0 / m, dtype=torch.float64)
    if link == "identity":
        xm, ym = x.mean(0), y.mean()
        xc = x - xm
        lhs = xc.T @ xc + strength * torch.eye(m, dtype=torch.float64)
        w = torch.linalg.solve(lhs, xc.T @ (y - ym) + strength * prior)
        return w, float(ym - xm @ w)
    if link != "logit":
        raise ValueError(f"link must be 'identity' or 'logit', got {link!r}")
    w = prior.clone().requires_grad_()
    base = torch.logit(y.mean().clamp(0.02, 0.98)) - (x @ prior).mean()
    a = base.clone().detach().requires_grad_()
    opt = torch.optim.LBFGS([w, a], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(x @ w + a, y.clamp(0, 1), reduction="sum")
        loss = loss + strength * ((w - prior) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), float(a.detach())


def _logits(p: Tensor) -> Tensor:
    return torch.logit(p.double().clamp(_EPS, 1 - _EPS))


# ---------------------------------------------------------------- the routers' own forms
# Each form: (router, labelled queries, labels [n], strength, the existing models' true
# outcomes on those queries [n, M] or None) -> None; it adds the new model's column to
# ``router.tensors`` (``router.models`` is extended afterwards).


def _stored_quality(
    router: QueryRouter, queries: Sequence[str], y: Tensor, s: float, known: Tensor | None
) -> None:
    """kNN and the oracle keep a ``[N, M]`` quality matrix: impute the new column. With the
    existing models' true outcomes on the labelled queries (``known``), the head is fitted
    on those — the matrix it is applied to holds true outcomes too — so the new model's
    level is measured against the same queries (paired), not against predictions."""
    w, a = fit_head(router.predict(queries) if known is None else known, y, s)
    stored = router.tensors["quality"]
    column = (a + stored.double() @ w).float()
    router.tensors["quality"] = torch.cat([stored, column[:, None]], 1)
    if "mean" in router.tensors:
        router.tensors["mean"] = router.tensors["quality"].mean(0)


def _mean_quality(
    router: QueryRouter, queries: Sequence[str], y: Tensor, s: float, known: Tensor | None
) -> None:
    router.tensors["mean"] = torch.cat([router.tensors["mean"], y.float().mean()[None]])


def _output_column(
    router: QueryRouter, queries: Sequence[str], y: Tensor, s: float, known: Tensor | None
) -> None:
    """The MLP's logits are linear in its last layer: the head is one more column."""
    w, a = fit_head(_logits(router.predict(queries)), y, s, link="logit")
    t = router.tensors
    t["w2"] = torch.cat([t["w2"], (t["w2"].double() @ w).float()[:, None]], 1)
    t["b2"] = torch.cat([t["b2"], (t["b2"].double() @ w + a).float()[None]])


def _model_embedding(
    router: QueryRouter, queries: Sequence[str], y: Tensor, s: float, known: Tensor | None
) -> None:
    """MF: learn the new model's embedding and bias on the labels, the rest frozen."""
    assert router.embedder is not None
    t = router.tensors
    q = (router.embedder.encode(queries).float() @ t["proj"]).double()  # [n, dim]
    unit = F.normalize(t["model"].double(), dim=1)
    prior = unit.mean(0)
    v = prior.clone().requires_grad_()
    bias = t["bias"].double().mean().clone().requires_grad_()
    head = t["head"].double()
    opt = torch.optim.LBFGS([v, bias], lr=1.0, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        score = (q * F.normalize(v, dim=0)) @ head + bias
        loss = F.binary_cross_entropy_with_logits(score, y.clamp(0, 1), reduction="sum")
        loss = loss + s * ((F.normalize(v, dim=0) - prior) ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    t["model"] = torch.cat([t["model"], (v.detach() * t["model"].norm(dim=1).mean()).float()[None]])
    t["bias"] = torch.cat([t["bias"], bias.detach().float()[None]])


def _nothing(
    router: QueryRouter, queries: Sequence[str], y: Tensor, s: float, known: Tensor | None
) -> None:
    pass


#: Router name -> how a new model is written into its fitted state.
Form = Callable[[QueryRouter, Sequence[str], Tensor, float, Tensor | None], None]
ONBOARD_FORMS: dict[str, Form] = {
    "knn": _stored_quality,
    "oracle": _stored_quality,
    "best_single": _mean_quality,
    "mlp": _output_column,
    "mf": _model_embedding,
    "random": _nothing,
}


def _check(
    router: QueryRouter,
    name: str,
    queries: Sequence[str],
    quality: np.ndarray,
    cost: np.ndarray,
    known: np.ndarray | None,
) -> None:
    if not router.fitted:
        raise ValueError(f"router {router.name!r} is not fitted; fit it first (dynroute llm fit)")
    if name in router.models:
        raise ValueError(
            f"model {name!r} is already in the router's pool {list(router.models)}; pick "
            "another name, or refit the router to update a model it knows"
        )
    if router.name not in ONBOARD_FORMS:
        raise ValueError(
            f"router {router.name!r} has no place for one more model (onboarding supports "
            f"{', '.join(sorted(ONBOARD_FORMS))}); refit it with the new model's outcomes "
            "(dynroute llm fit)"
        )
    n = len(queries)
    if n == 0 or len(quality) != n or len(cost) != n:
        raise ValueError(
            f"need one quality and one cost per labelled query: got {n} queries, "
            f"{len(quality)} qualities, {len(cost)} costs"
        )
    if not (np.isfinite(quality).all() and np.isfinite(cost).all()) or (cost < 0).any():
        raise ValueError("qualities must be finite numbers and costs finite and >= 0")
    if known is not None and known.shape != (n, len(router.models)):
        raise ValueError(
            f"known outcomes have shape {known.shape}, expected {(n, len(router.models))} "
            f"(the labelled queries x the router's models {list(router.models)})"
        )


def add_model(
    router: QueryRouter,
    name: str,
    queries: Sequence[str],
    quality: Sequence[float] | np.ndarray,
    cost: Sequence[float] | np.ndarray,
    *,
    known: np.ndarray | None = None,
    strength: float = 1.0,
) -> QueryRouter:
    """A copy of the fitted ``router`` over one more model, ``name``, learned from its
    outcomes on a few labelled ``queries`` (``quality``, ``cost``: one per query; 10 to
    :data:`FEW_LABELS` is the intended range). ``strength``: pull toward the average
    existing model (more labels outweigh it). ``known``: ``[n, M]`` the existing models'
    outcomes on the same queries, when measured (kNN and the oracle then place the new
    model against them, paired; the other forms ignore them). The router, its embedder and the other
    models' predictions stay as they were; λ and its calibration are kept (recalibrate with
    ``dynroute llm fit`` when the budget matters).

    Raises:
        ValueError: the name is already in the pool, lengths differ, values are not finite,
            the router is not fitted or has no onboarding form (see :data:`ONBOARD_FORMS`).
    """
    quality = np.asarray(quality, dtype=np.float64)
    cost = np.asarray(cost, dtype=np.float64)
    known = None if known is None else np.asarray(known, dtype=np.float64)
    _check(router, name, queries, quality, cost, known)
    new = copy.deepcopy(router)
    paired = None if known is None else torch.from_numpy(known)
    ONBOARD_FORMS[router.name](new, list(queries), torch.from_numpy(quality), strength, paired)
    chars = np.array([len(q) for q in queries], dtype=np.float64)
    design = np.column_stack([np.ones_like(chars), chars])
    coef = np.linalg.lstsq(design, cost, rcond=None)[0]
    new.cost_coef = np.vstack([router.cost_coef, coef[None, :]])
    new.models = (*router.models, name)
    return new


def add_model_from_table(
    router: QueryRouter, labels: OutcomeTable, name: str, *, strength: float = 1.0
) -> QueryRouter:
    """:func:`add_model` with the labels read from the column ``name`` of an outcome table;
    when the table also has every model of the router, their outcomes are the ``known``
    ones (other columns are ignored)."""
    if name not in labels.models:
        raise ValueError(
            f"{labels.source}: no model {name!r} (it has {list(labels.models)}); pass the "
            "column of the new model's outcomes"
        )
    j = labels.models.index(name)
    known = None
    if all(m in labels.models for m in router.models):
        known = labels.select_models(router.models).quality
    return add_model(
        router, name, labels.queries, labels.quality[:, j], labels.cost[:, j],
        known=known, strength=strength,
    )  # fmt: skip
