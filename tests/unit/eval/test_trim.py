"""qa.eval.trim: the vectorised visibility test and trim agree with str.strip on every span."""

from __future__ import annotations

import numpy as np

from qa.eval.trim import SpanTrimmer


def test_trim_and_visible_match_str_strip_on_every_span():
    contexts = [" a\tbc  d\n", "\u3000x\u00a0y ", "   ", "z", "", " a\tbc  d\n"]   # duplicates share a copy
    trimmer = SpanTrimmer(contexts)
    for ex, ctx in enumerate(contexts):
        pairs = [(a, b) for a in range(len(ctx) + 1) for b in range(a, len(ctx) + 1)]
        if not pairs:
            continue
        starts, ends = np.array(pairs).T
        examples = np.full(len(pairs), ex)
        visible = trimmer.visible(examples, starts, ends)
        new_start, new_end = trimmer.trim(examples, starts, ends)
        for (a, b), vis, s, e in zip(pairs, visible, new_start, new_end, strict=True):
            assert bool(vis) == bool(ctx[a:b].strip()), (ctx, a, b)
            if vis:
                assert ctx[s:e] == ctx[a:b].strip() and a <= s < e <= b, (ctx, a, b, s, e)
            else:
                assert s == e


def test_offsets_outside_the_context_stay_inside_it():
    trimmer = SpanTrimmer(["ab ", " cd"])
    s, e = trimmer.trim(np.array([0, 1]), np.array([-3, 0]), np.array([10, 99]))
    assert (s.tolist(), e.tolist()) == ([0, 1], [2, 3])
