"""Length-grouped batch orders: purity, coverage and padding. The sampler under accelerate's sharding is
tested in test_sampler_sharding.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from qa.data.sampler import (
    EpochBatchSampler,
    default_mega_batch_size,
    grouped_batch_order,
    padding_stats,
    synthetic_squad_lengths,
    ungrouped_batch_order,
)
from qa.model.loss import padding_invariant_qa_loss

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = REPO.parent / "shared" / "data"


def _flat(batches: list[list[int]]) -> list[int]:
    return [i for b in batches for i in b]


# --------------------------------------------------------------------------------------------------
# Pure batch orders
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, batch_size", [(1000, 32), (1003, 32), (31, 32), (0, 8), (64, 8)])
@pytest.mark.parametrize("grouped", [True, False])
def test_every_index_exactly_once(n: int, batch_size: int, grouped: bool) -> None:
    lengths = synthetic_squad_lengths(n, seed=3)
    for epoch in range(3):
        if grouped:
            batches = grouped_batch_order(lengths, batch_size, seed=7, epoch=epoch)
        else:
            batches = ungrouped_batch_order(n, batch_size, seed=7, epoch=epoch)
        assert sorted(_flat(batches)) == list(range(n))
        assert len(batches) == -(-n // batch_size)
        # Only the last batch may be short: accelerate's BatchSamplerShard mishandles a short one elsewhere.
        assert all(len(b) == batch_size for b in batches[:-1])
        assert all(isinstance(i, int) for i in _flat(batches))


@pytest.mark.parametrize("grouped", [True, False])
def test_drop_last_gives_only_full_batches(grouped: bool) -> None:
    n, bs = 1003, 32
    lengths = synthetic_squad_lengths(n, seed=3)
    dropped = []
    for epoch in range(4):
        if grouped:
            batches = grouped_batch_order(lengths, bs, seed=0, epoch=epoch, drop_last=True)
        else:
            batches = ungrouped_batch_order(n, bs, seed=0, epoch=epoch, drop_last=True)
        flat = _flat(batches)
        assert len(batches) == n // bs and all(len(b) == bs for b in batches)
        assert len(set(flat)) == len(flat) == n - n % bs
        dropped.append(frozenset(range(n)) - set(flat))
    # The dropped windows are a random subset that changes with the epoch.
    assert len(set(dropped)) > 1


@pytest.mark.parametrize("grouped", [True, False])
def test_order_is_pure_in_seed_and_epoch(grouped: bool) -> None:
    lengths = synthetic_squad_lengths(2000, seed=1)

    def order(seed: int, epoch: int) -> list[list[int]]:
        if grouped:
            return grouped_batch_order(lengths, 16, seed=seed, epoch=epoch)
        return ungrouped_batch_order(len(lengths), 16, seed=seed, epoch=epoch)

    # Unrelated global RNG activity must not matter: every rank has a different history.
    np.random.seed(123)
    torch.manual_seed(123)
    a = order(0, 0)
    np.random.rand(10)
    torch.rand(10)
    assert order(0, 0) == a
    assert order(0, 1) != a
    assert order(1, 0) != a
    assert order(0, 1) != order(1, 0)


def test_grouped_batches_are_homogeneous_but_not_in_length_order() -> None:
    lengths = synthetic_squad_lengths(5000, seed=2)
    batches = grouped_batch_order(lengths, 32, seed=0, epoch=0)
    maxima = [int(lengths[b].max()) for b in batches]
    # The longest (full) batch leads, so an OOM shows up at step 0.
    assert maxima[0] == int(lengths.max())
    # The remaining batches are not a monotone long-to-short sweep.
    rest = maxima[1:-1]
    assert rest != sorted(rest) and rest != sorted(rest, reverse=True)
    # Within a batch lengths are close: the spread is far below the spread of a random batch.
    spread = np.mean([np.ptp(lengths[b]) for b in batches])
    random_spread = np.mean([np.ptp(lengths[b]) for b in ungrouped_batch_order(5000, 32, seed=0, epoch=0)])
    assert spread < random_spread / 4


def test_longest_first_can_be_disabled() -> None:
    lengths = synthetic_squad_lengths(5000, seed=2)
    firsts = {
        int(lengths[grouped_batch_order(lengths, 32, seed=0, epoch=e, longest_first=False)[0]].max())
        for e in range(5)
    }
    assert firsts != {int(lengths.max())}


def test_mega_batch_size_must_be_a_multiple_of_batch_size() -> None:
    lengths = synthetic_squad_lengths(100, seed=0)
    for bad in (0, 5, 12, 33):
        with pytest.raises(ValueError, match="multiple"):
            grouped_batch_order(lengths, 8, seed=0, epoch=0, mega_batch_size=bad)
        with pytest.raises(ValueError, match="multiple"):
            EpochBatchSampler(lengths, 8, mega_batch_size=bad)
    assert default_mega_batch_size(10_822, 32) == 50 * 32
    # Small datasets still get at least ~4 mega-batches, so grouping does not become one global sort.
    assert default_mega_batch_size(1000, 32) == 7 * 32
    assert default_mega_batch_size(10, 32) == 32
    with pytest.raises(ValueError):
        grouped_batch_order(lengths, 8, seed=-1, epoch=0)
    with pytest.raises(ValueError):
        grouped_batch_order(np.array([[1, 2]]), 8, seed=0, epoch=0)


# --------------------------------------------------------------------------------------------------
# Padding
# --------------------------------------------------------------------------------------------------


def test_padding_stats_by_hand() -> None:
    lengths = np.array([10, 3, 17, 16])
    stats = padding_stats([[0, 1], [2, 3]], lengths, pad_multiple=8)
    # Batch 0 pads to 16 (10 rounded up), batch 1 to 24 (17 rounded up).
    assert stats["real_tokens"] == 46
    assert stats["padded_tokens"] == 2 * 16 + 2 * 24
    assert stats["padding_fraction"] == pytest.approx(1 - 46 / 80)
    assert padding_stats([], lengths)["padding_fraction"] == 0.0
    assert padding_stats([[3]], lengths, pad_multiple=1)["padding_fraction"] == 0.0


def test_synthetic_lengths_look_like_squad() -> None:
    lengths = synthetic_squad_lengths(20_000, seed=0)
    assert 170 < lengths.mean() < 190  # the real dev windows average 180.8 tokens
    assert 0.015 < (lengths == 384).mean() < 0.035
    assert lengths.min() >= 32 and lengths.max() == 384


def test_padding_below_10_percent_on_synthetic_squad_lengths() -> None:
    lengths = synthetic_squad_lengths(10_822, seed=0)
    for epoch in range(3):
        grouped = padding_stats(grouped_batch_order(lengths, 32, seed=0, epoch=epoch), lengths)
        assert grouped["padding_fraction"] < 0.10, grouped
        assert grouped["real_tokens"] == int(lengths.sum())
    ungrouped = padding_stats(ungrouped_batch_order(len(lengths), 32, seed=0, epoch=0), lengths)
    assert ungrouped["padding_fraction"] > 0.4, ungrouped


@pytest.fixture(scope="module")
def squad_dev_lengths() -> np.ndarray:
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from throughput_data import load_real_windows  # the windows the throughput benchmark times

    windows = load_real_windows(SHARED_DATA, 384)
    if windows is None:
        pytest.skip(f"shared SQuAD data not found under {SHARED_DATA} (dev-v1.1.json and bert-base-cased)")
    return windows.lengths


def test_padding_below_10_percent_on_real_squad_dev(squad_dev_lengths: np.ndarray) -> None:
    lengths = squad_dev_lengths
    assert len(lengths) == 10_822 and lengths.max() == 384
    for epoch in range(3):
        stats = padding_stats(grouped_batch_order(lengths, 32, seed=0, epoch=epoch), lengths)
        assert stats["padding_fraction"] < 0.10, stats
    to_max = 1 - lengths.sum() / (384 * len(lengths))
    assert to_max > 0.5  # what padding everything to max_length wastes


# --------------------------------------------------------------------------------------------------
# Padding does not change what the model computes
# --------------------------------------------------------------------------------------------------


def _pad(features: list[list[int]], type_ids: list[list[int]], length: int) -> dict[str, torch.Tensor]:
    ids = torch.zeros(len(features), length, dtype=torch.long)  # 0 is BERT's [PAD]
    mask = torch.zeros_like(ids)
    tt = torch.zeros_like(ids)
    for row, (f, t) in enumerate(zip(features, type_ids, strict=True)):
        ids[row, : len(f)] = torch.tensor(f)
        mask[row, : len(f)] = 1
        tt[row, : len(t)] = torch.tensor(t)
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": tt}


def test_padding_to_batch_max_matches_padding_to_384() -> None:
    from transformers import BertConfig, BertForQuestionAnswering

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    model = BertForQuestionAnswering(config).eval()

    lengths = synthetic_squad_lengths(400, seed=5)
    batch = grouped_batch_order(lengths, 8, seed=0, epoch=0)[3]
    rng = np.random.default_rng(0)
    features = [[1, *rng.integers(5, 100, int(lengths[i]) - 2).tolist(), 2] for i in batch]
    type_ids = [[0] * (len(f) // 4) + [1] * (len(f) - len(f) // 4) for f in features]
    start = torch.tensor([int(rng.integers(0, len(f))) for f in features])
    end = torch.minimum(start + 3, torch.tensor([len(f) - 1 for f in features]))

    grouped_len = -(-max(len(f) for f in features) // 8) * 8
    short = _pad(features, type_ids, grouped_len)
    full = _pad(features, type_ids, 384)
    assert grouped_len < 384

    def run(inputs: dict[str, torch.Tensor]):
        model.zero_grad(set_to_none=True)
        out = model(**inputs, start_positions=start, end_positions=end)
        loss = padding_invariant_qa_loss(
            out.start_logits, out.end_logits, inputs["attention_mask"], start, end
        )
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return out, loss.detach(), grads

    out_s, loss_s, grads_s = run(short)
    out_f, loss_f, grads_f = run(full)

    real = short["attention_mask"].bool()
    for name in ("start_logits", "end_logits"):
        a, b = getattr(out_s, name), getattr(out_f, name)[:, :grouped_len]
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(loss_s, loss_f, atol=1e-5, rtol=0)
    assert grads_s.keys() == grads_f.keys()
    for name in grads_s:
        torch.testing.assert_close(grads_s[name], grads_f[name], atol=1e-5, rtol=1e-4, msg=name)

    # HF's built-in QA loss softmaxes over pad positions too, so it DOES depend on the padded length;
    # this is why padding_invariant_qa_loss exists. If transformers ever masks pads, revisit the docs.
    assert abs(out_s.loss.item() - out_f.loss.item()) > 1e-2


def test_step_batches_are_the_same_whatever_the_world_size_and_accumulation_split() -> None:
    """1 rank x 4 == 2 ranks x 2 == 1 rank x 2 x accumulation 2: each optimizer step sees the same features."""
    from qa.data.sampler import StepBatchSampler

    lengths = synthetic_squad_lengths(203, seed=3)

    def steps(micro: int, world: int, accum: int, epoch: int) -> list[list[int]]:
        sampler = StepBatchSampler(lengths, micro, world, accum, seed=7, group_by_length=True)
        sampler.set_epoch(epoch)
        micro_batches = list(sampler)
        assert len(micro_batches) == len(sampler) and all(len(b) == micro for b in micro_batches)
        per_step = world * accum
        return [sorted(i for b in micro_batches[k: k + per_step] for i in b)
                for k in range(0, len(micro_batches), per_step)]

    for epoch in (0, 1):
        ref = steps(4, 1, 1, epoch)
        assert steps(2, 2, 1, epoch) == ref and steps(2, 1, 2, epoch) == ref
        assert len(ref) == 203 // 4  # the partial step is dropped
    assert steps(4, 1, 1, 0) != steps(4, 1, 1, 1)


@pytest.mark.parametrize("saved, now", [((2, 1), (1, 2)), ((1, 2), (2, 1)), ((1, 4), (4, 1))])
def test_a_resumed_epoch_continues_the_global_batch_order_on_another_world_size(saved: tuple[int, int],
                                                                               now: tuple[int, int]) -> None:
    """The saved position is k global batches; on M ranks the loop skips k x accumulation micro-batches per rank
    (qa.trainer.loop), and the steps that follow are the epoch's remaining global batches, in order."""
    from accelerate import skip_first_batches
    from accelerate.data_loader import prepare_data_loader

    from qa.data.sampler import StepBatchSampler

    lengths, micro, epoch, k = synthetic_squad_lengths(150, seed=2), 2, 1, 3
    global_batch = micro * saved[0] * saved[1]
    assert micro * now[0] * now[1] == global_batch

    def steps(world: int, accum: int, skip_steps: int) -> list[list[int]]:
        ranks = []
        for r in range(world):
            sampler = StepBatchSampler(lengths, micro, world, accum, seed=5, group_by_length=True)
            dl = DataLoader(list(range(lengths.size)), batch_sampler=sampler, collate_fn=list)
            pdl = prepare_data_loader(dl, num_processes=world, process_index=r, put_on_device=False)
            pdl.set_epoch(epoch)
            ranks.append(list(skip_first_batches(pdl, skip_steps * accum) if skip_steps else pdl))
        # Optimizer step j: micro-batches j*accum .. j*accum+accum-1 of every rank.
        return [sorted(i for rank in ranks for b in rank[j * accum: (j + 1) * accum] for i in b)
                for j in range(len(ranks[0]) // accum)]

    whole = steps(*saved, 0)
    assert len(whole) == 150 // global_batch and all(len(s) == global_batch for s in whole)
    assert steps(*now, k) == whole[k:]
