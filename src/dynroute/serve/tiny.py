"""A tiny random ``DynMoEForCausalLM`` with its tokenizer, for tests, demos and benchmarks.

Its answers are noise, but it loads, batches, streams and stops exactly like a trained
model, in well under a second: what tests of the server and the load benchmark need.

Example:
    >>> import tempfile
    >>> folder = write_tiny_model(tempfile.mkdtemp())
    >>> sorted(p.name for p in folder.iterdir())  # doctest: +NORMALIZE_WHITESPACE
    ['config.json', 'generation_config.json', 'model.safetensors', 'tokenizer.json']
"""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

__all__ = ["write_tiny_model"]


def write_tiny_model(
    folder: str | Path, seed: int = 0, d_model: int = 32, max_seq_len: int = 256
) -> Path:
    """Write a random 2-layer top-p MoE model + ``tokenizer.json`` (trained on this
    module's own source) to ``folder``; ``dynroute serve folder`` serves it."""
    from transformers.utils import logging as hf_logging

    from dynroute.data.tokenizer import train_tokenizer
    from dynroute.models import DynMoEConfig, DynMoEForCausalLM

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer([inspect.getsource(inspect.getmodule(write_tiny_model))] * 4, 300)
    torch.manual_seed(seed)
    config = DynMoEConfig(
        vocab_size=tok.get_vocab_size(),
        d_model=d_model,
        n_layers=2,
        n_heads=2,
        d_ff=d_model,
        num_experts=4,
        router="top_p:p=0.5",
        max_seq_len=max_seq_len,
    )
    hf_logging.disable_progress_bar()
    DynMoEForCausalLM(config).save_pretrained(out)
    tok.save(str(out / "tokenizer.json"))
    return out
