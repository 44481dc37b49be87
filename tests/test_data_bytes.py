"""Byte corpora: the built-in pydocs text, file/folder/glob/parquet sources, splits and windows."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from trainables.data import (
    PYDOCS_SOURCE,
    ByteCorpus,
    DataError,
    load_byte_corpus,
    pydocs_bytes,
    resolve_source_paths,
)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _write_parquet(path: Path, columns: dict[str, list]) -> None:
    pq.write_table(pa.table(columns), path)


# --- the built-in corpus ---


def test_pydocs_is_the_sorted_topics_text_split_by_position() -> None:
    from pydoc_data.topics import topics

    expected = "\n\n".join(topics[key] for key in sorted(topics)).encode("utf-8")
    corpus = load_byte_corpus(PYDOCS_SOURCE, val_frac=0.1)

    assert pydocs_bytes() == expected
    assert len(expected) > 400_000
    assert corpus.num_bytes("val") == int(len(expected) * 0.1)
    assert corpus.num_bytes("train") + corpus.num_bytes("val") == len(expected)
    assert corpus.train.dtype == torch.uint8
    assert bytes(corpus.train.tolist()[:200]) == expected[:200]
    assert bytes(corpus.val.tolist()) == expected[-corpus.num_bytes("val") :]  # the tail


def test_max_bytes_keeps_the_prefix_before_splitting() -> None:
    corpus = load_byte_corpus(PYDOCS_SOURCE, val_frac=0.25, max_bytes=1000)
    assert (corpus.num_bytes("train"), corpus.num_bytes("val")) == (750, 250)
    joined = bytes(torch.cat([corpus.train, corpus.val]).tolist())
    assert joined == pydocs_bytes()[:1000]


# --- random windows ---


def test_get_batch_shapes_shift_and_determinism() -> None:
    corpus = load_byte_corpus(PYDOCS_SOURCE, max_bytes=20_000)
    x, y = corpus.get_batch("train", 8, 64, _generator(3))
    again_x, again_y = corpus.get_batch("train", 8, 64, _generator(3))
    other_x, _ = corpus.get_batch("train", 8, 64, _generator(4))

    assert x.shape == y.shape == (8, 64)
    assert x.dtype == y.dtype == torch.long
    assert torch.equal(y[:, :-1], x[:, 1:])
    assert torch.equal(x, again_x) and torch.equal(y, again_y)
    assert not torch.equal(x, other_x)
    train_text = bytes(corpus.train.tolist())
    for row_x, row_y in zip(x.tolist(), y.tolist(), strict=True):
        assert bytes([*row_x, row_y[-1]]) in train_text


def test_windows_never_cross_the_split() -> None:
    # Training bytes are all "a" and validation bytes all "b": a crossing window would mix them.
    corpus = ByteCorpus.from_bytes(b"a" * 90 + b"b" * 10, val_frac=0.1)
    generator = _generator(0)
    for _ in range(50):
        x, y = corpus.get_batch("train", 16, 89, generator)  # the longest window that fits
        assert set(x.unique().tolist()) | set(y.unique().tolist()) == {ord("a")}
        x, y = corpus.get_batch("val", 16, 9, generator)
        assert set(x.unique().tolist()) | set(y.unique().tolist()) == {ord("b")}


def test_random_windows_reach_both_ends_of_the_split() -> None:
    corpus = ByteCorpus.from_bytes(bytes(range(100)), val_frac=0.5)  # train bytes are 0 .. 49
    x, y = corpus.get_batch("train", 2000, 4, _generator(1))
    assert x[:, 0].min().item() == 0  # first start
    assert y[:, -1].max().item() == 49  # last byte of the split is a target


@settings(max_examples=60, deadline=None)
@given(
    raw=st.binary(min_size=8, max_size=400),
    val_frac=st.floats(min_value=0.25, max_value=0.75),
    seq_fraction=st.floats(min_value=0.0, max_value=1.0),
    batch_size=st.integers(min_value=1, max_value=6),
    seed=st.integers(min_value=0, max_value=2**31),
    split=st.sampled_from(["train", "val"]),
)
def test_any_window_is_a_contiguous_slice_with_y_shifted(
    raw: bytes, val_frac: float, seq_fraction: float, batch_size: int, seed: int, split: str
) -> None:
    corpus = ByteCorpus.from_bytes(raw, val_frac=val_frac)
    data = corpus.split_data(split)
    seq_len = 1 + int(seq_fraction * (len(data) - 2))  # 1 .. len(data) - 1
    x, y = corpus.get_batch(split, batch_size, seq_len, _generator(seed))

    assert x.shape == y.shape == (batch_size, seq_len)
    assert torch.equal(y[:, :-1], x[:, 1:])
    windows = data.long().unfold(0, seq_len + 1, 1)  # [num_starts, T + 1]: every legal window
    for row in torch.cat([x, y[:, -1:]], dim=1):
        assert (windows == row).all(dim=1).any()


# --- the fixed evaluation set ---


def test_eval_batches_tile_the_split_and_repeat_exactly() -> None:
    corpus = ByteCorpus.from_bytes(bytes(range(256)) * 4, val_frac=0.5)  # 512 validation bytes
    batches = list(corpus.iter_eval_batches(batch_size=3, seq_len=50))
    again = list(corpus.iter_eval_batches(batch_size=3, seq_len=50))

    assert [len(x) for x, _ in batches] == [3, 3, 3, 1]  # (512 - 1) // 50 = 10 windows
    for (x, y), (again_x, again_y) in zip(batches, again, strict=True):
        assert torch.equal(x, again_x) and torch.equal(y, again_y)
    inputs = torch.cat([x for x, _ in batches]).flatten()
    targets = torch.cat([y for _, y in batches]).flatten()
    assert torch.equal(inputs, corpus.val[:500].long())
    assert torch.equal(targets, corpus.val[1:501].long())


def test_eval_batches_with_max_batches_spread_over_the_split() -> None:
    corpus = ByteCorpus.from_bytes(bytes(2) + bytes(range(200)) * 10, val_frac=0.5)
    batches = list(corpus.iter_eval_batches("val", batch_size=2, seq_len=10, max_batches=2))
    starts = [int(x[row, 0]) for x, _ in batches for row in range(len(x))]

    assert len(batches) == 2 and all(len(x) == 2 for x, _ in batches)
    assert len(set(starts)) == 4
    last_start = (corpus.num_bytes("val") - 1) // 10 * 10 - 10
    assert torch.equal(batches[-1][0][-1], corpus.val[last_start : last_start + 10].long())
    assert torch.equal(batches[0][0][0], corpus.val[:10].long())  # and the first


# --- sources ---


def test_text_file_folder_and_glob_sources(tmp_path: Path) -> None:
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.txt").write_bytes(b"second file " * 10)
    (folder / "a.txt").write_bytes(b"first file " * 10)
    (folder / "sub" / "c.md").write_bytes(b"nested file " * 10)
    (folder / ".hidden").write_bytes(b"never read")
    (folder / "empty.txt").write_bytes(b"")
    expected_folder = (
        b"first file " * 10 + b"\n" + b"second file " * 10 + b"\n" + b"nested file " * 10
    )

    def text_of(source: str) -> bytes:
        corpus = load_byte_corpus(source, val_frac=0.1)
        return bytes(torch.cat([corpus.train, corpus.val]).tolist())

    assert text_of(str(folder / "a.txt")) == b"first file " * 10
    assert text_of(str(folder)) == expected_folder
    assert text_of(str(folder / "*.txt")) == b"first file " * 10 + b"\n" + b"second file " * 10
    assert text_of(str(folder / "**" / "*.md")) == b"nested file " * 10
    assert [path.name for path in resolve_source_paths(str(folder))] == [
        "a.txt",
        "b.txt",
        "empty.txt",
        "c.md",
    ]


def test_parquet_text_column(tmp_path: Path) -> None:
    _write_parquet(
        tmp_path / "part-0.parquet",
        {"id": [1, 2, 3], "body": ["héllo world", None, "second row"]},
    )
    _write_parquet(tmp_path / "part-1.parquet", {"id": [4], "body": ["third row"]})

    corpus = load_byte_corpus(str(tmp_path / "*.parquet"), text_column="body", val_frac=0.2)
    text = bytes(torch.cat([corpus.train, corpus.val]).tolist())
    assert text == "héllo world\nsecond row\nthird row".encode()


# --- errors name the setting ---


def test_missing_path_names_the_setting_and_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.txt"
    with pytest.raises(DataError, match=r"data.source") as caught:
        load_byte_corpus(str(missing))
    assert str(missing) in str(caught.value)
    assert "pydocs" in str(caught.value)  # the fix lists the accepted sources
    assert isinstance(caught.value, ValueError)
    assert caught.value.setting == "data.source"


def test_glob_matching_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.source: the pattern .*\*.txt' matches no files"):
        load_byte_corpus(str(tmp_path / "*.txt"))


@pytest.mark.parametrize("make", ["empty_file", "empty_folder", "blank_parquet"])
def test_empty_corpora(tmp_path: Path, make: str) -> None:
    if make == "empty_file":
        source = tmp_path / "empty.txt"
        source.write_bytes(b"")
    elif make == "empty_folder":
        source = tmp_path / "folder"
        source.mkdir()
    else:
        source = tmp_path / "blank.parquet"
        _write_parquet(source, {"text": [None, ""]})
    with pytest.raises(DataError, match=r"data.source") as caught:
        load_byte_corpus(str(source))
    assert "no text" in str(caught.value) or "no files" in str(caught.value)


def test_parquet_without_the_column_lists_its_columns(tmp_path: Path) -> None:
    _write_parquet(tmp_path / "shard.parquet", {"content": ["x"], "url": ["u"]})
    with pytest.raises(DataError, match=r"data.text_column") as caught:
        load_byte_corpus(str(tmp_path / "shard.parquet"))
    assert "no column 'text'" in str(caught.value)
    assert "content, url" in str(caught.value)


def test_parquet_column_that_is_not_text(tmp_path: Path) -> None:
    _write_parquet(tmp_path / "shard.parquet", {"text": [1, 2]})
    with pytest.raises(DataError, match=r"data.text_column: column 'text' .* has type int64"):
        load_byte_corpus(str(tmp_path / "shard.parquet"))


def test_corrupt_parquet(tmp_path: Path) -> None:
    (tmp_path / "broken.parquet").write_bytes(b"not a parquet file at all")
    with pytest.raises(DataError, match=r"data.source: cannot read parquet file"):
        load_byte_corpus(str(tmp_path / "broken.parquet"))


def test_seq_len_longer_than_the_split() -> None:
    corpus = ByteCorpus.from_bytes(bytes(100), val_frac=0.1)  # 90 train, 10 validation bytes
    corpus.get_batch("val", 2, 9, _generator(0))  # the longest window that fits
    with pytest.raises(DataError, match=r"model.seq_len") as caught:
        corpus.get_batch("val", 2, 10, _generator(0))
    assert "val split" in str(caught.value) and "has only 10" in str(caught.value)
    assert "model.seq_len <= 9" in str(caught.value)
    with pytest.raises(DataError, match=r"model.seq_len"):
        next(corpus.iter_eval_batches("train", batch_size=2, seq_len=90))
    with pytest.raises(DataError, match=r"model.seq_len"):
        corpus.get_batch("train", 2, 0, _generator(0))


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"val_frac": 0.0}, "data.val_frac"),
        ({"val_frac": 1.0}, "data.val_frac"),
        ({"val_frac": float("nan")}, "data.val_frac"),
        ({"max_bytes": 0}, "data.max_bytes"),
        ({"max_bytes": 3}, "data.val_frac"),  # too few bytes for two splits
    ],
)
def test_invalid_split_settings(kwargs: dict, setting: str) -> None:
    with pytest.raises(DataError, match=setting):
        load_byte_corpus(PYDOCS_SOURCE, **kwargs)
