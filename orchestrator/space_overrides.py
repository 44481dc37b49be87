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
from collections.abc import Iterable, Mapping
from typing import Any

from orchestrator.tune_space import SCENARIO_KEY
from trainables.config import ConfigError


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
