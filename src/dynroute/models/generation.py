"""Generation speed: greedy decoding with and without the KV cache, timed side by side.

``dynroute eval RUN --generate`` reports what :func:`generation_speed` measures: tokens/s
for a fixed number of new tokens, the same prompt, the same model, both ways,
interleaved (cache, no cache, cache, ...) so that a busy machine slows both alike.
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn


def _generate(model: nn.Module, prompt: Tensor, new_tokens: int, use_cache: bool) -> Tensor:
    pad = getattr(model.config, "pad_token_id", None)
    return model.generate(  # type: ignore[operator]
        prompt,
        attention_mask=torch.ones_like(prompt),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,  # no early stop at an end-of-text token: always N tokens
        do_sample=False,
        use_cache=use_cache,
        pad_token_id=0 if pad is None else pad,
    )


@torch.no_grad()
def generation_speed(
    model: nn.Module, prompt: Tensor, new_tokens: int = 256, repeats: int = 1
) -> dict[str, Any]:
    """Time greedy generation of ``new_tokens`` after ``prompt`` with and without the KV cache.

    Args:
        model: a causal LM with transformers' ``generate`` (eval mode).
        prompt: LongTensor [1, T] or [T] of token ids.
        new_tokens: tokens to generate (exactly that many: end-of-text does not stop it).
        repeats: timed runs per mode (after one short warm-up each); the best is kept.

    Returns:
        ``{"prompt_tokens", "new_tokens", "max_seq_len", "cache": {"tokens_per_second",
        "seconds"}, "no_cache": {...}, "speedup", "same_tokens", "tokens"}``; ``same_tokens``
        says whether both ways produced the same ids (``tokens``: the cached run's new ids).

    Example:
        >>> from dynroute.models import DynMoEConfig, DynMoEForCausalLM
        >>> m = DynMoEForCausalLM(DynMoEConfig(vocab_size=32, d_model=16, n_layers=1,
        ...                       n_heads=2, d_ff=16, num_experts=4)).eval()
        >>> r = generation_speed(m, torch.tensor([[1, 2, 3]]), new_tokens=4)
        >>> r["new_tokens"], len(r["tokens"]), r["same_tokens"]
        (4, 4, True)
    """
    if new_tokens < 1:
        raise ValueError(f"generation_speed: new_tokens must be >= 1, got {new_tokens}")
    prompt = prompt.reshape(1, -1).to(next(model.parameters()).device)
    if prompt.shape[1] == 0:
        raise ValueError("generation_speed: the prompt has no tokens; give a longer --prompt")
    modes = {"cache": True, "no_cache": False}
    for use_cache in modes.values():  # warm-up: first calls pay for lazy initialisation
        _generate(model, prompt, min(new_tokens, 2), use_cache)
    best = dict.fromkeys(modes, float("inf"))
    outputs: dict[str, Tensor] = {}
    for _ in range(max(repeats, 1)):
        for name, use_cache in modes.items():
            start = time.perf_counter()
            outputs[name] = _generate(model, prompt, new_tokens, use_cache)
            best[name] = min(best[name], time.perf_counter() - start)
    produced = outputs["cache"].shape[1] - prompt.shape[1]
    return {
        "prompt_tokens": int(prompt.shape[1]),
        "new_tokens": int(produced),
        "max_seq_len": getattr(model.config, "max_seq_len", None),
        **{
            name: {"tokens_per_second": produced / best[name], "seconds": best[name]}
            for name in modes
        },
        "speedup": best["no_cache"] / best["cache"],
        "same_tokens": bool(torch.equal(outputs["cache"], outputs["no_cache"])),
        "tokens": outputs["cache"][0, prompt.shape[1] :].tolist(),
    }
