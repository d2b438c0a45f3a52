"""What a router may see besides its logits: :class:`RouteContext`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

__all__ = ["RouteContext"]


@dataclass
class RouteContext:
    """The call context a layer hands to :meth:`Router.route` (all fields optional).

    Attributes:
        batch_shape: the leading shape of the layer's input, e.g. ``(B, T)`` when the
            N = B·T routed tokens are B sequences of T tokens in order (Graph of Tokens
            mixes within a sequence); ``None``: one sequence of N tokens.
        hidden: [N, d] the token states the gate read (RMoE's GRU input, SMoE-Dropout's
            fixed random router).
        training: whether the layer is in training mode (stochastic routers, statistics).
        carry: a value handed from the previous MoE layer of the model to this one and
            replaced by the router for the next (RMoE's GRU hidden state [N, H]); the
            model starts each forward with ``None``.
        aux_loss: a scalar loss of the router's own, already weighted, that the router
            may set during ``route``/``combine``; the layer adds it to its auxiliary loss.

    Example:
        >>> import torch
        >>> ctx = RouteContext(batch_shape=(2, 3), hidden=torch.zeros(6, 4), training=True)
        >>> ctx.sequences(6)
        (2, 3)
        >>> RouteContext().sequences(5)
        (1, 5)
    """

    batch_shape: tuple[int, ...] | None = None
    hidden: Tensor | None = None
    training: bool = False
    carry: Any = None
    aux_loss: Tensor | None = None

    def sequences(self, num_tokens: int) -> tuple[int, int]:
        """(B, T) with B·T = ``num_tokens``: the last leading dimension is the sequence.

        A 1-d batch shape (tokens [N, d]) or none is one sequence of N tokens.
        """
        shape = self.batch_shape
        if shape is None or len(shape) < 2 or shape[-1] == 0:
            return 1, num_tokens
        t = int(shape[-1])
        if num_tokens % t:
            raise ValueError(
                f"RouteContext: batch_shape {tuple(shape)} does not match {num_tokens} tokens"
            )
        return num_tokens // t, t

    def add_loss(self, loss: Tensor) -> None:
        """Add ``loss`` to :attr:`aux_loss` (routers with more than one term call it twice)."""
        self.aux_loss = loss if self.aux_loss is None else self.aux_loss + loss
