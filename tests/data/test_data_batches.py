"""Random training batches and ordered evaluation batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dynroute.data.batches import TokenDataset, get_batch, iter_eval_batches, num_eval_windows

TOKENS = np.arange(1000, dtype=np.uint16)


def test_get_batch_shapes_and_shift() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = get_batch(TOKENS, 8, 32, g)
    assert x.shape == y.shape == (8, 32)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(y, x + 1)  # arange tokens: targets are the next id
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_get_batch_deterministic_and_in_bounds() -> None:
    a = get_batch(TOKENS, 4, 16, torch.Generator().manual_seed(1))
    b = get_batch(TOKENS, 4, 16, torch.Generator().manual_seed(1))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    tiny = np.arange(9, dtype=np.uint16)  # exactly seq_len + 1 tokens: one window
    x, y = get_batch(tiny, 3, 8, torch.Generator().manual_seed(0))
    assert torch.equal(x[0], torch.arange(8)) and torch.equal(y[0], torch.arange(1, 9))


def test_get_batch_errors() -> None:
    with pytest.raises(ValueError, match="seq_len \\+ 1"):
        get_batch(np.arange(8), 1, 8)
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((4, 4)), 1, 2)


def test_iter_eval_batches_walks_in_order() -> None:
    tokens = np.arange(101, dtype=np.uint16)
    assert num_eval_windows(tokens, 10) == 10
    batches = list(iter_eval_batches(tokens, 4, 10))
    assert [x.shape[0] for x, _ in batches] == [4, 4, 2]
    xs = torch.cat([x for x, _ in batches]).flatten()
    ys = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(xs, torch.arange(100)) and torch.equal(ys, torch.arange(1, 101))
    assert len(list(iter_eval_batches(tokens, 4, 10, max_batches=2))) == 2


def test_token_dataset_wrapper() -> None:
    ds = TokenDataset(TOKENS)
    assert len(ds) == 1000
    x, y = ds.batch(2, 5, torch.Generator().manual_seed(0))
    assert x.shape == (2, 5) and torch.equal(y, x + 1)
    assert sum(x.shape[0] for x, _ in ds.eval_batches(7, 100)) == 9
