"""The recorder: known counts from hand-made routings, hooks, streaming, summaries."""

import math
import warnings

import pytest
import torch
from torch import nn

from analysis.helpers_analysis import TinyLM, make_routing
from dynroute.analysis import (
    RecorderConfig,
    RoutingRecorder,
    analyze_model,
    publish_routing,
    spearman,
    summarize,
)
from dynroute.routing import top_k

# Two sequences of 4 tokens. Token id 1 -> expert 0; id 2 -> experts 1 and 2;
# id 3 -> no expert (a null-expert style token).
IDS = torch.tensor([[1, 2, 1, 3], [1, 1, 2, 3]])
EXPERTS = {1: [0], 2: [1, 2], 3: []}


def hand_routing(ids: torch.Tensor = IDS):
    return make_routing([EXPERTS[int(i)] for i in ids.flatten()], num_experts=3)


def record_batch(rec, ids=IDS, loss=None, layers=(0,)):
    rec.begin_batch(ids)
    for layer in layers:
        rec.record(layer, hand_routing(ids))
    rec.end_batch(loss if loss is not None else torch.ones(ids.shape))


def test_counts_from_a_hand_made_routing():
    rec = RoutingRecorder(RecorderConfig(segment_lengths=(2,), capacity_factor=None))
    record_batch(rec)
    lc = rec.layers[0]
    assert lc.experts_hist.tolist() == [2, 4, 2, 0]  # ids 3,3 / 1,1,1,1 / 2,2
    assert lc.expert_tokens.tolist() == [4, 2, 2]
    assert lc.pos_tokens.tolist() == [2, 2, 2, 2]
    assert lc.pos_assignments.tolist() == [1 + 1, 2 + 1, 1 + 2, 0 + 0]
    tok, ex, cnt = lc.pairs.pairs()
    assert sorted(zip(tok.tolist(), ex.tolist(), cnt.tolist(), strict=True)) == [
        (1, 0, 4),
        (2, 1, 2),
        (2, 2, 2),
        (3, 3, 2),  # expert 3 = E: "no expert"
    ]
    assert rec.token_occurrences.tolist() == [0, 4, 2, 2]
    assert rec.num_tokens == 8 and rec.num_sequences == 2


def test_summary_known_answers():
    rec = RoutingRecorder(RecorderConfig(segment_lengths=(2,), capacity_factor=1.0))
    record_batch(rec, layers=(0, 1))
    s = summarize(rec, min_token_count=2, cache_sizes=[1, 2, 3])
    assert s["experts_per_layer"] == [1.0, 1.0]
    # Routing is a function of the token id: every frequent token always hits its expert
    # (token 3 always runs no expert, which counts as consistent too).
    assert s["token_id_consistency"] == [1.0, 1.0]
    lay = s["layers"][0]
    assert lay["load_cv"] == pytest.approx(
        math.sqrt(((4 - 8 / 3) ** 2 + 2 * (2 - 8 / 3) ** 2) / 3) / (8 / 3), abs=1e-6
    )
    assert [t["id"] for t in lay["top_tokens"][0]] == [1]
    assert lay["top_tokens"][1] == [{"id": 2, "text": "2", "count": 2, "share": 1.0}]
    # Windows of 2 per row: row 0 uses {0},{1,2},{0},{} -> windows (1,1,1), (1,1,1), (1,0,0)
    # row 1 uses {0},{0},{1,2},{} -> (2,0,0), (1,1,1), (0,1,1). Sorted sums: 7, 4, 3 of 14.
    assert s["cache_hit_rate"]["2"] == {"1": 0.5, "2": pytest.approx(11 / 14), "3": 1.0}
    # capacity ceil(1.0 * 4 / 3) = 2 per row; row 0: expert 0 gets 2 -> nothing dropped;
    # row 1: expert 0 gets 2 (positions 0, 1) -> nothing dropped either.
    assert s["drop_rate"] == [0.0, 0.0]
    assert set(s) >= {
        "experts_per_layer",
        "difficulty_spearman",
        "load_cv",
        "token_id_consistency",
        "cache_hit_rate",
    }


