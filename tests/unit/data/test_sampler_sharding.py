"""EpochBatchSampler alone and under accelerate's sharding: every index once per epoch on any number of processes,
set_epoch reaching it, and skip_first_batches resuming mid-epoch."""

from __future__ import annotations

from collections import Counter

import pytest
from torch.utils.data import DataLoader

from qa.data.sampler import (
    EpochBatchSampler,
    grouped_batch_order,
    synthetic_squad_lengths,
    ungrouped_batch_order,
)


def test_epoch_batch_sampler_follows_epoch() -> None:
    lengths = synthetic_squad_lengths(500, seed=0)
    for grouped in (True, False):
        sampler = EpochBatchSampler(lengths, 32, group_by_length=grouped, seed=4)
        assert len(sampler) == 16 == len(list(sampler))
        first = list(sampler)
        assert list(sampler) == first  # no hidden state advances between passes
        sampler.set_epoch(1)
        assert list(sampler) == sampler.batches(1) != first
        if grouped:
            assert first == grouped_batch_order(lengths, 32, seed=4, epoch=0)
        else:
            assert first == ungrouped_batch_order(500, 32, seed=4, epoch=0)
    assert len(EpochBatchSampler(lengths, 32, drop_last=True)) == 15


def _loader(
    n: int, batch_size: int, *, group_by_length: bool = True, drop_last: bool = False, seed: int = 0
) -> tuple[DataLoader, EpochBatchSampler]:
    sampler = EpochBatchSampler(
        synthetic_squad_lengths(n, seed=9),
        batch_size,
        group_by_length=group_by_length,
        seed=seed,
        drop_last=drop_last,
    )
    # collate_fn=list keeps the yielded batch as the list of dataset items, i.e. the indices.
    return DataLoader(list(range(n)), batch_sampler=sampler, collate_fn=list), sampler


def _prepared(n: int, batch_size: int, num_processes: int, rank: int):
    from accelerate.data_loader import prepare_data_loader

    # One sampler per rank, as in a real job where every process builds its own.
    dl, sampler = _loader(n, batch_size)
    return prepare_data_loader(
        dl, num_processes=num_processes, process_index=rank, put_on_device=False
    ), sampler


