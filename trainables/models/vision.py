"""Small image classifiers for 8x8 digits and 32x32 CIFAR-10: a conv net and an MLP.

Every weight layer is a plain ``nn.Conv2d`` or ``nn.Linear`` so the quant swap pass can replace it.
Each layer after the first consumes the output of a ReLU (through max or average pooling, which keep
it non-negative), so unsigned activation quantizers fit them; the first layer sees standardized
pixels, which are signed, and each model names it in ``signed_input_layers`` so a quant spec can
give it a signed activation quantizer or leave it in full precision.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from trainables.models.outputs import ModelOutput


def _check_positive(field: str, value: int) -> None:
    """Raise a ``ValueError`` naming ``field`` unless ``value`` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field} must be a positive integer, got {value!r}")


def _checked_widths(field: str, widths: Sequence[int], *, allow_empty: bool) -> tuple[int, ...]:
    """Return ``widths`` as a tuple (YAML gives lists) after checking every entry is positive."""
    if isinstance(widths, (str, bytes)) or not isinstance(widths, Sequence):
        raise ValueError(f"{field} must be a sequence of positive integers, got {widths!r}")
    if not widths and not allow_empty:
        raise ValueError(f"{field} must name at least one layer width, got {list(widths)}")
    for width in widths:
        _check_positive(f"{field} entries", width)
    return tuple(widths)


def _check_common(in_channels: int, image_size: int, num_classes: int) -> None:
    """Check the input and output sizes both configs share."""
    _check_positive("in_channels", in_channels)
    _check_positive("image_size", image_size)
    _check_positive("num_classes", num_classes)
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")


@dataclass(frozen=True, kw_only=True)
class ConvNetConfig:
    """A conv net: per stage ``convs_per_stage`` x (3x3 conv, BatchNorm, ReLU), then 2x2 max-pool.

    Attributes:
        in_channels: image channels (1 for digits, 3 for CIFAR-10).
        image_size: the side of the square input images (8 for digits, 32 for CIFAR-10).
        num_classes: the number of output classes.
        widths: the channels of each stage (``model.widths``); each stage halves the image side, so
            ``image_size`` must be at least ``2 ** len(widths)``.
        convs_per_stage: conv layers per stage.
    """

    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    widths: tuple[int, ...] = (16, 32)
    convs_per_stage: int = 1

    def __post_init__(self) -> None:
        """Validate the sizes; messages name the field."""
        _check_common(self.in_channels, self.image_size, self.num_classes)
        widths = _checked_widths("widths", self.widths, allow_empty=False)
        object.__setattr__(self, "widths", widths)  # frozen: normalize a YAML list to a tuple
        _check_positive("convs_per_stage", self.convs_per_stage)
        if self.image_size < 2 ** len(widths):
            raise ValueError(
                f"widths has {len(widths)} stages, each halving the image, which needs image_size "
                f">= {2 ** len(widths)}; got image_size {self.image_size} (use fewer widths)"
            )


@dataclass(frozen=True, kw_only=True)
class MLPConfig:
    """An MLP on flattened images: hidden ``nn.Linear`` + ReLU layers, then a linear ``head``.

    Attributes:
        in_channels: image channels (1 for digits, 3 for CIFAR-10).
        image_size: the side of the square input images.
        num_classes: the number of output classes.
        hidden: the hidden layer widths (``model.hidden``); empty gives a linear classifier.
    """

    in_channels: int = 1
    image_size: int = 8
    num_classes: int = 10
    hidden: tuple[int, ...] = (128,)

    def __post_init__(self) -> None:
        """Validate the sizes; messages name the field."""
        _check_common(self.in_channels, self.image_size, self.num_classes)
        hidden = _checked_widths("hidden", self.hidden, allow_empty=True)
        object.__setattr__(self, "hidden", hidden)  # frozen: normalize a YAML list to a tuple


