"""Seed 003's pipeline pieces the loop calls: data of a Hugging Face model, the manifest, artifacts.

The pipeline is: self-generate data with the base model (``data.source: selfgen``) or read a text
source, tokenize it with the directory's tokenizer (else bytes), convert the model
(``trainables.models.hf_lm``), train with the lambda warm-up (the normal loop), and write
``training_manifest.json`` (exactly the seed's six fields) beside the packed weights.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trainables.config import RunConfig
from trainables.data.bytes import read_source_bytes
from trainables.data.hf_text import (
    TokenCorpus,
    check_vocab,
    load_tokenizer,
    split_documents,
    token_corpus,
)
from trainables.data.selfgen import self_generate

SELFGEN_SOURCE = "selfgen"
SELFGEN_DIR = "selfgen"
TRAINING_MANIFEST = "training_manifest.json"
ARTIFACTS_DIR = "artifacts"  # the sub-directory of a checkpoint whose files the tracker logs
MODEL_TYPE = "bitnet158"


def load_hf_corpus(cfg: RunConfig, workdir: Path | None = None) -> TokenCorpus:
    """The token corpus of an ``hf_causal_lm`` run.

    With ``data.source: selfgen`` the base model generates it into ``data.path`` (a folder shared
    by trials, if set) or ``<workdir>/selfgen`` (the trial's folder; default the working
    directory); otherwise the text source is read as for the byte LM.
    """
    from trainables.models.hf_lm import check_hf_model_dir

    hf_path = str(cfg.model.hf_path)
    hf_config = check_hf_model_dir(hf_path)
    tokenizer = load_tokenizer(hf_path, cfg.data.tokenizer)
    check_vocab(tokenizer, int(getattr(hf_config, "vocab_size", 0) or 0))
    artifacts: tuple[tuple[str, Path], ...] = ()
    if cfg.data.source == SELFGEN_SOURCE:
        folder = Path(cfg.data.path) if cfg.data.path else (workdir or Path.cwd()) / SELFGEN_DIR
        seed = cfg.data.selfgen_seed if cfg.data.selfgen_seed is not None else cfg.train.seed
        samples, artifacts = self_generate(
            hf_path, tokenizer, folder, num=cfg.data.selfgen_num,
            max_new_tokens=cfg.data.max_new_tokens, seed=seed,
        )  # fmt: skip
        documents = [s["text"] for s in samples]
    else:
        raw = read_source_bytes(cfg.data.source, text_column=cfg.data.text_column)
        if cfg.data.max_bytes is not None:
            raw = raw[: cfg.data.max_bytes]
        documents = [raw.decode("utf-8", errors="replace")]
    train_text, val_text = split_documents(documents, cfg.data.val_frac)
    return token_corpus(train_text, val_text, tokenizer, source=cfg.data.source,
                        artifacts=artifacts)  # fmt: skip


def hf_architecture_config(cfg: RunConfig) -> dict[str, Any]:
    """What a checkpoint stores to rebuild the converted model (``HFLMConfig`` fields)."""
    return {
        "hf_path": str(Path(str(cfg.model.hf_path)).expanduser().resolve()),
        "seq_len": cfg.model.seq_len,
        "rmsnorm_post_attn": cfg.model.rmsnorm_post_attn,
        "vocab_size": 0,
    }


def training_manifest(
    cfg: RunConfig, architecture: Mapping[str, Any], steps: int, final_lambda: float
) -> dict[str, Any]:
    """Seed 003's ``training_manifest.json``: exactly its six fields, filled with real values.

    ``compression_ready``: training ended fully ternary (lam = 1), so the packed weights are the
    trained model.
    """
    config = architecture.get("config", {})
    return {
        "base_model": config.get("hf_path") if architecture.get("arch") == "hf_causal_lm" else None,
        "training_steps": int(steps),
        "lambda_warmup_frac": cfg.schedule.lambda_warmup_frac,
        "final_lambda": float(final_lambda),
        "compression_ready": bool(final_lambda >= 1.0),
        "model_type": MODEL_TYPE,
    }


def write_training_manifest(directory: Path, manifest: Mapping[str, Any]) -> Path:
    """Write ``training_manifest.json`` into ``directory`` (beside the packed weights)."""
    path = directory / TRAINING_MANIFEST
    path.write_text(json.dumps(dict(manifest), indent=2) + "\n")
    return path


def copy_artifacts(directory: Path, artifacts: tuple[tuple[str, Path], ...]) -> None:
    """Copy ``(name, path)`` files to ``<directory>/artifacts/<name>`` (logged by the tracker)."""
    for name, path in artifacts:
        target = directory / ARTIFACTS_DIR / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)
