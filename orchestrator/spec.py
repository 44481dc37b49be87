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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from orchestrator import space_overrides
from orchestrator.errors import SweepSpecError
from orchestrator.search_spec import (  # noqa: F401 - part of spec's public names
    Distribution,
    ObjectiveSpec,
    SamplerSpec,
    SchedulerSpec,
    SchedulerType,
    SearchSpec,
    _Block,
)
from orchestrator.space_overrides import parse_overrides
from orchestrator.tune_space import SCENARIO_KEY, is_scenario
from trainables import metric_names
from trainables.config import (
    ConfigError,
    RunConfig,
    describe_validation_error,
    section_fields,
    unknown_key_message,
)

# every section of the run config (a section added there is a sweep key at once: resume reads it)
RUN_SECTIONS = tuple(RunConfig.model_fields)
DEFAULT_STORAGE = "bitsweep_results"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


class ResourcesSpec(_Block):
    """How each trial runs and how many run at once."""

    workers_per_trial: int = Field(1, ge=1, le=4096)
    strategy: Literal["none", "ddp", "fsdp"] = "none"
    cpus_per_worker: float = Field(1.0, gt=0.0)
    gpus_per_worker: float = Field(0.0, ge=0.0)
    max_concurrent_trials: int | None = Field(None, ge=1)
    # Retries of a failed trial (Tune's FailureConfig) and of a failed Train run (Train's).
    max_failures: int = Field(0, ge=0, le=100)

    @model_validator(mode="after")
    def _strategy_fits(self) -> ResourcesSpec:
        if self.workers_per_trial > 1 and self.strategy == "none":
            raise ValueError("workers_per_trial > 1 needs strategy 'ddp' or 'fsdp'")
        return self


class StorageSpec(_Block):
    """Where Tune keeps results and checkpoints: a local path or a pyarrow filesystem URI."""

    path: str = DEFAULT_STORAGE
    # Checkpoints kept per trial besides its latest: the best N by the first objective (Tune's
    # CheckpointConfig; the latest is never deleted). None keeps every checkpoint.
    keep_checkpoints: int | None = Field(1, ge=1)


class TrackingSpec(_Block):
    """The MLflow tracking URI (``None``: ``MLFLOW_TRACKING_URI`` or a local sqlite store)."""

    uri: str | None = None
    experiment: str = "bitsweep"

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str | None) -> str | None:
        from orchestrator.uris import tracking_scheme_problem

        problem = tracking_scheme_problem(uri) if uri else None
        if problem:
            raise ValueError(problem)
        return uri

    def resolved_uri(self) -> str:
        """The URI to log to."""
        return self.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class AblationSpec(_Block):
    """A matrix built at the end: ``value`` by ``rows`` x ``cols``, mean and std over the rest."""

    name: str
    rows: str
    cols: str | None = None
    value: str
    # None: finished trials' final values; a step: every trial's value at that step (an ASHA
    # rung), so trials stopped early compare with finished ones where both were measured
    at_step: int | None = Field(None, ge=0)


class SweepSpec(_Block):
    """A validated sweep: the base run config and everything around it."""

    name: str
    # name plus a short suffix, one per `bitsweep run` (orchestrator.identity); None until run
    sweep_id: str | None = None
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
        if self.sweep_id:
            doc["sweep_id"] = self.sweep_id
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


def _apply_overrides(
    document: dict[str, Any], overrides: Mapping[str, Any], notes: list[str] | None = None
) -> dict[str, Any]:
    """Apply dotted overrides to ``document`` (see :func:`space_overrides.apply_overrides`)."""
    candidates = {f"{s}.{f}" for s, f in _all_section_fields()}
    default_samples = SearchSpec.model_fields["num_samples"].default
    return space_overrides.apply_overrides(document, overrides, candidates, default_samples, notes)


def _all_section_fields() -> Iterable[tuple[str, str]]:
    for section in RUN_SECTIONS:
        for field in section_fields(section):  # quant: the keys of every registered scheme
            yield section, field
    for name, block in (("search", SearchSpec), ("resources", ResourcesSpec),
                        ("storage", StorageSpec), ("tracking", TrackingSpec)):  # fmt: skip
        for field in block.model_fields:
            yield name, field
    # the search block's own sub-blocks, so `search.scheduler.type=asha` works on any preset
    for name, block in (("scheduler", SchedulerSpec), ("sampler", SamplerSpec)):
        for field in block.model_fields:
            yield "search", f"{name}.{field}"