def test_streaming_spearman_equals_exact_spearman_on_binned_losses():
    rec = RoutingRecorder(RecorderConfig(segment_lengths=(), capacity_factor=None))
    g = torch.Generator().manual_seed(1)
    all_k, all_loss = [], []
    for _ in range(3):
        ids = torch.randint(1, 4, (2, 4), generator=g)
        loss = torch.rand(2, 4, generator=g) * 5
        record_batch(rec, ids, loss)
        all_k.append(torch.tensor([len(EXPERTS[int(i)]) for i in ids.flatten()]))
        all_loss.append(loss.flatten())
    k, loss = torch.cat(all_k), torch.cat(all_loss)
    binned = (loss / rec.config.loss_bin_width).floor()
    s = summarize(rec)
    assert s["difficulty_spearman"] == pytest.approx(spearman(binned, k), abs=1e-6)
    assert s["layers"][0]["loss"]["spearman"] == pytest.approx(spearman(binned, k), abs=1e-6)
    assert s["mean_loss"] == pytest.approx(float(loss.mean()), abs=1e-5)


def test_loss_monotone_in_experts_hand_computed_spearman():
    rec = RoutingRecorder(RecorderConfig(segment_lengths=(), capacity_factor=None))
    ids = torch.tensor([[3, 1, 2, 3, 2, 1]])
    loss = torch.tensor([[0.1, 1.0, 2.0, 0.2, 2.5, 1.5]])  # 0 experts < 1 expert < 2 experts
    record_batch(rec, ids, loss)
    # Monotone but with ties in k: loss ranks 1..6 vs k ranks 1.5, 1.5, 3.5, 3.5, 5.5, 5.5
    # give cov 16, var 17.5 and 16, so rho = 4 / sqrt(17.5).
    assert summarize(rec)["difficulty_spearman"] == pytest.approx(4 / math.sqrt(17.5), abs=1e-6)


def test_batches_stream_into_the_same_counts_as_one_batch():
    ids = torch.tensor([[1, 2, 1, 3], [1, 1, 2, 3], [2, 2, 1, 1], [3, 1, 2, 1]])
    loss = torch.arange(16.0).view(4, 4) / 4
    cfg = RecorderConfig(segment_lengths=(2, 3), capacity_factor=1.5)
    one, two = RoutingRecorder(cfg), RoutingRecorder(cfg)
    record_batch(one, ids, loss)
    record_batch(two, ids[:2], loss[:2])
    record_batch(two, ids[2:], loss[2:])
    a, b = summarize(one), summarize(two)
    for key in (
        "experts_per_layer",
        "difficulty",
        "load_cv",
        "cache_hit_rate",
        "srp",
        "drop_rate",
        "position_mean_experts",
        "token_id_consistency",
    ):
        assert a[key] == b[key], key


def test_state_does_not_grow_with_more_batches():
    rec = RoutingRecorder()

    def size() -> int:
        lc = rec.layers[0]
        lc.pairs.pairs()  # merge buffered pairs into the table
        tensors = [v for v in vars(lc).values() if isinstance(v, torch.Tensor)]
        tensors += [*lc.seg_sorted.values(), *lc.seg_hist.values(), lc.pairs.keys]
        return sum(t.numel() for t in tensors) + rec.total_loss_experts.numel()

    ids = torch.tensor([[1, 2, 1, 3] * 20])
    record_batch(rec, ids)
    first = size()
    for _ in range(5):
        record_batch(rec, ids)
    assert size() == first


def test_hooks_record_every_moe_layer_and_detach():
    model = TinyLM(layers=3)
    rec = RoutingRecorder()
    assert rec.attach_model(model) == 3
    rec.begin_batch(torch.zeros(2, 5, dtype=torch.long))
    model(torch.zeros(2, 5, dtype=torch.long))
    rec.end_batch(torch.ones(2, 5))
    assert sorted(rec.layers) == [0, 1, 2]
    assert all(lc.experts_hist[2] == 10 for lc in rec.layers.values())
    rec.detach()
    model(torch.zeros(2, 5, dtype=torch.long))
    assert all(lc.num_tokens == 10 for lc in rec.layers.values())


def test_attach_model_without_moe_says_what_to_do():
    with pytest.raises(ValueError, match="attach"):
        RoutingRecorder().attach_model(nn.Linear(2, 2))


def test_publish_routing_for_adapters():
    class AdaptedBlock(nn.Module):
        """Like a transformers MoE block: returns (hidden, router_logits), no Routing."""

        def forward(self, h):
            logits = h @ torch.ones(h.shape[-1], 4)
            publish_routing(self, top_k(logits.reshape(-1, 4), k=1))
            return h, logits

    block, rec = AdaptedBlock(), RoutingRecorder()
    block(torch.randn(1, 3, 2))  # nobody listening: a no-op
    with rec.attached(block, layer_index=5):
        rec.begin_batch(torch.tensor([[4, 5, 6]]))
        block(torch.randn(1, 3, 2))
        rec.end_batch(torch.ones(1, 3))
    block(torch.randn(1, 3, 2))  # detached again
    assert list(rec.layers) == [5] and rec.layers[5].num_tokens == 3


