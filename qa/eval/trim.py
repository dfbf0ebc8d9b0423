"""Answer spans without surrounding whitespace, whatever the tokenizer's offsets include.

WordPiece offsets cover a word exactly, but byte-level BPE without offset trimming (GPT-2 style) and
SentencePiece/Metaspace tokenizers (ALBERT, DeBERTa-v3, XLM-R) give a word-initial token an offset that
starts at the space before it ("▁Paris" -> " Paris"), and some tokens are nothing but whitespace ("▁",
"Ċ"). :class:`SpanTrimmer` answers, for many (example, char start, char end) triples at once, whether a
span holds any visible character and where it starts and ends once trimmed, so that the decoder never
offers a whitespace-only span and every answer satisfies ``context[start:end] == answer == answer.strip()``.

Vectorised (one concatenated code-point array, two running min/max indexes) because the visibility test
runs on every context position of every window; "whitespace" is exactly what ``str.strip`` removes.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

# str.isspace() as a lookup table: every whitespace code point lies below U+3001 (the last is U+3000).
_TABLE = 0x3001
_IS_SPACE = np.array([chr(c).isspace() for c in range(_TABLE)] + [False], dtype=bool)


class SpanTrimmer:
    """Visible-character index over the contexts of one decode call (identical contexts share one copy)."""

    def __init__(self, contexts: Sequence[str]) -> None:
        index: dict[str, int] = {}
        which = np.fromiter((index.setdefault(c, len(index)) for c in contexts), dtype=np.int64,
                            count=len(contexts))
        unique = list(index)
        codes = np.frombuffer("".join(unique).encode("utf-32-le"), dtype=np.uint32)
        n = codes.shape[0]
        # int32 positions halve the memory traffic of the per-position lookups (the hot part).
        dtype = np.int32 if n < 2**31 - 1 else np.int64
        lengths = np.fromiter((len(c) for c in unique), dtype=dtype, count=len(unique))
        starts = np.r_[0, np.cumsum(lengths)[:-1]].astype(dtype) if len(unique) else lengths
        self._base = starts[which]
        self._length = lengths[which]
        visible = ~_IS_SPACE[np.minimum(codes, _TABLE)]
        pos = np.arange(n, dtype=dtype)
        end = np.full(1, n, dtype=dtype)
        # next_visible[i]: the first visible char at or after i (n if none); end_visible[i]: one past the
        # last visible char before i (0 if none). Both have n + 1 entries so that i may equal n.
        self._next_visible = np.concatenate([np.minimum.accumulate(np.where(visible, pos, end)[::-1])[::-1], end])
        self._end_visible = np.concatenate([np.zeros(1, dtype=dtype),
                                            np.maximum.accumulate(np.where(visible, pos + 1, 0).astype(dtype))])

    def visible(self, example: np.ndarray, start: np.ndarray, end: np.ndarray) -> np.ndarray:
        """Whether ``context[start:end]`` holds a non-whitespace character (arrays broadcast).

        Offsets outside the example's context (the -1 of non-context positions) give meaningless
        answers, never an error: callers mask those positions anyway.
        """
        base = self._base[np.asarray(example)]
        return self._next_visible.take(base + start, mode="clip") < base + end

    def trim(self, example: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``[start, end)`` shrunk to its first and last visible character; whitespace-only spans become empty."""
        example = np.asarray(example)
        base, length = self._base[example].astype(np.int64), self._length[example]
        # Clipped to the example's own context, so a span never reaches into its neighbour's text.
        a = base + np.clip(start, 0, length)
        b = base + np.clip(end, 0, length)
        new_start = np.minimum(self._next_visible[a], b)
        new_end = np.maximum(self._end_visible[b], new_start)
        return new_start - base, new_end - base
