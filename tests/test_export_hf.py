"""hf-bitnet export (trainables/export/hf_bitnet.py), checked with transformers' own BitNet code.

The exported directory is loaded with ``transformers.AutoModelForCausalLM.from_pretrained`` (its
BitNet quantizer swaps in its ``BitLinear``, which unpacks our uint8 weights and quantizes the
activations itself); its logits on a batch must equal the deployed bitsweep model's (the packed
checkpoint loaded into the converted model, ``TernaryLinear`` layers). transformers'
``unpack_weights`` and ``activation_quant`` are wrapped in ``torch.compile``; the tests run them in
eager mode (``torch.compiler.set_stance("force_eager")``: the same code, without ~3 minutes of CPU
compilation).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from hf_fixtures import save_tiny_llama  # noqa: E402

from trainables.export import ExportError, export_model  # noqa: E402
from trainables.export.hf_bitnet import pack_bitnet_weight  # noqa: E402
from trainables.models.hf_lm import build_hf_lm  # noqa: E402
from trainables.quant import convert, load_packed_into, save_packed_checkpoint  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(rows=st.integers(1, 6), cols=st.integers(1, 7), seed=st.integers(0, 2**16))
def test_packing_inverts_transformers_unpack(rows: int, cols: int, seed: int) -> None:
    from transformers.integrations.bitnet import unpack_weights

    gen = torch.Generator().manual_seed(seed)
    codes = torch.randint(-1, 2, (4 * rows, cols), generator=gen, dtype=torch.int8)
    packed = pack_bitnet_weight(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (rows, cols)
    with torch.compiler.set_stance("force_eager"):
        unpacked = unpack_weights(packed, dtype=torch.float32)
    torch.testing.assert_close(unpacked, codes.float(), rtol=0, atol=0)


def _checkpoint(root: Path, scheme: str = "ternary", **options: object) -> tuple[Path, Path]:
    base = save_tiny_llama(root / "base", tokenizer=False)
    post_attn = bool(options.pop("rmsnorm_post_attn", False))
    config = {"hf_path": str(base), "seq_len": 16, "rmsnorm_post_attn": post_attn}
    model = build_hf_lm(config, scheme, **options)
    # train-like weights: spread the scales so that every layer's gamma differs
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.mul_(1.0 + 0.1 * i)
    manifest = {
        "architecture": {"arch": "hf_causal_lm", "config": model.config.to_dict()},
        "base_model": str(base),
        "model_type": f"bitsweep-hf_causal_lm-{scheme}",
        "final_lambda": 1.0,
    }
    return save_packed_checkpoint(model, root / "ckpt", manifest=manifest), base


def _deployed(base: Path, ckpt: Path, **options: object) -> torch.nn.Module:
    """The bitsweep deployment: the converted model, its packed weights loaded, TernaryLinear."""
    model = convert(build_hf_lm({"hf_path": str(base), "seq_len": 16}, "ternary", **options))
    load_packed_into(model, ckpt)
    return model.eval()


@pytest.mark.parametrize("input_norm", [False, True])
def test_transformers_logits_equal_deployed_bitsweep_model(
    tmp_path: Path, input_norm: bool
) -> None:
    options = {"input_norm": True} if input_norm else {}
    ckpt, base = _checkpoint(tmp_path, **options)
    manifest = export_model(ckpt, "hf-bitnet", tmp_path / "hf")
    with torch.compiler.set_stance("force_eager"):
        hf = transformers.AutoModelForCausalLM.from_pretrained(
            str(tmp_path / "hf"), local_files_only=True
        ).eval()
        layer = hf.model.layers[0].self_attn.q_proj
        from transformers.integrations.bitnet import BitLinear as HFBitLinear

        assert isinstance(layer, HFBitLinear)
        assert layer.weight.dtype == torch.uint8 and layer.weight.shape == (8, 32)
        assert (layer.rms_norm is not None) == input_norm
        assert type(hf.lm_head) is torch.nn.Linear  # the head stays full precision
        idx = torch.randint(0, 264, (3, 16), generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            ours = _deployed(base, ckpt, **options)(idx).logits
            theirs = hf(input_ids=idx).logits
            float_base = transformers.AutoModelForCausalLM.from_pretrained(
                str(base), local_files_only=True
            )(input_ids=idx).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
    # the ternary model is not the float one: the comparison above is not vacuous
    assert (ours - float_base).abs().max() > 100 * (theirs - ours).abs().max()
    quant = json.loads((tmp_path / "hf" / "config.json").read_text())["quantization_config"]
    assert quant["quant_method"] == "bitnet" and quant["linear_class"] == "bitlinear"
    assert quant["modules_to_not_convert"] == ["lm_head"]
    assert manifest["tensor_types"]["bitnet_2bit"]["count"] == 14
    assert manifest["base_model"] == str(base)
    assert manifest["final_lambda"] == 1.0


def test_post_attention_norm_is_refused(tmp_path: Path) -> None:
    ckpt, _ = _checkpoint(tmp_path, rmsnorm_post_attn=True)
    with pytest.raises(ExportError, match="rmsnorm_post_attn=true: transformers' Llama has no"):
        export_model(ckpt, "hf-bitnet", tmp_path / "hf")


def test_hadamard_and_other_activation_bits_are_refused(tmp_path: Path) -> None:
    ckpt, _ = _checkpoint(tmp_path / "h", "hadamard")
    with pytest.raises(ExportError, match="hadamard scheme"):
        export_model(ckpt, "hf-bitnet", tmp_path / "h" / "hf")
    ckpt, _ = _checkpoint(tmp_path / "a", act_bits=4)
    with pytest.raises(ExportError, match=r"quant\.act_bits=8"):
        export_model(ckpt, "hf-bitnet", tmp_path / "a" / "hf")


def test_missing_base_model_names_the_fix(tmp_path: Path) -> None:
    ckpt, base = _checkpoint(tmp_path)
    (base / "config.json").unlink()
    with pytest.raises(ExportError, match="--base-model DIR"):
        export_model(ckpt, "hf-bitnet", tmp_path / "hf")


def test_export_of_a_real_hf_causal_lm_training_run(tmp_path: Path) -> None:
    """``bitsweep export`` of the final checkpoint of a 4-step ``hf_causal_lm`` run."""
    from orchestrator.cli import main
    from trainables.config import RunConfig
    from trainables.loop import train
    from trainables.reporting import ListReporter

    base = save_tiny_llama(tmp_path / "base", tokenizer=False)
    cfg = RunConfig.from_flat(
        {"model.arch": "hf_causal_lm", "model.hf_path": str(base), "model.seq_len": 16,
         "train.steps": 4, "train.eval_every": 4, "train.batch_size": 2, "train.lr": 1e-2,
         "data.eval_batches": 1, "schedule.lambda_warmup_frac": 0.5}
    )  # fmt: skip
    reporter = ListReporter(tmp_path / "ckpts")
    result = train(cfg, reporter=reporter)
    out = tmp_path / "hf"
    args = ["export", str(reporter.checkpoints[-1]), "--format", "hf-bitnet", "--out", str(out)]
    assert main(args) == 0
    manifest = json.loads((out / "export_manifest.json").read_text())
    assert manifest["training_steps"] == 4 and manifest["lambda_warmup_frac"] == 0.5
    assert manifest["base_model"] == str(base.resolve())
    idx = torch.randint(0, 264, (2, 16), generator=torch.Generator().manual_seed(2))
    with torch.compiler.set_stance("force_eager"), torch.no_grad():
        hf = transformers.AutoModelForCausalLM.from_pretrained(str(out), local_files_only=True)
        theirs = hf.eval()(input_ids=idx).logits
        ours = convert(result.model).eval()(idx).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-5)
