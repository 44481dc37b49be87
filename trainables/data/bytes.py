"""Byte-level text corpora: one uint8 tensor per split, random training windows, fixed eval windows.

A source is named by one string (``data.source``):

- ``"pydocs"``: the built-in corpus, the Python documentation topics that ship with every CPython
  (``pydoc_data.topics``, about 465 KB of English prose), so a run never needs a download;
- a text file, a folder of files (read recursively, hidden files skipped) or a glob pattern;
  files are read in sorted path order and concatenated with a newline between them;
- parquet files (any of the above whose name ends in ``.parquet``), of which the text column
  (``data.text_column``) is read with pyarrow, one row per line.

The split is by position: the last ``val_frac`` of the bytes is the validation split, so no window
ever crosses from training into validation text.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from trainables.data.errors import DataError

PYDOCS_SOURCE = "pydocs"
"""The name of the built-in corpus."""

Split = Literal["train", "val"]

_SOURCE_HELP = (
    "give 'pydocs', a text file, a folder of text files, a glob such as 'texts/*.txt', "
    "or parquet files such as 'shards/*.parquet'"
)
_GLOB_CHARACTERS = frozenset("*?[")


@lru_cache(maxsize=1)
def pydocs_bytes() -> bytes:
    """Return the built-in corpus: the ``pydoc_data.topics`` texts in sorted-key order, UTF-8.

    The topics are joined with a blank line so one topic's last sentence does not run into the next
    topic's heading. The result is cached: it is the same object for the life of the process.
    """
    from pydoc_data.topics import topics  # imported lazily: only the pydocs source needs it

    return "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")


@dataclass(frozen=True, kw_only=True, eq=False)
class ByteCorpus:
    """A byte corpus split by position into training and validation bytes.

    Attributes:
        train: the training bytes, uint8 ``[N_train]``.
        val: the validation bytes, uint8 ``[N_val]``; they follow the training bytes in the source.
        source: the ``data.source`` string the corpus was loaded from, used in error messages.
    """

    train: Tensor
    val: Tensor
    source: str

    @classmethod
    def from_bytes(
        cls, raw: bytes, *, val_frac: float = 0.1, source: str = "<bytes>"
    ) -> ByteCorpus:
        """Split ``raw`` into training bytes and the last ``val_frac`` of it as validation bytes.

        Raises:
            DataError: ``val_frac`` is not in (0, 1), or either split would hold fewer than two
                bytes (one input and its next-byte target).
        """
        _check_val_frac(val_frac)
        # [N]; the bytearray is a writable copy (frombuffer shares memory and refuses an empty one)
        data = (
            torch.frombuffer(bytearray(raw), dtype=torch.uint8)
            if raw
            else torch.empty(0, dtype=torch.uint8)
        )
        num_val = int(len(data) * val_frac)
        num_train = len(data) - num_val
        if num_train < 2 or num_val < 2:
            raise DataError(
                "data.val_frac",
                f"{val_frac} splits the {len(data)} bytes of '{source}' into {num_train} training "
                f"and {num_val} validation bytes, and each split needs at least 2",
                "use a larger corpus (data.source, data.max_bytes) or a val_frac nearer 0.5",
            )
        return cls(train=data[:num_train], val=data[num_train:], source=source)

    def split_data(self, split: Split) -> Tensor:
        """Return the uint8 tensor of one split (``"train"`` or ``"val"``)."""
        if split == "train":
            return self.train
        if split == "val":
            return self.val
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")

    def num_bytes(self, split: Split) -> int:
        """Return the number of bytes in one split."""
        return len(self.split_data(split))

    def get_batch(
        self, split: Split, batch_size: int, seq_len: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Draw ``batch_size`` random windows of ``seq_len`` bytes from one split.

        Window starts are uniform over every position that leaves room for the next-byte target, and
        depend only on ``generator``'s state, so a seeded generator gives the same batches.

        Returns:
            ``(x, y)``, both int64 ``[batch_size, seq_len]``, with ``y[:, t] == x[:, t + 1]`` and
            ``y[:, -1]`` the byte after the window.

        Raises:
            DataError: ``seq_len`` is below 1 or longer than the split allows.
        """
        _check_batch_size(batch_size)
        data = self.split_data(split)
        self._check_seq_len(split, seq_len)
        num_starts = len(data) - seq_len  # a start s needs bytes s .. s + seq_len inclusive
        starts = torch.randint(0, num_starts, (batch_size,), generator=generator)  # [B]
        offsets = torch.arange(seq_len + 1)  # [T + 1]
        windows = data[starts[:, None] + offsets[None, :]].long()  # [B, T + 1]
        return windows[:, :-1], windows[:, 1:]

    def iter_eval_batches(
        self,
        split: Split = "val",
        *,
        batch_size: int,
        seq_len: int,
        max_batches: int | None = None,
    ) -> Iterator[tuple[Tensor, Tensor]]:
        """Yield a fixed set of windows of one split: the same batches on every call.

        Windows are consecutive and non-overlapping, so together they predict every byte of the
        split (but the first) exactly once; averaging the per-byte loss over them is the split's
        loss. With ``max_batches`` only ``max_batches * batch_size`` windows are used, spread
        evenly over the split rather than taken from its start. The last batch may be smaller than
        ``batch_size``.

        Yields:
            ``(x, y)``, both int64 ``[b, seq_len]`` with ``b <= batch_size``, ``y`` shifted by one.

        Raises:
            DataError: ``seq_len`` is below 1 or longer than the split allows.
        """
        _check_batch_size(batch_size)
        if max_batches is not None and max_batches < 1:
            raise ValueError(f"max_batches must be at least 1 or None, got {max_batches}")
        data = self.split_data(split)
        self._check_seq_len(split, seq_len)
        num_windows = (len(data) - 1) // seq_len
        window_ids = torch.arange(num_windows)  # [W]
        if max_batches is not None and max_batches * batch_size < num_windows:
            wanted = max_batches * batch_size
            window_ids = torch.linspace(0, num_windows - 1, wanted).round().long()  # [W'] sorted
        offsets = torch.arange(seq_len + 1)  # [T + 1]
        for first in range(0, len(window_ids), batch_size):
            starts = window_ids[first : first + batch_size] * seq_len  # [b]
            windows = data[starts[:, None] + offsets[None, :]].long()  # [b, T + 1]
            yield windows[:, :-1], windows[:, 1:]

    def _check_seq_len(self, split: Split, seq_len: int) -> None:
        """Raise a ``DataError`` naming ``model.seq_len`` when no window of that length fits."""
        available = self.num_bytes(split)
        if seq_len < 1:
            raise DataError("model.seq_len", f"got {seq_len}", "use a positive sequence length")
        if seq_len + 1 > available:
            raise DataError(
                "model.seq_len",
                f"{seq_len} needs {seq_len + 1} bytes per window but the {split} split of "
                f"'{self.source}' has only {available}",
                f"use model.seq_len <= {available - 1}, a larger corpus or another data.val_frac",
            )


