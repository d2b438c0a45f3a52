"""``LibraryLinear``: a frozen ``nn.Linear`` plus a library of independently trained LoRAs.

Unlike :class:`~dynroute.lora.LoRAMoELinear` (adapters and gate trained together), the
adapters here come from separate runs and the router is added afterwards; it scores
the adapters from what the library already holds (Arrow's prototypes, PHATGOOSE's gate
vectors), so there is no gate to train jointly. Only the adapters a token is routed to
run: the grouped dispatch over ``LoRAExperts``, as for every expert kind.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from dynroute.dispatch import DispatchFn, get_dispatch
from dynroute.lora.experts import LoRAExperts
from dynroute.lora.layer import LinearView
from dynroute.routing import Routing

if TYPE_CHECKING:
    from dynroute.lora.library.routers import LibraryRouter

__all__ = ["LibraryLinear", "library_layers"]


class LibraryLinear(LinearView):
    """``y = base(x) + Σ_{e chosen} w_e(x) · s_e B_e A_e x`` over a library of E adapters.

    Args:
        base: the linear every adapter was trained on (frozen).
        lora_a: ``[E, r, d_in]`` (peft's ``lora_A.weight`` of each adapter);
        lora_b: ``[E, d_out, r]``; scales: ``[E]`` (each adapter's ``alpha / r``, folded
            into its B so adapters of different alphas share one ``LoRAExperts``).
        names: the adapters' names (oracle routing, messages).
        prototypes: ``[E, d_in]`` Arrow prototypes (``arrow.top_right_singular_vector``).
        gates: ``[E, d_in]`` PHATGOOSE gate vectors, or None (not trained yet);
        gate_trained: bool ``[E]``, which rows of ``gates`` are trained (default: all
            when ``gates`` is given).
        router: a library router (``routers.LIBRARY_ROUTERS``); set later with
            :func:`~dynroute.lora.library.set_library_router` if None.

    Attributes:
        last_routing: the ``Routing`` of the last forward (adapters per token, shares).
        gate_trained: bool buffer ``[E]``: which adapters have a PHATGOOSE gate.

    Shapes:
        x [..., d_in] -> [..., d_out].

    Example:
        >>> from dynroute.lora.library.routers import LIBRARY_ROUTERS
        >>> E, r = 3, 2
        >>> layer = LibraryLinear(nn.Linear(8, 4), torch.randn(E, r, 8), torch.randn(E, 4, r),
        ...                       torch.ones(E), ["a", "b", "c"], torch.randn(E, 8))
        >>> layer.router = LIBRARY_ROUTERS.build("arrow:top_k=2")
        >>> layer(torch.randn(5, 8)).shape, layer.last_routing.mean_experts()
        (torch.Size([5, 4]), 2.0)
    """

    def __init__(
        self,
        base: nn.Linear,
        lora_a: Tensor,
        lora_b: Tensor,
        scales: Tensor,
        names: list[str],
        prototypes: Tensor,
        gates: Tensor | None = None,
        router: LibraryRouter | None = None,
        dispatch: str | DispatchFn = "grouped",
        gate_trained: Tensor | None = None,
    ) -> None:
        super().__init__()
        num, rank, d_in = lora_a.shape
        self.base = base.requires_grad_(False)
        weight = base.weight
        # scale 1 (alpha = r): each adapter's own alpha/r is folded into its B
        self.experts = LoRAExperts(d_in, lora_b.shape[1], num, rank, alpha=float(rank))
        with torch.no_grad():
            self.experts.A.copy_(lora_a.transpose(1, 2))
            self.experts.B.copy_((lora_b * scales.view(-1, 1, 1).to(lora_b.dtype)).transpose(1, 2))
        self.experts.to(device=weight.device, dtype=weight.dtype).requires_grad_(False)
        self.register_buffer("prototypes", prototypes.to(device=weight.device, dtype=weight.dtype))
        if gate_trained is None:
            gate_trained = torch.full((num,), gates is not None)
        gates = torch.zeros(num, d_in) if gates is None else gates
        self.register_buffer("gates", gates.to(device=weight.device, dtype=torch.float32))
        trained = gate_trained.to(device=weight.device, dtype=torch.bool)
        self.register_buffer("gate_trained", trained)
        self.adapter_names = list(names)
        self.router = router
        self.dispatch: DispatchFn = get_dispatch(dispatch)
        self.last_routing: Routing | None = None
        # PHATGOOSE's gate training: one adapter, a sigmoid gate on it, nothing else trains
        self.training_gate: nn.Parameter | None = None
        self.training_adapter = 0

    @property
    def num_adapters(self) -> int:
        """E, the adapters in the library."""
        return self.experts.num_experts

    def forward(self, x: Tensor) -> Tensor:
        y = self.base(x)
        flat = x.reshape(-1, x.shape[-1]).to(self.experts.dtype)
        if self.training_gate is not None:
            delta = self._gated_adapter(flat, self.training_gate)
        else:
            if self.router is None:
                raise RuntimeError("LibraryLinear: no router set (set_library_router)")
            routing = self.router(self, flat)
            delta = self.dispatch(flat, routing, self.experts)
            self.last_routing = routing
        return y + delta.reshape(y.shape).to(y.dtype)

    def _gated_adapter(self, flat: Tensor, gate: Tensor) -> Tensor:
        """PHATGOOSE's training forward: ``σ(⟨g, x⟩) · ΔW_e x`` for the adapter in training."""
        weight = torch.sigmoid(flat.float() @ gate)[:, None]
        return weight.to(flat.dtype) * self.experts.run_expert(flat, self.training_adapter)

    def start_gate_training(self, adapter: int) -> nn.Parameter:
        """Give adapter ``adapter`` a fresh gate (zeros, as PHATGOOSE: σ = 0.5 at the start)
        and route every token through it alone; returns the gate, the one parameter."""
        self.training_adapter = int(adapter)
        self.training_gate = nn.Parameter(torch.zeros(self.in_features, device=self.gates.device))
        return self.training_gate

    @torch.no_grad()
    def finish_gate_training(self) -> None:
        """Store the trained gate as the adapter's and return to routing."""
        if self.training_gate is None:
            raise RuntimeError("finish_gate_training: no gate is training")
        self.gates[self.training_adapter] = self.training_gate.detach()
        self.gate_trained[self.training_adapter] = True
        self.training_gate = None

    def extra_repr(self) -> str:
        return f"adapters={self.num_adapters}, rank={self.experts.rank}, router={self.router}"


def library_layers(model: nn.Module) -> dict[str, LibraryLinear]:
    """Every ``LibraryLinear`` of ``model`` by module name.

    Example:
        >>> library_layers(nn.Linear(2, 2))
        {}
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, LibraryLinear)}
