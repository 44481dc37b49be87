"""The metrics contract: every key a trial reports is declared, and declared for its run config.

The contract test runs every shipped preset (from the registry) through the plain training loop
for two steps and one evaluation, its run config and each searched key's range, and compares the
reported keys with :func:`trainables.metric_names.reported_metrics` of that config.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from orchestrator.spec import load_sweep, reported_metrics
from search_spaces import load_preset_text, preset_names
from trainables import metric_names
from trainables.config import ConfigError, RunConfig
from trainables.loop import train
from trainables.metric_names import (
    DECLARED,
    LAYER_BITS,
    METRICS,
    ROUTE_EXIT_FRAC,
    declared,
    is_declared,
    reports,
    unreported_problem,
)
from trainables.reporting import ListReporter

# Reported only at events two training steps do not reach: a growth, a drift, a finished
# distillation; every other name a config declares must show up in its reports.
EVENT_ONLY = (
    metric_names.GROWTH_EVENT_METRICS
    | {metric_names.TELEMETRY_DRIFT, metric_names.TELEMETRY_HALTED}
    | {f"{metric_names.TELEMETRY_DRIFT_PREFIX}{m}" for m in metric_names.TELEMETRY_METRICS}
    | {f"distill/{f}" for f in metric_names.DISTILL_FIELDS}
)


# ---- the declaration ---------------------------------------------------------------------------


def test_the_module_imports_the_standard_library_only() -> None:
    source = Path(metric_names.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - {"__future__"} <= sys.stdlib_module_names, imported
    code = (
        "import sys, json; import trainables.metric_names; "
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout))
    assert not loaded & {"torch", "ray", "mlflow", "optuna", "pydantic", "numpy"}, loaded


def test_every_metric_is_declared_once_with_a_description() -> None:
    assert len(DECLARED) == len(METRICS)
    for metric in METRICS:
        assert metric.description.strip() and metric.when.strip(), metric
        assert metric.name.count("/") >= 1 or metric.name == metric_names.STEP
        assert declared(metric.name.replace("<layer>", "a.0").replace("<exit>", "3")) == metric


def test_patterns_match_their_instances_only() -> None:
    assert declared("bits/blocks.0.attn.q_proj") == DECLARED[LAYER_BITS]
    assert declared("route/exit_frac/12") == DECLARED[ROUTE_EXIT_FRAC]
    for name in ("bits/", "bits/a b", "bits/.x", "route/exit_frac/0", "route/exit_frac/x",
                 "val/accuracy", "loss/quantization", "val/loss/extra"):  # fmt: skip
        assert not is_declared(name), name


@given(st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True), min_size=1, max_size=5))
def test_every_module_name_has_a_declared_bit_width_metric(parts: list[str]) -> None:
    name = metric_names.bits_name(".".join(parts))
    assert declared(name) == DECLARED[LAYER_BITS]
    assert reports({LAYER_BITS}, name) and not reports({"val/loss"}, name)


def test_the_event_codecs_use_the_declared_names() -> None:
    from trainables.growth_events import EVENT_METRICS as GROWTH_EVENTS
    from trainables.quant.registry import LEARNABLE_BITS
    from trainables.telemetry_events import EVENT_METRICS as DRIFT_EVENTS

    assert GROWTH_EVENTS == metric_names.GROWTH_EVENT_METRICS
    assert all(is_declared(name) for name in DRIFT_EVENTS)
    assert metric_names.LEARNABLE_BITS == LEARNABLE_BITS  # the capability that reports bits/*


def test_a_config_declares_only_declared_names() -> None:
    cfg = RunConfig.from_flat({"model.early_exit": True, "model.layer_dropout": 0.1})
    names = metric_names.reported_metrics(cfg)
    assert all(is_declared(name) for name in names)
    assert {"model/layers_dropped", "route/exit_frac/2", "val/bpb"} <= names
    assert "route/exit_frac/3" not in names and "val/acc" not in names  # 2 layers, a byte LM


def test_the_start_evaluation_is_declared_for_runs_with_eval_at_start_only() -> None:
    lm = RunConfig.from_flat({"train.eval_at_start": True})
    vision = lm.with_overrides(
        {"task.kind": "vision", "model.arch": "mlp", "data.source": "digits"}
    )
    start = {"val/loss_start", "val/bpb_start", "val/acc_start"}
    assert metric_names.reported_metrics(lm) & start == {"val/loss_start", "val/bpb_start"}
    assert metric_names.reported_metrics(vision) & start == {"val/loss_start", "val/acc_start"}
    assert not metric_names.reported_metrics(RunConfig()) & start
    problem = unreported_problem("val/loss_start", metric_names.reported_metrics(RunConfig()))
    assert problem is not None and "train.eval_at_start" in problem
    assert "perf/saved_activation_mib" in metric_names.reported_metrics(RunConfig())


def test_an_unreported_name_is_explained() -> None:
    reported = metric_names.reported_metrics(RunConfig.from_flat({"model.early_exit": True}))
    assert unreported_problem("val/loss_exit", reported) is None
    undeclared = unreported_problem("val/los", reported)
    assert undeclared is not None and "no such metric is declared" in undeclared
    assert "did you mean 'val/loss'" in undeclared and "route/exit_frac/<exit>" in undeclared
    dropped = unreported_problem("model/layers_dropped", reported)
    assert dropped is not None and "model.layer_dropout > 0" in dropped
    beyond = unreported_problem("route/exit_frac/3", reported)
    assert beyond is not None and "route/exit_frac/1, route/exit_frac/2" in beyond


# ---- the contract: every preset, briefly -------------------------------------------------------


def _tiny(run: RunConfig, hf_path: Callable[[], Path], tmp_path: Path) -> dict[str, Any]:
    """Overrides that make a run of any architecture take well under a second."""
    out: dict[str, Any] = {"train.steps": 2, "train.eval_every": 2, "train.threads": 1,
                           "train.grad_accum": 1, "data.eval_batches": 1}  # fmt: skip
    arch = run.model.arch
    if arch in ("byte_lm", "bit_lm"):
        out |= {"model.d_model": 16, "model.n_heads": 2, "train.batch_size": 2,
                "model.seq_len": 18 if arch == "bit_lm" else 16}  # fmt: skip
    if arch == "bit_lm":  # one block: evaluation generates bit by bit
        out |= {"model.n_layers": 1, "telemetry.gen_bytes": 2, "telemetry.gen_samples": 1,
                "telemetry.retries": 0}  # fmt: skip
    if arch == "mlp":
        out |= {"model.hidden": [16], "train.batch_size": 16}
    if arch == "conv":
        out |= {"model.widths": [4], "train.batch_size": 16}
    if arch == "hf_causal_lm":
        out |= {"model.hf_path": str(hf_path()), "model.seq_len": 16, "train.batch_size": 2}
    if run.data.source == "selfgen":
        out |= {"data.selfgen_num": 8, "data.max_new_tokens": 64, "data.path": str(tmp_path)}
    return out


def _trial_configs(preset: str, hf_path: Callable[[], Path], tmp_path: Path) -> list[RunConfig]:
    """The preset's run config, each scenario, and configs that give every searched key each of
    its values (or bounds) at least once; all tiny."""
    needs_model = yaml.safe_load(load_preset_text(preset))["model"].get("arch") == "hf_causal_lm"
    given = [f"model.hf_path={hf_path()}"] if needs_model else []
    spec = load_sweep(preset, given, notify=None)
    tiny = _tiny(spec.run, hf_path, tmp_path)
    variants: list[dict[str, Any]] = [{}]
    ranges = {key: dist.bounds() for key, dist in spec.search.space.items() if key != "scenario"}
    if "scenario" in spec.search.space:
        variants += [dict(value["set"]) for value in spec.search.space["scenario"].values or []]
    for index in range(max(map(len, ranges.values()), default=0)):
        together = {key: values[index % len(values)] for key, values in ranges.items()}
        try:
            spec.run.with_overrides({**tiny, **together})
            variants.append(together)
        except ConfigError:  # values that do not go together: one key at a time
            variants += [{key: value} for key, value in together.items()]
    configs: dict[str, RunConfig] = {}
    for variant in variants:
        cfg = spec.run.with_overrides({**tiny, **variant})
        configs.setdefault(json.dumps(cfg.to_flat(), sort_keys=True, default=str), cfg)
    # the spec's objective check accepts what these trials report
    declared_by_spec = reported_metrics(spec.run, spec.search)
    assert all(metric_names.reported_metrics(cfg) <= declared_by_spec for cfg in configs.values())
    return list(configs.values())


@pytest.fixture(scope="module")
def hf_path(tmp_path_factory: pytest.TempPathFactory) -> Callable[[], Path]:
    """A tiny local Llama, saved on first use only (for presets of an hf_causal_lm)."""
    made: list[Path] = []

    def path() -> Path:
        if not made:
            from hf_fixtures import save_tiny_llama

            made.append(save_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny-llama"))
        return made[0]

    return path


@pytest.mark.parametrize("preset", preset_names())
def test_every_reported_key_is_declared_for_its_config(
    preset: str, hf_path: Callable[[], Path], tmp_path: Path
) -> None:
    for cfg in _trial_configs(preset, hf_path, tmp_path):
        reporter = ListReporter()
        train(cfg, reporter=reporter)
        seen = {key for report in reporter.metrics for key in report}
        expected = metric_names.reported_metrics(cfg)
        undeclared = sorted(key for key in seen if not is_declared(key))
        assert not undeclared, f"{preset}: undeclared metrics {undeclared}"
        missed = sorted(key for key in seen if not reports(expected, key))
        assert not missed, f"{preset}: reported but not declared for its config: {missed}"
        absent = sorted(name for name in expected - EVENT_ONLY if not _among(name, seen))
        assert not absent, f"{preset}: declared for its config but never reported: {absent}"


def _among(name: str, seen: set[str]) -> bool:
    """Whether ``name`` (a name, or a pattern such as ``bits/<layer>``) is among ``seen``."""
    metric = DECLARED.get(name)
    return name in seen or (metric is not None and any(declared(key) == metric for key in seen))
