"""Small image-classification data sets, all local: scikit-learn's digits and CIFAR-10 batches.

- ``"digits"``: scikit-learn's 8x8 hand-written digits (1797 images, installed with scikit-learn),
  split into train and test sets stratified by class with a seed.
- ``"cifar10"``: the official CIFAR-10 python batches (``data_batch_1`` .. ``data_batch_5`` and
  ``test_batch`` from ``cifar-10-python.tar.gz``) in a local folder; nothing is downloaded.

Images come back as float32 ``[N, C, H, W]`` standardized per channel with the training split's mean
and standard deviation (pixels first scaled to [0, 1]); labels as int64 ``[N]``.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from trainables.data.errors import DataError

DIGITS_SOURCE = "digits"
CIFAR10_SOURCE = "cifar10"
VISION_SOURCES = (DIGITS_SOURCE, CIFAR10_SOURCE)

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{index}" for index in range(1, 6))
CIFAR10_TEST_FILE = "test_batch"
CIFAR10_EXTRACTED_FOLDER = "cifar-10-batches-py"
_CIFAR10_PIXELS = 3 * 32 * 32
_CIFAR10_FIX = (
    "extract the official cifar-10-python.tar.gz so the folder holds data_batch_1 .. data_batch_5 "
    "and test_batch"
)

# The only globals a CIFAR-10 batch needs: numpy array reconstruction (numpy 1 and 2 module names,
# pickle protocols 2 to 5) and ``_codecs.encode``, which Python 3 protocol-2 pickles use for bytes.
_ALLOWED_PICKLE_GLOBALS = frozenset(
    {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)


@dataclass(frozen=True, kw_only=True, eq=False)
class ImageClassificationData:
    """A train/test pair of normalized images and integer labels.

    Attributes:
        name: the data set's name (``"digits"``, ``"cifar10"``).
        train_images: float32 ``[N_train, C, H, W]``, standardized with the training statistics.
        train_labels: int64 ``[N_train]`` in ``[0, num_classes)``.
        test_images: float32 ``[N_test, C, H, W]``, standardized with the same statistics.
        test_labels: int64 ``[N_test]``.
        class_names: one name per class; its length is the number of classes.
        mean: the per-channel mean subtracted, in [0, 1] pixel units.
        std: the per-channel standard deviation divided by, in [0, 1] pixel units.
    """

    name: str
    train_images: Tensor
    train_labels: Tensor
    test_images: Tensor
    test_labels: Tensor
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def num_classes(self) -> int:
        """The number of classes (the classifier's output width)."""
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """The number of image channels (1 for digits, 3 for CIFAR-10)."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """The side of the square images (8 for digits, 32 for CIFAR-10)."""
        return int(self.train_images.shape[-1])


def load_vision_data(
    source: str,
    *,
    path: str | Path | None = None,
    test_frac: float = 0.2,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> ImageClassificationData:
    """Load a vision data set by name: ``"digits"`` or ``"cifar10"`` (from the folder ``path``).

    Args:
        source: ``"digits"`` or ``"cifar10"``.
        path: the CIFAR-10 folder (``data.path``); ignored for digits.
        test_frac: the digits test fraction; CIFAR-10 uses its official test batch.
        seed: the digits split seed.
        max_train: keep only the first ``max_train`` training images (for fast runs).
        max_test: keep only the first ``max_test`` test images.

    Raises:
        DataError: an unknown source, a missing ``path`` for CIFAR-10, or any error of the loaders.
    """
    if source == DIGITS_SOURCE:
        data = load_digits_data(test_frac=test_frac, seed=seed)
        return _truncate(data, max_train=max_train, max_test=max_test)
    if source == CIFAR10_SOURCE:
        if path is None:
            raise DataError(
                "data.path",
                "is required for the cifar10 source",
                f"set it to a folder; {_CIFAR10_FIX}",
            )
        return load_cifar10(path, max_train=max_train, max_test=max_test)
    raise DataError(
        "data.source", f"unknown vision data set {source!r}", f"use one of {list(VISION_SOURCES)}"
    )


def load_digits_data(*, test_frac: float = 0.2, seed: int = 0) -> ImageClassificationData:
    """Load scikit-learn's 8x8 digits, split stratified by class with ``seed``.

    Returns:
        1797 images as ``[N, 1, 8, 8]``; with the default ``test_frac`` 1437 train and 360 test.

    Raises:
        DataError: naming ``data.test_frac`` when it is out of (0, 1) or leaves a split with fewer
            images than classes.
    """
    from sklearn.datasets import load_digits  # imported lazily: scikit-learn is slow to import
    from sklearn.model_selection import train_test_split

    if not (isinstance(test_frac, (int, float)) and math.isfinite(test_frac) and 0 < test_frac < 1):
        raise DataError(
            "data.test_frac", f"got {test_frac!r}", "use a fraction in (0, 1), e.g. 0.2"
        )
    digits = load_digits()
    pixels = digits.images.astype(np.float32) / 16.0  # [N, 8, 8]; digits pixels are 0 .. 16
    labels = digits.target.astype(np.int64)  # [N]
    try:
        train_pixels, test_pixels, train_labels, test_labels = train_test_split(
            pixels, labels, test_size=test_frac, random_state=seed, stratify=labels
        )
    except ValueError as error:  # a split too small to hold every class
        raise DataError(
            "data.test_frac",
            f"{test_frac} cannot split {len(labels)} digits by class: {error}",
            "use a fraction between about 0.01 and 0.99",
        ) from error
    train_images = torch.from_numpy(train_pixels).unsqueeze(1)  # [N_train, 1, 8, 8]
    test_images = torch.from_numpy(test_pixels).unsqueeze(1)  # [N_test, 1, 8, 8]
    return _standardized(
        name=DIGITS_SOURCE,
        train_images=train_images,
        train_labels=torch.from_numpy(train_labels),
        test_images=test_images,
        test_labels=torch.from_numpy(test_labels),
        class_names=tuple(str(digit) for digit in range(10)),
    )


def load_cifar10(
    root: str | Path, *, max_train: int | None = None, max_test: int | None = None
) -> ImageClassificationData:
    """Load CIFAR-10 from a local folder of the official python batches.

    ``root`` may be the extracted ``cifar-10-batches-py`` folder itself or the folder holding it.
    The official batches are pickles; this loader reads them with an unpickler that only accepts
    numpy arrays, lists, dicts, strings and numbers, so a tampered file fails instead of running
    code. Still, load only data sets you obtained yourself.

    Returns:
        ``[50000, 3, 32, 32]`` training and ``[10000, 3, 32, 32]`` test images for the full set
        (fewer with ``max_train`` / ``max_test``, which keep the first images in batch order).

    Raises:
        DataError: naming ``data.path`` when the folder or a batch file is missing, unreadable or
            not in the official format, and ``data.max_train`` / ``data.max_test`` when below 1.
    """
    _check_limit("data.max_train", max_train)
    _check_limit("data.max_test", max_test)
    folder = _find_cifar10_folder(Path(root).expanduser())
    train_parts = [_read_cifar10_batch(folder / name) for name in CIFAR10_TRAIN_FILES]
    train_pixels = torch.cat([pixels for pixels, _ in train_parts])  # uint8 [N_train, 3, 32, 32]
    train_labels = torch.cat([labels for _, labels in train_parts])  # [N_train]
    test_pixels, test_labels = _read_cifar10_batch(folder / CIFAR10_TEST_FILE)
    train_pixels, train_labels = train_pixels[:max_train], train_labels[:max_train]
    test_pixels, test_labels = test_pixels[:max_test], test_labels[:max_test]
    return _standardized(
        name=CIFAR10_SOURCE,
        train_images=train_pixels.float() / 255.0,
        train_labels=train_labels,
        test_images=test_pixels.float() / 255.0,
        test_labels=test_labels,
        class_names=CIFAR10_CLASSES,
    )


def iterate_batches(
    inputs: Tensor,
    targets: Tensor,
    *,
    batch_size: int,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield one epoch of ``(inputs, targets)`` minibatches along the first dimension.

    With a ``generator`` the order is a fresh permutation drawn from it, so consecutive calls
    (epochs) differ while a seeded generator repeats the whole sequence; without one the order is
    kept, which is what evaluation wants. ``drop_last`` skips a final batch smaller than
    ``batch_size`` (useful with BatchNorm, which cannot train on a batch of one).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if len(inputs) != len(targets):
        raise ValueError(f"inputs ({len(inputs)}) and targets ({len(targets)}) differ in length")
    count = len(inputs)
    order = torch.randperm(count, generator=generator) if generator is not None else None  # [N]
    stop = count - count % batch_size if drop_last else count
    for first in range(0, stop, batch_size):
        if order is None:
            yield inputs[first : first + batch_size], targets[first : first + batch_size]
        else:
            chosen = order[first : first + batch_size]  # [b]
            yield inputs[chosen], targets[chosen]


def _standardized(
    *,
    name: str,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    class_names: tuple[str, ...],
) -> ImageClassificationData:
    """Standardize both splits per channel with the training split's statistics."""
    mean = train_images.mean(dim=(0, 2, 3))  # [C]
    # A constant channel (possible in tiny test sets) would divide by zero; leave its scale alone.
    std = train_images.std(dim=(0, 2, 3)).nan_to_num(1.0).clamp_min(1e-6)  # [C]
    return ImageClassificationData(
        name=name,
        train_images=((train_images - mean[:, None, None]) / std[:, None, None]).contiguous(),
        train_labels=train_labels.long(),
        test_images=((test_images - mean[:, None, None]) / std[:, None, None]).contiguous(),
        test_labels=test_labels.long(),
        class_names=class_names,
        mean=tuple(mean.tolist()),
        std=tuple(std.tolist()),
    )


def _truncate(
    data: ImageClassificationData, *, max_train: int | None, max_test: int | None
) -> ImageClassificationData:
    """Keep the first ``max_train`` / ``max_test`` images of each split (statistics unchanged)."""
    _check_limit("data.max_train", max_train)
    _check_limit("data.max_test", max_test)
    if max_train is None and max_test is None:
        return data
    return ImageClassificationData(
        name=data.name,
        train_images=data.train_images[:max_train],
        train_labels=data.train_labels[:max_train],
        test_images=data.test_images[:max_test],
        test_labels=data.test_labels[:max_test],
        class_names=data.class_names,
        mean=data.mean,
        std=data.std,
    )


def _check_limit(setting: str, limit: int | None) -> None:
    """Raise a ``DataError`` naming ``setting`` unless ``limit`` is None or positive."""
    if limit is not None and limit < 1:
        raise DataError(setting, f"got {limit}", "use a positive number of images, or null for all")


def _find_cifar10_folder(root: Path) -> Path:
    """Return the folder holding the batches: ``root`` or its ``cifar-10-batches-py`` child."""
    if not root.is_dir():
        raise DataError(
            "data.path", f"the CIFAR-10 folder '{root}' does not exist", _CIFAR10_FIX + " there"
        )
    nested = root / CIFAR10_EXTRACTED_FOLDER
    folder = nested if not (root / CIFAR10_TEST_FILE).exists() and nested.is_dir() else root
    expected = (*CIFAR10_TRAIN_FILES, CIFAR10_TEST_FILE)
    missing = [name for name in expected if not (folder / name).is_file()]
    if missing:
        raise DataError(
            "data.path",
            f"the CIFAR-10 folder '{folder}' lacks {', '.join(missing)}",
            _CIFAR10_FIX,
        )
    return folder


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a CIFAR-10 batch needs, and nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        """Return an allowed global (numpy 1 names mapped to numpy 2's), refuse any other."""
        if (module, name) not in _ALLOWED_PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load the global {module}.{name}")
        if module.startswith("numpy.core.") and hasattr(np, "_core"):
            module = "numpy._core." + module.removeprefix("numpy.core.")  # no deprecation warning
        return getattr(import_module(module), name)


def _read_cifar10_batch(path: Path) -> tuple[Tensor, Tensor]:
    """Read one official batch file and check its structure.

    Returns:
        ``(pixels, labels)``: uint8 ``[N, 3, 32, 32]`` and int64 ``[N]`` in ``[0, 10)``.
    """

    def corrupt(problem: str) -> DataError:
        return DataError(
            "data.path",
            f"'{path}' is not a CIFAR-10 python batch: {problem}",
            "replace it with the file from the official cifar-10-python.tar.gz",
        )

    try:
        with path.open("rb") as handle:
            # Python 2 wrote the official batches; encoding="bytes" keeps their str keys as bytes.
            batch = _ArrayOnlyUnpickler(handle, encoding="bytes").load()
    except OSError as error:
        raise corrupt(f"cannot read it ({error})") from error
    except Exception as error:  # a damaged pickle can raise nearly any exception type
        raise corrupt(f"{type(error).__name__}: {error}") from error
    if not isinstance(batch, dict):
        raise corrupt(f"it holds a {type(batch).__name__}, not a dict")
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        keys = ", ".join(repr(key) for key in batch)
        raise corrupt(f"it lacks the b'data' or b'labels' entry (its keys: {keys})")
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        raise corrupt("b'data' is not a 2-D uint8 array")
    if data.shape[1] != _CIFAR10_PIXELS:
        raise corrupt(f"b'data' has {data.shape[1]} values per image, not {_CIFAR10_PIXELS}")
    label_array = np.asarray(labels)
    if label_array.shape != (len(data),) or not np.issubdtype(label_array.dtype, np.integer):
        raise corrupt(f"b'labels' is not {len(data)} integers, one per image")
    if len(label_array) and (label_array.min() < 0 or label_array.max() >= len(CIFAR10_CLASSES)):
        raise corrupt("b'labels' holds values outside 0 .. 9")
    # The official row layout is 1024 red, 1024 green, 1024 blue values, each 32 rows of 32.
    # np.array copies: unpickled arrays may be read-only views of the file's bytes.
    pixels = torch.from_numpy(np.array(data, order="C")).view(-1, 3, 32, 32)  # [N, 3, 32, 32]
    return pixels, torch.from_numpy(label_array.astype(np.int64))