def build_sweep(
    document: Mapping[str, Any],
    *,
    name: str | None = None,
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    notify: Callable[[str], None] | None = None,
) -> SweepSpec:
    """Validate a sweep document (parsed YAML) with overrides into a :class:`SweepSpec`.

    ``notify`` gets one line per override that changed the search (a pinned searched key, an
    emptied space), before validation.
    """
    if not isinstance(document, Mapping):
        raise SweepSpecError([("", "a sweep file must be a YAML mapping of sections")])
    problems: list[tuple[str, str]] = []
    known = {*RUN_SECTIONS, "name", "sweep_id", "description", "preset", "search", "resources",
             "storage", "tracking", "ablation"}  # fmt: skip
    for key in document:
        if key not in known:
            problems.append((key, unknown_key_message(key, known)))
    notes: list[str] = []
    doc = _apply_overrides(
        {k: v for k, v in document.items() if k in known}, overrides or {}, notes
    )
    for note in notes if notify is not None else []:
        notify(note)
    run_doc = {k: doc[k] for k in RUN_SECTIONS if k in doc}
    run: RunConfig | None = None
    try:
        run = RunConfig.from_dict(run_doc)
    except ConfigError as err:
        problems.extend(err.problems)
    sweep_name = str(doc.get("name") or name or "sweep")
    if not NAME_PATTERN.match(sweep_name):
        problems.append(("name", "use letters, digits, '_', '-' or '.' (at most 100 characters)"))
    sweep_id = doc.get("sweep_id")
    if sweep_id is not None and not NAME_PATTERN.match(str(sweep_id)):
        problems.append(("sweep_id", "use letters, digits, '_', '-' or '.'"))
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
        sweep_id=None if sweep_id is None else str(sweep_id),
        description=str(doc.get("description") or ""),
        preset=preset or doc.get("preset"),
        run=run,
        ablation=ablations,
        **blocks,
    )


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    """``"; did you mean 'demo'?"`` for a close match among ``choices``, else ``""``."""
    import difflib

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def print_note(line: str) -> None:
    """Print a note about the resolved sweep on stderr (the CLI's one-line notices)."""
    import sys

    print(f"bitsweep: {line}", file=sys.stderr)


def load_sweep(
    source: str, overrides: Sequence[str] = (), notify: Callable[[str], None] | None = print_note
) -> SweepSpec:
    """A sweep from a YAML file path or a preset name, with ``KEY=VALUE`` overrides.

    An override of a searched key pins it (see ``orchestrator.space_overrides``); ``notify``
    (default: a line on stderr) hears of each such change.
    """
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
                    f"{source!r} is neither a sweep file nor a preset"
                    + _did_you_mean(source, preset_names())
                    + f" (presets: {', '.join(preset_names())})",
                )
            ]
        )
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise SweepSpecError([("", f"{source} is not valid YAML: {err}")]) from None
    if document is None:  # an empty file, or comments only: say so, not "search: give metric"
        raise SweepSpecError(
            [("", f"sweep file {source} is empty: give at least search.metric and search.mode "
                  "(bitsweep show demo prints a complete sweep file)")]
        )  # fmt: skip
    return build_sweep(
        document, name=name, preset=preset, overrides=parse_overrides(overrides), notify=notify
    )


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
        # a quant option of another scheme: the bounds below say which scheme takes it
        other_scheme = key.startswith("quant.") and key[6:] in section_fields("quant")
        if key not in flat and not other_scheme:
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
    """The metric names (and patterns such as ``bits/<layer>``) trials of this sweep can report.

    The union over the run config and each searched key's range of
    :func:`trainables.metric_names.reported_metrics`, the one declaration of the contract.
    """
    variants = [run]
    if search is not None:
        for key, dist in search.space.items():
            for overrides in _variants(run, key, dist):
                with contextlib.suppress(ConfigError):
                    variants.append(run.with_overrides(overrides))
    names: set[str] = set()
    for variant in variants:
        names |= metric_names.reported_metrics(variant)
    return names


def _objective_problems(run: RunConfig, search: SearchSpec) -> Iterable[tuple[str, str]]:
    known = reported_metrics(run, search)
    field = "search.objectives" if search.objectives else "search.metric"
    for objective in search.objective_list:
        problem = metric_names.unreported_problem(objective.metric, known)
        if problem is not None:
            yield field, problem
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
        problem = metric_names.unreported_problem(ablation.value, metrics)
        if problem is not None:
            yield f"ablation[{index}].value", problem
        for field in ("rows", "cols"):
            key = getattr(ablation, field)
            if key is not None and key not in flat and key != SCENARIO_KEY:
                yield f"ablation[{index}].{field}", unknown_key_message(key, flat)