def load_byte_corpus(
    source: str,
    *,
    text_column: str = "text",
    val_frac: float = 0.1,
    max_bytes: int | None = None,
) -> ByteCorpus:
    """Load a byte corpus from ``source`` and split it (see the module docstring for sources).

    Args:
        source: ``"pydocs"``, a text file, a folder, a glob pattern, or parquet file(s).
        text_column: the column read from parquet files.
        val_frac: the fraction of bytes, taken from the end, used for validation.
        max_bytes: keep only the first ``max_bytes`` bytes of the source (before the split), to make
            small, fast runs.

    Raises:
        DataError: the source is missing, empty or unreadable, a parquet file lacks the column, or
            ``val_frac`` / ``max_bytes`` is out of range. The message names the setting.
    """
    _check_val_frac(val_frac)
    if max_bytes is not None and max_bytes < 1:
        raise DataError(
            "data.max_bytes", f"got {max_bytes}", "use a positive byte count, or null for all"
        )
    raw = read_source_bytes(source, text_column=text_column)
    if max_bytes is not None:
        raw = raw[:max_bytes]
    if not raw:
        raise DataError(
            "data.source", f"'{source}' holds no text (0 bytes)", "point it at non-empty text"
        )
    return ByteCorpus.from_bytes(raw, val_frac=val_frac, source=source)


