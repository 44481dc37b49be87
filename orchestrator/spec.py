"""Sweep files: a run config plus ``search``, ``resources``, ``storage``, ``tracking``, ``ablation``
sections.

A sweep file is YAML. Its run sections (``task`` ... ``train``) are a :class:`RunConfig`; the rest
says what to search and where to run and log. :func:`load_sweep` reads a file or a preset name,
applies ``KEY=VALUE`` overrides with dotted keys, and validates everything, raising
:class:`SweepSpecError` (a ConfigError) whose message names each bad key.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from search_spaces.tune_space import SCENARIO_KEY, is_scenario
from trainables.config import (
    ConfigError,
    RunConfig,
    describe_validation_error,
    flatten,
    unflatten,
    unknown_key_message,
)

RUN_SECTIONS = ("task", "data", "model", "quant", "schedule", "loss", "growth", "train")
DEFAULT_STORAGE = "bitsweep_results"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class SweepSpecError(ConfigError):
    """A sweep file, preset or override that does not validate."""


class _Block(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Distribution(_Block):
    """One searched key: ``uniform``/``loguniform``/``int`` over [low, high], or ``choice``/``grid``
    over ``values``."""

    dist: Literal["uniform", "loguniform", "int", "choice", "grid"]
    low: float | None = None
    high: float | None = None
    step: float | None = None
    values: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> Distribution:
        if self.dist in ("choice", "grid"):
            if not self.values:
                raise ValueError(f"'{self.dist}' needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError(f"'{self.dist}' takes 'values', not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"'{self.dist}' needs 'low' and 'high'")
        if self.values is not None:
            raise ValueError(f"'{self.dist}' takes low/high, not 'values'")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.dist == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        return self

    def bounds(self) -> list[Any]:
        """Values that stand for the whole range when validating against the run config."""
        if self.values is not None:
            return list(self.values)
        if self.dist == "int":
            return [int(self.low), int(self.high)]
        return [self.low, self.high]


class Objective(_Block):
    """A metric to optimize and its direction."""

    metric: str
    mode: Literal["min", "max"]


class SchedulerSpec(_Block):
    """Early stopping: ASHA over evaluations (``training_iteration``) or none."""

    type: Literal["asha", "none"] = "none"
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1.0)
    max_t: int | None = Field(None, ge=1)


class SearchSpec(_Block):
    """What to search and how."""

    algorithm: Literal["optuna", "random", "grid"] = "optuna"
    space: dict[str, Distribution] = Field(default_factory=dict)
    num_samples: int = Field(4, ge=1, le=100_000)
    metric: str | None = None
    mode: Literal["min", "max"] | None = None
    objectives: list[Objective] | None = None
    scheduler: SchedulerSpec = SchedulerSpec()
    seed: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _one_objective_form(self) -> SearchSpec:
        if self.objectives and (self.metric or self.mode):
            raise ValueError("give either metric/mode or a list of objectives, not both")
        if not self.objectives and not (self.metric and self.mode):
            raise ValueError("give metric and mode (e.g. val/loss, min) or a list of objectives")
        if self.algorithm == "optuna" and any(d.dist == "grid" for d in self.space.values()):
            raise ValueError("optuna does not search grids: use dist 'choice' or algorithm 'grid'")
        return self

    @property
    def objective_list(self) -> list[Objective]:
        """The objectives, single-metric sweeps included (a list of one)."""
        if self.objectives:
            return list(self.objectives)
        return [Objective(metric=self.metric or "", mode=self.mode or "min")]


class ResourcesSpec(_Block):
    """How each trial runs and how many run at once."""

    workers_per_trial: int = Field(1, ge=1, le=4096)
    strategy: Literal["none", "ddp", "fsdp"] = "none"
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    max_concurrent_trials: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _strategy_fits(self) -> ResourcesSpec:
        if self.workers_per_trial > 1 and self.strategy == "none":
            raise ValueError("workers_per_trial > 1 needs strategy 'ddp' or 'fsdp'")
        return self


class StorageSpec(_Block):
    """Where Tune keeps results and checkpoints: a local path or a pyarrow filesystem URI."""

    path: str = DEFAULT_STORAGE


class TrackingSpec(_Block):
    """The MLflow tracking URI (``None``: ``MLFLOW_TRACKING_URI`` or a local sqlite store)."""

    uri: str | None = None
    experiment: str = "bitsweep"

    def resolved_uri(self) -> str:
        """The URI to log to."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class AblationSpec(_Block):
    """A matrix built at the end: ``value`` by ``rows`` x ``cols``, mean and std over the rest."""

    name: str
    rows: str
    cols: str | None = None
    value: str


