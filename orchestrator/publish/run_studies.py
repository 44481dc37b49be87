"""Run the studies a scale file names, in order, each as a new sweep on one tracking store."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from orchestrator.publish.scale import PublishError, ScaleFile, StudyScale
from orchestrator.publish.studies import FIXED, STUDIES, Study, sweep_name

EXPERIMENT = "bitsweep-results"
# The model keys a grown run ends at (``growth/<field>`` at its last growth event).
SIZE_KEYS = ("n_layers", "d_model", "seq_len")


def study_spec(
    study: Study, scale: StudyScale, context: Mapping[str, Any], *, tracking_uri: str, storage: str
) -> Any:
    """The :class:`~orchestrator.spec.SweepSpec` of ``study`` at ``scale``."""
    import yaml

    from orchestrator.spec import build_sweep
    from search_spaces import load_preset_text

    document = yaml.safe_load(load_preset_text(study.preset))
    if study.search is not None:
        document["search"] = study.search(scale, context)
        document["ablation"] = [dict(a) for a in study.ablation]
    document["name"] = sweep_name(study.name)
    document["tracking"] = {"uri": tracking_uri, "experiment": EXPERIMENT}
    document["storage"] = {"path": storage}
    fixed: dict[str, Any] = dict(FIXED.get(study.name, {}))
    if study.name == "bitnet_finetune":
        fixed["model.hf_path"] = str(context["base_model"])
    # written into the base run, not passed as overrides: an override of a key that a scenario
    # sets would pin it in every cell (the early-exit cells would lose their exits)
    for dotted, value in fixed.items():
        section, _, key = dotted.partition(".")
        document.setdefault(section, {})[key] = value
    return build_sweep(document, preset=study.preset, overrides=scale.set)


def grown_size(results: Any, preset_model: Mapping[str, Any]) -> dict[str, int]:
    """The model size most grown trials ended at: the last ``growth/<key>`` each reported, or
    the preset's size for a trial that never grew."""
    from collections import Counter

    sizes = []
    for _, row in results.completed_trials().iterrows():
        size = []
        for key in SIZE_KEYS:
            value = row.get(f"growth/{key}", math.nan)
            missing = value is None or math.isnan(value)
            size.append(int(preset_model[key]) if missing else int(value))
        sizes.append(tuple(size))
    if not sizes:
        raise PublishError("the grown study has no finished trial: its size cannot be copied")
    common = Counter(sizes).most_common(1)[0][0]
    return {f"model.{k}": int(v) for k, v in zip(SIZE_KEYS, common, strict=True)}


def run_studies(
    scale: ScaleFile,
    *,
    tracking_uri: str,
    storage: Path,
    work: Path,
    say: Callable[[str], None] = print,
) -> dict[str, str]:
    """Run every study of ``scale`` (in :data:`STUDIES` order); their parent run ids by name."""
    from orchestrator.results import load_sweep_results
    from orchestrator.runner import run_sweep

    context: dict[str, Any] = {}
    parents: dict[str, str] = {}
    if "bitnet_finetune" in scale.studies:
        from orchestrator.publish.base_model import pretrained_base

        steps = scale.studies["bitnet_finetune"].base_steps
        context["base_model"] = pretrained_base(work / "base_model", steps=steps)
    # every sweep validated before the first one trains (scratch: with the preset's size)
    for study in STUDIES:
        if study.name in scale.studies:
            study_spec(
                study,
                scale.studies[study.name],
                {**context, "grown_size": {}},
                tracking_uri=tracking_uri,
                storage=str(storage),
            )
    for study in STUDIES:
        if study.name not in scale.studies:
            continue
        size = scale.studies[study.name]
        if "grown" in study.needs:
            if "grown" not in parents:
                raise PublishError("the scratch study needs the grown study in the scale file")
            grown = load_sweep_results(
                parents["grown"], tracking_uri=tracking_uri, experiment=EXPERIMENT
            )
            preset = study_spec(
                study, size, {"grown_size": {}}, tracking_uri=tracking_uri, storage=str(storage)
            ).run.model
            context["grown_size"] = grown_size(grown, preset.model_dump())
        spec = study_spec(study, size, context, tracking_uri=tracking_uri, storage=str(storage))
        say(f"results: study {study.name} ({study.preset}) ...")
        outcome = run_sweep(spec, stream=None)
        parents[study.name] = outcome.parent_run_id
        say(f"results: study {study.name}: {len(outcome.trials)} trials, {outcome.failed} failed")
    return parents
