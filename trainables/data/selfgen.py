"""Self-generated training data (seed 003): the base model answers built-in instruction prompts.

Before conversion, the unconverted model samples one response per prompt (``data.selfgen_num``
samples, ``data.max_new_tokens`` each, seeded per sample so the set does not depend on the order).
The seed's quality filters then keep a response only if it is 32 to 2048 characters long, contains
no AI-disclaimer phrase ("as an AI", ...), is not a duplicate of a kept response (content hash of
its normalized text), and has a minimum word diversity (distinct words / words). The kept samples
are written as JSONL with a JSON file of the filter counts; both are logged as trial artifacts.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainables.data.errors import DataError
from trainables.data.hf_text import BYTE_VOCAB, decode, encode

MIN_CHARS = 32
MAX_CHARS = 2048
MIN_WORD_DIVERSITY = 0.3  # distinct words / words: rejects loops such as "the the the ..."
TEMPERATURE = 0.8
TOP_P = 0.95
JSONL_FILE = "selfgen.jsonl"
COUNTS_FILE = "selfgen_counts.json"
DISCLAIMERS = (
    "as an ai",
    "as a language model",
    "as an artificial intelligence",
    "i am an ai",
    "i'm an ai",
    "i am a language model",
    "i'm just an ai",
    "i cannot assist with",
    "i'm not able to provide",
)
PROMPTS = (
    "Explain how a hash table handles collisions.",
    "Write a short story about a lighthouse keeper who finds a message in a bottle.",
    "Give three tips for writing clear technical documentation.",
    "Describe the water cycle to a ten-year-old.",
    "What are the trade-offs between recursion and iteration?",
    "Summarize the causes of the French Revolution in a paragraph.",
    "Write a Python function that checks whether a string is a palindrome, and explain it.",
    "List the steps to bake a loaf of sourdough bread.",
    "Compare renewable and fossil energy sources.",
    "Explain what a derivative measures, with an everyday example.",
    "Write a haiku about autumn rain, then explain its imagery.",
    "How does public-key cryptography let two strangers share a secret?",
    "Describe a healthy morning routine and why each step helps.",
    "Explain the difference between weather and climate.",
    "Write a polite email asking a colleague to review a report.",
    "What makes a good unit test?",
    "Explain how vaccines train the immune system.",
    "Describe the rules of chess for a beginner.",
    "Why is the sky blue? Give the physical explanation.",
    "Plan a three-day trip to a city of your choice.",
    "Explain binary search and its running time.",
    "Write a dialogue between a cat and a dog about sharing a sofa.",
    "What are the main ideas of supply and demand?",
    "Explain how a neural network learns from data.",
)


@dataclass
class FilterCounts:
    """How many generated samples each quality filter dropped, and how many were kept."""

    generated: int = 0
    kept: int = 0
    too_short: int = 0
    too_long: int = 0
    disclaimer: int = 0
    low_diversity: int = 0
    duplicate: int = 0

    def to_dict(self) -> dict[str, int]:
        """The counts as a plain dict (what the counts artifact holds)."""
        return asdict(self)


def word_diversity(text: str) -> float:
    """Distinct lower-cased words over words (0 for a text without words)."""
    words = re.findall(r"\w+", text.lower())
    return len(set(words)) / len(words) if words else 0.0


def content_hash(text: str) -> str:
    """SHA-256 of the text with case and whitespace runs normalized (the duplicate key)."""
    normalized = " ".join(text.lower().split())
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def rejection_reason(text: str, seen: set[str] | None = None) -> str | None:
    """The first filter that rejects ``text`` (a :class:`FilterCounts` field name), or None.

    ``seen`` holds the content hashes of samples kept so far; a kept text's hash is added to it.
    """
    stripped = text.strip()
    if len(stripped) < MIN_CHARS:
        return "too_short"
    if len(stripped) > MAX_CHARS:
        return "too_long"
    lowered = stripped.lower()
    if any(phrase in lowered for phrase in DISCLAIMERS):
        return "disclaimer"
    if word_diversity(stripped) < MIN_WORD_DIVERSITY:
        return "low_diversity"
    if seen is not None:
        key = content_hash(stripped)
        if key in seen:
            return "duplicate"
        seen.add(key)
    return None


def filter_samples(
    samples: Iterable[Mapping[str, str]],
) -> tuple[list[dict[str, str]], FilterCounts]:
    """Keep the samples whose ``response`` passes every filter; count each rejection."""
    counts = FilterCounts()
    seen: set[str] = set()
    kept: list[dict[str, str]] = []
    for sample in samples:
        counts.generated += 1
        reason = rejection_reason(sample["response"], seen)
        if reason is None:
            kept.append(dict(sample))
        else:
            setattr(counts, reason, getattr(counts, reason) + 1)
    counts.kept = len(kept)
    return kept, counts


def format_prompt(prompt: str, tokenizer: Any | None) -> str:
    """The generation prompt: the tokenizer's chat template if it has one, else a plain format."""
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        messages = [{"role": "user", "content": prompt}]
        return str(tokenizer.apply_chat_template(messages, tokenize=False,
                                                 add_generation_prompt=True))  # fmt: skip
    return f"### Instruction:\n{prompt}\n\n### Response:\n"


