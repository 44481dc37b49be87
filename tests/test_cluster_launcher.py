"""The Ray cluster launcher YAML under cluster/launcher/: Ray's own schema and checks (offline),
GPU workers, token auth, a dashboard on 127.0.0.1 and the project installed with its constraints.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from cluster_fixtures import LAUNCHER_FILES, load_all


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_yaml_matches_rays_schema(path: Path) -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = load_all(path)
    # Ray's own bundled schema (what `ray up` validates against), then Ray's own checks after
    # it fills in the provider defaults, all offline.
    jsonschema.validate(config, _ray_schema())
    validate_config(config)
    validate_config(prepare_config(config))

    types = config["available_node_types"]
    assert config["head_node_type"] in types
    workers = {k: v for k, v in types.items() if k != config["head_node_type"]}
    assert workers and all(v["resources"].get("GPU", 0) >= 1 for v in workers.values())
    assert "GPU" not in types[config["head_node_type"]]["resources"]
    assert types[config["head_node_type"]]["resources"].get("trial_slot", 0) >= 1
    for spec in workers.values():
        assert 0 <= spec["min_workers"] <= spec["max_workers"] <= config["max_workers"]
    assert sum(v.get("min_workers", 0) for v in workers.values()) <= config["max_workers"]


@pytest.mark.parametrize("path", LAUNCHER_FILES, ids=lambda p: p.name)
def test_launcher_yaml_keeps_token_auth_and_a_local_dashboard(path: Path) -> None:
    (config,) = load_all(path)
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    ray_starts = [c for c in starts if "ray start" in c]
    assert len(ray_starts) == 2
    for command in ray_starts:
        assert re.search(r"\bRAY_AUTH_MODE=token\b", command)
    (head_start,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head_start
    # The token travels by file_mounts from a local directory to Ray's default token path.
    assert any("secrets" in remote for remote in config["file_mounts"])
    assert any("~/.ray/auth_token" in c and "600" in c for c in config["setup_commands"])
    # The project is installed by the setup commands with the repository's constraints.
    setup = " ".join(config["head_setup_commands"] + config["worker_setup_commands"])
    assert "constraints" in setup and "bitsweep" in setup
