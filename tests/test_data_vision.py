"""Vision data: scikit-learn digits, CIFAR-10 batches written in the real format, batching."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from trainables.data import (
    CIFAR10_CLASSES,
    DataError,
    iterate_batches,
    load_cifar10,
    load_digits_data,
    load_vision_data,
)

# --- digits ---


def test_digits_shapes_split_and_normalization() -> None:
    data = load_digits_data(test_frac=0.2, seed=0)

    assert data.train_images.shape == (1437, 1, 8, 8)
    assert data.test_images.shape == (360, 1, 8, 8)
    assert data.train_images.dtype == torch.float32
    assert data.train_labels.dtype == torch.long and data.train_labels.shape == (1437,)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 8)
    assert set(data.train_labels.tolist()) == set(range(10))
    # Standardized with the training split's statistics, in [0, 1] pixel units.
    assert abs(data.train_images.mean().item()) < 1e-5
    assert abs(data.train_images.std().item() - 1.0) < 1e-3
    assert 0.2 < data.mean[0] < 0.4 and 0.3 < data.std[0] < 0.45
    restored = data.test_images * data.std[0] + data.mean[0]  # back to pixels / 16
    assert restored.min().item() > -1e-5 and restored.max().item() < 1 + 1e-5
    assert torch.allclose(restored * 16, (restored * 16).round(), atol=1e-4)  # 0 .. 16 levels


def test_digits_split_is_stratified_and_seeded() -> None:
    data = load_digits_data(test_frac=0.2, seed=0)
    same = load_digits_data(test_frac=0.2, seed=0)
    other = load_digits_data(test_frac=0.2, seed=1)

    counts = torch.bincount(data.test_labels, minlength=10)
    assert counts.min().item() >= 35 and counts.max().item() <= 37  # about 180 per class / 5
    assert torch.equal(data.test_images, same.test_images)
    assert torch.equal(data.train_labels, same.train_labels)
    assert not torch.equal(data.test_images, other.test_images)


@pytest.mark.parametrize("test_frac", [0.0, 1.0, 1.5, 0.001])
def test_digits_bad_test_frac(test_frac: float) -> None:
    with pytest.raises(DataError, match=r"data.test_frac"):
        load_digits_data(test_frac=test_frac)


# --- CIFAR-10 in the official python format ---


def _write_batch(path: Path, pixels: np.ndarray, labels: list[int], protocol: int = 2) -> None:
    """Write one batch as the official files are: a dict with bytes keys, uint8 [N, 3072] data."""
    batch = {
        b"batch_label": path.name.encode(),
        b"labels": labels,
        b"data": pixels,
        b"filenames": [f"image_{index}.png".encode() for index in range(len(labels))],
    }
    with path.open("wb") as handle:
        pickle.dump(batch, handle, protocol=protocol)


def _write_cifar(folder: Path, *, per_batch: int = 3, protocol: int = 2) -> dict[str, np.ndarray]:
    """Write five tiny training batches and a test batch; return the raw pixels and labels."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    train_pixels, train_labels = [], []
    for index in range(1, 6):
        pixels = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(label) for label in rng.integers(0, 10, size=per_batch)]
        _write_batch(folder / f"data_batch_{index}", pixels, labels, protocol)
        train_pixels.append(pixels)
        train_labels += labels
    test_pixels = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
    _write_batch(folder / "test_batch", test_pixels, [0, 9, 3, 3], protocol)
    return {
        "train_pixels": np.concatenate(train_pixels),
        "train_labels": np.array(train_labels),
        "test_pixels": test_pixels,
    }


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_loads_the_official_layout(tmp_path: Path, protocol: int) -> None:
    raw = _write_cifar(tmp_path, protocol=protocol)
    data = load_cifar10(tmp_path)

    assert data.train_images.shape == (15, 3, 32, 32)
    assert data.test_images.shape == (4, 3, 32, 32)
    assert data.class_names == CIFAR10_CLASSES and data.num_classes == 10
    assert data.train_labels.tolist() == raw["train_labels"].tolist()
    assert data.test_labels.tolist() == [0, 9, 3, 3]
    # Per-channel standardization with training statistics.
    assert data.train_images.mean(dim=(0, 2, 3)).abs().max().item() < 1e-5
    assert (data.train_images.std(dim=(0, 2, 3)) - 1).abs().max().item() < 1e-4
    # Undo it: each row is 1024 red, 1024 green, 1024 blue values, row-major 32 x 32.
    mean = torch.tensor(data.mean)[:, None, None]
    std = torch.tensor(data.std)[:, None, None]
    pixels = ((data.test_images * std + mean) * 255).round().to(torch.uint8)  # [4, 3, 32, 32]
    image, channel, row, column = 2, 1, 5, 7
    expected = raw["test_pixels"][image, channel * 1024 + row * 32 + column]
    assert pixels[image, channel, row, column].item() == expected
    assert torch.equal(pixels.flatten(1), torch.from_numpy(raw["test_pixels"]))


