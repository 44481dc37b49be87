"""Token corpora for a Hugging Face causal LM: the directory's tokenizer, or bytes as tokens.

A :class:`TokenCorpus` is a :class:`~trainables.data.bytes.ByteCorpus` whose tensors hold token
ids, so the training loop draws its windows exactly as for bytes; it also knows how many tokens
its validation text takes per byte, which turns a loss per token into bits per byte
(``val/bpb = loss / ln 2 * tokens / bytes``) comparable across tokenizers.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainables.data.bytes import ByteCorpus, _check_val_frac
from trainables.data.errors import DataError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
BYTE_VOCAB = 256


@dataclass(frozen=True, kw_only=True, eq=False)
class TokenCorpus(ByteCorpus):
    """Token ids split into training and validation (int32 ``[N]`` each).

    Attributes:
        tokens_per_byte: validation tokens per UTF-8 byte of the validation text.
        tokenizer: ``"bytes"`` or the tokenizer's class name.
        artifacts: ``(name, path)`` files that made the data (self-generated JSONL, filter
            counts), copied into the final checkpoint and logged to the trial's MLflow run.
    """

    tokens_per_byte: float = 1.0
    tokenizer: str = "bytes"
    artifacts: tuple[tuple[str, Path], ...] = ()


def has_tokenizer(path: str | os.PathLike[str]) -> bool:
    """Whether the model directory holds tokenizer files."""
    directory = Path(path)
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def load_tokenizer(path: str | os.PathLike[str], mode: str = "auto") -> Any | None:
    """The directory's tokenizer (``AutoTokenizer``, local files only), or None for bytes.

    ``mode`` ``"bytes"`` always returns None; ``"auto"`` returns None when the directory has no
    tokenizer files.
    """
    if mode == "bytes" or not has_tokenizer(path):
        return None
    import transformers

    try:
        return transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise DataError(
            "model.hf_path",
            f"the tokenizer in {str(path)!r} cannot be loaded ({err})",
            "save a working tokenizer there (save_pretrained) or set data.tokenizer: bytes",
        ) from None


def encode(text: str, tokenizer: Any | None) -> list[int]:
    """Token ids of ``text``: the tokenizer's (no special tokens added) or its UTF-8 bytes."""
    if tokenizer is None:
        return list(text.encode("utf-8"))
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def decode(ids: Sequence[int], tokenizer: Any | None) -> str:
    """The text of token ids (bytes decoded as UTF-8, invalid sequences replaced)."""
    if tokenizer is None:
        return bytes(i for i in ids if 0 <= i < BYTE_VOCAB).decode("utf-8", errors="replace")
    return str(tokenizer.decode(list(ids), skip_special_tokens=True))


def check_vocab(tokenizer: Any | None, vocab_size: int) -> None:
    """Raise a DataError naming ``model.hf_path`` when the tokens cannot index the embedding."""
    needed = BYTE_VOCAB if tokenizer is None else len(tokenizer)
    if vocab_size and needed > vocab_size:
        what = "bytes need 256 token ids" if tokenizer is None else f"its tokenizer has {needed}"
        raise DataError(
            "model.hf_path",
            f"the model's vocab_size is {vocab_size} but {what}",
            "save the model's own tokenizer in the directory (or a model with vocab_size >= 256 "
            "for bytes)",
        )


def token_corpus(
    train_text: str,
    val_text: str,
    tokenizer: Any | None,
    *,
    source: str,
    artifacts: tuple[tuple[str, Path], ...] = (),
) -> TokenCorpus:
    """Tokenize the two splits; ``tokens_per_byte`` is measured on the validation text.

    Raises:
        DataError: a split has fewer than two tokens (naming ``data.source``).
    """
    train_ids, val_ids = encode(train_text, tokenizer), encode(val_text, tokenizer)
    if len(train_ids) < 2 or len(val_ids) < 2:
        raise DataError(
            "data.source",
            f"'{source}' gives {len(train_ids)} training and {len(val_ids)} validation tokens",
            "use more text (more self-generated samples: data.selfgen_num, data.max_new_tokens)",
        )
    val_bytes = max(len(val_text.encode("utf-8")), 1)
    return TokenCorpus(
        train=torch.tensor(train_ids, dtype=torch.int32),  # [N_train]
        val=torch.tensor(val_ids, dtype=torch.int32),  # [N_val]
        source=source,
        tokens_per_byte=len(val_ids) / val_bytes,
        tokenizer="bytes" if tokenizer is None else type(tokenizer).__name__,
        artifacts=artifacts,
    )


def split_documents(documents: Sequence[str], val_frac: float) -> tuple[str, str]:
    """Training and validation text from whole documents: the last ``val_frac`` (at least one).

    Documents are joined by a blank line. A single document is split by characters instead.
    """
    _check_val_frac(val_frac)
    if len(documents) == 1:
        text = documents[0]
        cut = int(len(text) * (1.0 - val_frac))
        return text[:cut], text[cut:]
    if len(documents) < 2:
        raise DataError("data.source", "holds no text", "use a non-empty source")
    num_val = max(1, round(len(documents) * val_frac))
    return "\n\n".join(documents[:-num_val]), "\n\n".join(documents[-num_val:])
