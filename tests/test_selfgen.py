"""Seed 003's self-generated data: each filter rejects what it should; generation is seeded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trainables.data import DataError
from trainables.data.selfgen import (
    COUNTS_FILE,
    JSONL_FILE,
    MAX_CHARS,
    MIN_CHARS,
    filter_samples,
    generate_samples,
    rejection_reason,
    self_generate,
    word_diversity,
)

GOOD = "Binary search halves the interval each step, so it finds an item in log n comparisons."
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa",
         "lambda", "omicron", "sigma"]  # fmt: skip


def _diverse(length: int) -> str:
    """A text of exactly ``length`` characters made of distinct numbered words."""
    text, i = "", 0
    while len(text) < length:
        text += f"{WORDS[i % len(WORDS)]}{i} "
        i += 1
    return text[: length - 1] + "x"


def _sample(response: str) -> dict[str, str]:
    return {"prompt": "p", "response": response, "text": "p" + response}


def test_each_filter_rejects_what_it_should() -> None:
    samples = [
        _sample(GOOD),
        _sample("Too short to keep."),
        _sample(_diverse(MAX_CHARS + 1)),
        _sample("As an AI language model, I cannot have opinions on sourdough bread recipes."),
        _sample("I'm just an AI, but here is a longer answer about the water cycle for you."),
        _sample(" ".join(["the loop"] * 30)),
        _sample("  " + GOOD.upper() + "  "),  # the same content: case and spacing differ
    ]
    kept, counts = filter_samples(samples)
    assert [s["response"] for s in kept] == [GOOD]
    assert counts.to_dict() == {
        "generated": 7, "kept": 1, "too_short": 1, "too_long": 1, "disclaimer": 2,
        "low_diversity": 1, "duplicate": 1,
    }  # fmt: skip


def test_length_bounds_are_inclusive() -> None:
    assert rejection_reason(_diverse(MIN_CHARS)) is None
    assert rejection_reason(_diverse(MIN_CHARS - 1)) == "too_short"
    assert rejection_reason(_diverse(MAX_CHARS)) is None
    assert rejection_reason(_diverse(MAX_CHARS + 1)) == "too_long"


def test_word_diversity() -> None:
    assert word_diversity("a b c d") == 1.0
    assert word_diversity("go go go go") == 0.25
    assert word_diversity("") == 0.0


@given(st.lists(st.sampled_from([GOOD, "short", _diverse(40), _diverse(3000), "as an AI " * 8,
                                 "x " * 40, GOOD.lower()]), max_size=12))  # fmt: skip
def test_counts_add_up_and_kept_samples_pass(responses: list[str]) -> None:
    kept, counts = filter_samples([_sample(r) for r in responses])
    rejected = (counts.too_short + counts.too_long + counts.disclaimer + counts.low_diversity
                + counts.duplicate)  # fmt: skip
    assert counts.generated == len(responses) == counts.kept + rejected
    assert len({" ".join(s["response"].lower().split()) for s in kept}) == len(kept)
    assert all(rejection_reason(s["response"]) is None for s in kept)


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("transformers")
    from hf_fixtures import save_tiny_llama

    return save_tiny_llama(tmp_path_factory.mktemp("hf") / "tiny")


def test_generation_is_seeded_per_sample(tiny_model_dir: Path) -> None:
    from trainables.data.hf_text import load_tokenizer
    from trainables.models.hf_lm import load_base_model

    model, tokenizer = load_base_model(tiny_model_dir), load_tokenizer(tiny_model_dir)
    first = generate_samples(model, tokenizer, num=3, max_new_tokens=12, seed=5)
    again = generate_samples(model, tokenizer, num=4, max_new_tokens=12, seed=5)
    other = generate_samples(model, tokenizer, num=3, max_new_tokens=12, seed=6)
    assert again[:3] == first  # sample i depends on seed + i only
    assert other != first
    assert first[0]["prompt"] != first[1]["prompt"]  # prompts cycle through the built-in list
    for record in first:
        assert record["text"].endswith(record["response"]) and record["response"]


def test_self_generate_writes_filters_and_reuses(tiny_model_dir: Path, tmp_path: Path) -> None:
    from trainables.data.hf_text import load_tokenizer

    tokenizer = load_tokenizer(tiny_model_dir)
    folder = tmp_path / "selfgen"
    kept, artifacts = self_generate(
        str(tiny_model_dir), tokenizer, folder, num=4, max_new_tokens=64, seed=1
    )
    lines = (folder / JSONL_FILE).read_text().splitlines()
    assert [json.loads(line) for line in lines] == kept
    counts = json.loads((folder / COUNTS_FILE).read_text())["counts"]
    assert counts["generated"] == 4 and counts["kept"] == len(kept) >= 2
    assert dict(artifacts) == {
        f"selfgen/{JSONL_FILE}": folder / JSONL_FILE,
        f"selfgen/{COUNTS_FILE}": folder / COUNTS_FILE,
    }
    stamp = (folder / JSONL_FILE).stat().st_mtime_ns
    again, _ = self_generate(str(tiny_model_dir), tokenizer, folder, num=4, max_new_tokens=64,
                             seed=1)  # fmt: skip
    assert again == kept and (folder / JSONL_FILE).stat().st_mtime_ns == stamp  # reused
    self_generate(str(tiny_model_dir), tokenizer, folder, num=4, max_new_tokens=64, seed=2)
    assert (folder / JSONL_FILE).stat().st_mtime_ns != stamp  # other settings: generated anew


def test_too_few_kept_samples_name_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data\.selfgen_num.*passed the quality filters"):
        # one new token is never 32 characters: every sample is too short
        self_generate(str(tiny_model_dir), None, tmp_path, num=3, max_new_tokens=1, seed=0)
    counts = json.loads((tmp_path / COUNTS_FILE).read_text())["counts"]
    assert counts["too_short"] == 3 and counts["kept"] == 0
