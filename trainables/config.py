"""The run config: typed sections composed into one config that flattens to dotted keys.

A trial's whole configuration is a :class:`RunConfig` with the sections ``task``, ``data``,
``model``, ``quant``, ``schedule``, ``loss``, ``growth`` and ``train``. It round-trips through a
flat dict with ``/``-free dotted keys (``quant.weight_bits``), which is what Tune samples and MLflow
logs as params. Invalid input raises :class:`ConfigError`, whose message names every bad key with
the allowed values (and a suggestion for a misspelt key).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from trainables.quant import available_schemes

GrowthStrategy = Literal["depth", "width", "context"]


class ConfigError(ValueError):
    """A run or sweep config that does not validate; ``problems`` lists (dotted key, message)."""

    def __init__(self, problems: Iterable[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = [f"{key}: {message}" if key else message for key, message in self.problems]
        super().__init__("invalid config:\n  " + "\n  ".join(lines))


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are validated on build."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TaskConfig(Section):
    """What is learned: ``lm`` (byte-level language modelling) or ``vision`` (classification)."""

    kind: Literal["lm", "vision"] = "lm"


class DataConfig(Section):
    """Where the data comes from (all local; nothing is downloaded).

    ``source`` for language models: ``pydocs`` (the Python documentation text shipped with
    CPython), a text file, a folder or glob of text files, or ``.parquet`` file(s) with a
    ``text_column``. For vision: ``digits`` (scikit-learn) or ``cifar10`` (the official python
    batches in the folder ``path``).
    """

    source: str = "pydocs"
    path: str | None = None
    text_column: str = "text"
    val_frac: float = Field(0.1, gt=0.0, lt=0.5)
    max_bytes: int | None = Field(None, ge=4096)
    eval_batches: int = Field(4, ge=1, le=1000)


class ModelConfig(Section):
    """The architecture. Byte LM fields follow ``trainables.models.ByteLMConfig``."""

    arch: Literal["byte_lm", "conv", "mlp"] = "byte_lm"
    d_model: int = Field(64, ge=8)
    n_layers: int = Field(2, ge=1, le=256)
    n_heads: int = Field(4, ge=1)
    d_ff: int | None = Field(None, ge=1)
    seq_len: int = Field(64, ge=2)
    ffn: Literal["sqrelu", "gated_sqrelu", "swiglu"] = "sqrelu"
    subln: bool = False
    rmsnorm_post_attn: bool = False
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    grad_checkpointing: bool = False
    early_exit: bool = False
    exit_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    exit_loss_weighting: Literal["layerskip", "linear", "uniform"] = "layerskip"
    exit_curriculum: Literal["none", "rotational", "gradual"] = "none"
    exit_rotation: int = Field(2, ge=1)
    exit_gradual_steps: int = Field(100, ge=1)
    layer_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    layer_dropout_schedule: Literal["quadratic", "exponential", "uniform"] = "quadratic"
    widths: tuple[int, ...] = Field((16, 32), min_length=1)  # conv: channels of each stage
    hidden: tuple[int, ...] = Field((128,), min_length=0)  # mlp: hidden layer widths

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.arch == "byte_lm" and (
            self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2
        ):
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model} into even head sizes"
            )
        return self


class QuantConfig(Section):
    """The quantization scheme and its options (only those the scheme has are passed to it)."""

    scheme: str = "ternary"
    keep_head: bool = True
    act_bits: int | None = Field(8, ge=2, le=16)
    weight_bits: int = Field(2, ge=2, le=8)
    input_norm: bool = False
    block_size: int | None = Field(None, ge=8)
    act_signed: bool | Literal["auto"] = "auto"
    first_last: Literal["8bit", "fp", "same"] = "8bit"
    init_bits: float = Field(8.0, ge=2.0, le=8.0)
    min_bits: int = Field(2, ge=2, le=8)
    max_bits: int = Field(8, ge=2, le=8)

    @field_validator("scheme")
    @classmethod
    def _known_scheme(cls, value: str) -> str:
        if value not in available_schemes():
            raise ValueError(f"must be one of {', '.join(available_schemes())}, got {value!r}")
        return value

    @model_validator(mode="after")
    def _bits_ordered(self) -> QuantConfig:
        if self.min_bits > self.max_bits:
            raise ValueError(f"min_bits={self.min_bits} must be <= max_bits={self.max_bits}")
        return self


class ScheduleConfig(Section):
    """The gradual-quantization lam schedule and the learning-rate schedule."""

    kind: Literal["linear", "exponential", "sigmoid", "constant"] = "linear"
    lambda_warmup_frac: float = Field(0.4, ge=0.0, le=1.0)
    k: float = Field(5.0, gt=0.0)
    value: float = Field(1.0, ge=0.0, le=1.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_warmup_steps: int = Field(0, ge=0)


class LossConfig(Section):
    """Weights of the joint loss terms (0 disables a term, which then costs nothing)."""

    lambda_q: float = Field(0.0, ge=0.0)
    lambda_r: float = Field(0.0, ge=0.0)
    target_exit_layer: float | None = Field(None, ge=1.0)
    lambda_exit: float = Field(0.0, ge=0.0)
    lambda_br: float = Field(0.0, ge=0.0)
    lambda_br_act: float = Field(0.0, ge=0.0)
    br_backprop_to_alpha_act: bool = False
    br_warmup_frac: float = Field(0.3, ge=0.0, le=1.0)
    freeze_alpha: bool = False
    bit_loss_weight: float = Field(0.0, ge=0.0)
    bit_loss_normalize: bool = True


class GrowthConfig(Section):
    """Progressive scale-up (seed 004): grow when validation loss stops improving."""

    enabled: bool = False
    improve_thresh: float = Field(0.01, ge=0.0)
    window: int = Field(2, ge=1)
    # a list, or a comma-separated string ("depth,width") that Optuna can search as one category
    strategy: tuple[GrowthStrategy, ...] = Field(("depth", "width", "context"), min_length=1)
    max_growths: int = Field(2, ge=0, le=16)
    lr_warmup_steps: int = Field(20, ge=0)

    @field_validator("strategy", mode="before")
    @classmethod
    def _split_order(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value


class TrainConfig(Section):
    """Optimization and evaluation cadence."""

    steps: int = Field(200, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(3e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0)
    grad_clip: float | None = Field(1.0, gt=0.0)
    eval_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1)


class RunConfig(Section):
    """Everything one training run (one trial) needs; enough to rerun it."""

    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    quant: QuantConfig = QuantConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    growth: GrowthConfig = GrowthConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        problems = list(_cross_section_problems(self))
        if problems:
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
        return self

    def to_flat(self) -> dict[str, Any]:
        """The config as ``{"section.key": value}`` (tuples as lists)."""
        return flatten(self.model_dump(mode="json"))

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any]) -> RunConfig:
        """Build from dotted keys; raises ConfigError naming bad keys."""
        return cls.from_dict(unflatten(flat))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a nested mapping (a YAML document); raises ConfigError naming bad keys."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, cls)) from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with dotted-key ``overrides`` applied and validated again."""
        flat = self.to_flat()
        for key in overrides:
            if key not in flat:
                raise ConfigError([(key, unknown_key_message(key, flat))])
        flat.update(overrides)
        return RunConfig.from_flat(flat)


