"""The bit LM in the run config, the training loop and evaluation (seed 004)."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainables.config import ConfigError, RunConfig
from trainables.loop import train
from trainables.metric_names import reported_metrics
from trainables.reporting import ListReporter

BIT_LM = {
    "model": {"arch": "bit_lm", "d_model": 64, "n_layers": 2, "n_heads": 4, "seq_len": 144},
    "data": {"eval_batches": 2, "max_bytes": 200_000},
    "train": {"steps": 160, "eval_every": 80, "batch_size": 16, "lr": 5e-3},
    "telemetry": {"gen_bytes": 2, "gen_samples": 1, "retries": 0},  # a cheap safety gate
}


def _cfg(**sections: dict) -> RunConfig:
    data = {k: dict(v) for k, v in BIT_LM.items()}
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    return RunConfig.from_dict(data)


def test_bit_lm_on_pydocs_learns_below_8_bits_per_byte_with_act() -> None:
    cfg = _cfg(model={"act": True}, loss={"lambda_act": 0.01}, quant={"scheme": "ternary"})
    reporter = ListReporter()
    result = train(cfg, reporter=reporter)
    first, last = result.history[0], result.history[-1]
    assert last["val/bpb"] < 7.6  # 9 bits per byte is the untrained (uniform bit) level
    assert last["val/bpb"] < first["val/bpb"]
    assert 0.0 <= last["val/bpb_parity"] < last["val/bpb"]
    assert 0.0 <= last["val/parity_error"] <= 1.0
    assert 1.0 <= last["act/mean_layers"] <= 2.0
    assert last["loss/ponder"] > 1.0
    mine = {"val/parity_error", "val/bpb_parity", "act/mean_layers", "act/ponder", "loss/ponder"}
    assert mine <= reported_metrics(cfg)
    assert mine | {"val/act_mean_layers"} <= set(last)


def test_growth_cycles_depth_width_context_on_the_bit_lm() -> None:
    growth = {"enabled": True, "improve_thresh": 100.0, "window": 1, "max_growths": 3}
    cfg = _cfg(
        model={"d_model": 16, "n_heads": 2, "seq_len": 36, "reversible": True},
        train={"steps": 48, "eval_every": 6},
        growth={**growth, "final_plateau_frac": 0.0},  # grow at every second evaluation
    )
    result = train(cfg)
    config = result.architecture.config
    assert (config["n_layers"], config["d_model"], config["seq_len"]) == (3, 32, 72)
    assert result.architecture.arch == "bit_lm"
    assert result.history[-1]["growth/stage"] == 3.0


@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"model": {"seq_len": 64}}, "model.seq_len"),
        ({"model": {"act": True, "reversible": True}}, "model.act"),
        ({"model": {"act": True, "early_exit": True}}, "model.act"),
        ({"loss": {"lambda_act": 0.1}}, "loss.lambda_act"),
        ({"model": {"reversible": True}, "loss": {"lambda_q": 0.1}}, "model.reversible"),
        ({"model": {"ffn": "swiglu"}}, "model.ffn"),
        ({"model": {"attn_chunk": 144}}, "model.attn_chunk"),
        ({"model": {"act_eps": 1.5}}, "model.act_eps"),
        ({"model": {"arch": "byte_lm", "seq_len": 64, "reversible": True}}, "model.reversible"),
        ({"model": {"arch": "byte_lm", "seq_len": 64, "act": True}}, "model.act"),
    ],
)
def test_bad_bit_lm_settings_name_their_keys(sections: dict, key: str) -> None:
    with pytest.raises(ConfigError) as info:
        _cfg(**sections)
    assert key in [k for k, _ in info.value.problems]


def test_a_grown_reversible_bit_lm_resumes_exactly(tmp_path: Path) -> None:
    growth = {"enabled": True, "improve_thresh": 100.0, "window": 1, "max_growths": 2}
    cfg = _cfg(
        model={"d_model": 16, "n_heads": 2, "seq_len": 36, "reversible": True, "dropout": 0.1},
        train={"steps": 24, "eval_every": 6, "batch_size": 4},
        growth={**growth, "final_plateau_frac": 0.0, "strategy": "width,depth"},
    )
    full = train(cfg)
    first_half = ListReporter(tmp_path)
    train(cfg, reporter=first_half, stop_after=12)
    resumed = train(cfg, resume_from=first_half.checkpoints[-1])
    assert resumed.architecture == full.architecture
    assert resumed.architecture.config["d_model"] == 32
    for key in ("val/loss", "val/bpb", "train/loss"):
        assert resumed.metrics[key] == pytest.approx(full.metrics[key], abs=1e-6), key
