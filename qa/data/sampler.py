"""Length-grouped batch orders for training on variable-length QA windows.

SQuAD v1.1 dev tokenized with bert-base-cased (max_length=384, stride=128) gives 10,822 windows with
a mean of ~181 real tokens, so padding every batch to 384 spends more than half of the compute on
pad tokens. Here the batch *order* is chosen so that each batch holds windows of similar length; the
collator (``DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8)``) then pads each batch only to
its own longest window. That requires the features to be tokenized WITHOUT padding (``padding=False``).

Every order is a pure function of ``(lengths, seed, epoch)``. Distributed ranks never exchange the
order: accelerate's ``BatchSamplerShard`` lets every rank compute the same global order and keep its
own round-robin share, which is only correct if all ranks compute exactly the same list. Purity is also
what makes mid-epoch resume exact (``accelerate.skip_first_batches`` replays the order and drops the
first k batches).

Using this with ``accelerate`` (1.15, read from ``accelerate/data_loader.py``)::

    sampler = EpochBatchSampler(lengths, batch_size, seed=seed)
    dl = accelerator.prepare(DataLoader(ds, batch_sampler=sampler, collate_fn=collator))
    for epoch in range(start_epoch, epochs):
        dl.set_epoch(epoch)                       # on the PREPARED loader, see below
        it = accelerator.skip_first_batches(dl, resume_step) if epoch == start_epoch else dl
        for batch in it: ...

* ``set_epoch``: ``DataLoaderShard.__iter__`` calls ``self.set_epoch(self.iteration)`` at the start of
  every pass and increments ``iteration`` after a complete pass. Its ``set_epoch`` looks for
  ``batch_sampler.set_epoch`` (single process: that is us), ``batch_sampler.sampler.set_epoch`` and
  ``batch_sampler.batch_sampler.sampler.set_epoch`` (multi process: ``BatchSamplerShard`` -> us ->
  ``.sampler``). ``BatchSamplerShard`` has no ``sampler`` attribute of its own, so without our
  ``sampler`` property the epoch would never reach us on more than one process. Under accelerate,
  calling ``sampler.set_epoch`` directly is pointless: the next pass overwrites it with ``dl.iteration``
  (with a plain torch DataLoader, ``sampler.set_epoch`` is the way).
* ``skip_first_batches`` wraps the (sharded) batch sampler in ``SkipBatchSampler`` and copies
  ``iteration`` into a new ``DataLoaderShard``; with several processes the lookup is then three levels
  deep (Skip -> Shard -> us) and ``set_epoch`` no longer reaches us. It still works because the skip
  loader shares our sampler object, which already holds the epoch set through the prepared loader -
  hence "``dl.set_epoch(epoch)`` before ``skip_first_batches``". ``k`` counts per-rank batches (the
  global position is ``k * num_processes``). ``save_state`` stores neither ``iteration`` nor our state:
  the trainer must checkpoint (epoch, step-in-epoch) itself.
* ``even_batches=True`` (accelerate's default): when the number of batches is not a multiple of the
  number of processes, or the last batch is short, ``BatchSamplerShard`` completes the last round with
  indices taken from the first ``num_processes`` batches of the epoch, so a few windows are seen twice.
  ``BatchSamplerShard`` also silently drops a whole round if a short batch appears at the last slot of
  a round anywhere but at the end, which is why the short remainder batch is always kept LAST here.
  With ``even_batches=False`` every index is seen exactly once but ranks may run one batch fewer.
  With ``drop_last=True`` accelerate additionally drops the final incomplete round.
* ``split_batches=True`` slices each global batch across ranks instead; it also only accepts a short
  batch at the end, so the same ordering rule covers it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import Sampler

__all__ = [
    "SQUAD_V1_DEV_LENGTH_HISTOGRAM",
    "EpochBatchSampler",
    "default_mega_batch_size",
    "grouped_batch_order",
    "padding_stats",
    "synthetic_squad_lengths",
    "ungrouped_batch_order",
]

# HF's LengthGroupedSampler convention: 50 batches per mega-batch, but at least 4 mega-batches per
# epoch on small datasets. Measured on the SQuAD v1.1 dev windows with batch_size=32 (padding to the
# batch max rounded up to 8): 8x -> 11.8% padding, 16x -> 6.8%, 32x -> 4.5%, 50x -> 3.6%, whole epoch
# sorted -> 2.1%. Larger mega-batches pad less but make batch *composition* more predictable (windows
# of equal length always meet); 50x is a well-tested trade-off and keeps padding far below 10%.
_MEGA_BATCHES_PER_BATCH = 50
_MIN_MEGA_BATCHES_PER_EPOCH = 4

# Window-length histogram of SQuAD v1.1 dev tokenized with bert-base-cased (question.lstrip(), context,
# truncation="only_second", max_length=384, stride=128, return_overflowing_tokens=True): 10,822 windows,
# mean 180.8, median 168, min 42, 256 windows (2.4%) exactly 384 long. Measured once with
# /work/shared/data; used to generate realistic synthetic lengths when that data is absent.
# Keys are [lo, hi) bins of real (unpadded) tokens, values are window counts.
# fmt: off
_DEV_COUNTS_PER_16_TOKENS = (  # bins [32, 48), [48, 64), ..., [368, 384)
    21, 153, 187, 277, 392, 917, 1368, 1432, 1245, 1023, 874,
    693, 485, 348, 334, 241, 215, 110, 95, 54, 47, 55,
)
# fmt: on
SQUAD_V1_DEV_LENGTH_HISTOGRAM: dict[tuple[int, int], int] = {
    **{(lo, lo + 16): c for lo, c in zip(range(32, 384, 16), _DEV_COUNTS_PER_16_TOKENS, strict=True)},
    (384, 385): 256,
}


def synthetic_squad_lengths(n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` window lengths drawn from :data:`SQUAD_V1_DEV_LENGTH_HISTOGRAM` (uniform within a bin)."""
    rng = np.random.default_rng(seed)
    bins = list(SQUAD_V1_DEV_LENGTH_HISTOGRAM)
    counts = np.array([SQUAD_V1_DEV_LENGTH_HISTOGRAM[b] for b in bins], dtype=np.float64)
    which = rng.choice(len(bins), size=n, p=counts / counts.sum())
    lo = np.array([b[0] for b in bins])[which]
    hi = np.array([b[1] for b in bins])[which]
    return rng.integers(lo, hi).astype(np.int64)