def _cross_section_problems(cfg: RunConfig) -> Iterable[tuple[str, str]]:
    lm = cfg.task.kind == "lm"
    if lm and cfg.model.arch != "byte_lm":
        yield "model.arch", f"task.kind 'lm' needs arch 'byte_lm', got {cfg.model.arch!r}"
    if not lm and cfg.model.arch == "byte_lm":
        yield "model.arch", "task.kind 'vision' needs arch 'conv' or 'mlp'"
    if not lm and cfg.data.source not in ("digits", "cifar10"):
        yield "data.source", f"vision data must be 'digits' or 'cifar10', got {cfg.data.source!r}"
    if not lm and cfg.data.source == "cifar10" and not cfg.data.path:
        yield "data.path", "cifar10 needs data.path: the folder with data_batch_1..5 and test_batch"
    routing = cfg.loss.lambda_r > 0 or cfg.loss.target_exit_layer is not None
    if routing and not (lm and cfg.model.early_exit):
        yield "loss.lambda_r", "the routing loss needs model.early_exit: true (byte LM only)"
    if cfg.loss.target_exit_layer is not None and cfg.loss.target_exit_layer > cfg.model.n_layers:
        yield "loss.target_exit_layer", f"must be <= model.n_layers={cfg.model.n_layers}"
    if cfg.loss.lambda_exit > 0 and not lm:
        yield "loss.lambda_exit", "the early-exit loss applies to the byte LM only"
    if not lm and (cfg.model.early_exit or cfg.model.layer_dropout > 0):
        yield "model.early_exit", "early exit and layer dropout apply to the byte LM only"
    if (cfg.loss.lambda_br > 0 or cfg.loss.lambda_br_act > 0) and cfg.quant.scheme != "lsq":
        yield (
            "loss.lambda_br",
            f"bin regularization needs quant.scheme 'lsq', got {cfg.quant.scheme!r}",
        )
    if cfg.loss.freeze_alpha and cfg.quant.scheme != "lsq":
        yield "loss.freeze_alpha", "freezing step sizes needs quant.scheme 'lsq'"
    if cfg.loss.bit_loss_weight > 0 and cfg.quant.scheme != "adaptive":
        yield "loss.bit_loss_weight", "the bit penalty needs quant.scheme 'adaptive'"
    if cfg.quant.scheme == "lsq" and cfg.quant.act_bits is not None and cfg.quant.act_bits > 8:
        yield "quant.act_bits", f"the lsq scheme takes 2..8 bits, got {cfg.quant.act_bits}"
    if cfg.growth.enabled and not lm:
        yield "growth.enabled", "progressive growth applies to the byte LM only"


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (only mappings are descended into)."""
    flat: dict[str, Any] = {}
    for key, value in nested.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}``; nested mappings in values are merged."""
    nested: dict[str, Any] = {}
    for dotted, value in flat.items():
        parts = str(dotted).split(".")
        node = nested
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError([(dotted, f"{part!r} is a value, not a section")])
            node = child
        node[parts[-1]] = value
    return nested


def unknown_key_message(key: str, known: Iterable[str]) -> str:
    """'unknown key' with the closest valid spelling, if any."""
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"unknown key{hint}"


def _fields_at(model: type[BaseModel], path: tuple[str, ...]) -> list[str]:
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def describe_validation_error(err: ValidationError, root: type[BaseModel]) -> list[tuple[str, str]]:
    """Turn pydantic's errors into (dotted key, readable message) pairs."""
    problems: list[tuple[str, str]] = []
    for item in err.errors():
        loc = tuple(str(p) for p in item["loc"])
        key = ".".join(loc)
        if item["type"] == "extra_forbidden":
            known = [".".join((*loc[:-1], f)) for f in _fields_at(root, loc[:-1])]
            problems.append((key, unknown_key_message(key, known)))
            continue
        message = item["msg"].removeprefix("Value error, ")
        if "input" in item and item["type"] not in ("value_error", "missing"):
            message += f" (got {item['input']!r})"
        if item["type"] == "value_error" and not loc and ": " in message:
            for part in message.split("; "):
                sub_key, _, sub_msg = part.partition(": ")
                problems.append((sub_key, sub_msg))
            continue
        problems.append((key, message))
    return problems
