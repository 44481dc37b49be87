"""Progressive growth of a :class:`BitLM` (seed 004): depth, width and context, function-preserving.

The same rules as the byte LM's (:mod:`.growth`, whose public functions dispatch here for a
``BitLM``):

- depth: new blocks whose branch outputs (``o_proj``, ``down_proj``) start at zero are identities,
  in the standard stack and in the reversible coupling alike (``y1 = x1 + 0``, ``y2 = x2 + 0``).
  With ACT, blocks appended on top (the default position) keep the function too: the new last
  layer's state equals the old last one's, and the halting weights of the old last layer and the
  new one sum to the old remainder.
- width (Net2Net, Chen et al. 2016): every residual unit, head and FFN unit is duplicated and
  every consumer split, as for the byte LM; the bit and phase embeddings are tiled, the halting
  unit (which reads the residual stream) gets ``W / k``, and the sinusoid table keeps its width
  (``pos_dim``) and is tiled, so the positions are the duplicated residual of the old ones.
- context: ``seq_len`` grows (still a multiple of 9); sinusoidal positions have no weights, the
  first ``seq_len`` rows of the table do not change.

Quantized models follow the byte LM's recipe handling (depth: the recipe quantizes the new blocks;
width: dequantize, widen, swap again, carry per-layer state).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..quant import apply_recipe, dequantize, prepare, quant_recipe
from . import growth as _g
from .bit_lm import BitLM
from .bit_lm_blocks import BitBlock


def _finish(new: BitLM, old: BitLM, grown_from: dict[str, str]) -> BitLM:
    object.__setattr__(new, _g.GROWN_FROM_ATTR, grown_from)
    new.train(old.training)
    new.step = old.step
    return new


def grow_depth(
    model: BitLM,
    n_new: int = 1,
    *,
    position: int | None = None,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> BitLM:
    """A copy of ``model`` with ``n_new`` identity blocks inserted at ``position`` (default: top).

    Arguments as :func:`trainables.models.growth.grow_depth`. With ACT only the top position
    preserves the function (a block inserted lower changes the halting decisions above it).
    """
    cfg = model.config
    n_old = cfg.n_layers
    position = n_old if position is None else position
    if not 0 <= position <= n_old:
        raise ValueError(f"position must be in 0..n_layers={n_old}, got {position}")
    if n_new < 1:
        raise ValueError(f"n_new must be a positive integer, got {n_new}")
    memo: dict[int, object] = {}
    new = copy.deepcopy(model, memo)
    new.config = cfg.replace(n_layers=n_old + n_new)
    ref = model.embed.weight
    recipe = quant_recipe(model)
    fresh: list[nn.Module] = []
    with torch.random.fork_rng(enabled=generator is not None):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for _ in range(n_new):
            block = BitBlock(new.config)
            new.init_block(block)
            with torch.no_grad():
                for module in block.branch_outputs():
                    weight: Tensor = module.weight  # type: ignore[assignment]
                    weight.zero_()
                    if noise_std > 0:
                        weight.normal_(0.0, noise_std * cfg.init_std)
            block = block.to(device=ref.device, dtype=ref.dtype)
            fresh.append(apply_recipe(block, recipe) if recipe is not None else block)
    blocks = list(new.blocks)
    new.blocks = nn.ModuleList(blocks[:position] + fresh + blocks[position:])
    _g._copy_lambdas(model, new)
    return _finish(new, model, _g._name_map(model, new, memo))


def _widen_bit(name: str, t: Tensor, k: int, noise: float, gen: torch.Generator | None) -> Tensor:
    """The widened state-dict entry ``name`` of a BitLM (see the module docstring)."""
    if name in ("embed.weight", "phase.weight"):
        return t.repeat(1, k)  # [V, k*D]: the residual [x, x]
    if name == "halt.weight":
        return _g._split_in(t, k, noise, gen)  # reads the residual [x, x]: W / k per copy
    if name == "halt.bias":
        return t.clone()
    return _g._widen(name, t, k, False, (1, 1), noise, gen)


def grow_width(
    model: BitLM,
    factor: int = 2,
    *,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> BitLM:
    """A new model ``factor`` times wider (``d_model``, ``n_heads``, ``d_ff``), Net2Net-style.

    Arguments and quantized-model handling as :func:`trainables.models.growth.grow_width`.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    cfg = model.config
    new_cfg = cfg.replace(
        d_model=cfg.d_model * factor,
        n_heads=cfg.n_heads * factor,
        d_ff=cfg.ffn_hidden * factor,
        pos_dim=cfg.position_width,
    )
    recipe = quant_recipe(model)
    fp = copy.deepcopy(model)
    if recipe is not None:
        fp = dequantize(fp)
    ref = model.embed.weight
    with torch.no_grad():
        state = {
            name: _widen_bit(name, t.detach().cpu(), factor, noise_std, generator)
            for name, t in fp.state_dict().items()
        }
    new = BitLM(new_cfg)
    new.load_state_dict(state, strict=True)
    new = new.to(device=ref.device, dtype=ref.dtype)
    if recipe is not None:
        options = dict(recipe.options)
        new = prepare(
            new, recipe.scheme, keep_head=recipe.keep_head, exclude=recipe.exclude, **options
        )
        old_modules = dict(model.named_modules())
        for name in _g._quant_names(model):
            reads_norm = _g._reads_norm(name + ".weight", False)
            _g._carry_quant_state(old_modules[name], new.get_submodule(name), factor, reads_norm)
        _g._copy_lambdas(model, new)
    return _finish(new, model, {n: n for n, _ in new.named_parameters()})


def grow_context(model: BitLM, factor: int = 2, *, seq_len: int | None = None) -> BitLM:
    """A copy of ``model`` accepting ``seq_len`` bits (default ``factor * seq_len``).

    The new length must be a multiple of 9 (whole bytes); no weight changes.
    """
    cfg = model.config
    new_len = cfg.seq_len * factor if seq_len is None else seq_len
    if new_len <= cfg.seq_len:
        raise ValueError(f"the new seq_len must exceed seq_len={cfg.seq_len}, got {new_len}")
    memo: dict[int, object] = {}
    new = copy.deepcopy(model, memo)
    new.config = cfg.replace(seq_len=new_len)  # validates the multiple of 9
    new.resize_positions(new_len)
    return _finish(new, model, _g._name_map(model, new, memo))