class SweepSpec(_Block):
    """A validated sweep: the base run config and everything around it."""

    name: str
    description: str = ""
    preset: str | None = None
    run: RunConfig
    search: SearchSpec
    resources: ResourcesSpec = ResourcesSpec()
    storage: StorageSpec = StorageSpec()
    tracking: TrackingSpec = TrackingSpec()
    ablation: list[AblationSpec] = Field(default_factory=list)

    def to_document(self) -> dict[str, Any]:
        """The resolved sweep as a YAML-ready document (what MLflow and resume store)."""
        doc: dict[str, Any] = {"name": self.name}
        if self.description:
            doc["description"] = self.description
        if self.preset:
            doc["preset"] = self.preset
        doc.update(self.run.model_dump(mode="json"))
        for block in ("search", "resources", "storage", "tracking"):
            doc[block] = getattr(self, block).model_dump(mode="json", exclude_none=True)
        doc["ablation"] = [a.model_dump(mode="json") for a in self.ablation]
        return doc

    def to_yaml(self) -> str:
        """:meth:`to_document` as YAML text."""
        return yaml.safe_dump(self.to_document(), sort_keys=False)

    @property
    def storage_path(self) -> str:
        """The absolute storage location (local paths resolved against the working directory)."""
        path = self.storage.path
        return path if "://" in path else str(Path(path).expanduser().resolve())


# --- building ----------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``["train.steps=50", "quant.scheme=hadamard"]`` -> typed values (YAML scalars)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise SweepSpecError(
                [(item, "an override must look like KEY=VALUE, e.g. train.steps=50")]
            )
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as err:
            raise SweepSpecError([(key, f"cannot parse value {raw!r}: {err}")]) from None
        overrides[key.strip()] = _number_or_text(value)
    return overrides


def _number_or_text(value: Any) -> Any:
    """YAML 1.1 reads ``1e-3`` as text; a command line user means the number."""
    if isinstance(value, str) and NUMBER.match(value.strip()):
        return float(value)
    return value


SPACE_PREFIX = "search.space."
DIST_FIELDS = ("dist", "low", "high", "step", "values")


def _apply_space_override(space: dict[str, Any], key: str, value: Any) -> None:
    """``search.space.K=MAPPING`` sets K's distribution, ``=null`` drops it, ``K.low=V`` edits it"""
    rest = key[len(SPACE_PREFIX) :]
    head, _, field = rest.rpartition(".")
    if field in DIST_FIELDS and head in space:
        space[head] = {**dict(space[head]), field: value}
    elif value is None:
        space.pop(rest, None)
    else:
        space[rest] = value


