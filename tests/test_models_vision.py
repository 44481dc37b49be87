"""Vision models: shapes, output contract, quant-friendly layers, validation, digits accuracy."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.data import iterate_batches, load_digits_data
from trainables.models.outputs import ModelOutput
from trainables.models.vision import (
    MLP,
    ConvNet,
    ConvNetConfig,
    MLPConfig,
    accuracy,
    build_vision_model,
)

DIGITS = {"in_channels": 1, "image_size": 8, "num_classes": 10}
CIFAR = {"in_channels": 3, "image_size": 32, "num_classes": 10}

MODEL_CONFIGS = [
    pytest.param(ConvNetConfig(**DIGITS, widths=(8, 16)), id="conv-digits"),
    pytest.param(ConvNetConfig(**CIFAR, widths=(8, 16, 32), convs_per_stage=2), id="conv-cifar"),
    pytest.param(MLPConfig(**DIGITS, hidden=(32, 16)), id="mlp-digits"),
    pytest.param(MLPConfig(**CIFAR, hidden=(32,)), id="mlp-cifar"),
]


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_forward_returns_logits_and_cross_entropy(config: ConvNetConfig | MLPConfig) -> None:
    torch.manual_seed(0)
    model = build_vision_model(config)
    images = torch.randn(5, config.in_channels, config.image_size, config.image_size)
    targets = torch.tensor([0, 3, 9, 1, 1])

    without = model(images)
    output = model(images, targets)

    assert isinstance(output, ModelOutput)
    assert output.logits.shape == (5, 10)
    assert without.task_loss is None and without.aux_losses == {}
    assert output.task_loss is not None
    torch.testing.assert_close(output.task_loss, F.cross_entropy(output.logits, targets))
    output.task_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_layers_suit_the_quant_swap_pass(config: ConvNetConfig | MLPConfig) -> None:
    """Weights live in plain Linear/Conv2d; only the first of them sees signed inputs."""
    torch.manual_seed(0)
    model = build_vision_model(config)
    weight_layers = {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, (nn.Linear, nn.Conv2d))
    }
    assert type(model.head) is nn.Linear
    assert all(type(module) in (nn.Linear, nn.Conv2d) for module in weight_layers.values())
    owners = {name.rsplit(".", 1)[0] for name, _ in model.named_parameters()}
    assert owners <= set(weight_layers) | {
        name for name, module in model.named_modules() if isinstance(module, nn.BatchNorm2d)
    }
    first_layer = next(iter(weight_layers))
    assert model.signed_input_layers == (first_layer,)

    smallest_input: dict[str, float] = {}
    for name, module in weight_layers.items():
        module.register_forward_pre_hook(
            lambda _module, inputs, name=name: smallest_input.__setitem__(
                name, inputs[0].min().item()
            )
        )
    model(torch.randn(4, config.in_channels, config.image_size, config.image_size))
    assert smallest_input[first_layer] < 0  # standardized pixels are signed
    assert all(value >= 0 for name, value in smallest_input.items() if name != first_layer)


def test_conv_net_halves_the_image_per_stage() -> None:
    model = ConvNet(ConvNetConfig(**CIFAR, widths=(4, 8, 16)))
    features = model.features(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 16, 4, 4)
    assert model.head.in_features == 16


def test_mlp_without_hidden_layers_is_linear() -> None:
    model = MLP(MLPConfig(**DIGITS, hidden=[]))
    assert model.signed_input_layers == ("head",)
    assert model.head.in_features == 64
    assert sum(p.numel() for p in model.parameters()) == 64 * 10 + 10


def test_wrong_input_shape_is_reported() -> None:
    model = ConvNet(ConvNetConfig(**DIGITS))
    with pytest.raises(ValueError, match=r"expected images \[B, 1, 8, 8\], got \(2, 3, 32, 32\)"):
        model(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ConvNetConfig(in_channels=0), "in_channels"),
        (lambda: ConvNetConfig(image_size=-1), "image_size"),
        (lambda: MLPConfig(num_classes=1), "num_classes"),
        (lambda: ConvNetConfig(widths=()), "widths"),
        (lambda: ConvNetConfig(widths=(8, 0)), "widths entries"),
        (lambda: MLPConfig(hidden="64"), "hidden"),
        (lambda: ConvNetConfig(convs_per_stage=0), "convs_per_stage"),
        (lambda: ConvNetConfig(image_size=8, widths=(4, 4, 4, 4)), "widths has 4 stages"),
        (lambda: MLPConfig(in_channels=1.5), "in_channels"),
    ],
)
def test_config_validation_names_the_field(make, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        make()


def test_config_accepts_lists_from_yaml() -> None:
    assert ConvNetConfig(widths=[16, 32]).widths == (16, 32)
    assert MLPConfig(hidden=[64]).hidden == (64,)
    with pytest.raises(TypeError):
        ConvNetConfig(1, 8)  # keyword-only


def test_accuracy() -> None:
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.0, 1.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1, 0])) == 0.5
    assert accuracy(logits, torch.tensor([0, 1, 0, 1])) == 1.0
    with pytest.raises(ValueError, match=r"logits \[B, C\] and targets \[B\]"):
        accuracy(logits, torch.tensor([0, 1]))


def _train_on_digits(config: ConvNetConfig | MLPConfig, *, epochs: int, lr: float) -> float:
    """Train full precision on digits with Adam; return the test accuracy."""
    torch.manual_seed(0)
    data = load_digits_data(seed=0)
    model = build_vision_model(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        for images, labels in iterate_batches(
            data.train_images, data.train_labels, batch_size=64, generator=generator, drop_last=True
        ):
            loss = model(images, labels).task_loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        return accuracy(model(data.test_images).logits, data.test_labels)


@pytest.mark.parametrize(
    ("config", "epochs"),
    [
        pytest.param(MLPConfig(**DIGITS, hidden=(64,)), 10, id="mlp"),
        pytest.param(ConvNetConfig(**DIGITS, widths=(16, 32)), 5, id="conv"),
    ],
)
def test_full_precision_models_learn_digits(config: ConvNetConfig | MLPConfig, epochs: int) -> None:
    test_accuracy = _train_on_digits(config, epochs=epochs, lr=3e-3)
    assert test_accuracy > 0.9, test_accuracy
