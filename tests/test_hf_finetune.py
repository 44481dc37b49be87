"""Seed 003 as a sweep: a local Hugging Face causal LM converted, fine-tuned and packed."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from orchestrator.spec import SweepSpecError, load_sweep
from trainables.config import ConfigError, RunConfig
from trainables.data import DataError
from trainables.data.hf_text import TokenCorpus, load_tokenizer, split_documents
from trainables.loop import PACKED_DIR, train
from trainables.models.hf_lm import check_hf_model_dir
from trainables.quant import QuantLayer
from trainables.reporting import ListReporter
from trainables.run_tags import run_tags

transformers = pytest.importorskip("transformers")

SIX_FIELDS = {"base_model", "training_steps", "lambda_warmup_frac", "final_lambda",
              "compression_ready", "model_type"}  # fmt: skip
HINT = "bitsweep run bitnet-finetune model.hf_path=DIR"


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from hf_fixtures import save_tiny_llama

    root = tmp_path_factory.mktemp("hf-models")
    return {
        "tokenizer": save_tiny_llama(root / "tiny-llama"),
        "bytes": save_tiny_llama(root / "tiny-llama-bytes", tokenizer=False),
    }


def _cfg(path: Path, **overrides: Any) -> RunConfig:
    flat = {"model.arch": "hf_causal_lm", "model.hf_path": str(path), "model.seq_len": 32,
            "train.steps": 4, "train.eval_every": 2, "train.batch_size": 2, "train.lr": 1e-3,
            "data.eval_batches": 1, **overrides}  # fmt: skip
    return RunConfig.from_flat(flat)


# ---- user errors name the key --------------------------------------------------------------


def test_a_missing_hf_path_says_how_to_pass_it(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"model\.hf_path") as err:
        RunConfig.from_flat({"model.arch": "hf_causal_lm"})
    assert HINT in str(err.value)
    with pytest.raises(SweepSpecError) as err:
        load_sweep("bitnet-finetune")
    assert "model.hf_path" in str(err.value) and HINT in str(err.value)
    from orchestrator.cli import main

    assert main(["validate", "bitnet-finetune"]) == 2  # the CLI: one line, exit code 2
    stderr = capsys.readouterr().err
    assert HINT in stderr and "Traceback" not in stderr


def test_selfgen_and_hf_keys_need_the_hf_arch() -> None:
    with pytest.raises(ConfigError, match=r"data\.source"):
        RunConfig.from_flat({"data.source": "selfgen"})
    with pytest.raises(ConfigError, match=r"model\.hf_path"):
        RunConfig.from_flat({"model.hf_path": "/models/x"})
    with pytest.raises(ConfigError, match=r"growth\.enabled"):
        RunConfig.from_flat({"model.arch": "hf_causal_lm", "model.hf_path": "/m",
                             "growth.enabled": True})  # fmt: skip


def test_bad_model_directories_name_the_key(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"model\.hf_path: .*no-such.* not an existing directory"):
        check_hf_model_dir(tmp_path / "no-such")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"model\.hf_path: .*has no config\.json"):
        check_hf_model_dir(tmp_path / "empty")
    vit = transformers.ViTConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=8, image_size=8, patch_size=4)  # fmt: skip
    vit.save_pretrained(tmp_path / "vit")
    (tmp_path / "vit/model.safetensors").write_bytes(b"")  # weights are not read by the check
    with pytest.raises(DataError, match=r"model\.hf_path: .*'vit' model.*not a causal LM"):
        check_hf_model_dir(tmp_path / "vit")


def test_run_tags_are_the_seeds() -> None:
    params = {"model.arch": "hf_causal_lm", "model.hf_path": "/models/Qwen2.5-1.5B/",
              "data.source": "selfgen"}  # fmt: skip
    assert run_tags(params) == {"stage": "bitnet158", "source": "selfgen", "model": "Qwen2.5-1.5B"}
    assert run_tags({"model.arch": "byte_lm"}) == {}


def test_tracker_tags_the_run_and_logs_the_checkpoints_artifacts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from orchestrator.tracking import SweepTracker

    monkeypatch.chdir(tmp_path)  # a sqlite store keeps artifacts in ./mlruns
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = SweepTracker("finetune", tracking_uri=uri, objectives=[("val/bpb", "min")])
    params = {"model.arch": "hf_causal_lm", "model.hf_path": "/models/tiny-llama",
              "data.source": "selfgen", "train.steps": 2}  # fmt: skip
    run_id = tracker.trial_started("t0", params)
    checkpoint = tmp_path / "checkpoint"
    (checkpoint / "artifacts/selfgen").mkdir(parents=True)
    (checkpoint / "artifacts/selfgen/selfgen_counts.json").write_text('{"counts": {"kept": 3}}')
    (checkpoint / PACKED_DIR).mkdir()
    (checkpoint / PACKED_DIR / "training_manifest.json").write_text("{}")
    tracker.log_result("t0", {"step": 2, "val/bpb": 3.0})
    tracker.set_checkpoint("t0", str(checkpoint))
    tracker.trial_finished("t0")
    client = MlflowClient(uri)
    tags = client.get_run(run_id).data.tags
    assert (tags["stage"], tags["source"], tags["model"]) == ("bitnet158", "selfgen", "tiny-llama")
    assert [f.path for f in client.list_artifacts(run_id, "selfgen")] == [
        "selfgen/selfgen_counts.json"
    ]
    assert [f.path for f in client.list_artifacts(run_id, "model/packed")] == [
        "model/packed/training_manifest.json"
    ]


# ---- the pipeline through the training loop -------------------------------------------------


def test_selfgen_finetune_with_the_directorys_tokenizer(
    llama_dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the trial's folder: the self-generated data lands here
    cfg = _cfg(llama_dirs["tokenizer"], **{
        "data.source": "selfgen", "data.selfgen_num": 8, "data.max_new_tokens": 64,
        "model.rmsnorm_post_attn": True, "schedule.lambda_warmup_frac": 1.0,
        "train.grad_accum": 2})  # fmt: skip
    reporter = ListReporter(tmp_path / "ckpt")
    result = train(cfg, reporter=reporter)
    layers = result.model.model.model.layers
    assert all(isinstance(layer.post_attn_norm, torch.nn.RMSNorm) for layer in layers)
    assert sum(isinstance(m, QuantLayer) for m in result.model.modules()) == 2 * 7
    last = reporter.last
    assert last["train/grad_norm"] > 0 and math.isfinite(last["val/loss"])
    # bits per byte of text: loss per token * tokens / bytes, measured independently here
    samples = [json.loads(line) for line in (tmp_path / "selfgen/selfgen.jsonl").open()]
    _, val_text = split_documents([s["text"] for s in samples], cfg.data.val_frac)
    tokenizer = load_tokenizer(llama_dirs["tokenizer"])
    per_byte = len(tokenizer(val_text, add_special_tokens=False)["input_ids"]) / len(
        val_text.encode()
    )
    assert per_byte < 0.9  # BPE tokens span several bytes: bpb is not loss / ln 2
    assert math.isclose(last["val/bpb"], last["val/loss"] / math.log(2) * per_byte, rel_tol=1e-6)
    checkpoint = reporter.checkpoints[-1]
    manifest = json.loads((checkpoint / PACKED_DIR / "training_manifest.json").read_text())
    assert set(manifest) == SIX_FIELDS
    assert manifest == {
        "base_model": str(llama_dirs["tokenizer"].resolve()),
        "training_steps": 4,
        "lambda_warmup_frac": 1.0,
        "final_lambda": last["quant/lambda"],  # lam at the last step: 3/4 with a full warm-up
        "compression_ready": False,
        "model_type": "bitnet158",
    }
    assert manifest["final_lambda"] == pytest.approx(0.75)
    assert (checkpoint / PACKED_DIR / "model.safetensors").is_file()
    counts = json.loads((checkpoint / "artifacts/selfgen/selfgen_counts.json").read_text())
    assert counts["counts"]["generated"] == 8 and counts["counts"]["kept"] == len(samples)


def test_byte_fallback_resumes_exactly(llama_dirs: dict[str, Path], tmp_path: Path) -> None:
    cfg = _cfg(llama_dirs["bytes"], **{"data.max_bytes": 8192, "schedule.lambda_warmup_frac": 0.4})
    full = ListReporter(tmp_path / "full")
    train(cfg, reporter=full)
    first = ListReporter(tmp_path / "first")
    train(cfg, reporter=first, stop_after=2)
    second = ListReporter(tmp_path / "second")
    train(cfg, reporter=second, resume_from=first.checkpoints[-1])
    assert second.last["val/loss"] == full.last["val/loss"]
    assert second.last["train/loss"] == full.last["train/loss"]
    last = full.last
    assert math.isclose(last["val/bpb"], last["val/loss"] / math.log(2), rel_tol=1e-9)  # bytes
    packed = full.checkpoints[-1] / PACKED_DIR
    manifest = json.loads((packed / "training_manifest.json").read_text())
    assert manifest["final_lambda"] == 1.0 and manifest["compression_ready"] is True


def test_the_converted_model_is_evaluated_before_fine_tuning(
    llama_dirs: dict[str, Path],
) -> None:
    """The preset's ``train.eval_at_start``: the ternary model's loss before fine-tuning."""
    from trainables.build import build_model, initial_architecture, load_task_data
    from trainables.evaluation import evaluate

    preset = load_sweep("bitnet-finetune", [f"model.hf_path={llama_dirs['bytes']}"], notify=None)
    assert preset.run.train.eval_at_start is True
    cfg = _cfg(llama_dirs["bytes"], **{"data.max_bytes": 8192, "train.eval_at_start": True})
    reporter = ListReporter()
    train(cfg, reporter=reporter)
    first = reporter.metrics[0]
    data = load_task_data(cfg)
    torch.manual_seed(cfg.train.seed)
    converted = build_model(cfg, initial_architecture(cfg, data))  # converted, not fine-tuned
    assert any(isinstance(m, QuantLayer) for m in converted.modules())
    expected = evaluate(converted, data, cfg)
    assert first["val/loss_start"] == pytest.approx(expected["val/loss"], rel=1e-6)
    assert first["val/bpb_start"] == pytest.approx(expected["val/bpb"], rel=1e-6)
    assert all("val/loss_start" not in m for m in reporter.metrics[1:])
    assert math.isfinite(reporter.last["val/loss"])  # the value after, for the results report


def test_token_corpus_is_a_byte_corpus_of_token_ids(llama_dirs: dict[str, Path]) -> None:
    from trainables.build import load_task_data

    data = load_task_data(_cfg(llama_dirs["tokenizer"], **{"data.max_bytes": 8192}))
    assert isinstance(data, TokenCorpus) and data.train.dtype == torch.int32
    assert int(data.train.max()) < len(load_tokenizer(llama_dirs["tokenizer"]))
    x, y = data.get_batch("train", 2, 16, torch.Generator().manual_seed(0))
    assert x.shape == (2, 16) and torch.equal(x[:, 1:], y[:, :-1])


# ---- end to end: the preset through `bitsweep run`, real Ray and a real MLflow server --------


@pytest.mark.slow
def test_preset_runs_end_to_end(
    llama_dirs: dict[str, Path], mlflow_server: str, tmp_path: Path
) -> None:
    from mlflow import MlflowClient

    model_dir = llama_dirs["tokenizer"]
    args = ["run", "bitnet-finetune", f"model.hf_path={model_dir}", "model.seq_len=32",
            "train.steps=4", "train.eval_every=2", "train.batch_size=2", "train.grad_accum=2",
            "data.selfgen_num=8", "data.max_new_tokens=64", "data.eval_batches=1",
            "search.num_samples=1", f"tracking.uri={mlflow_server}",
            "tracking.experiment=finetune", f"storage.path={tmp_path / 'results'}"]  # fmt: skip
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=tmp_path,
                            env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    client = MlflowClient(tracking_uri=mlflow_server)
    experiment = client.get_experiment_by_name("finetune")
    runs = client.search_runs([experiment.experiment_id], "tags.`bitsweep.role` = 'trial'")
    assert len(runs) == 1
    run = runs[0]
    assert run.data.tags["bitsweep.status"] == "finished"
    assert {k: run.data.tags[k] for k in ("stage", "source", "model")} == {
        "stage": "bitnet158", "source": "selfgen", "model": "tiny-llama"}  # fmt: skip
    assert {"val/loss", "val/bpb", "train/grad_norm", "quant/lambda"} <= set(run.data.metrics)
    assert {"val/loss_start", "perf/saved_activation_mib"} <= set(run.data.metrics)  # 1st report
    assert run.data.params["train.grad_accum"] == "2"
    assert run.data.params["model.rmsnorm_post_attn"] == "true"
    run_id, where = run.info.run_id, tmp_path / "download"
    manifest = json.loads(Path(client.download_artifacts(
        run_id, "model/packed/training_manifest.json", str(where))).read_text())  # fmt: skip
    assert set(manifest) == SIX_FIELDS
    assert manifest["base_model"] == str(model_dir.resolve())
    assert manifest["training_steps"] == 4 and manifest["model_type"] == "bitnet158"
    assert manifest["final_lambda"] == 1.0 and manifest["compression_ready"] is True
    assert manifest["lambda_warmup_frac"] == float(run.data.params["schedule.lambda_warmup_frac"])
    counts = json.loads(Path(client.download_artifacts(
        run_id, "selfgen/selfgen_counts.json", str(where))).read_text())["counts"]  # fmt: skip
    lines = Path(client.download_artifacts(
        run_id, "selfgen/selfgen.jsonl", str(where))).read_text().splitlines()  # fmt: skip
    assert counts["generated"] == 8 and counts["kept"] == len(lines) >= 2
    assert all({"prompt", "response", "text"} <= set(json.loads(line)) for line in lines)
    assert "model/packed/model.safetensors" in {
        f.path for f in client.list_artifacts(run_id, "model/packed")
    }
