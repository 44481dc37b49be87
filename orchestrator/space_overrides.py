"""How command-line overrides meet ``search.space`` (used by ``orchestrator.spec``).

- ``KEY=VALUE`` on a key the space searches pins it: the key leaves ``search.space`` (or, for a
  key a scenario sets, each scenario's ``set``), every trial runs VALUE, and a one-line note says
  so. Without the pin the search would silently replace the value.
- ``search.space.KEY=null`` drops a searched key without pinning it: trials run the file's value.
- ``search.space={}`` empties the space: every trial runs the fixed config (``num_samples`` times).

The space here is the raw document (plain mappings), before it is validated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from orchestrator.errors import SweepSpecError
from orchestrator.tune_space import SCENARIO_KEY
from trainables.config import ConfigError, flatten, unflatten, unknown_key_message
from trainables.quant_config import retarget_document

NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


def shown(value: Any) -> str:
    """A parsed override value as the user would type it (``null``, ``true``, ``[2, 4]``)."""
    if value is None or isinstance(value, bool | list | dict):
        return json.dumps(value)
    return str(value)


def empty_space_note(num_samples: Any) -> str | None:
    """The note for a space the overrides emptied: ``num_samples`` trials of one fixed config."""
    if num_samples == 1:
        return None
    return (
        f"search.space is empty: all {num_samples} trials run the same fixed config "
        "(search.num_samples=1 runs it once)"
    )


def whole_space(value: Any) -> dict[str, Any]:
    """The space ``search.space=VALUE`` sets: a mapping (``{}`` empties it) or ``null``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        message = f"give a mapping of KEY: distribution ({{}} empties it), got {shown(value)}"
        raise ConfigError([("search.space", message)])
    return dict(value)


def _scenario_sets(space: Mapping[str, Any]) -> Iterable[Mapping[str, Any]]:
    scenario = space.get(SCENARIO_KEY)
    values = scenario.get("values") if isinstance(scenario, Mapping) else None
    for value in values if isinstance(values, list) else []:
        if isinstance(value, Mapping) and isinstance(value.get("set"), Mapping):
            yield value["set"]


def pin(space: dict[str, Any], key: str, value: Any) -> str | None:
    """Take ``key`` out of the search (``key=value`` fixes it); the note to print, if it was
    searched. A key a scenario sets leaves every scenario's ``set``."""
    if key in space:
        del space[key]
        return f"{key}={shown(value)} pins a searched key (removed from search.space)"
    if any(key in overrides for overrides in _scenario_sets(space)):
        scenario = dict(space[SCENARIO_KEY])
        scenario["values"] = [
            {**v, "set": {k: x for k, x in v["set"].items() if k != key}}
            if isinstance(v, Mapping) and isinstance(v.get("set"), Mapping)
            else v
            for v in scenario["values"]
        ]
        space[SCENARIO_KEY] = scenario
        return (
            f"{key}={shown(value)} pins a key the scenarios set "
            f"(removed from every search.space.{SCENARIO_KEY} set)"
        )
    return None


def drop(space: dict[str, Any], key: str, pinned: Iterable[str] = ()) -> None:
    """``search.space.KEY=null``: stop searching ``key``; a key that is not searched is an error
    (a typo would otherwise leave the search as it was), unless an override already pinned it."""
    if key in space:
        del space[key]
    elif key not in pinned:
        searched = ", ".join(sorted(space)) or "none"
        raise ConfigError(
            [(f"search.space.{key}", f"{key!r} is not searched (searched keys: {searched})")]
        )


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


def _apply_space_override(
    space: dict[str, Any], key: str, value: Any, pinned: Iterable[str] = ()
) -> None:
    """``search.space.K=MAPPING`` sets K's distribution, ``=null`` drops it, ``K.low=V`` edits it"""
    rest = key[len(SPACE_PREFIX) :]
    head, _, field = rest.rpartition(".")
    if field in DIST_FIELDS and head in space:
        space[head] = {**dict(space[head]), field: value}
    elif value is None:
        drop(space, rest, pinned)
    else:
        space[rest] = value


def apply_overrides(
    document: dict[str, Any],
    overrides: Mapping[str, Any],
    keys: set[str],
    default_samples: int,
    notes: list[str] | None = None,
) -> dict[str, Any]:
    """Apply dotted overrides to a sweep ``document``; one of a searched key pins it (a line in
    ``notes`` says so). ``keys``: every settable dotted key besides those the document has;
    ``default_samples``: ``search.num_samples`` when the document does not set it."""
    document = dict(document)
    search = dict(document.get("search") or {})
    # search.space keys are dotted run-config keys themselves: keep them out of the flattening
    space = dict(search.pop("space", None) or {})
    document["search"] = search
    flat = flatten(document)
    candidates = set(flat) | keys
    notes = notes if notes is not None else []
    searched, pinned = bool(space), set[str]()
    for key, value in overrides.items():
        try:
            if key == SPACE_PREFIX.rstrip("."):  # search.space={} empties it
                space = whole_space(value)
                continue
            if key.startswith(SPACE_PREFIX):
                _apply_space_override(space, key, value, pinned)
                continue
            if key not in candidates:
                raise SweepSpecError([(key, unknown_key_message(key, candidates))])
            note = pin(space, key, value)  # a searched key: fixed, not searched
        except ConfigError as err:
            raise SweepSpecError(err.problems) from None
        if note:
            notes.append(note)
            pinned.add(key)
        flat = {k: v for k, v in flat.items() if not k.startswith(key + ".")}
        flat[key] = value
    samples = flat.get("search.num_samples", default_samples)
    note = empty_space_note(samples) if searched and not space else None
    notes.extend([note] if note else [])
    result = unflatten(flat)
    retarget_document(document, result, overrides)  # quant.scheme=X: drop what X does not take
    result.setdefault("search", {})["space"] = space
    return result
