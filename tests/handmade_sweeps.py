"""Hand-made sweeps written to a local MLflow store with the real ``SweepTracker``: what the
results API, the report and the plots are tested on, with every logged value kept for checks."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from orchestrator.tracking import SweepTracker

OBJECTIVES = [("val/acc", "max"), ("model/bits_total", "min")]
STEPS = (10, 20, 30)
SPACE = {
    "algorithm": "grid",
    "space": {
        "quant.weight_bits": {"dist": "grid", "values": [2, 4]},
        "quant.scheme": {"dist": "grid", "values": ["lsq", "ternary"]},
        "train.seed": {"dist": "grid", "values": [0, 1, 2]},
    },
    "num_samples": 1,
    "objectives": [{"metric": m, "mode": mode} for m, mode in OBJECTIVES],
}
ABLATION = {"name": "bits_by_scheme", "rows": "quant.weight_bits", "cols": "quant.scheme",
            "value": "val/acc"}  # fmt: skip
SWEEP_YAML = """name: {name}
search:
  algorithm: grid
ablation:
  - {{name: bits_by_scheme, rows: quant.weight_bits, cols: quant.scheme, value: val/acc}}
  - {{name: by_seed, rows: train.seed, value: model/bits_total}}
"""


@dataclass
class Trial:
    """What was logged for one trial."""

    trial_id: str
    params: dict[str, Any]
    history: dict[str, list[tuple[int, float]]]
    status: str = "finished"
    error: str | None = None
    run_id: str = ""

    def final(self, metric: str) -> float:
        return self.history[metric][-1][1]


@dataclass
class Handmade:
    """A hand-made sweep in a store: where it is and what it holds."""

    uri: str
    experiment: str
    name: str
    parent_run_id: str
    trials: dict[str, Trial] = field(default_factory=dict)


def _trials(seed: int) -> list[Trial]:
    rng = np.random.default_rng(seed)
    trials = []
    grid = itertools.product([2, 4], ["lsq", "ternary"], [0, 1, 2])
    for i, (bits, scheme, train_seed) in enumerate(grid):
        base = 0.6 + 0.1 * (bits == 4) + 0.05 * (scheme == "lsq")
        acc = [float(base + rng.uniform(-0.05, 0.05)) for _ in STEPS]
        acc[1] = max(acc) + 0.01  # the best accuracy is in mid-training, not at the end
        size = 1000.0 * bits + (100.0 if scheme == "lsq" else 0.0) + 10 * train_seed
        bits_total = [size + 50.0, size - 25.0 * (i % 3), size]  # not monotone either
        stage = [0.0, 1.0, 1.0] if i % 2 else [0.0, 1.0, 2.0]
        history = {
            "val/acc": list(zip(STEPS, acc, strict=True)),
            "model/bits_total": list(zip(STEPS, bits_total, strict=True)),
            "val/loss": [(s, float(2.0 - a)) for s, a in zip(STEPS, acc, strict=True)],
            "growth/stage": list(zip(STEPS, stage, strict=True)),
            "bits/layers.0": [(s, float(bits + 4)) for s in STEPS],
            "bits/layers.2": [(s, float(bits + 1)) for s in STEPS],
            "bits/layers.10": [(s, float(bits)) for s in STEPS],
            "route/exit_frac/1": [(s, 0.2) for s in STEPS],
            "route/exit_frac/2": [(s, 0.3) for s in STEPS],
            "route/exit_frac/3": [(s, 0.5) for s in STEPS],
        }
        params = {
            "quant.weight_bits": bits,
            "quant.scheme": scheme,
            "train.seed": train_seed,
            "train.lr": 0.001 * (i + 1),
            "train.steps": STEPS[-1],
            "model.subln": bool(i % 2),
            "quant.act_bits": None,
            "quant.act_signed": "auto" if train_seed == 0 else True,
            "growth.strategy": ["depth", "width"],
        }
        trials.append(Trial(f"t{i:02d}", params, history))
    # A failed trial: partial metrics, alone in its ablation row (8 bits).
    failed_history = {
        "val/acc": [(10, 0.99)],
        "model/bits_total": [(10, 1.0)],
        "val/loss": [(10, 0.5)],
    }
    params = {**trials[0].params, "quant.weight_bits": 8, "train.lr": 0.5}
    trials.append(Trial("t99", params, failed_history, "failed", "ValueError: loss is nan"))
    return trials


def write_sweep(
    uri: str,
    *,
    experiment: str = "handmade",
    name: str = "abl",
    seed: int = 0,
    spec: bool = True,
    finish: bool = True,
) -> Handmade:
    """Write the sweep through ``SweepTracker`` (as ``bitsweep run`` does) and return it."""
    tracker = SweepTracker(
        name,
        tracking_uri=uri,
        experiment=experiment,
        objectives=OBJECTIVES,
        sweep_yaml=SWEEP_YAML.format(name=name) if spec else None,
        search_space=SPACE if spec else None,
        reuse=False,
    )
    parent = tracker.start()
    made = Handmade(uri, experiment, name, parent)
    for trial in _trials(seed):
        trial.run_id = tracker.trial_started(trial.trial_id, trial.params)
        for index, step in enumerate(sorted({s for h in trial.history.values() for s, _ in h})):
            result = {m: h[index][1] for m, h in trial.history.items() if index < len(h)}
            tracker.log_result(trial.trial_id, {**result, "step": step})
        if trial.status == "failed":
            tracker.trial_failed(trial.trial_id, trial.error or "")
        else:
            tracker.trial_finished(trial.trial_id, stopped_early=False)
        made.trials[trial.trial_id] = trial
    if finish:
        tracker.finish(ablations=[ABLATION], objectives=OBJECTIVES)
    return made


def completed(made: Handmade) -> list[Trial]:
    """The trials that did not fail."""
    return [t for t in made.trials.values() if t.status != "failed"]


def as_json(value: Any) -> str:
    """How a param value reads in MLflow."""
    return value if isinstance(value, str) else json.dumps(value)


# ---- bitnet-lm's grid with training seeds and a sampled key: what an ablation cell averages -----

LM_OBJECTIVES = [("val/bpb", "min")]
SAMPLED_KEY = "loss.bit_loss_weight"  # loguniform: no two trials share a value
LM_SEEDS = (0, 1)


def bitnet_lm_document() -> dict[str, Any]:
    """The bitnet-lm preset with ``train.seed`` (grid, two seeds) and a sampled loguniform key
    added to its search space: scenario x warm-up x post-attention norm x seed."""
    import yaml

    from search_spaces import load_preset_text

    document = yaml.safe_load(load_preset_text("bitnet-lm"))
    space = document["search"]["space"]
    space["train.seed"] = {"dist": "grid", "values": list(LM_SEEDS)}
    space[SAMPLED_KEY] = {"dist": "loguniform", "low": 1.0e-5, "high": 1.0e-1}
    return document


def lm_search_block(document: dict[str, Any]) -> dict[str, Any]:
    """The ``search`` block as the tracker logs it (``search_space.json``)."""
    from orchestrator.search_spec import SearchSpec

    return SearchSpec.model_validate(document["search"]).model_dump(mode="json", exclude_none=True)


def lm_bpb(scenario: int, warmup: float, post_attn: bool, seed: int) -> float:
    """val/bpb of a cell: the post-attention norm moves it far more than the seeds do, so a cell
    mixing both norms has a std an order of magnitude above one averaging seeds only."""
    return 2.0 + 0.1 * scenario + 0.05 * warmup + 0.3 * post_attn + 0.01 * seed


def lm_table(seed: int = 0) -> list[Trial]:
    """24 finished trials: 3 scenarios x 2 warm-ups x 2 norms x 2 seeds, with a sampled weight."""
    rng = np.random.default_rng(seed)
    space = bitnet_lm_document()["search"]["space"]
    trials = []
    grid = itertools.product(
        enumerate(space["scenario"]["values"]), [0.0, 0.4], [False, True], LM_SEEDS
    )
    for i, ((index, scenario), warmup, post_attn, train_seed) in enumerate(grid):
        params = {
            "scenario": scenario["label"],
            **scenario["set"],  # what the scenario sets: coupled to it, not a cell of its own
            "schedule.lambda_warmup_frac": warmup,
            "model.rmsnorm_post_attn": post_attn,
            "train.seed": train_seed,
            SAMPLED_KEY: float(10 ** rng.uniform(-5, -1)),
        }
        bpb = lm_bpb(index, warmup, post_attn, train_seed)
        history = {"val/bpb": [(10, bpb + 0.5), (20, bpb)]}
        trials.append(Trial(f"t{i:02d}", params, history))
    return trials


def write_lm_sweep(uri: str, *, experiment: str = "handmade", name: str = "lm") -> Handmade:
    """The bitnet-lm grid above through ``SweepTracker`` (search space and sweep file logged,
    the preset's two ablations written at its end)."""
    import yaml

    document = bitnet_lm_document()
    tracker = SweepTracker(
        name,
        tracking_uri=uri,
        experiment=experiment,
        objectives=LM_OBJECTIVES,
        sweep_yaml=yaml.safe_dump({"name": name, **document}, sort_keys=False),
        search_space=lm_search_block(document),
        reuse=False,
    )
    made = Handmade(uri, experiment, name, tracker.start())
    for trial in lm_table():
        trial.run_id = tracker.trial_started(trial.trial_id, trial.params)
        for step, value in trial.history["val/bpb"]:
            tracker.log_result(trial.trial_id, {"val/bpb": value, "step": step})
        tracker.trial_finished(trial.trial_id, stopped_early=False)
        made.trials[trial.trial_id] = trial
    tracker.finish(ablations=document["ablation"], objectives=LM_OBJECTIVES)
    return made
