"""The final model: ``save_pretrained`` weights plus tokenizer, loadable with ``AutoModelForQuestionAnswering``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qa.trainer.setup import Run



def export_model(run: Run, dest: Any) -> None:
    """save_pretrained from a full state dict (gathered across ranks under ZeRO-3) plus the tokenizer."""
    acc = run.accelerator
    state_dict = acc.get_state_dict(run.model)  # collective under ZeRO-3
    if state_dict is not None:
        # torch.compile wraps the module; its keys carry "_orig_mod." which save_pretrained must not see.
        state_dict = {k.replace("_orig_mod.", ""): v for k, v in state_dict.items()}
    unwrapped = acc.unwrap_model(run.model, keep_torch_compile=False)
    unwrapped.save_pretrained(dest, is_main_process=acc.is_main_process, save_function=acc.save,
                              state_dict=state_dict, safe_serialization=True)
    if acc.is_main_process:
        run.tokenizer.save_pretrained(dest)
    acc.wait_for_everyone()
