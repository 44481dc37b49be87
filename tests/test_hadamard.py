"""The normalized Walsh–Hadamard transform: orthonormal, involutive, fast path == dense path."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
import torch
from hypothesis import given

from trainables.quant import fwht, hadamard_block_size, hadamard_matrix, hadamard_transform


@pytest.mark.parametrize("n", [1, 2, 8, 64, 256])
def test_matrix_is_orthonormal_and_symmetric(n: int) -> None:
    h = hadamard_matrix(n, torch.float64)
    torch.testing.assert_close(h @ h.T, torch.eye(n, dtype=torch.float64))
    torch.testing.assert_close(h, h.T)


@given(log_n=st.integers(0, 10), batch=st.integers(1, 4), seed=st.integers(0, 2**16))
def test_fwht_matches_dense_and_preserves_norm(log_n: int, batch: int, seed: int) -> None:
    n = 2**log_n
    x = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    y = fwht(x)
    torch.testing.assert_close(y, x @ hadamard_matrix(n, torch.float64))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(fwht(y), x)  # its own inverse


@given(blocks=st.integers(1, 4), log_b=st.integers(3, 6), seed=st.integers(0, 2**16))
def test_block_diagonal_transform(blocks: int, log_b: int, seed: int) -> None:
    b = 2**log_b
    x = torch.randn(
        3, blocks * b, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    dense = torch.block_diag(*[hadamard_matrix(b, torch.float64)] * blocks)
    torch.testing.assert_close(fwht(x, b), x @ dense)
    torch.testing.assert_close(
        hadamard_transform(x, b, hadamard_matrix(b, torch.float64)), x @ dense
    )


def test_block_size_rules() -> None:
    assert hadamard_block_size(1024) == 1024
    assert hadamard_block_size(96) == 32  # 96 = 3 * 32: block-diagonal over 32-blocks
    assert hadamard_block_size(1024, max_block=128) == 128
    with pytest.raises(ValueError, match="in_features=100"):
        hadamard_block_size(100)  # largest power-of-two divisor is 4
    with pytest.raises(ValueError, match="power of two"):
        hadamard_block_size(64, max_block=48)


# ---------------------------------------------------------------- H-BitLinear placement
def _byte_lm(**quant: object) -> torch.nn.Module:
    """A byte LM built from a run config, as a trial builds it (``quant.*`` keys)."""
    from trainables.build import build_model, initial_architecture
    from trainables.config import RunConfig

    cfg = RunConfig.from_dict(
        {
            "model": {"d_model": 32, "n_layers": 2, "n_heads": 2, "ffn": "gated_sqrelu"},
            "quant": {"scheme": "hadamard", **quant},
        }
    )
    return build_model(cfg, initial_architecture(cfg, None))  # type: ignore[arg-type]


def _kinds(model: torch.nn.Module) -> dict[str, str]:
    from trainables.quant import BitLinear, HBitLinear

    return {
        name: "H" if isinstance(m, HBitLinear) else "B"
        for name, m in model.named_modules()
        if isinstance(m, BitLinear)
    }


def test_default_placement_is_bitnet_v2s_o_proj_and_down_proj() -> None:
    """BitNet v2 (arXiv 2504.18415): H-BitLinear on the attention output and FFN down
    projections, where the inputs have outliers; every other projection is plain BitLinear."""
    kinds = _kinds(_byte_lm())
    per_block = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert len(kinds) == 2 * len(per_block)
    for name, kind in kinds.items():
        expected = "H" if name.endswith((".o_proj", ".down_proj")) else "B"
        assert kind == expected, name
    assert sum(k == "H" for k in kinds.values()) == 4


def test_all_keeps_hadamard_on_every_projection() -> None:
    kinds = _kinds(_byte_lm(hadamard_layers="all"))
    assert len(kinds) == 14 and set(kinds.values()) == {"H"}


def test_placement_by_name_or_glob() -> None:
    kinds = _kinds(_byte_lm(hadamard_layers="down_proj, blocks.0.attn.q_proj"))
    chosen = {n for n, k in kinds.items() if k == "H"}
    assert chosen == {"blocks.0.ffn.down_proj", "blocks.1.ffn.down_proj", "blocks.0.attn.q_proj"}


def test_a_placement_that_selects_nothing_names_the_key() -> None:
    from trainables.quant import prepare

    mlp = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 4))
    with pytest.raises(ValueError, match=r"quant\.hadamard_layers.*'all'"):
        prepare(mlp, "hadamard")
    assert isinstance(prepare(mlp, "hadamard", hadamard_layers="all")[0], torch.nn.Module)