def _check_images(images: Tensor, in_channels: int, image_size: int) -> None:
    """Raise a ``ValueError`` unless ``images`` is ``[B, in_channels, image_size, image_size]``."""
    expected = (in_channels, image_size, image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
        raise ValueError(
            f"expected images [B, {in_channels}, {image_size}, {image_size}], "
            f"got {tuple(images.shape)}"
        )


def _output(logits: Tensor, targets: Tensor | None) -> ModelOutput:
    """Wrap classifier logits ``[B, C]`` with the cross-entropy against ``targets`` ``[B]``."""
    task_loss = F.cross_entropy(logits, targets) if targets is not None else None
    return ModelOutput(logits=logits, task_loss=task_loss)


class ConvNet(nn.Module):
    """A small conv net, global average pooling and a linear ``head`` (see ``ConvNetConfig``)."""

    def __init__(self, config: ConvNetConfig) -> None:
        """Build the stages from ``config``."""
        super().__init__()
        self.config = config
        stages: list[nn.Module] = []
        channels = config.in_channels
        for width in config.widths:
            layers: list[nn.Module] = []
            for _ in range(config.convs_per_stage):
                # No conv bias: the BatchNorm right after it has its own shift.
                layers += [
                    nn.Conv2d(channels, width, kernel_size=3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(),
                ]
                channels = width
            layers.append(nn.MaxPool2d(kernel_size=2))
            stages.append(nn.Sequential(*layers))
        self.features = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(channels, config.num_classes)

    @property
    def signed_input_layers(self) -> tuple[str, ...]:
        """Names of the weight layers whose input can be negative (the first conv)."""
        return ("features.0.0",)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """Classify images ``x`` ``[B, C, H, W]``; with ``targets`` ``[B]`` add cross-entropy."""
        _check_images(x, self.config.in_channels, self.config.image_size)
        features = self.features(x)  # [B, widths[-1], H / 2^S, W / 2^S], non-negative
        pooled = self.pool(features).flatten(1)  # [B, widths[-1]]
        logits = self.head(pooled)  # [B, num_classes]
        return _output(logits, targets)


class MLP(nn.Module):
    """A multi-layer perceptron on flattened images (see ``MLPConfig``)."""

    def __init__(self, config: MLPConfig) -> None:
        """Build the hidden layers and the ``head`` from ``config``."""
        super().__init__()
        self.config = config
        features = config.in_channels * config.image_size**2
        self.layers = nn.ModuleList()
        for width in config.hidden:
            self.layers.append(nn.Linear(features, width))
            features = width
        self.head = nn.Linear(features, config.num_classes)

    @property
    def signed_input_layers(self) -> tuple[str, ...]:
        """Names of the weight layers whose input can be negative (the first linear layer)."""
        return ("layers.0",) if len(self.layers) else ("head",)

    def forward(self, x: Tensor, targets: Tensor | None = None) -> ModelOutput:
        """Classify images ``x`` ``[B, C, H, W]``; with ``targets`` ``[B]`` add cross-entropy."""
        _check_images(x, self.config.in_channels, self.config.image_size)
        hidden = x.flatten(1)  # [B, C * H * W]
        for layer in self.layers:
            hidden = F.relu(layer(hidden))  # [B, width]
        logits = self.head(hidden)  # [B, num_classes]
        return _output(logits, targets)


def build_vision_model(config: ConvNetConfig | MLPConfig) -> ConvNet | MLP:
    """Build the model a config describes: a ``ConvNet`` or an ``MLP``."""
    if isinstance(config, ConvNetConfig):
        return ConvNet(config)
    if isinstance(config, MLPConfig):
        return MLP(config)
    raise TypeError(f"expected a ConvNetConfig or MLPConfig, got {type(config).__name__}")


def accuracy(logits: Tensor, targets: Tensor) -> float:
    """Return the fraction of rows of ``logits`` ``[B, C]`` whose argmax is ``targets`` ``[B]``."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits [B, C] and targets [B], got {tuple(logits.shape)} and "
            f"{tuple(targets.shape)}"
        )
    if len(targets) == 0:
        raise ValueError("accuracy of an empty batch is undefined")
    return (logits.argmax(dim=-1) == targets).float().mean().item()