def read_source_bytes(source: str, *, text_column: str = "text") -> bytes:
    """Return the raw bytes of a source, unsplit (files joined by a newline, empty ones skipped).

    Raises:
        DataError: as for :func:`load_byte_corpus`, except that an empty result is returned as is.
    """
    if source == PYDOCS_SOURCE:
        return pydocs_bytes()
    chunks = [_read_file_bytes(path, text_column) for path in resolve_source_paths(source)]
    return b"\n".join(chunk for chunk in chunks if chunk)


def resolve_source_paths(source: str) -> list[Path]:
    """Return the files a path source names, in sorted order.

    A glob pattern (``*``, ``?`` or ``[``) is expanded with ``**`` allowed; a folder contributes
    every file under it except hidden ones (a name starting with ``.``, such as ``.DS_Store``).

    Raises:
        DataError: naming ``data.source`` when the path does not exist, the glob matches no file,
            or the folder holds no files.
    """
    if not source:
        raise DataError("data.source", "is empty", _SOURCE_HELP)
    expanded = os.path.expanduser(source)
    if any(character in _GLOB_CHARACTERS for character in expanded):
        matches = sorted(Path(match) for match in glob.glob(expanded, recursive=True))
        files = [match for match in matches if match.is_file()]
        if not files:
            raise DataError("data.source", f"the pattern '{source}' matches no files", _SOURCE_HELP)
        return files
    path = Path(expanded)
    if path.is_dir():
        files = sorted(
            candidate
            for candidate in path.rglob("*")
            if candidate.is_file()
            and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
        )
        if not files:
            raise DataError("data.source", f"the folder '{source}' contains no files", _SOURCE_HELP)
        return files
    if path.is_file():
        return [path]
    raise DataError(
        "data.source",
        f"the path '{path}' does not exist (and '{source}' is not the built-in 'pydocs')",
        _SOURCE_HELP,
    )


def _read_file_bytes(path: Path, text_column: str) -> bytes:
    """Read one file: parquet files by their text column, anything else as raw bytes."""
    if path.suffix.lower() == ".parquet":
        return _read_parquet_text(path, text_column)
    try:
        return path.read_bytes()
    except OSError as error:
        raise DataError(
            "data.source", f"cannot read '{path}': {error}", "check the file's permissions"
        ) from error


def _read_parquet_text(path: Path, text_column: str) -> bytes:
    """Read the text column of one parquet file as UTF-8 bytes, one row per line, nulls skipped."""
    import pyarrow as pa  # imported lazily: only parquet sources need pyarrow
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (pa.ArrowException, OSError) as error:
        raise DataError(
            "data.source",
            f"cannot read parquet file '{path}': {error}",
            "check that it is a valid parquet file",
        ) from error
    if text_column not in schema.names:
        raise DataError(
            "data.text_column",
            f"parquet file '{path}' has no column '{text_column}' "
            f"(its columns: {', '.join(schema.names) or 'none'})",
            "set data.text_column to the column that holds the text",
        )
    column_type = schema.field(text_column).type
    text_like = (
        pa.types.is_string(column_type)
        or pa.types.is_large_string(column_type)
        or pa.types.is_binary(column_type)
        or pa.types.is_large_binary(column_type)
    )
    if not text_like:
        raise DataError(
            "data.text_column",
            f"column '{text_column}' of '{path}' has type {column_type}, not text",
            "set data.text_column to a string column",
        )
    rows = pq.read_table(path, columns=[text_column]).column(text_column).to_pylist()
    encoded = (row.encode("utf-8") if isinstance(row, str) else row for row in rows if row)
    return b"\n".join(encoded)


def _check_val_frac(val_frac: float) -> None:
    """Raise a ``DataError`` naming ``data.val_frac`` unless it is strictly between 0 and 1."""
    if not (isinstance(val_frac, (int, float)) and math.isfinite(val_frac) and 0 < val_frac < 1):
        raise DataError("data.val_frac", f"got {val_frac!r}", "use a fraction in (0, 1), e.g. 0.1")


def _check_batch_size(batch_size: int) -> None:
    """Reject a batch size below one (a caller's mistake, so a plain ``ValueError``)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
