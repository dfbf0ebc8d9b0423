"""The QA loss, masked to real tokens so that padding changes nothing but speed."""

from __future__ import annotations

import torch


def padding_invariant_qa_loss(
    start_logits: torch.Tensor,
    end_logits: torch.Tensor,
    attention_mask: torch.Tensor,
    start_positions: torch.Tensor,
    end_positions: torch.Tensor,
) -> torch.Tensor:
    """Span cross-entropy over real tokens only, so the loss does not depend on how far a batch is padded.

    The built-in loss of HF ``*ForQuestionAnswering`` heads takes the softmax over *all* positions,
    pad positions included (their logits are not masked), so the same window gives a different loss
    padded to 384 than padded to its batch max - the difference is large for an untrained head and fades
    as the model learns to push pad logits down. Masking pad logits removes it. Positions outside the
    sequence are ignored, as in the HF heads.
    """
    seq_len = start_logits.size(1)
    pad = attention_mask[:, :seq_len] == 0

    def _ce(logits: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # float32 so that finfo.min cannot overflow to -inf and give NaN for all-masked rows.
        logits = logits.float().masked_fill(pad, torch.finfo(torch.float32).min)
        positions = positions.clamp(0, seq_len)
        return torch.nn.functional.cross_entropy(logits, positions, ignore_index=seq_len)

    return (_ce(start_logits, start_positions) + _ce(end_logits, end_positions)) / 2
