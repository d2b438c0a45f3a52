"""Arrow's prototypes: the top right-singular vector of each adapter's ``ΔW = B·A``.

Arrow (Ostapenko et al. 2024, "Towards Modular LLMs by Building and Reusing a Library of
LoRAs") routes a token to the adapters whose prototype it is most aligned with, sign
ignored. peft 0.21 (``tuners/lora/arrow.py``) computes the vector by power iteration on
``Aᵀ(BᵀB)A`` from a seeded random start; we do the same, so the prototypes, and with them
the routing, equal peft's for the same seed (peft's ``ArrowConfig.rng_seed``).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["POWER_ITERATIONS", "top_right_singular_vector"]

#: peft's fixed number of power iterations.
POWER_ITERATIONS = 15


@torch.no_grad()
def top_right_singular_vector(
    lora_a: Tensor, lora_b: Tensor, seed: int = 0, iters: int = POWER_ITERATIONS
) -> Tensor:
    """The unit top right-singular vector of ``ΔW = lora_b @ lora_a``, without forming ΔW.

    The right singular vectors of ΔW are the eigenvectors of ``ΔWᵀΔW = Aᵀ(BᵀB)A``; power
    iteration on that operator (in float32, ``iters`` steps from a ``randn`` start drawn
    from a generator seeded with ``seed`` on A's device) converges to the top one. The
    sign is arbitrary: users take ``|⟨h, v⟩|``.

    Args:
        lora_a: ``[r, d_in]`` (peft's ``lora_A.weight``); lora_b: ``[d_out, r]``.

    Returns:
        float32 ``[d_in]``, unit norm.

    Example:
        >>> a = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.1, 0.0]])
        >>> v = top_right_singular_vector(a, torch.eye(2))
        >>> [round(abs(x), 3) for x in v.tolist()]
        [1.0, 0.0, 0.0]
    """
    a, b = lora_a.float(), lora_b.float()
    gram = b.T @ b  # [r, r]
    generator = torch.Generator(device=a.device.type).manual_seed(int(seed))
    v = torch.randn(a.shape[1], dtype=a.dtype, device=a.device, generator=generator)
    eps = 1e-8
    v = v / (v.norm() + eps)
    for _ in range(iters):
        w = a.T @ (gram @ (a @ v))
        v = w / (w.norm() + eps)
    return v