def test_routing_without_batch_context_is_one_sequence():
    rec = RoutingRecorder(RecorderConfig(segment_lengths=(2,)))
    rec.record(0, hand_routing())
    assert rec.num_tokens == 8 and rec.layers[0].pos_tokens.numel() == 8
    rec.begin_batch(torch.zeros(1, 3, dtype=torch.long))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rec.record(0, hand_routing())  # 8 tokens, batch has 3
    assert "does not match" in str(caught[0].message)


def test_layer_with_changing_expert_count_is_an_error():
    rec = RoutingRecorder()
    rec.record(0, hand_routing())
    with pytest.raises(ValueError, match="layer_index"):
        rec.record(0, make_routing([[0]], num_experts=5))


def test_analyze_model_on_a_tiny_lm():
    torch.manual_seed(0)
    model = TinyLM(layers=2, router="top_p", p=0.5)
    tokens = torch.randint(0, 32, (1 + 8 * 32,))
    s = analyze_model(model, tokens, seq_len=32, batch_size=4, progress=False)
    assert s["meta"]["num_tokens"] == 256 and s["meta"]["num_sequences"] == 8
    assert len(s["experts_per_layer"]) == 2
    assert all(1.0 <= k <= 4.0 for k in s["experts_per_layer"])
    # No attention: routing is a function of the token id, so consistency is exactly 1,
    # far above the shuffled-id baseline.
    assert s["token_id_consistency"] == [1.0, 1.0]
    assert all(b < 0.9 for b in s["token_id_baseline"])
    assert s["meta"]["completed"] is True
    with pytest.raises(ValueError, match="seq_len"):
        analyze_model(model, tokens[:10], seq_len=32, progress=False)


def test_ctrl_c_stops_after_the_current_batch():
    import signal

    class Interrupting(TinyLM):
        calls = 0

        def forward(self, x):
            Interrupting.calls += 1
            if Interrupting.calls == 2:
                signal.raise_signal(signal.SIGINT)  # mid-batch, before the MoE layers run
            return super().forward(x)

    before = signal.getsignal(signal.SIGINT)
    tokens = torch.randint(0, 32, (1 + 8 * 16,))
    s = analyze_model(Interrupting(), tokens, seq_len=16, batch_size=2, progress=False)
    assert s["meta"]["completed"] is False
    # Batch 2 was finished in every layer, then the run stopped: 2 of 4 batches.
    assert s["meta"]["num_tokens"] == 2 * 2 * 16
    assert [lay["tokens"] for lay in s["layers"]] == [64, 64]
    assert signal.getsignal(signal.SIGINT) is before


def test_pair_counts_buffer_and_merge(monkeypatch):
    from collections import Counter

    from dynroute.analysis.recorder import PairCounts

    monkeypatch.setattr(PairCounts, "MIN_BUFFER", 5)
    g = torch.Generator().manual_seed(0)
    pc, expected = PairCounts(num_experts=3), Counter()
    for _ in range(7):
        tok, ex = torch.randint(0, 6, (4,), generator=g), torch.randint(0, 3, (4,), generator=g)
        pc.add(tok, ex)
        expected.update(zip(tok.tolist(), ex.tolist(), strict=True))
    assert pc.keys.numel() > 0  # merged at least once along the way
    t, e, c = pc.pairs()
    got = dict(zip(zip(t.tolist(), e.tolist(), strict=True), c.tolist(), strict=True))
    assert got == dict(expected)


def test_routing_callback_blocks_are_chained_not_replaced():
    seen = []

    class Block(nn.Module):
        """Like a dynroute.hf block: calls routing_callback(self, routing) every forward."""

        def __init__(self):
            super().__init__()
            self.routing_callback = lambda block, routing: seen.append(routing.num_tokens)

        def forward(self, h):
            self.routing_callback(self, top_k(h.reshape(-1, 4), k=1))
            return h

    model = nn.Sequential(Block())
    original = model[0].routing_callback
    rec = RoutingRecorder()
    with rec.attached_model(model):
        rec.begin_batch(torch.zeros(1, 3, dtype=torch.long))
        model(torch.randn(1, 3, 4))
        rec.end_batch(None)
    assert seen == [3] and rec.layers[0].num_tokens == 3  # both got the routing
    assert model[0].routing_callback is original  # and the old callback is back
