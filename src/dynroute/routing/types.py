"""The one type every router produces and every dispatch path consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def _count(index: Tensor, size: int) -> Tensor:
    """LongTensor [size]: occurrences of each value of ``index`` (values in [0, size)).

    ``torch.bincount(index, minlength=size)`` gives the same, but on CUDA it reads
    ``index.max()`` on the host to size its output: a sync. A scatter-add into a buffer
    of static size never leaves the device.
    """
    return index.new_zeros(size).scatter_add_(0, index, torch.ones_like(index))


@dataclass(frozen=True)
class Routing:
    """A flat list of (token, expert, weight) assignments, sorted by expert.

    Memory is O(A) for A assignments plus the [N, E] router probabilities; no
    [N, E, capacity] tensor is ever built.

    Attributes:
        token: LongTensor [A], token index of each assignment.
        expert: LongTensor [A], expert index of each assignment, ascending.
        weight: Tensor [A] (float32), combine weight, differentiable w.r.t. the logits.
        probs: Tensor [N, E] (float32), router probabilities of the real experts.
        num_experts: int, E.
        null_probs: Tensor [N, M] or None, probabilities of M null experts
            (AdaMoE); ``probs`` and ``null_probs`` together sum to 1 per token.
        null_selected: LongTensor [N] or None, null experts chosen per token.

    Example:
        >>> import torch
        >>> from dynroute.routing import top_k
        >>> r = top_k(torch.tensor([[2.0, 1.0, 0.0]]), k=2)
        >>> r.expert.tolist(), r.experts_per_token().tolist()
        ([0, 1], [2])
    """

    token: Tensor
    expert: Tensor
    weight: Tensor
    probs: Tensor
    num_experts: int
    null_probs: Tensor | None = None
    null_selected: Tensor | None = None

    @property
    def num_tokens(self) -> int:
        """N, the number of routed tokens."""
        return self.probs.shape[0]

    @property
    def num_assignments(self) -> int:
        """A, the number of (token, expert) pairs that run an expert."""
        return self.token.numel()

    def experts_per_token(self) -> Tensor:
        """LongTensor [N]: how many real experts each token runs.

        Example:
            >>> import torch
            >>> from dynroute.routing import top_p
            >>> top_p(torch.tensor([[9.0, 0.0], [0.0, 0.0]]), p=0.6).experts_per_token().tolist()
            [1, 2]
        """
        return _count(self.token, self.num_tokens)

    def expert_counts(self) -> Tensor:
        """LongTensor [E]: how many tokens each expert runs on.

        Example:
            >>> import torch
            >>> from dynroute.routing import top_k
            >>> top_k(torch.tensor([[2.0, 1.0, 0.0]] * 3), k=1).expert_counts().tolist()
            [3, 0, 0]
        """
        return _count(self.expert, self.num_experts)

    def expert_offsets(self) -> Tensor:
        """Int32 [E]: cumulative ``expert_counts``, the ``offs`` of grouped GEMMs (on device).

        Example:
            >>> import torch
            >>> from dynroute.routing import top_k
            >>> top_k(torch.tensor([[2.0, 1.0, 0.0]] * 3), k=2).expert_offsets().tolist()
            [3, 6, 6]
        """
        return self.expert_counts().cumsum(0).to(torch.int32)

    def mean_experts(self) -> float:
        """Mean real experts per token, k̄ (0.0 for N = 0).

        Example:
            >>> import torch
            >>> from dynroute.routing import top_k
            >>> top_k(torch.zeros(4, 8), k=2).mean_experts()
            2.0
        """
        return self.num_assignments / max(self.num_tokens, 1)

    def dense_weights(self) -> Tensor:
        """Tensor [N, E]: combine weights scattered into a dense matrix (zeros elsewhere).

        Differentiable; meant for references, statistics and tests, not hot paths.

        Example:
            >>> import torch
            >>> from dynroute.routing import top_k
            >>> top_k(torch.tensor([[0.0, 9.0]]), k=1).dense_weights().tolist()
            [[0.0, 1.0]]
        """
        dense = self.weight.new_zeros(self.num_tokens, self.num_experts)
        return dense.index_put((self.token, self.expert), self.weight, accumulate=True)

    @staticmethod
    def from_assignments(
        token: Tensor,
        expert: Tensor,
        weight: Tensor,
        probs: Tensor,
        num_experts: int,
        **extra: Tensor | None,
    ) -> Routing:
        """Build a Routing from unsorted assignments, sorting them by expert.

        The sort is stable, so tokens stay in their given order within an expert.

        Args:
            token, expert: LongTensor [A].
            weight: Tensor [A].
            probs: Tensor [N, E].
            num_experts: E.

        Example:
            >>> import torch
            >>> r = Routing.from_assignments(torch.tensor([0, 1]), torch.tensor([1, 0]),
            ...                              torch.ones(2), torch.full((2, 2), 0.5), 2)
            >>> r.expert.tolist(), r.token.tolist()
            ([0, 1], [1, 0])
        """
        order = torch.sort(expert, stable=True).indices
        return Routing(token[order], expert[order], weight[order], probs, num_experts, **extra)

    @staticmethod
    def from_mask(mask: Tensor, weights: Tensor, probs: Tensor, **extra: Tensor | None) -> Routing:
        """Build a Routing from a boolean selection mask [N, E] and dense weights [N, E].

        Assignments come out sorted by expert, then by token.

        Example:
            >>> import torch
            >>> m = torch.tensor([[True, False], [True, True]])
            >>> r = Routing.from_mask(m, m.float(), m.float() / 2)
            >>> r.token.tolist(), r.expert.tolist()
            ([0, 1, 1], [0, 0, 1])
        """
        expert, token = mask.t().nonzero(as_tuple=True)
        return Routing(token, expert, weights[token, expert], probs, mask.shape[1], **extra)