@torch.no_grad()
def generate_samples(
    model: nn.Module,
    tokenizer: Any | None,
    *,
    num: int,
    max_new_tokens: int,
    seed: int,
    prompts: Sequence[str] = PROMPTS,
) -> list[dict[str, str]]:
    """Sample ``num`` responses (prompt ``i`` is ``prompts[i % len(prompts)]``, seed ``seed + i``).

    Returns records ``{"prompt", "response", "text"}``; ``text`` (prompt and response) is what is
    trained on. Without a tokenizer the ids are bytes and ids >= 256 are never sampled.
    """
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", BYTE_VOCAB))
    extra: dict[str, Any] = {}
    if tokenizer is None and vocab > BYTE_VOCAB:
        extra["suppress_tokens"] = list(range(BYTE_VOCAB, vocab))
    eos = getattr(tokenizer, "eos_token_id", None) if tokenizer is not None else None
    pad = getattr(tokenizer, "pad_token_id", None) if tokenizer is not None else None
    device = next(model.parameters()).device
    records = []
    for i in range(num):
        prompt = prompts[i % len(prompts)]
        text_prompt = format_prompt(prompt, tokenizer)
        ids = torch.tensor([encode(text_prompt, tokenizer)], device=device)  # [1, P]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + i)
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=max_new_tokens,
                do_sample=True,
                temperature=TEMPERATURE,
                top_p=TOP_P,
                eos_token_id=eos,
                pad_token_id=pad if pad is not None else (eos if eos is not None else 0),
                **extra,
            )  # [1, P + new]
        response = decode(out[0, ids.shape[1] :].tolist(), tokenizer).strip()
        records.append({"prompt": prompt, "response": response, "text": text_prompt + response})
    return records


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_selfgen(
    directory: Path,
    samples: Sequence[Mapping[str, str]],
    counts: FilterCounts,
    settings: Mapping[str, Any],
) -> tuple[Path, Path]:
    """Write the kept samples (JSONL) and ``{"settings", "counts"}`` (JSON) into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    jsonl, counts_path = directory / JSONL_FILE, directory / COUNTS_FILE
    _write_atomic(jsonl, "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    document = {"settings": dict(settings), "counts": counts.to_dict()}
    _write_atomic(counts_path, json.dumps(document, indent=2, sort_keys=True))
    return jsonl, counts_path


def read_selfgen(directory: Path, settings: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The samples written earlier with the same ``settings`` (a resumed trial), else None."""
    jsonl, counts_path = directory / JSONL_FILE, directory / COUNTS_FILE
    try:
        document = json.loads(counts_path.read_text(encoding="utf-8"))
        if document.get("settings") != json.loads(json.dumps(dict(settings))):
            return None
        lines = jsonl.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]
    except (OSError, ValueError):
        return None


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """A cheap identity of a model directory's files (names, sizes, modification times)."""
    digest = hashlib.sha256()
    for file in sorted(Path(path).iterdir()):
        if file.is_file():
            stat = file.stat()
            digest.update(f"{file.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


def self_generate(
    hf_path: str,
    tokenizer: Any | None,
    directory: Path,
    *,
    num: int,
    max_new_tokens: int,
    seed: int,
) -> tuple[list[dict[str, str]], tuple[tuple[str, Path], ...]]:
    """Generate (or reuse) the filtered samples of ``hf_path`` in ``directory``.

    Returns the kept samples and the ``(name, path)`` artifacts (the JSONL and the counts).

    Raises:
        DataError: fewer than two samples pass the filters (naming ``data.selfgen_num``).
    """
    from trainables.models.hf_lm import load_base_model

    settings = {
        "hf_path": str(hf_path),
        "model": model_fingerprint(hf_path),
        "tokenizer": "bytes" if tokenizer is None else type(tokenizer).__name__,
        "num": num,
        "max_new_tokens": max_new_tokens,
        "seed": seed,
        "prompts": hashlib.sha256("\n".join(PROMPTS).encode()).hexdigest()[:16],
        "filters": [MIN_CHARS, MAX_CHARS, MIN_WORD_DIVERSITY, TEMPERATURE, TOP_P],
    }
    kept = read_selfgen(directory, settings)
    if kept is None:
        model = load_base_model(hf_path)
        generated = generate_samples(
            model, tokenizer, num=num, max_new_tokens=max_new_tokens, seed=seed
        )
        del model
        kept, counts = filter_samples(generated)
        write_selfgen(directory, kept, counts, settings)
    if len(kept) < 2:
        raise DataError(
            "data.selfgen_num",
            f"only {len(kept)} of the self-generated samples passed the quality filters "
            f"(counts in {directory / COUNTS_FILE})",
            "generate more samples (data.selfgen_num) or longer ones (data.max_new_tokens)",
        )
    names = (f"selfgen/{JSONL_FILE}", f"selfgen/{COUNTS_FILE}")
    return kept, tuple(zip(names, (directory / JSONL_FILE, directory / COUNTS_FILE), strict=True))