def _apply_overrides(document: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    document = dict(document)
    search = dict(document.get("search") or {})
    # search.space keys are dotted run-config keys themselves: keep them out of the flattening
    space = dict(search.pop("space", None) or {})
    document["search"] = search
    flat = flatten(document)
    candidates = set(flat) | {f"{s}.{f}" for s, f in _all_section_fields()}
    for key, value in overrides.items():
        if key.startswith(SPACE_PREFIX):
            _apply_space_override(space, key, value)
            continue
        if key not in candidates:
            raise SweepSpecError([(key, unknown_key_message(key, candidates))])
        flat = {k: v for k, v in flat.items() if not k.startswith(key + ".")}
        flat[key] = value
    result = unflatten(flat)
    result.setdefault("search", {})["space"] = space
    return result


def _all_section_fields() -> Iterable[tuple[str, str]]:
    for section in RUN_SECTIONS:
        for field in RunConfig.model_fields[section].annotation.model_fields:
            yield section, field
    for name, block in (("search", SearchSpec), ("resources", ResourcesSpec),
                        ("storage", StorageSpec), ("tracking", TrackingSpec)):  # fmt: skip
        for field in block.model_fields:
            yield name, field


def build_sweep(
    document: Mapping[str, Any],
    *,
    name: str | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> SweepSpec:
    """Validate a sweep document (parsed YAML) with overrides into a :class:`SweepSpec`."""
    if not isinstance(document, Mapping):
        raise SweepSpecError([("", "a sweep file must be a YAML mapping of sections")])
    problems: list[tuple[str, str]] = []
    known = {*RUN_SECTIONS, "name", "description", "preset", "search", "resources", "storage",
             "tracking", "ablation"}  # fmt: skip
    for key in document:
        if key not in known:
            problems.append((key, unknown_key_message(key, known)))
    doc = _apply_overrides({k: v for k, v in document.items() if k in known}, overrides or {})
    run_doc = {k: doc[k] for k in RUN_SECTIONS if k in doc}
    run: RunConfig | None = None
    try:
        run = RunConfig.from_dict(run_doc)
    except ConfigError as err:
        problems.extend(err.problems)
    sweep_name = str(doc.get("name") or name or "sweep")
    if not NAME_PATTERN.match(sweep_name):
        problems.append(("name", "use letters, digits, '_', '-' or '.' (at most 100 characters)"))
    blocks: dict[str, Any] = {}
    for key, model in (("search", SearchSpec), ("resources", ResourcesSpec),
                       ("storage", StorageSpec), ("tracking", TrackingSpec)):  # fmt: skip
        try:
            blocks[key] = model.model_validate(doc.get(key) or {})
        except ValidationError as err:
            problems.extend(
                (f"{key}.{k}" if k else key, m) for k, m in describe_validation_error(err, model)
            )
    ablations: list[AblationSpec] = []
    for index, item in enumerate(doc.get("ablation") or []):
        try:
            ablations.append(AblationSpec.model_validate(item))
        except ValidationError as err:
            problems.extend(
                (f"ablation[{index}].{k}", m)
                for k, m in describe_validation_error(err, AblationSpec)
            )
    if run is not None and "search" in blocks:
        problems.extend(_space_problems(run, blocks["search"]))
        problems.extend(_objective_problems(run, blocks["search"]))
        if "resources" in blocks:
            problems.extend(_resource_problems(run, blocks["resources"]))
    if run is not None and ablations:
        problems.extend(_ablation_problems(run, blocks.get("search"), ablations))
    if problems or run is None:
        raise SweepSpecError(problems)
    return SweepSpec(
        name=sweep_name,
        description=str(doc.get("description") or ""),
        preset=preset or doc.get("preset"),
        run=run,
        ablation=ablations,
        **blocks,
    )


def load_sweep(source: str, overrides: Sequence[str] = ()) -> SweepSpec:
    """A sweep from a YAML file path or a preset name, with ``KEY=VALUE`` overrides."""
    from search_spaces import load_preset_text, preset_names

    path = Path(source)
    preset: str | None = None
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SweepSpecError([("", f"sweep file {source} does not exist")])
        text = path.read_text()
        name = path.stem
    elif source in preset_names():
        text, name, preset = load_preset_text(source), source, source
    else:
        raise SweepSpecError(
            [
                (
                    "",
                    f"{source!r} is neither a sweep file nor a preset; "
                    f"presets: {', '.join(preset_names())}",
                )
            ]
        )
    try:
        document = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        raise SweepSpecError([("", f"{source} is not valid YAML: {err}")]) from None
    return build_sweep(document, name=name, preset=preset, overrides=parse_overrides(overrides))


# --- cross checks ------------------------------------------------------------------------------


def _variants(run: RunConfig, key: str, dist: Distribution) -> Iterable[dict[str, Any]]:
    """The override sets that stand for one searched key's whole range."""
    if key == SCENARIO_KEY:
        for value in dist.values or []:
            yield dict(value.get("set", {})) if isinstance(value, dict) else {}
    else:
        for value in dist.bounds():
            yield {key: value}


def _space_problems(run: RunConfig, search: SearchSpec) -> Iterable[tuple[str, str]]:
    flat = run.to_flat()
    for key, dist in search.space.items():
        where = f"search.space.{key}"
        if key == SCENARIO_KEY:
            if dist.dist not in ("grid", "choice") or not is_scenario(dist):
                yield (
                    where,
                    "a scenario is {dist: grid|choice, values: [{label: NAME, set: {KEY: VALUE}}]}",
                )
                continue
            for value in dist.values or []:
                try:
                    run.with_overrides(value["set"])
                except ConfigError as err:
                    for sub_key, message in err.problems:
                        yield where, f"scenario {value['label']!r}: {sub_key}: {message}"
            continue
        if key not in flat:
            yield (
                where,
                unknown_key_message(key, flat) + " (search keys are dotted run-config keys)",
            )
            continue
        for value in dist.bounds():
            try:
                run.with_overrides({key: value})
            except ConfigError as err:
                for sub_key, message in err.problems:
                    yield where, f"value {value!r} is invalid: {sub_key}: {message}"
                break
    if search.algorithm == "grid":
        for key, dist in search.space.items():
            if dist.dist not in ("grid", "choice"):
                yield f"search.space.{key}", "algorithm 'grid' needs dist 'grid' (or 'choice')"


def reported_metrics(run: RunConfig, search: SearchSpec | None = None) -> set[str]:
    """The metric names trials of this sweep can report (the metrics contract)."""
    from trainables.objective import reported_terms

    names = {"step", "train/loss", "train/lr", "loss/task", "val/loss", "quant/lambda",
             "growth/stage", "model/params", "model/bits_total", "model/bits_per_weight",
             "model/packed_bytes"}  # fmt: skip
    if run.task.kind == "lm":
        names |= {"val/bpb", "perf/tokens_per_s"}
    else:
        names |= {"val/acc", "perf/samples_per_s"}
    variants = [run]
    if search is not None:
        for key, dist in search.space.items():
            for overrides in _variants(run, key, dist):
                with contextlib.suppress(ConfigError):
                    variants.append(run.with_overrides(overrides))
    for variant in variants:
        names |= reported_terms(variant)
    return names


def _objective_problems(run: RunConfig, search: SearchSpec) -> Iterable[tuple[str, str]]:
    known = reported_metrics(run, search)
    field = "search.objectives" if search.objectives else "search.metric"
    for objective in search.objective_list:
        if objective.metric not in known:
            hint = unknown_key_message(objective.metric, known).removeprefix("unknown key; ")
            yield (
                field,
                (
                    f"{objective.metric!r} is not a metric these trials report"
                    + (f"; {hint}" if hint != "unknown key" else "")
                    + f" (they report: {', '.join(sorted(k for k in known if '/' in k))})"
                ),
            )
    if search.scheduler.type == "asha" and len(search.objective_list) > 1:
        pass  # ASHA stops on the first objective; documented in the README


def _resource_problems(run: RunConfig, resources: ResourcesSpec) -> Iterable[tuple[str, str]]:
    if run.growth.enabled and resources.strategy == "fsdp":
        yield "growth.enabled", "progressive growth is not supported with resources.strategy 'fsdp'"


def _ablation_problems(
    run: RunConfig, search: SearchSpec | None, ablations: list[AblationSpec]
) -> Iterable[tuple[str, str]]:
    flat = run.to_flat()
    metrics = reported_metrics(run, search)
    for index, ablation in enumerate(ablations):
        if ablation.value not in metrics:
            yield f"ablation[{index}].value", unknown_key_message(ablation.value, metrics)
        for field in ("rows", "cols"):
            key = getattr(ablation, field)
            if key is not None and key not in flat and key != SCENARIO_KEY:
                yield f"ablation[{index}].{field}", unknown_key_message(key, flat)
