"""The studies of ``make results``: each a preset with the search block its claim needs.

A study's sweep is its preset's base run with the search replaced by a grid over the factors the
claim compares and the training seeds (so a matrix cell averages over seeds only), except the
two Optuna searches of seed 000, which run as their presets do. The scale file then sizes it
(:class:`~orchestrator.publish.scale.StudyScale`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from orchestrator.publish.scale import StudyScale

Document = dict[str, Any]
SEED = "train.seed"


@dataclass(frozen=True)
class Study:
    """One sweep of the results: its name, the RESULTS.md section it feeds, its preset, and how
    its search block is made from the scale (``context`` holds earlier studies' facts)."""

    name: str
    section: str
    preset: str
    search: Callable[[StudyScale, Mapping[str, Any]], Document] | None
    ablation: tuple[Mapping[str, Any], ...] = ()
    needs: tuple[str, ...] = ()  # studies whose results this one's search reads


def _grid(values: list[Any]) -> Document:
    return {"dist": "grid", "values": list(values)}


def _search(metric: str, mode: str, space: Document) -> Document:
    return {
        "algorithm": "grid",
        "num_samples": 1,
        "metric": metric,
        "mode": mode,
        "scheduler": {"type": "none"},
        "space": space,
    }


def _seeds_only(metric: str, mode: str) -> Callable[[StudyScale, Mapping[str, Any]], Document]:
    return lambda scale, _: _search(metric, mode, {SEED: _grid(scale.seeds)})


def _br(scale: StudyScale, _: Mapping[str, Any]) -> Document:
    from orchestrator.spec import load_sweep

    scenario = load_sweep("br-ablation", notify=None).search.space["scenario"]
    space = {"scenario": scenario.model_dump(exclude_none=True), SEED: _grid(scale.seeds)}
    return _search("val/acc", "max", space)


GRADUAL_SCENARIOS = [
    {"label": "full precision", "set": {"quant.scheme": "none"}},
    {
        "label": "immediate ternary",
        "set": {"quant.scheme": "ternary", "schedule.lambda_warmup_frac": 0.0},
    },
    {
        "label": "gradual ternary",
        "set": {"quant.scheme": "ternary", "schedule.lambda_warmup_frac": 0.4},
    },
]


def _gradual(scale: StudyScale, _: Mapping[str, Any]) -> Document:
    widths = scale.widths or [64, 128]
    space = {
        "scenario": _grid(GRADUAL_SCENARIOS),
        "model.d_model": _grid(widths),
        SEED: _grid(scale.seeds),
    }
    return _search("val/bpb", "min", space)


EXIT_KEYS = ("model.early_exit", "loss.lambda_r", "loss.target_exit_layer", "loss.lambda_exit")
# The base of the early-exit study has no exits (FIXED); its "early exit" cells put back the
# early-exit preset's own settings.
NO_EXIT = {
    "model.early_exit": False,
    "loss.lambda_r": 0.0,
    "loss.target_exit_layer": None,
    "loss.lambda_exit": 0.0,
}


def _early_exit(scale: StudyScale, _: Mapping[str, Any]) -> Document:
    import yaml

    from search_spaces import load_preset_text

    preset = yaml.safe_load(load_preset_text("early-exit"))
    exits = {key: preset[key.split(".")[0]][key.split(".")[1]] for key in EXIT_KEYS}
    scenarios = [{"label": "no exit", "set": {}}, {"label": "early exit", "set": exits}]
    space = {
        "scenario": _grid(scenarios),
        "quant.scheme": _grid(["ternary", "hadamard"]),
        "model.layer_dropout": _grid([0.0, 0.1]),
        SEED: _grid(scale.seeds),
    }
    return _search("val/loss", "min", space)


def _scratch(scale: StudyScale, context: Mapping[str, Any]) -> Document:
    size = context["grown_size"]  # model keys of the grown runs' final size
    space = {SEED: _grid(scale.seeds), **{k: _grid([v]) for k, v in size.items()}}
    return _search("val/loss", "min", space)


def _reversible(scale: StudyScale, _: Mapping[str, Any]) -> Document:
    depths = scale.depths or [2, 4, 8]
    space = {
        "model.reversible": _grid([False, True]),
        "model.n_layers": _grid(depths),
        SEED: _grid(scale.seeds[:1]),
    }
    return _search("val/bpb", "min", space)


STUDIES: tuple[Study, ...] = (
    Study(
        "br_scenarios",
        "seed002",
        "br-ablation",
        _br,
        ({"name": "br_scenarios", "rows": "scenario", "value": "val/acc"},),
    ),
    Study(
        "br_scenarios_cifar",
        "seed002",
        "br-ablation",
        _br,
        ({"name": "br_scenarios", "rows": "scenario", "value": "val/acc"},),
    ),
    Study(
        "gradual",
        "seed003",
        "bitnet-lm",
        _gradual,
        (
            {
                "name": "scenario_by_width",
                "rows": "scenario",
                "cols": "model.d_model",
                "value": "val/bpb",
            },
        ),
    ),
    Study("bitnet_finetune", "seed003", "bitnet-finetune", _seeds_only("val/bpb", "min")),
    Study(
        "early_exit",
        "seed001",
        "early-exit",
        _early_exit,
        (
            {
                "name": "exit_by_scheme",
                "rows": "scenario",
                "cols": "quant.scheme",
                "value": "val/loss",
            },
            {
                "name": "exit_by_dropout",
                "rows": "scenario",
                "cols": "model.layer_dropout",
                "value": "val/loss",
            },
        ),
    ),
    Study("bit_budget", "seed000", "bit-budget", None),
    Study("mixed_precision", "seed000", "mixed-precision", None),
    Study("grown", "seed004", "scaleup", _seeds_only("val/loss", "min")),
    Study("scratch", "seed004", "scaleup", _scratch, needs=("grown",)),
    Study("bit_lm", "seed004", "bit-lm", _seeds_only("val/bpb", "min")),
    Study(
        "reversible_memory",
        "seed004",
        "bit-lm",
        _reversible,
        (
            {
                "name": "memory_by_depth",
                "rows": "model.n_layers",
                "cols": "model.reversible",
                "value": "perf/saved_activation_mib",
            },
        ),
    ),
)
STUDY_NAMES = [s.name for s in STUDIES]

# What a study sets besides its search (before the scale file's own ``set``).
FIXED: dict[str, dict[str, Any]] = {
    "br_scenarios_cifar": {"data.source": "cifar10", "model.arch": "conv"},
    "early_exit": NO_EXIT,
    "bitnet_finetune": {"train.eval_at_start": True},
    "scratch": {"growth.enabled": False},
    "bit_lm": {"model.act": False, "model.reversible": True, "loss.lambda_act": 0.0},
    "reversible_memory": {"model.act": False, "loss.lambda_act": 0.0},
}


def study(name: str) -> Study:
    """The study called ``name``."""
    return next(s for s in STUDIES if s.name == name)


def sweep_name(name: str) -> str:
    """The sweep (MLflow parent run) name of study ``name``."""
    return f"results-{name.replace('_', '-')}"
