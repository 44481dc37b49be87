"""Data sources: byte corpora and small vision data sets, all local (nothing is downloaded)."""

from trainables.data.bits import (
    BitCorpus,
    bits_to_bytes,
    bytes_to_bits,
    parity_bits,
    parity_positions,
)
from trainables.data.bytes import (
    PYDOCS_SOURCE,
    ByteCorpus,
    load_byte_corpus,
    pydocs_bytes,
    read_source_bytes,
    resolve_source_paths,
)
from trainables.data.errors import DataError
from trainables.data.vision import (
    CIFAR10_CLASSES,
    CIFAR10_SOURCE,
    DIGITS_SOURCE,
    VISION_SOURCES,
    ImageClassificationData,
    iterate_batches,
    load_cifar10,
    load_digits_data,
    load_vision_data,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_SOURCE",
    "DIGITS_SOURCE",
    "PYDOCS_SOURCE",
    "VISION_SOURCES",
    "BitCorpus",
    "ByteCorpus",
    "DataError",
    "ImageClassificationData",
    "bits_to_bytes",
    "bytes_to_bits",
    "iterate_batches",
    "load_byte_corpus",
    "load_cifar10",
    "load_digits_data",
    "load_vision_data",
    "parity_bits",
    "parity_positions",
    "pydocs_bytes",
    "read_source_bytes",
    "resolve_source_paths",
]
