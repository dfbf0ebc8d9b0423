"""Is this model + tokenizer something a QA run can train? Answered from files and configs, before any write.

``from_pretrained`` is forgiving where a run must not be: a folder without tokenizer files becomes a 5-token
tokenizer that maps every word to [UNK] (and trains "successfully"), weights that do not fit the architecture
are re-initialised with a warning, and a missing path or an offline Hub id ends in a long traceback after the
output directory and the tracker exist. Each check here turns one of those into a one-line ConfigError; none
loads weights (safetensors headers and a model on the meta device are enough).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from qa.errors import ConfigError

# Files that hold a vocabulary: without one, AutoTokenizer still builds a tokenizer, with special tokens only.
VOCAB_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
               "tokenizer.model")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")
_OFFLINE_HINT = ("download it where there is a network (it lands in the HF cache) or point model_name_or_path at a "
                 "local model directory")


def _looks_like_path(name: str) -> bool:
    # Hub ids are "name" or "owner/name"; anything else (./x, /abs, a/b/c, ~) can only be a directory.
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def load_model_config(name: str, key: str = "model_name_or_path") -> Any:
    """The model's config (config.json only), or a ConfigError saying why it cannot be had."""
    from transformers import AutoConfig

    local = Path(name).expanduser()
    if not local.exists() and _looks_like_path(name):
        raise ConfigError(f"{key}: no such directory: {name} (relative paths are read from {Path.cwd()})")
    if local.is_dir() and not (local / "config.json").is_file():
        hint = (" (a training checkpoint: continue it with resume_from_checkpoint, or train from its run's final/)"
                if (local / "COMPLETE").exists() or any(local.glob("*.pt")) else "")
        raise ConfigError(f"{key}: {name} has no config.json, so it is not a saved model{hint}")
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError) as e:
        if local.exists():
            raise ConfigError(f"{key}: {name}/config.json cannot be read: {_first_line(e)}") from None
        raise ConfigError(f"{key}: {name!r} is not a local directory and could not be fetched from the "
                          f"Hugging Face Hub ({_first_line(e)}); {_OFFLINE_HINT}") from None


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_qa_architecture(config: Any, name: str) -> None:
    from transformers.models.auto.modeling_auto import MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES

    if config.model_type not in MODEL_FOR_QUESTION_ANSWERING_MAPPING_NAMES:
        raise ConfigError(f"model_name_or_path: {name} is a {config.model_type!r} model, which has no "
                          "question-answering head in transformers")


def weight_shapes(model_dir: Path) -> dict[str, tuple[int, ...]] | None:
    """Tensor name -> shape from the safetensors headers (no tensor is read); None for .bin-only folders."""
    from safetensors import safe_open

    index = model_dir / "model.safetensors.index.json"
    files = (sorted({model_dir / f for f in json.loads(index.read_text())["weight_map"].values()})
             if index.is_file() else [model_dir / "model.safetensors"])
    if not all(f.is_file() for f in files):
        return None
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for k in st.keys():  # noqa: SIM118 - safe_open is not a mapping
                shapes[k] = tuple(st.get_slice(k).get_shape())
    return shapes


def expected_shapes(config: Any) -> tuple[dict[str, tuple[int, ...]], str]:
    """The QA model's parameter shapes for ``config`` (built on the meta device: no memory, no weights)."""
    import torch
    from transformers import AutoModelForQuestionAnswering

    with torch.device("meta"):
        model = AutoModelForQuestionAnswering.from_config(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}, model.base_model_prefix


def check_weights_fit(found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], prefix: str,
                      name: str) -> None:
    """The encoder's weights must be in the file with their shapes; the QA head may be new (fine-tuning a base
    model), extra tensors (a pooler, an LM head) are ignored. Names match with or without the base prefix."""
    def strip(k: str) -> str:
        return k[len(prefix) + 1:] if k.startswith(prefix + ".") else k

    have = {strip(k): v for k, v in found.items()}
    encoder = {strip(k): v for k, v in expected.items() if k.startswith(prefix + ".")}
    missing = [k for k in encoder if k not in have]
    if len(missing) > len(encoder) // 2:
        raise ConfigError(f"model_name_or_path: the weights in {name} do not fit its config: {len(missing)} of "
                          f"{len(encoder)} encoder tensors are missing (e.g. {missing[0]!r}); not a "
                          "question-answering-compatible checkpoint of this architecture")
    wrong = [(k, have[k], v) for k, v in encoder.items() if k in have and have[k] != v]
    if wrong:
        k, got, want = wrong[0]
        raise ConfigError(f"model_name_or_path: the weights in {name} do not fit its config: {k!r} is "
                          f"{list(got)}, the config makes it {list(want)} ({len(wrong)} tensors differ)")


