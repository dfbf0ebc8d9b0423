"""Start-up (qa.trainer.setup): a storage location the backend refuses is a user's error, not a traceback."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from qa.checkpoint.settings import StorageSettings
from qa.errors import ConfigError
from qa.trainer.setup import open_storage


@pytest.mark.parametrize(("uri", "sse", "named"), [
    ("s3://ab/runs", None, "invalid S3 bucket name 'ab'"),
    ("file:///mnt/nfs/ckpts", "AES256", "sse only apply to s3:// locations"),
])
def test_a_location_the_backend_refuses_is_a_config_error_before_any_rank_is_asked(
        uri: str, sse: str | None, named: str) -> None:
    settings = StorageSettings(s3_uri=uri, s3_sse=sse, s3_upload_timeout=1.0)
    # The settings did not pass the config checks (a caller that builds them itself): the backend's ValueError
    # still leaves as one line under the key's name. An object without attributes as the accelerator proves
    # that no rank was involved yet.
    no_accelerator: Any = object()
    with pytest.raises(ConfigError) as err:
        open_storage(settings, no_accelerator)
    message = str(err.value)
    assert message.startswith("s3_uri: ") and named in message and "\n" not in message
    assert err.value.__cause__ is None and err.value.__suppress_context__


def _start_and_stop(tmp_path: Path, output_dir: Path) -> str:
    """One attempt's start-up, as train.py runs it up to the first step; returns its tracker run id."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    from qa.checkpoint.output_dir import release
    from qa.config import make_config
    from qa.trainer.setup import start

    cfg = make_config(output_dir=str(output_dir), s3_uri=(tmp_path / "store").as_uri(), report_to="none",
                      resume_from_checkpoint="auto", run_name="lost-disk", model_name_or_path="tiny")
    accelerator = Accelerator(cpu=True)
    try:
        session = start(cfg, accelerator, open_storage(cfg.storage, accelerator))
        assert session is not None and session.resume_path is None
        session.preemption.uninstall()
        return session.tracker.run_id
    finally:
        release(str(output_dir))
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_a_node_lost_with_its_disk_before_any_checkpoint_keeps_the_tracker_run(tmp_path: Path) -> None:
    """Found by the fault campaign (seeds 126614242, 817077201, 699642630): a restart on an empty disk with nothing
    published had no run id to continue (it was on the lost disk) and opened a second W&B run."""
    out = tmp_path / "out"
    (tmp_path / "store").mkdir()
    first = _start_and_stop(tmp_path, out)
    shutil.rmtree(out)  # the node is replaced: a new machine, an empty disk
    assert _start_and_stop(tmp_path, out) == first
    assert _start_and_stop(tmp_path, tmp_path / "elsewhere") == first  # any output_dir of the same run and store


def test_a_full_disk_mid_export_leaves_no_final_that_looks_exported(tmp_path: Path) -> None:
    """Found by the fault campaign (seed 30437866): a full disk while save_pretrained wrote final/ left a final/
    without weights, and every restart took it for a finished run ("already finished", no model). Now final/ exists
    only whole, and the failure is one DiskError line."""
    from types import SimpleNamespace

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState
    from small_fs import fill, small_filesystem
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    from fixtures import make_tiny_model
    from qa.checkpoint.disk import DiskError
    from qa.trainer.setup import already_finished, export

    tiny = make_tiny_model(tmp_path / "tiny")
    uploaded: list[Path] = []
    session: Any = SimpleNamespace(accelerator=Accelerator(cpu=True),
                                   checkpointer=SimpleNamespace(upload_final=uploaded.append))
    model: Any = SimpleNamespace(module=AutoModelForQuestionAnswering.from_pretrained(tiny))
    data: Any = SimpleNamespace(tokenizer=AutoTokenizer.from_pretrained(tiny))
    out = tmp_path / "out"
    out.mkdir()
    try:
        with small_filesystem(out, 8):
            filler = fill(out, 64 * 1024)  # room for the config, not for the weights
            with pytest.raises(DiskError, match=r"^export: writing .*/final failed: no space left on device"):
                export(out, session, model, data)
            assert sorted(p.name for p in out.iterdir()) == [filler.name] and not uploaded
            assert not already_finished(12, 12, out)  # a restart exports again
            filler.unlink()
            final = export(out, session, model, data)
            assert (final / "model.safetensors").is_file() and (final / "tokenizer_config.json").is_file()
            assert uploaded == [final] and sorted(p.name for p in out.iterdir()) == ["final"]
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()
