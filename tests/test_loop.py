"""The training loop without Ray: loss terms, evaluation, growth, checkpoints and exact resume."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import trainables.loop as loop_module
import trainables.objective as objective_module
from trainables.build import build_model, initial_architecture, load_task_data
from trainables.config import RunConfig
from trainables.evaluation import evaluate
from trainables.loop import PACKED_DIR, train
from trainables.objective import LossDivergedError
from trainables.quant import load_packed_checkpoint
from trainables.reporting import ListReporter

TINY_LM = {
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "seq_len": 32},
    "data": {"eval_batches": 2},
    "train": {"steps": 12, "eval_every": 6, "batch_size": 8, "lr": 3e-3},
}
DIGITS = {
    "task": {"kind": "vision"},
    "data": {"source": "digits"},
    "model": {"arch": "mlp", "hidden": [64]},
    "train": {"steps": 12, "eval_every": 6, "batch_size": 32},
}
CONTRACT_LM = {
    "step", "train/loss", "loss/task", "val/loss", "val/bpb", "model/params", "model/bits_total",
    "model/bits_per_weight", "model/packed_bytes", "quant/lambda", "growth/stage",
    "perf/tokens_per_s",
}  # fmt: skip


def _cfg(base: dict, **sections: dict) -> RunConfig:
    data = {k: dict(v) for k, v in base.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return RunConfig.from_dict(data)


def _comparable(metrics: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in metrics.items() if not k.startswith("perf/")}


TERMS = [
    ({}, set()),
    ({"loss": {"lambda_q": 0.1}}, {"loss/quant"}),
    ({"model": {"early_exit": True}, "loss": {"lambda_r": 0.1}}, {"loss/route"}),
    ({"loss": {"lambda_exit": 0.5}}, {"loss/exit"}),
    (
        {
            "model": {"early_exit": True},
            "loss": {"lambda_q": 0.1, "lambda_r": 0.1, "lambda_exit": 0.2},
        },
        {"loss/quant", "loss/route", "loss/exit"},
    ),
]


LSQ_BR = {
    "quant": {"scheme": "lsq", "weight_bits": 2, "act_bits": 2},
    "loss": {"lambda_br": 1.0, "lambda_br_act": 1.0, "br_warmup_frac": 0.5, "freeze_alpha": True},
}
VISION_TERMS = [
    ({"quant": {"scheme": "lsq", "weight_bits": 2, "act_bits": 2}}, set()),
    (LSQ_BR, {"loss/br_w", "loss/br_a"}),
    ({**LSQ_BR, "loss": {**LSQ_BR["loss"], "lambda_br_act": 0.0}}, {"loss/br_w"}),
    (
        {
            "quant": {"scheme": "adaptive"},
            "loss": {"fn": "bit_balanced_ce", "bit_loss_weight": 1e-3},
        },
        {"loss/bits"},
    ),
]


@pytest.mark.parametrize(("sections", "expected"), VISION_TERMS)
def test_vision_terms_reported_only_when_enabled(sections: dict, expected: set[str]) -> None:
    reporter = ListReporter()
    train(_cfg(DIGITS, train={"steps": 8, "eval_every": 4}, **sections), reporter=reporter)
    first, last = reporter.metrics[0], reporter.last
    assert {k for k in last if k.startswith("loss/")} - {"loss/task"} == expected
    if "loss/br_w" in expected:
        assert "loss/br_w" not in first  # LSQ only during the BR warm-up (first half)


def test_br_stage_freezes_step_sizes_and_prints_the_banner(capsys: pytest.CaptureFixture) -> None:
    from trainables.quant import step_size_parameters

    cfg = _cfg(DIGITS, train={"steps": 10, "eval_every": 5}, **LSQ_BR)
    half = train(cfg, stop_after=5).model
    steps_at_warmup_end = [p.detach().clone() for p in step_size_parameters(half)]
    full = train(cfg).model
    after = step_size_parameters(full)
    assert all(not p.requires_grad for p in after)
    assert all(torch.equal(a, b) for a, b in zip(after, steps_at_warmup_end, strict=True))
    banner = capsys.readouterr().out
    assert "BR Configuration" in banner and "Freeze alpha after warmup: True" in banner


def test_bit_penalty_lowers_total_bits() -> None:
    reporter = ListReporter()
    cfg = _cfg(DIGITS, train={"steps": 120, "eval_every": 40, "lr": 0.01},
               quant={"scheme": "adaptive"},
               loss={"fn": "bit_balanced_ce", "bit_loss_weight": 1.0})  # fmt: skip
    train(cfg, reporter=reporter)
    assert reporter.last["model/bits_total"] < reporter.metrics[0]["model/bits_total"]
    widths = {k: v for k, v in reporter.last.items() if k.startswith("bits/")}
    assert set(widths) == {"bits/layers.0"} and 2 <= widths["bits/layers.0"] <= 8
    assert reporter.last["val/acc"] > 0.5


@pytest.mark.parametrize(("sections", "expected"), TERMS)
def test_each_enabled_term_is_reported_and_disabled_ones_are_absent(
    sections: dict, expected: set[str]
) -> None:
    reporter = ListReporter()
    train(_cfg(TINY_LM, train={"steps": 4, "eval_every": 4}, **sections), reporter=reporter)
    metrics = reporter.last
    assert set(metrics) >= CONTRACT_LM
    terms = {k for k in metrics if k.startswith("loss/")} - {"loss/task"}
    assert terms == expected
    assert all(math.isfinite(metrics[k]) for k in terms)
    if "loss/route" in expected:
        assert "route/expected_exit" in metrics and "route/exit_layer" in metrics
        fractions = [metrics[f"route/exit_frac/{layer}"] for layer in (1, 2)]
        assert sum(fractions) == pytest.approx(1.0)


def test_lm_learns_and_evaluates_quantized() -> None:
    reporter = ListReporter()
    result = train(_cfg(TINY_LM, train={"steps": 60, "eval_every": 20}), reporter=reporter)
    first, last = reporter.metrics[0], reporter.metrics[-1]
    assert last["val/bpb"] < 0.75 * 8.0  # uniform over bytes is 8 bits/byte
    assert last["val/loss"] < first["val/loss"]
    assert last["quant/lambda"] == 1.0 and first["quant/lambda"] < 1.0
    assert result.step == 60 and [m["step"] for m in reporter.metrics] == [20, 40, 60]


def test_vision_task_reports_accuracy() -> None:
    reporter = ListReporter()
    train(_cfg(DIGITS, train={"steps": 60, "eval_every": 30}), reporter=reporter)
    assert reporter.last["val/acc"] > 0.6
    assert "perf/samples_per_s" in reporter.last and "val/bpb" not in reporter.last


def test_same_seed_same_metrics_other_seed_differs() -> None:
    cfg = _cfg(TINY_LM)
    a, b = train(cfg).metrics, train(cfg).metrics
    assert _comparable(a) == _comparable(b)
    c = train(cfg.with_overrides({"train.seed": 1})).metrics
    assert c["val/loss"] != a["val/loss"]


@pytest.mark.parametrize(
    "sections",
    [
        {},
        {"model": {"early_exit": True, "layer_dropout": 0.2}, "loss": {"lambda_r": 0.1}},
        {"growth": {"enabled": True, "improve_thresh": 100.0, "window": 1, "max_growths": 2}},
    ],
    ids=["plain", "early-exit", "grown"],
)
def test_resume_equals_uninterrupted_run(tmp_path: Path, sections: dict) -> None:
    cfg = _cfg(TINY_LM, train={"steps": 24, "eval_every": 6}, **sections)
    full = train(cfg)
    first_half = ListReporter(tmp_path)
    train(cfg, reporter=first_half, stop_after=12)
    resumed = train(cfg, resume_from=first_half.checkpoints[-1])
    assert resumed.step == full.step == 24
    assert resumed.architecture == full.architecture
    for key, value in _comparable(full.metrics).items():
        assert resumed.metrics[key] == pytest.approx(value, abs=1e-6), key


def test_resume_vision_mid_epoch(tmp_path: Path) -> None:
    cfg = _cfg(DIGITS, train={"steps": 30, "eval_every": 5})
    full = train(cfg)
    first = ListReporter(tmp_path)
    train(cfg, reporter=first, stop_after=15)
    resumed = train(cfg, resume_from=first.checkpoints[-1])
    assert _comparable(resumed.metrics) == pytest.approx(_comparable(full.metrics), abs=1e-6)


def test_growth_on_plateau_then_keeps_training() -> None:
    growth = {"enabled": True, "improve_thresh": 100.0, "window": 1, "max_growths": 2,
              "strategy": ["depth", "width"]}  # fmt: skip
    reporter = ListReporter()
    result = train(
        _cfg(TINY_LM, train={"steps": 40, "eval_every": 5}, growth=growth), reporter=reporter
    )
    stages = [m["growth/stage"] for m in reporter.metrics]
    assert stages[0] == 0 and max(stages) == 2 and stages[-1] == 2
    assert result.architecture.config["n_layers"] == 3  # depth first
    assert result.architecture.config["d_model"] == 64  # then width
    params = [m["model/params"] for m in reporter.metrics]
    assert params[-1] > params[0]
    after = [m for m in reporter.metrics if m["growth/stage"] == 2]
    assert len(after) >= 2 and after[-1]["train/loss"] < after[0]["train/loss"] + 0.5
    assert all(math.isfinite(m["train/loss"]) for m in reporter.metrics)


def test_no_growth_while_improving() -> None:
    growth = {"enabled": True, "improve_thresh": 0.0, "window": 1}
    reporter = ListReporter()
    train(_cfg(TINY_LM, growth=growth), reporter=reporter)
    assert all(m["growth/stage"] == 0 for m in reporter.metrics)


def test_final_checkpoint_holds_the_packed_model(tmp_path: Path) -> None:
    reporter = ListReporter(tmp_path)
    train(_cfg(TINY_LM, schedule={"lambda_warmup_frac": 0.5}), reporter=reporter)
    packed = load_packed_checkpoint(reporter.checkpoints[-1] / PACKED_DIR)
    assert packed.manifest["training_steps"] == 12
    assert packed.manifest["lambda_warmup_frac"] == 0.5
    assert packed.manifest["packing"] == "base3"
    assert packed.manifest["bits_per_weight"] < 1.7
    assert not (reporter.checkpoints[0] / PACKED_DIR).exists()


def test_divergence_names_the_term_and_step(monkeypatch: pytest.MonkeyPatch) -> None:
    real = objective_module.quantization_mse
    calls = {"n": 0}

    def poisoned(model: torch.nn.Module, **kwargs: bool) -> torch.Tensor:
        calls["n"] += 1
        value = real(model, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(objective_module, "quantization_mse", poisoned)
    with pytest.raises(LossDivergedError, match=r"loss/quant became nan at step 2"):
        train(_cfg(TINY_LM, loss={"lambda_q": 0.1}))


# ---- measurements of step 0, in the first report (issue 18) --------------------------------------

START = {"val/loss_start", "val/bpb_start", "val/acc_start"}


def _untrained_evaluation(cfg: RunConfig) -> dict[str, float]:
    """evaluate() of the model a run of ``cfg`` starts from, built here from the same seed."""
    data = load_task_data(cfg)
    torch.manual_seed(cfg.train.seed)
    return evaluate(build_model(cfg, initial_architecture(cfg, data)), data, cfg)


@pytest.mark.parametrize(
    ("base", "reported"),
    [(TINY_LM, {"val/loss", "val/bpb"}), (DIGITS, {"val/loss", "val/acc"})],
    ids=["lm", "vision"],
)
def test_eval_at_start_adds_the_untrained_models_validation_to_the_first_report(
    base: dict, reported: set[str]
) -> None:
    cfg = _cfg(base, train={"eval_at_start": True})
    reporter = ListReporter()
    result = train(cfg, reporter=reporter)
    assert [m["step"] for m in reporter.metrics] == [6, 12]  # no report of its own
    first = reporter.metrics[0]
    assert START & set(first) == {f"{name}_start" for name in reported}
    assert not any(START & set(m) for m in reporter.metrics[1:])
    expected = _untrained_evaluation(cfg)
    for name in reported:
        assert first[f"{name}_start"] == pytest.approx(expected[name], rel=1e-6), name
    assert first["val/loss_start"] != pytest.approx(first["val/loss"])  # not the step-6 value
    # the evaluation leaves the training as it was: the run equals one without the flag
    plain = ListReporter()
    train(cfg.with_overrides({"train.eval_at_start": False}), reporter=plain)
    assert not any(START & set(m) for m in plain.metrics)
    assert [_comparable(m) for m in plain.metrics] == [
        {k: v for k, v in _comparable(m).items() if k not in START} for m in reporter.metrics
    ]
    assert _comparable(result.metrics) == _comparable(plain.metrics[-1])


def test_a_resumed_run_neither_evaluates_at_start_nor_measures_activations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = _cfg(TINY_LM, train={"eval_at_start": True})
    first = ListReporter(tmp_path)
    train(cfg, reporter=first, stop_after=6)
    assert {"val/loss_start", "perf/saved_activation_mib"} <= set(first.metrics[0])
    evaluations: list[int] = []
    real = loop_module.evaluate

    def counted(*args: object, **kwargs: object) -> dict[str, float]:
        evaluations.append(1)
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(loop_module, "evaluate", counted)
    resumed = ListReporter()
    train(cfg, reporter=resumed, resume_from=first.checkpoints[-1])
    assert [m["step"] for m in resumed.metrics] == [12]
    assert len(evaluations) == 1  # the report's own evaluation only
    assert not {"val/loss_start", "perf/saved_activation_mib"} & set(resumed.metrics[0])


def test_saved_activation_memory_is_in_the_first_report_only() -> None:
    short = {"steps": 3, "eval_every": 1}
    reporter = ListReporter()
    train(_cfg(TINY_LM, train=short), reporter=reporter)
    first, later = reporter.metrics[0], reporter.metrics[1:]
    assert first["perf/saved_activation_mib"] > 0 and later
    assert all("perf/saved_activation_mib" not in m for m in later)
    doubled = ListReporter()
    train(_cfg(TINY_LM, train={**short, "batch_size": 16}), reporter=doubled)
    ratio = doubled.metrics[0]["perf/saved_activation_mib"] / first["perf/saved_activation_mib"]
    assert 1.8 < ratio < 2.2  # activations scale with the batch; the weights are not counted