def check_model_files(name: str, config: Any) -> None:
    """A local model directory must hold weights that fit its config; Hub ids are left to from_pretrained."""
    local = Path(name).expanduser()
    if not local.is_dir():
        return
    if not any((local / f).is_file() for f in WEIGHT_FILES):
        raise ConfigError(f"model_name_or_path: {name} has a config.json but no weights "
                          f"({' or '.join(WEIGHT_FILES[::2])})")
    try:
        found = weight_shapes(local)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged header
        raise ConfigError(f"model_name_or_path: the weights in {name} cannot be read: {_first_line(e)}") from None
    if found is not None:
        expected, prefix = expected_shapes(config)
        check_weights_fit(found, expected, prefix, name)


def check_tokenizer_files(source: str, key: str) -> None:
    """A local tokenizer directory must hold a vocabulary file (else every word becomes [UNK])."""
    local = Path(source).expanduser()
    if not local.exists() and _looks_like_path(source):
        raise ConfigError(f"{key}: no such directory: {source} (relative paths are read from {Path.cwd()})")
    if local.is_dir() and not any((local / f).is_file() for f in VOCAB_FILES):
        hint = ("set tokenizer_name to the tokenizer's directory or Hub id" if key == "model_name_or_path"
                else "point tokenizer_name at a directory that has one")
        raise ConfigError(f"{key}: {source} has no tokenizer files ({', '.join(VOCAB_FILES[:3])}, ...); {hint}")


def check_tokenizer_fits(tokenizer: Any, config: Any, source: str) -> None:
    """The tokenizer's ids index the model's embedding matrix, and it has the tokens QA windows are built with."""
    vocab, rows = len(tokenizer), getattr(config, "vocab_size", None)
    if rows is not None and vocab > rows:
        raise ConfigError(f"tokenizer_name: {source} has {vocab} tokens but the model's embedding has {rows} rows; "
                          "ids past the end would fail or read other tokens' rows: use the model's own tokenizer")
    if rows is not None and vocab < rows // 2:
        raise ConfigError(f"tokenizer_name: {source} has only {vocab} tokens for a model with {rows}; not this "
                          "model's tokenizer (every word would become an unknown token): set tokenizer_name to "
                          "the model's tokenizer")
    missing = [t for t in ("cls_token", "sep_token", "pad_token") if getattr(tokenizer, f"{t}_id", None) is None]
    if missing:
        raise ConfigError(f"tokenizer_name: {source} has no {', '.join(missing)}; QA windows need [CLS] (the "
                          "no-answer position), a separator between question and context, and padding")
    if tokenizer.cls_token_id not in tokenizer("q", "c")["input_ids"]:
        raise ConfigError(f"tokenizer_name: {source} does not add {tokenizer.cls_token} to a question/context "
                          "pair; QA windows label unanswerable spans at that token")


def check_model(settings: Any) -> None:
    """Everything about model_name_or_path / tokenizer_name that can be known without loading weights.

    ``settings`` is a ``qa.model.settings.ModelSettings``.
    """
    from qa.model.build import load_tokenizer

    config = load_model_config(settings.model_name_or_path)
    check_qa_architecture(config, settings.model_name_or_path)
    check_model_files(settings.model_name_or_path, config)
    key = "tokenizer_name" if settings.tokenizer_name else "model_name_or_path"
    check_tokenizer_files(settings.tokenizer_source, key)
    try:
        tokenizer = load_tokenizer(settings)
    except (OSError, ValueError) as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{key}: the tokenizer of {settings.tokenizer_source} cannot be loaded: "
                          f"{_first_line(e)}") from None
    check_tokenizer_fits(tokenizer, config, settings.tokenizer_source)
