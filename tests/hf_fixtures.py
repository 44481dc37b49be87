"""A tiny random Llama and BPE tokenizer saved to a directory, built here (no download)."""

from __future__ import annotations

from pathlib import Path

import torch

from trainables.data import pydocs_bytes


def tiny_tokenizer(vocab_size: int = 320):
    """A byte-level BPE tokenizer trained on 40 KB of pydocs, as a PreTrainedTokenizerFast."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([pydocs_bytes()[:40_000].decode("utf-8", "replace")], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<eos>")


def save_tiny_llama(directory: Path, *, tokenizer: bool = True, seed: int = 0) -> Path:
    """Save a 2-layer random Llama (hidden 32) and, with ``tokenizer``, its tokenizer there.

    Without a tokenizer the vocabulary is 256 + 8 ids, so bytes can be its tokens.
    """
    import transformers

    tok = tiny_tokenizer() if tokenizer else None
    config = transformers.LlamaConfig(
        vocab_size=len(tok) if tok is not None else 264,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
        eos_token_id=tok.eos_token_id if tok is not None else None,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    if tok is not None:
        tok.save_pretrained(directory)
    return directory