# n=96: 12 full batches; n=92: 11 full + short (12 batches); n=100: 12 full + short (13, odd).
@pytest.mark.parametrize("n", [96, 92, 100])
@pytest.mark.parametrize("group_by_length", [True, False])
def test_accelerate_shards_cover_every_index(n: int, group_by_length: bool) -> None:
    from accelerate.data_loader import prepare_data_loader

    bs, procs = 8, 2
    epoch_orders = []
    for epoch in range(2):
        ranks, global_order = [], None
        for r in range(procs):
            dl, sampler = _loader(n, bs, group_by_length=group_by_length)
            pdl = prepare_data_loader(dl, num_processes=procs, process_index=r, put_on_device=False)
            pdl.set_epoch(epoch)
            ranks.append(list(pdl))
            global_order = sampler.batches(epoch)
        epoch_orders.append(ranks)

        # even_batches=True (default): every rank runs the same number of full batches.
        steps = -(-len(global_order) // procs)
        assert all(len(r) == steps for r in ranks)
        assert all(len(b) == bs for r in ranks for b in r)
        # Round-robin: rank r gets global batches r, r+P, ...; the short last one is completed.
        for r, batches in enumerate(ranks):
            for j, b in enumerate(batches):
                g = j * procs + r
                if g < len(global_order):
                    assert b[: len(global_order[g])] == global_order[g]
        yielded = Counter(i for r in ranks for b in r for i in b)
        assert set(yielded) == set(range(n))
        # The only repeats are accelerate's wrap-around padding, drawn from the epoch's first P batches.
        extra = Counter({i: c - 1 for i, c in yielded.items() if c > 1})
        assert sum(extra.values()) == procs * steps * bs - n
        assert set(extra) <= {i for b in global_order[:procs] for i in b}

    assert epoch_orders[0] != epoch_orders[1]


@pytest.mark.parametrize("n", [96, 92, 100])
def test_accelerate_uneven_batches_see_every_index_exactly_once(n: int) -> None:
    from accelerate.data_loader import prepare_data_loader

    shards = []
    for r in range(2):
        dl, sampler = _loader(n, 8)
        pdl = prepare_data_loader(
            dl, num_processes=2, process_index=r, put_on_device=False, even_batches=False
        )
        shards.append(list(pdl))
    assert shards[0] == sampler.batches(0)[0::2] and shards[1] == sampler.batches(0)[1::2]
    assert sorted(i for s in shards for b in s for i in b) == list(range(n))


def test_accelerate_drop_last_drops_the_incomplete_round() -> None:
    from accelerate.data_loader import prepare_data_loader

    n = 100  # 12 full batches after our drop_last; 12 % 2 == 0 so accelerate drops nothing more
    shards = []
    for r in range(2):
        dl, sampler = _loader(n, 8, drop_last=True)
        shards.append(list(prepare_data_loader(dl, num_processes=2, process_index=r, put_on_device=False)))
    flat = [i for s in shards for b in s for i in b]
    assert len(flat) == len(set(flat)) == 96
    assert [b for pair in zip(*shards, strict=True) for b in pair] == sampler.batches(0)


def test_accelerate_loses_a_round_when_a_short_batch_is_not_last() -> None:
    """Pins the accelerate 1.15 behaviour that forces the short batch to the end of our orders."""
    from accelerate.data_loader import BatchSamplerShard

    class Fixed:
        batch_size, drop_last = 4, False

        def __init__(self, batches: list[list[int]]) -> None:
            self.batches = batches

        def __iter__(self):
            return iter(self.batches)

        def __len__(self) -> int:
            return len(self.batches)

    def shard(batches: list[list[int]]) -> set[int]:
        return {i for r in range(2) for b in BatchSamplerShard(Fixed(batches), 2, r) for i in b}

    assert shard([[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13]]) == set(range(14))
    # Short batch at the last slot of a round mid-epoch: the whole round (0..5) silently disappears.
    assert shard([[0, 1, 2, 3], [4, 5], [6, 7, 8, 9], [10, 11, 12, 13]]) == set(range(6, 14))


@pytest.mark.parametrize("procs", [1, 2])
def test_set_epoch_reaches_the_sampler_through_accelerate(procs: int) -> None:
    from accelerate.data_loader import prepare_data_loader

    dl, sampler = _loader(200, 8)
    pdl = prepare_data_loader(dl, num_processes=procs, process_index=procs - 1, put_on_device=False)
    # With procs=2 the loader's batch_sampler is accelerate's BatchSamplerShard wrapping ours.
    assert (pdl.batch_sampler is sampler) == (procs == 1)
    pdl.set_epoch(3)
    assert sampler.epoch == 3
    # Without explicit set_epoch the loader counts completed passes itself.
    pdl.set_epoch(0)
    first = list(pdl)
    second = list(pdl)
    assert sampler.epoch == 1 and pdl.iteration == 2
    assert first != second
    pdl.set_epoch(0)
    assert list(pdl) == first


@pytest.mark.parametrize("procs", [1, 2])
@pytest.mark.parametrize("k", [0, 1, 5, 6])
def test_skip_first_batches_resumes_the_same_epoch(procs: int, k: int) -> None:
    from accelerate import skip_first_batches

    epoch = 2
    for r in range(procs):
        pdl, _ = _prepared(100, 8, procs, r)
        pdl.set_epoch(epoch)
        full = list(pdl)
        assert len(full) == (7 if procs == 2 else 13)

        # A restarted process: new sampler and loader, epoch set on the prepared loader, then skip.
        fresh, sampler = _prepared(100, 8, procs, r)
        fresh.set_epoch(epoch)
        resumed = skip_first_batches(fresh, k)
        assert list(resumed) == full[k:]
        assert sampler.epoch == epoch
        # The next epoch continues from the prepared loader, not the skip copy.
        fresh.set_epoch(epoch + 1)
        assert list(fresh) != full


def test_skip_loader_set_epoch_does_not_reach_a_sharded_sampler() -> None:
    """Pins accelerate 1.15 behaviour that the module docstring relies on: set the epoch BEFORE skipping."""
    from accelerate import skip_first_batches

    pdl, sampler = _prepared(100, 8, 2, 0)
    pdl.set_epoch(4)
    resumed = skip_first_batches(pdl, 2)
    resumed.set_epoch(9)  # Skip -> Shard -> sampler is one level deeper than accelerate looks
    assert sampler.epoch == 4
