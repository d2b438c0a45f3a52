"""The GPU layer suite: MoE layers of released models, bf16, forward + backward.

Shapes (E experts, d_model, d_ff of one expert, router) of Mixtral-8x7B, OLMoE-1B-7B and
Qwen3-30B-A3B at N = 4096 and 16384 tokens, timed with CUDA events against the
dense-GEMM bound, transformers' ``grouped_mm`` experts and ScatterMoE (when installed).

    python benchmarks/layer.py --suite gpu          # on a CUDA machine

Example:
    >>> [c.router for c in gpu_cells("mixtral", (4096,))]
    ['top2']
"""

from __future__ import annotations

from dataclasses import dataclass

from dynbench.cells import Cell, Setup, grid

__all__ = ["GPU_SHAPES", "GPU_SKIP", "GPU_TOKENS", "ModelShape", "gpu_cells", "gpu_setup"]


@dataclass(frozen=True)
class ModelShape:
    """One released model's MoE layer."""

    num_experts: int
    d_model: int
    d_ff: int
    router: str  # a suite router name: "top2" or "top8"


GPU_SHAPES = {
    "mixtral": ModelShape(8, 4096, 14336, "top2"),
    "olmoe": ModelShape(64, 2048, 1024, "top8"),
    "qwen3_30b_a3b": ModelShape(128, 2048, 768, "top8"),
}
GPU_TOKENS = (4096, 16384)
#: implementations not run on the GPU suite: the slow references (a Python loop over
#: experts, all experts on all tokens, per-token weight copies) would dominate its time
GPU_SKIP = ("loop", "dense", "grouped_per_expert", "hf_eager", "hf_batched_mm", "mixtral_loop")


def gpu_cells(shape: str, tokens: tuple[int, ...] = GPU_TOKENS) -> list[Cell]:
    """The fwd+bwd cells of one model shape."""
    s = GPU_SHAPES[shape]
    return grid([s.num_experts], tokens, [s.router], ["fwd+bwd"])


def gpu_setup(shape: str, device: str = "cuda", repeats: int = 10, **kw: object) -> Setup:
    """bf16 on ``device``, the shape's widths, the slow references skipped, no memory runs.

    Example:
        >>> s = gpu_setup("olmoe", device="cpu")
        >>> (s.d_model, s.d_ff, s.dtype, "loop" in s.skip)
        (2048, 1024, 'bfloat16', True)
    """
    s = GPU_SHAPES[shape]
    return Setup(
        d_model=s.d_model, d_ff=s.d_ff, device=device, dtype="bfloat16", repeats=repeats,
        memory=False, skip=GPU_SKIP, **kw,  # type: ignore[arg-type]
    )  # fmt: skip