def default_mega_batch_size(num_samples: int, batch_size: int) -> int:
    """Mega-batch size used when none is given (always a multiple of ``batch_size``)."""
    mult = min(_MEGA_BATCHES_PER_BATCH, num_samples // (batch_size * _MIN_MEGA_BATCHES_PER_EPOCH))
    return batch_size * max(1, mult)


def _epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be non-negative, got seed={seed}, epoch={epoch}")
    # SeedSequence mixes the pair, so (seed, epoch) and (seed, epoch + 1) give unrelated streams
    # and no rank-local or global RNG state is involved: the order is the same on every process.
    return np.random.default_rng([seed, epoch])


def _check_batch_size(batch_size: int) -> None:
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")


def _as_lengths(lengths: np.ndarray | Sequence[int]) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ValueError("lengths must be a 1-D array of integers")
    if arr.size and arr.min() < 0:
        raise ValueError("lengths must be non-negative")
    return arr.astype(np.int64, copy=False)


def grouped_batch_order(
    lengths: np.ndarray | Sequence[int],
    batch_size: int,
    *,
    seed: int,
    epoch: int,
    mega_batch_size: int | None = None,
    drop_last: bool = False,
    longest_first: bool = True,
) -> list[list[int]]:
    """Batches of indices grouped by length; a pure function of ``(lengths, seed, epoch)``.

    Shuffle all indices, cut them into mega-batches of ``mega_batch_size`` (a multiple of
    ``batch_size``), sort each mega-batch by length (descending, stable), cut into batches, then
    shuffle the order of the batches so training does not see long-to-short runs.

    Every index appears exactly once, unless ``drop_last``: then the ``len % batch_size`` surplus
    indices are removed from the shuffled permutation *before* grouping, so the dropped windows are a
    uniform random subset (dropping the tail of a sorted mega-batch would always drop short windows) and
    every batch is full. Otherwise the single short batch is placed last: accelerate's
    ``BatchSamplerShard`` only handles a short batch correctly at the very end (see the module docstring).

    ``longest_first`` moves the full batch holding the longest window to the front so that an
    out-of-memory configuration fails at step 0 rather than hours in, and the caching allocator
    reserves its largest blocks first. One fixed-position batch per epoch does not bias training.
    """
    lens = _as_lengths(lengths)
    _check_batch_size(batch_size)
    n = lens.size
    if mega_batch_size is None:
        mega_batch_size = default_mega_batch_size(n, batch_size)
    if mega_batch_size < batch_size or mega_batch_size % batch_size:
        # A mega-batch that is not a whole number of batches would leave a short batch in the middle
        # of the epoch, which both wastes a step and breaks accelerate's even_batches logic.
        raise ValueError(
            f"mega_batch_size ({mega_batch_size}) must be a positive multiple of batch_size ({batch_size})"
        )

    rng = _epoch_rng(seed, epoch)
    perm = rng.permutation(n)
    if drop_last:
        perm = perm[: n - n % batch_size]

    batches: list[np.ndarray] = []
    for start in range(0, perm.size, mega_batch_size):
        mega = perm[start : start + mega_batch_size]
        mega = mega[np.argsort(-lens[mega], kind="stable")]
        batches.extend(mega[i : i + batch_size] for i in range(0, mega.size, batch_size))
    if not batches:
        return []

    # Only the last mega-batch can produce a short batch, and it is its last (shortest) cut.
    tail = [batches.pop()] if batches[-1].size < batch_size else []
    order = [batches[i] for i in rng.permutation(len(batches))]
    if longest_first and order:
        # Among the full batches; argmax returns the first hit, so this stays deterministic.
        top = int(np.argmax([lens[b].max() for b in order]))
        order.insert(0, order.pop(top))
    order += tail
    return [b.tolist() for b in order]


def ungrouped_batch_order(
    n: int, batch_size: int, *, seed: int, epoch: int, drop_last: bool = False
) -> list[list[int]]:
    """Plain random batches (``group_by_length: false``); a pure function of ``(n, seed, epoch)``."""
    _check_batch_size(batch_size)
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    perm = _epoch_rng(seed, epoch).permutation(n)
    end = n - n % batch_size if drop_last else n
    return [perm[i : min(i + batch_size, end)].tolist() for i in range(0, end, batch_size)]


def padding_stats(
    batches: Sequence[Sequence[int]], lengths: np.ndarray | Sequence[int], pad_multiple: int = 8
) -> dict[str, float | int]:
    """Token accounting when each batch is padded to its longest window rounded up to ``pad_multiple``.

    ``padding_fraction`` is the share of computed positions that are padding:
    ``1 - real_tokens / padded_tokens``.
    """
    if pad_multiple < 1:
        raise ValueError(f"pad_multiple must be >= 1, got {pad_multiple}")
    lens = _as_lengths(lengths)
    real = 0
    padded = 0
    for batch in batches:
        if len(batch) == 0:
            continue
        b = lens[np.asarray(batch, dtype=np.int64)]
        real += int(b.sum())
        padded += len(batch) * (-(-int(b.max()) // pad_multiple) * pad_multiple)
    return {
        "padding_fraction": 1.0 - real / padded if padded else 0.0,
        "real_tokens": real,
        "padded_tokens": padded,
    }


class EpochBatchSampler(Sampler[list[int]]):
    """Batch sampler yielding the global batch order of the current epoch.

    Pass it as ``DataLoader(dataset, batch_sampler=...)`` and let ``Accelerator.prepare`` shard it; call
    ``set_epoch`` on the prepared loader (see the module docstring). Every rank must construct it with
    the same ``lengths`` and ``seed``.
    """

    def __init__(
        self,
        lengths: np.ndarray | Sequence[int],
        batch_size: int,
        *,
        group_by_length: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        mega_batch_size: int | None = None,
        longest_first: bool = True,
    ) -> None:
        _check_batch_size(batch_size)
        self.lengths = _as_lengths(lengths)
        # accelerate's BatchSamplerShard reads these two attributes: batch_size to recognise the short
        # batch and to complete it under even_batches, drop_last to decide whether to wrap around.
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.group_by_length = group_by_length
        self.seed = seed
        self.mega_batch_size = mega_batch_size
        self.longest_first = longest_first
        self.epoch = 0
        if mega_batch_size is not None and (mega_batch_size < batch_size or mega_batch_size % batch_size):
            # Validated here rather than at the first iteration, possibly inside a DataLoader worker.
            raise ValueError(
                f"mega_batch_size ({mega_batch_size}) must be a positive multiple of "
                f"batch_size ({batch_size})"
            )

    @property
    def sampler(self) -> EpochBatchSampler:
        # accelerate's DataLoaderShard.set_epoch reaches a sharded batch sampler only through
        # ``batch_sampler.batch_sampler.sampler.set_epoch`` (BatchSamplerShard -> us -> .sampler).
        # Exposing ourselves here is what makes set_epoch propagate with more than one process.
        return self

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def batches(self, epoch: int | None = None) -> list[list[int]]:
        """The global batch order of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        if self.group_by_length:
            return grouped_batch_order(
                self.lengths,
                self.batch_size,
                seed=self.seed,
                epoch=epoch,
                mega_batch_size=self.mega_batch_size,
                drop_last=self.drop_last,
                longest_first=self.longest_first,
            )
        return ungrouped_batch_order(
            self.lengths.size, self.batch_size, seed=self.seed, epoch=epoch, drop_last=self.drop_last
        )

    def __iter__(self) -> Iterator[list[int]]:
        # Materialised at iter() time (not lazily in a generator) so that the epoch in force when the
        # DataLoader creates its iterator is the one used, even if set_epoch is called mid-pass.
        return iter(self.batches())

    def __len__(self) -> int:
        n = self.lengths.size
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)


class StepBatchSampler(Sampler[list[int]]):
    """Micro-batches cut from optimizer-step batches of ``micro * world * accumulation`` features.

    A step's features are the same whatever the world size and accumulation split (1 rank x 4 ==
    2 ranks x 2 == 1 rank x 2 x accumulation 2), so runs on different world sizes see identical data per
    step. Chunk j of a step goes to rank j % world at accumulation micro-step j // world, which is how
    Accelerate's BatchSamplerShard deals global batches round-robin. Partial step batches are dropped
    (drop_last) so every rank runs whole accumulation cycles and DeepSpeed's boundary counter never
    disagrees with Accelerate's.

    Resume: the epoch's global batch order is a function of (seed, epoch, global batch) alone, so the data
    position is ``k`` global batches into the epoch (``TrainState.steps_in_epoch``), whatever the split. On
    any world size and accumulation with the same global batch, skipping ``k x accumulation`` micro-batches per
    rank (``accelerate.skip_first_batches``) continues with global batch ``k`` of the same order, each one split
    round-robin across the new ranks: every remaining sample of the epoch is seen exactly once.
    """

    def __init__(self, lengths: np.ndarray, micro: int, world: int, accumulation: int, *, seed: int,
                 group_by_length: bool) -> None:
        self.inner = EpochBatchSampler(lengths, micro * world * accumulation, group_by_length=group_by_length,
                                       seed=seed, drop_last=True)
        self.batch_size = micro
        self.drop_last = True
        self.micro = micro

    @property
    def sampler(self) -> StepBatchSampler:
        return self  # Accelerate propagates set_epoch through ``.sampler``

    def set_epoch(self, epoch: int) -> None:
        self.inner.set_epoch(epoch)

    @property
    def epoch(self) -> int:
        return self.inner.epoch

    def __iter__(self) -> Iterator[list[int]]:
        out = []
        for step in self.inner.batches():
            out.extend(step[i: i + self.micro] for i in range(0, len(step), self.micro))
        return iter(out)

    def __len__(self) -> int:
        return len(self.inner) * (self.inner.batch_size // self.micro)


def check_fills_one_step(num_features: int, batch_size: int, world_size: int, accumulation: int) -> None:
    """ConfigError unless ``num_features`` fill at least one optimizer step (whole global batches only)."""
    if num_features < batch_size * world_size * accumulation:
        from qa.errors import ConfigError

        raise ConfigError(
            f"per_device_train_batch_size: {num_features} training features cannot fill one optimizer step of "
            f"{batch_size} x {world_size} process(es) x {accumulation} accumulation; lower the batch size or "
            "the accumulation, or add data")
