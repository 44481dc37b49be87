"""The local base model seed 003's study converts: a small Llama pretrained here on pydocs.

No model may be downloaded, so ``make results`` makes its own Hugging Face causal LM: a Llama
of ``hidden`` width with byte tokens (256 bytes + 8 spare ids, the vocabulary
``trainables.data.hf_text`` uses without a tokenizer), trained in full precision on the built-in
pydocs corpus and saved with ``save_pretrained``. The bitnet-finetune preset then self-generates
its data with it, converts it to ternary and fine-tunes it, as seed 003 does with a real model.
"""

from __future__ import annotations

import json
from pathlib import Path

BYTE_VOCAB = 264


def pretrained_base(
    directory: Path,
    *,
    steps: int,
    hidden: int = 64,
    layers: int = 2,
    seq_len: int = 128,
    batch: int = 16,
    seed: int = 0,
) -> Path:
    """Train (or reuse, when ``directory`` holds the same settings) the base model; its path.

    ``directory/pretrain.json`` records the settings and the final training loss (nats/byte).
    """
    import torch
    import transformers

    from trainables.data import pydocs_bytes

    settings = {
        "steps": steps,
        "hidden": hidden,
        "layers": layers,
        "seq_len": seq_len,
        "batch": batch,
        "seed": seed,
    }
    record = directory / "pretrain.json"
    if record.is_file() and json.loads(record.read_text()).get("settings") == settings:
        return directory
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(
        vocab_size=BYTE_VOCAB,
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=None,
    )
    model = transformers.LlamaForCausalLM(config)
    data = torch.frombuffer(bytearray(pydocs_bytes()), dtype=torch.uint8).long()  # (N,)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        starts = torch.randint(0, len(data) - seq_len - 1, (batch,), generator=generator)
        x = torch.stack([data[s : s + seq_len] for s in starts.tolist()])  # (B, T)
        loss = model(input_ids=x, labels=x).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    record.write_text(json.dumps({"settings": settings, "final_loss": loss.item()}, indent=2))
    return directory
