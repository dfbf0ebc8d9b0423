"""The final model: ``save_pretrained`` weights plus tokenizer, loadable with ``AutoModelForQuestionAnswering``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from accelerate import Accelerator
    from transformers import PreTrainedTokenizerBase


def export_model(accelerator: Accelerator, module: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 dest: str | Path) -> None:
    """Collective: every rank calls it. save_pretrained from a full state dict (gathered under ZeRO-3) + tokenizer."""
    acc = accelerator
    state_dict = acc.get_state_dict(module)  # collective under ZeRO-3
    if state_dict is not None:
        # torch.compile wraps the module; its keys carry "_orig_mod." which save_pretrained must not see.
        state_dict = {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    unwrapped = acc.unwrap_model(module, keep_torch_compile=False)
    unwrapped.save_pretrained(dest, is_main_process=acc.is_main_process, save_function=acc.save,
                              state_dict=state_dict, safe_serialization=True)
    if acc.is_main_process:
        tokenizer.save_pretrained(dest)
    acc.wait_for_everyone()
