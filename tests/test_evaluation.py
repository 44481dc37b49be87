"""Periodic evaluation (trainables/evaluation.py): the metrics of each task against the same
quantities computed by hand, evaluation at lam = 1, eval mode during and the mode restored after.

Early-exit inference of the byte LM: tests/test_exit_eval.py.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainables.config import RunConfig
from trainables.data import BitCorpus, ByteCorpus, parity_positions
from trainables.data.hf_text import TokenCorpus
from trainables.data.vision import ImageClassificationData
from trainables.evaluation import BIT_EVAL_GEN_BYTES, BIT_EVAL_GEN_SEQUENCES, evaluate
from trainables.models import MLP, BitLM, BitLMConfig, ByteLM, ByteLMConfig, MLPConfig
from trainables.quant import prepare, set_quant_lambda

TEXT = b"the quick brown fox jumps over the lazy dog. " * 30
CFG = RunConfig.from_dict({"data": {"eval_batches": 2}, "train": {"batch_size": 4, "seed": 3}})


def _images(n_test: int = 600) -> ImageClassificationData:
    gen = torch.Generator().manual_seed(0)
    return ImageClassificationData(
        name="random",
        train_images=torch.randn(8, 1, 8, 8, generator=gen),
        train_labels=torch.randint(0, 10, (8,), generator=gen),
        test_images=torch.randn(n_test, 1, 8, 8, generator=gen),
        test_labels=torch.randint(0, 10, (n_test,), generator=gen),
        class_names=tuple(str(i) for i in range(10)),
        mean=(0.0,),
        std=(1.0,),
    )


def _mlp() -> MLP:
    torch.manual_seed(1)
    return MLP(MLPConfig(hidden=(32,)))


def _modes_seen(model: nn.Module) -> list[bool]:
    """The ``training`` flag of ``model`` at each of its forwards, from now on."""
    seen: list[bool] = []
    model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    return seen


# --- images -------------------------------------------------------------------------------------


def test_image_metrics_are_the_mean_loss_and_accuracy_over_the_whole_test_set() -> None:
    data = _images()  # 600 images: two batches of EVAL_IMAGE_BATCH
    model = _mlp()
    metrics = evaluate(model, data, CFG)
    with torch.no_grad():
        logits = model(data.test_images).logits
    assert set(metrics) == {"val/loss", "val/acc"}
    expected = F.cross_entropy(logits, data.test_labels).item()
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-6)
    correct = (logits.argmax(1) == data.test_labels).float().mean().item()
    assert metrics["val/acc"] == pytest.approx(correct)


@pytest.mark.parametrize("training", [True, False])
def test_evaluation_runs_in_eval_mode_and_restores_the_mode(training: bool) -> None:
    model = _mlp().train(training)
    seen = _modes_seen(model)
    evaluate(model, _images(40), CFG)
    assert seen == [False]  # 40 images: one batch, in eval mode
    assert model.training is training


def test_quantized_layers_are_evaluated_fully_quantized() -> None:
    """A lam schedule still at 0 trains in full precision; evaluation uses lam = 1 regardless."""
    data = _images(200)
    float_model = _mlp()
    quantized = prepare(copy.deepcopy(float_model), "ternary")
    fully = evaluate(quantized, data, CFG)
    set_quant_lambda(quantized, 0.0)
    at_zero = evaluate(quantized, data, CFG)
    assert at_zero == fully
    assert at_zero["val/loss"] != evaluate(float_model, data, CFG)["val/loss"]


# --- byte LM ------------------------------------------------------------------------------------


def _byte_lm(seq_len: int = 16) -> ByteLM:
    torch.manual_seed(2)
    return ByteLM(ByteLMConfig(d_model=16, n_layers=1, n_heads=2, seq_len=seq_len))


def _lm_loss_by_hand(model: ByteLM, data: ByteCorpus, seq_len: int) -> float:
    total = tokens = 0.0
    with torch.no_grad():
        for x, y in data.iter_eval_batches("val", batch_size=4, seq_len=seq_len, max_batches=2):
            logits = model(x).logits  # [b, T, 256]
            total += F.cross_entropy(logits.transpose(1, 2), y, reduction="sum").item()
            tokens += y.numel()
    return total / tokens


def test_byte_lm_loss_and_bits_per_byte() -> None:
    data = ByteCorpus.from_bytes(TEXT, val_frac=0.2)
    model = _byte_lm().eval()
    metrics = evaluate(model, data, CFG)
    assert set(metrics) == {"val/loss", "val/bpb"}
    loss = _lm_loss_by_hand(model, data, 16)
    assert metrics["val/loss"] == pytest.approx(loss, rel=1e-5)
    assert metrics["val/bpb"] == pytest.approx(loss / math.log(2), rel=1e-5)


def test_a_short_validation_split_is_read_with_shorter_windows() -> None:
    data = ByteCorpus.from_bytes(TEXT[:100], val_frac=0.1)  # 10 validation bytes, seq_len 16
    model = _byte_lm(seq_len=16).eval()
    metrics = evaluate(model, data, CFG)
    assert metrics["val/loss"] == pytest.approx(_lm_loss_by_hand(model, data, 9), rel=1e-5)


def test_token_corpus_bits_per_byte_count_tokens_per_byte() -> None:
    """A tokenized corpus: bits per byte of text are bits per token times tokens per byte."""
    plain = ByteCorpus.from_bytes(TEXT, val_frac=0.2)
    tokens = TokenCorpus(
        train=plain.train, val=plain.val, source="tokens", tokens_per_byte=0.25, tokenizer="t"
    )
    model = _byte_lm().eval()
    metrics = evaluate(model, tokens, CFG)
    assert metrics["val/bpb"] == pytest.approx(metrics["val/loss"] / math.log(2) * 0.25)
    assert metrics["val/loss"] == pytest.approx(evaluate(model, plain, CFG)["val/loss"])


# --- bit LM (seed 004) --------------------------------------------------------------------------


def _bit_lm(**overrides: object) -> BitLM:
    torch.manual_seed(3)
    config = {"d_model": 16, "n_layers": 1, "n_heads": 2, "seq_len": 72, **overrides}
    return BitLM(BitLMConfig(**config))  # type: ignore[arg-type]


def test_bit_lm_loss_is_per_bit_and_bits_per_byte_sum_nine_bits() -> None:
    data = BitCorpus.from_corpus(ByteCorpus.from_bytes(TEXT, val_frac=0.2))
    model = _bit_lm().eval()
    metrics = evaluate(model, data, CFG)
    assert set(metrics) == {"val/loss", "val/bpb", "val/bpb_parity", "val/parity_error"}
    total = parity = bits = 0.0
    with torch.no_grad():
        for x, y in data.iter_eval_batches("val", batch_size=4, seq_len=72, max_batches=2):
            ce = F.cross_entropy(model(x).logits.float().transpose(1, 2), y, reduction="none")
            total += ce.sum().item()
            parity += ce[:, parity_positions(y.shape[1], offset=1)].sum().item()
            bits += y.numel()
    assert metrics["val/loss"] == pytest.approx(total / bits, rel=1e-5)
    assert metrics["val/bpb"] == pytest.approx(9 * total / bits / math.log(2), rel=1e-5)
    assert metrics["val/bpb_parity"] == pytest.approx(parity / (bits / 9) / math.log(2), rel=1e-5)
    assert 0.0 < metrics["val/bpb_parity"] < metrics["val/bpb"]


def test_bit_lm_parity_error_is_a_seeded_share_of_sampled_bytes() -> None:
    data = BitCorpus.from_corpus(ByteCorpus.from_bytes(TEXT, val_frac=0.2))
    model = _bit_lm().eval()
    first = evaluate(model, data, CFG)["val/parity_error"]
    again = evaluate(model, data, CFG)["val/parity_error"]
    assert first == again  # seeded by train.seed, not by the global RNG
    sampled = BIT_EVAL_GEN_SEQUENCES * BIT_EVAL_GEN_BYTES
    assert 0.0 <= first <= 1.0 and (first * sampled) == pytest.approx(round(first * sampled))
    # an untrained model samples bits at random: about half its bytes break parity
    assert first > 0.0


def test_bit_lm_reports_act_layers_and_the_denoiser_is_left_to_its_own_integration() -> None:
    data = BitCorpus.from_corpus(ByteCorpus.from_bytes(TEXT, val_frac=0.2))
    act = evaluate(_bit_lm(act=True, n_layers=2).eval(), data, CFG)
    assert 1.0 <= act["val/act_mean_layers"] <= 2.0
    denoiser = _bit_lm(causal=False).train()
    assert evaluate(denoiser, data, CFG) == {}
    assert denoiser.training  # the mode is restored on that path too
