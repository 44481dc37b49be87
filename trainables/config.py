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

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    field_validator,
    model_validator,
)

from trainables.config_checks import cross_section_problems
from trainables.errors import UserInputError
from trainables.quant import available_schemes
from trainables.quant_config import DEFAULT_SCHEME, QuantConfig, quant_keys, retarget

GrowthStrategy = Literal["depth", "width", "context"]


class ConfigError(UserInputError, ValueError):
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
    # model.arch hf_causal_lm: ``source: selfgen`` makes the base model write its training set
    # (seed 003; into ``path`` if set, else the trial's folder); ``tokenizer: bytes`` ignores the
    # model directory's tokenizer
    selfgen_num: int = Field(100, ge=2, le=100_000)
    max_new_tokens: int = Field(512, ge=1, le=8192)
    selfgen_seed: int | None = Field(None, ge=0)  # None: train.seed
    tokenizer: Literal["auto", "bytes"] = "auto"


class ModelConfig(Section):
    """The architecture. Byte LM fields follow ``trainables.models.ByteLMConfig``."""

    arch: Literal["byte_lm", "bit_lm", "hf_causal_lm", "conv", "mlp"] = "byte_lm"
    hf_path: str | None = None  # hf_causal_lm: a local Hugging Face model directory
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
    # early exit (seed 001): per-token or per-sequence inference, what the task loss scores in
    # training (the realized sampled exit, the expected loss, or the last layer only), gate dropout
    exit_mode: Literal["token", "sequence"] = "token"
    exit_aggregate: Literal["mean", "all", "last"] = "mean"
    exit_task_loss: Literal["sampled", "expected", "final"] = "sampled"
    gate_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    exit_loss_weighting: Literal["layerskip", "linear", "uniform"] = "layerskip"
    exit_curriculum: Literal["none", "rotational", "gradual"] = "none"
    exit_rotation: int = Field(2, ge=1)
    exit_gradual_steps: int = Field(100, ge=1)
    layer_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    layer_dropout_schedule: Literal["quadratic", "exponential", "uniform"] = "quadratic"
    widths: tuple[int, ...] = Field((16, 32), min_length=1)  # conv: channels of each stage
    hidden: tuple[int, ...] = Field((128,), min_length=0)  # mlp: hidden layer widths
    # bit_lm only (trainables.models.BitLMConfig; seq_len counts bits, a multiple of 9)
    causal: bool = True
    reversible: bool = False
    act: bool = False
    act_eps: float = Field(0.01, gt=0.0, lt=1.0)
    attn_chunk: int | None = Field(None, ge=1)
    full_attn_logging: bool = False
    byte_phase: bool = False

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.arch == "byte_lm" and (
            self.d_model % self.n_heads or (self.d_model // self.n_heads) % 2
        ):
            raise ValueError(
                f"n_heads={self.n_heads} must divide d_model={self.d_model} into even head sizes"
            )
        if self.arch == "bit_lm" and self.d_model % self.n_heads:
            raise ValueError(f"n_heads={self.n_heads} must divide d_model={self.d_model}")
        return self


class ScheduleConfig(Section):
    """The gradual-quantization lam schedule and the learning-rate schedule."""

    kind: Literal["linear", "exponential", "sigmoid", "constant"] = "linear"
    lambda_warmup_frac: float = Field(0.4, ge=0.0, le=1.0)
    k: float = Field(5.0, gt=0.0)
    value: float = Field(1.0, ge=0.0, le=1.0)
    lr_schedule: Literal["constant", "cosine"] = "cosine"
    lr_warmup_steps: int = Field(0, ge=0)
    # which layers the lam blend reaches, by their scheme (a hadamard model's other projections
    # are ternary layers); "all" for every quantized layer; a list or a comma-separated string
    applies_to: tuple[str, ...] = Field(("ternary", "hadamard"), min_length=1)

    @field_validator("applies_to", mode="before")
    @classmethod
    def _split_scope(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = tuple(part.strip() for part in value.split(",") if part.strip())
        if not isinstance(value, list | tuple):
            return value  # pydantic's type check names the key
        valid = {"all", *available_schemes()}
        unknown = [v for v in value if v not in valid]
        if unknown:
            raise ValueError(
                f"unknown scheme(s) {', '.join(map(repr, unknown))}; use 'all' or scheme names "
                f"from {', '.join(sorted(valid - {'all'}))}"
            )
        return value


class LossConfig(Section):
    """Weights of the joint loss terms (0 disables a term, which then costs nothing)."""

    lambda_q: float = Field(0.0, ge=0.0)
    lambda_r: float = Field(0.0, ge=0.0)
    # the routing loss (compute cost) is off for this fraction of train.steps, so the exits learn
    # to predict and the gates to tell easy tokens from hard ones before the cost pulls them early
    route_warmup_frac: float = Field(0.0, ge=0.0, lt=1.0)
    target_exit_layer: float | None = Field(None, ge=1.0)
    lambda_exit: float = Field(0.0, ge=0.0)
    lambda_br: float = Field(0.0, ge=0.0)
    lambda_br_act: float = Field(0.0, ge=0.0)
    br_backprop_to_alpha_act: bool = False
    br_warmup_frac: float = Field(0.3, ge=0.0, le=1.0)
    freeze_alpha: bool = False
    # seed 000's --loss_fn: "bit_balanced_ce" adds bit_loss_weight x the model's bits
    fn: Literal["ce", "bit_balanced_ce"] = "ce"
    bit_loss_weight: float = Field(0.0, ge=0.0)
    bit_loss_normalize: bool = False  # seed 000's default: raw bits (True: bits per parameter)
    lambda_act: float = Field(0.0, ge=0.0)  # bit_lm ACT ponder cost (needs model.act)
    # bit_lm telemetry regularizers (seed 004): weights of 1 - K, 1 - C~, 1 - S (0: not computed)
    lambda_K: float = Field(0.0, ge=0.0)  # the seed's metric names
    lambda_C: float = Field(0.0, ge=0.0)
    lambda_S: float = Field(0.0, ge=0.0)


class GrowthConfig(Section):
    """Progressive scale-up (seed 004): grow when validation loss stops improving."""

    enabled: bool = False
    improve_thresh: float = Field(0.01, ge=0.0)
    window: int = Field(2, ge=1)
    # a list, or a comma-separated string ("depth,width") that Optuna can search as one category
    strategy: tuple[GrowthStrategy, ...] = Field(("depth", "width", "context"), min_length=1)
    max_growths: int = Field(2, ge=0, le=16)
    # seed 004: after each growth the LR is divided by sqrt(2) and warmed up again over 100 steps
    lr_warmup_steps: int = Field(100, ge=0)
    # seed 004: the pre-existing weights stay frozen for 5 batches after each expansion (0: off)
    freeze_steps: int = Field(5, ge=0)
    # seed 004's final plateau: no growth in this last fraction of train.steps (0: grow to the end)
    final_plateau_frac: float = Field(0.2, ge=0.0, lt=1.0)

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
    grad_accum: int = Field(1, ge=1, le=1024)  # micro-batches per optimizer step (seed 003)
    precision: Literal["fp32", "bf16"] = "fp32"  # bf16: autocast (CPU autocast on CPU)
    # evaluate once before the first step (not on resume): val/loss_start etc. in the first report
    eval_at_start: bool = False


class TelemetryConfig(Section):
    """bit_lm safety telemetry (seed 004): gate floors, retries, metric drift.

    A generation whose C or S breaks its floor is refused and sampled again up to ``retries``
    times; a drift is a change of K, C or S above ``drift_thresh`` across ``drift_window``
    evaluations, which stops the trial when ``halt_on_drift``.
    """

    floor_C: float = Field(0.3, ge=0.0, le=1.0)  # the seed's names
    floor_S: float = Field(0.5, ge=0.0, le=1.0)
    retries: int = Field(3, ge=0, le=10)
    gen_bytes: int = Field(16, ge=2, le=4096)
    gen_samples: int = Field(2, ge=1, le=64)
    drift_window: int = Field(5, ge=2, le=1000)
    drift_thresh: float = Field(0.2, gt=0.0, le=1.0)
    halt_on_drift: bool = False


class DiffusionConfig(Section):
    """bit_lm diffusion mode (``model.causal: false``, seed 004): noise, schedule, sampler."""

    noise: Literal["mask", "flip"] = "mask"
    schedule: Literal["linear", "cosine", "exp"] = "linear"
    steps: int = Field(8, ge=8, le=16)  # the seed's 8 to 16 denoising steps
    curriculum: bool = False  # high -> low noise over training


ExportFormat = Literal["hf-bitnet", "gguf-tq2", "gguf-tq1"]


class ExportConfig(Section):
    """Formats a trial's final ternary model is also written in (trainables/export): artifacts
    ``export/<format>/`` of its MLflow run. ``hf-bitnet`` needs ``model.arch: hf_causal_lm``."""

    formats: tuple[ExportFormat, ...] = ()


class DistillConfig(Section):
    """bit_lm distillation after training ("collapse", seed 004)."""

    enabled: bool = False
    k: int = Field(8, ge=1, le=256)  # representative sequences (k-means clusters)
    candidates: int = Field(64, ge=1, le=4096)  # training windows clustered
    d_model_scale: float = Field(0.5, gt=0.0, le=1.0)  # student width / teacher width
    width_scale: float = Field(1.5, gt=1.0, le=4.0)  # the retry's wider student
    steps: int = Field(50, ge=1, le=100000)

    @model_validator(mode="after")
    def _k_fits(self) -> DistillConfig:
        if self.k > self.candidates:
            raise ValueError(f"k={self.k} must be <= candidates={self.candidates}")
        return self


class RunConfig(Section):
    """Everything one training run (one trial) needs; enough to rerun it."""

    task: TaskConfig = TaskConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    # the chosen scheme's own section type (trainables/quant_config.py), dumped with its options
    quant: SerializeAsAny[QuantConfig] = QuantConfig.model_validate({})
    schedule: ScheduleConfig = ScheduleConfig()
    loss: LossConfig = LossConfig()
    growth: GrowthConfig = GrowthConfig()
    train: TrainConfig = TrainConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    diffusion: DiffusionConfig = DiffusionConfig()
    distill: DistillConfig = DistillConfig()
    export: ExportConfig = ExportConfig()

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        problems = list(cross_section_problems(self))
        if problems:
            raise ValueError("; ".join(f"{key}: {msg}" for key, msg in problems))
        return self

    def to_flat(self) -> dict[str, Any]:
        """The config as ``{"section.key": value}`` (tuples as lists)."""
        return flatten(self.model_dump(mode="json"))

    @classmethod
    def from_flat(cls, flat: Mapping[str, Any], *, retarget_quant: bool = False) -> RunConfig:
        """Build from dotted keys; raises ConfigError naming bad keys.

        ``retarget_quant``: drop the ``quant`` options that the chosen scheme does not take (a
        trial's flat config: the base config's options plus a searched ``quant.scheme``; the
        sweep's validation already checked every searched value with :meth:`with_overrides`).
        """
        data = unflatten(flat)
        quant = data.get("quant")
        scheme = quant.get("scheme", DEFAULT_SCHEME) if isinstance(quant, dict) else None
        if retarget_quant and isinstance(quant, dict) and scheme in available_schemes():
            data["quant"] = retarget(quant, scheme)
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a nested mapping (a YAML document); raises ConfigError naming bad keys."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, cls)) from None

    def with_overrides(self, overrides: Mapping[str, Any]) -> RunConfig:
        """A copy with dotted-key ``overrides`` applied and validated again.

        An override of ``quant.scheme`` keeps the current options the new scheme takes and drops
        the others; a ``quant`` key in ``overrides`` must be an option of the resulting scheme.
        """
        flat = self.to_flat()
        known = set(flat) | {f"quant.{key}" for key in quant_keys()}
        for key in overrides:
            if key not in known:
                raise ConfigError([(key, unknown_key_message(key, known))])
        scheme = overrides.get("quant.scheme", self.quant.scheme)
        if scheme != self.quant.scheme and scheme in available_schemes():
            quant = {k.removeprefix("quant."): v for k, v in flat.items() if k.startswith("quant.")}
            kept = {f"quant.{k}" for k in retarget(quant, scheme)}
            flat = {k: v for k, v in flat.items() if not k.startswith("quant.") or k in kept}
        flat.update(overrides)
        return RunConfig.from_flat(flat)


def section_fields(section: str) -> tuple[str, ...]:
    """The keys a run-config section can have (``quant``: under any registered scheme)."""
    if section == "quant":
        return quant_keys()
    annotation = RunConfig.model_fields[section].annotation
    assert isinstance(annotation, type) and issubclass(annotation, BaseModel)
    return tuple(annotation.model_fields)


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
