"""``dynroute eval --generate``: generation tokens/s of a checkpoint, with and without KV cache.

The prompt is ``--prompt`` encoded with the checkpoint's own tokenizer, or else the first
``DEFAULT_PROMPT_TOKENS`` tokens of its validation text; :func:`generation_speed` does the
timing.
"""

from __future__ import annotations

from typing import Any

import torch

from dynroute.checkpoints import LoadedModel
from dynroute.models.generation import generation_speed

__all__ = ["DEFAULT_PROMPT_TOKENS", "generation_report", "generation_rows"]

DEFAULT_PROMPT_TOKENS = 16


def prompt_ids(loaded: LoadedModel, prompt: str | None) -> torch.Tensor:
    """LongTensor [1, T]: ``prompt`` encoded with the model's tokenizer, or the start of
    its validation text."""
    from tokenizers import Tokenizer

    if prompt is None:
        ids = list(loaded.tokens(max_tokens=DEFAULT_PROMPT_TOKENS)[:DEFAULT_PROMPT_TOKENS])
    elif isinstance(loaded.tokenizer, Tokenizer):
        ids = loaded.tokenizer.encode(prompt).ids
    else:
        ids = loaded.tokenizer(prompt, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"--prompt {prompt!r} encodes to no tokens; give some text")
    return torch.tensor([ids], dtype=torch.long)


def generation_report(
    loaded: LoadedModel, new_tokens: int = 256, prompt: str | None = None, repeats: int = 1
) -> dict[str, Any]:
    """:func:`generation_speed` of ``loaded.model`` on its prompt, plus the decoded text."""
    from tokenizers import Tokenizer

    ids = prompt_ids(loaded, prompt)
    report = generation_speed(loaded.model, ids, new_tokens, repeats)
    tokens = report.pop("tokens")
    tok = loaded.tokenizer
    decode = tok.decode if isinstance(tok, Tokenizer) else (lambda t: tok.decode(t))
    report["prompt"] = decode(ids[0].tolist())
    report["text"] = decode(tokens)
    return report


def generation_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    """(metric, value) rows of a :func:`generation_report` for the eval table.

    Example:
        >>> rows = generation_rows({"new_tokens": 8, "prompt_tokens": 2, "speedup": 2.0,
        ...     "cache": {"tokens_per_second": 40.0}, "no_cache": {"tokens_per_second": 20.0},
        ...     "same_tokens": True})
        >>> rows[1]
        ('generate: tokens / s, KV cache', '40.0')
    """
    return [
        ("generate: new tokens (prompt)", f"{report['new_tokens']} ({report['prompt_tokens']})"),
        ("generate: tokens / s, KV cache", f"{report['cache']['tokens_per_second']:,.1f}"),
        ("generate: tokens / s, no cache", f"{report['no_cache']['tokens_per_second']:,.1f}"),
        ("generate: cache speed-up", f"{report['speedup']:.2f}×"),
        ("generate: same tokens both ways", "yes" if report["same_tokens"] else "NO"),
    ]