def test_cifar10_accepts_the_parent_of_the_extracted_folder(tmp_path: Path) -> None:
    _write_cifar(tmp_path / "cifar-10-batches-py")
    data = load_vision_data("cifar10", path=tmp_path, max_train=4, max_test=2)
    assert data.train_images.shape == (4, 3, 32, 32) and data.test_images.shape == (2, 3, 32, 32)


def test_cifar10_missing_folder_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.path") as caught:
        load_cifar10(tmp_path / "absent")
    assert str(tmp_path / "absent") in str(caught.value)
    assert "cifar-10-python.tar.gz" in str(caught.value)


def test_cifar10_missing_batch_files_are_listed(tmp_path: Path) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "test_batch").unlink()
    (tmp_path / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data.path: .* lacks data_batch_3, test_batch"):
        load_cifar10(tmp_path)


class _Payload:
    """A pickle that would run code when loaded."""

    def __reduce__(self) -> tuple:
        return (os.getcwd, ())


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x80\x02garbage", "UnpicklingError|EOFError|KeyError|ValueError"),
        (b"", "EOFError"),
        (pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "lacks the b'data' or b'labels'"),
        (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), "100 values"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}), "uint8"),
        (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "one per image"),
        (pickle.dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [10]}), "outside 0"),
        (pickle.dumps({b"data": _Payload(), b"labels": []}), "refusing to load the global"),
    ],
)
def test_cifar10_corrupt_batches_are_reported(tmp_path: Path, content: bytes, problem: str) -> None:
    _write_cifar(tmp_path)
    (tmp_path / "data_batch_2").write_bytes(content)
    with pytest.raises(DataError, match=r"data.path") as caught:
        load_cifar10(tmp_path)
    message = str(caught.value)
    assert "data_batch_2" in message and "is not a CIFAR-10 python batch" in message
    assert any(part in message for part in problem.split("|")), message


def test_load_vision_data_dispatch_errors() -> None:
    with pytest.raises(DataError, match=r"data.source: unknown vision data set 'mnist'"):
        load_vision_data("mnist")
    with pytest.raises(DataError, match=r"data.path: is required"):
        load_vision_data("cifar10")
    with pytest.raises(DataError, match=r"data.max_train"):
        load_vision_data("digits", max_train=0)
    digits = load_vision_data("digits", max_train=100)
    assert digits.train_images.shape == (100, 1, 8, 8) and digits.test_images.shape[0] == 360


# --- batching ---


def test_iterate_batches_shuffles_each_epoch_reproducibly() -> None:
    inputs = torch.arange(10).float()[:, None] * 10  # [10, 1]; row i holds 10 * i
    targets = torch.arange(10)

    def epoch_orders(seed: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(seed)
        orders = []
        for _ in range(3):
            batches = list(iterate_batches(inputs, targets, batch_size=4, generator=generator))
            assert [len(y) for _, y in batches] == [4, 4, 2]
            assert all(torch.equal(x[:, 0], y.float() * 10) for x, y in batches)  # pairs kept
            orders.append(torch.cat([y for _, y in batches]).tolist())
        return orders

    orders = epoch_orders(0)
    assert all(sorted(order) == list(range(10)) for order in orders)  # every sample once
    assert orders[0] != orders[1]  # a new permutation per epoch
    assert orders == epoch_orders(0)  # the same seed repeats the sequence


def test_iterate_batches_in_order_and_drop_last() -> None:
    targets = torch.arange(7)
    in_order = list(iterate_batches(targets, targets, batch_size=3))
    assert [y.tolist() for _, y in in_order] == [[0, 1, 2], [3, 4, 5], [6]]
    dropped = list(iterate_batches(targets, targets, batch_size=3, drop_last=True))
    assert [len(y) for _, y in dropped] == [3, 3]
    with pytest.raises(ValueError, match=r"differ in length"):
        list(iterate_batches(targets, targets[:5], batch_size=2))
