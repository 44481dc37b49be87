"""Progressive growth of a :class:`ByteLM` (seed 004): depth, width, context; function-preserving.

- :func:`grow_depth` inserts blocks whose residual branches end at zero (the attention branch's last
  module, ``o_proj`` or the post-attention RMSNorm, and ``down_proj``), so each new block starts as
  the identity (the zero-init residual of stacking methods, see REFERENCES.md "Progressive growth").
- :func:`grow_width` multiplies every width by an integer ``factor`` Net2Net-style (Chen et al.,
  ICLR 2016, arXiv 1511.05641): every residual dimension, attention head and FFN unit is duplicated
  and every consuming weight is split by ``factor``. ``RMSNorm([x, x]) = [RMSNorm(x), RMSNorm(x)]``,
  heads are duplicated (``head_dim`` is kept, so RoPE and the attention scale do not change).
- :func:`grow_context` raises ``seq_len``; RoPE has no learned positions, so no weight changes.

Quantized models (``trainables.quant.prepare`` records a recipe on the model): depth and context
growth keep the existing quantized layers untouched and quantize the new block with
``apply_recipe`` (same scheme, options and blend factor), which is exact: a zero weight quantizes to
zero. Width growth dequantizes the model (latent full-precision weights), widens it and runs the
recipe's swap pass again over the same structure (first/last-layer policies apply alike). Where a
Linear reads a norm's output, the 1/k of the split goes into that norm's gain and the weight is
tiled unscaled, so absmean ternarization gives the same codes and scale and the per-token absmax
quantization of ``[y/k, y/k]`` is that of ``y``, scaled; only ``o_proj`` / ``down_proj`` without
SubLN carry ``W/k`` themselves (the quantizer's ``eps`` then shifts the grid by ~1e-3 relative,
which can flip a rare weight). Measured on seeded tiny models, relative L2 change of the eval
(lam = 1) logits, asserted in ``tests/test_growth.py``:

- depth and context growth, any scheme: 0 (bit-identical);
- width, ``ternary``, ``lsq``, ``adaptive``: 0 to 5e-3 (float rounding differences of ~1e-7 flip an
  occasional activation code), asserted below 1e-2;
- width, ``hadamard`` with ``block_size`` pinned at or below every layer's Hadamard block: the same;
- width, ``hadamard`` with the default block: the block doubles with the width and the quantization
  grid changes: 0.06 to 0.95, not function-preserving (pin ``block_size`` to grow such models);
- width with ``noise_std=1e-2``: 0.01 to 0.15 (the noise moves the absmean), asserted below 0.25.

Extra per-layer state of a quantized layer (for example BitLinear's ``input_norm`` gain) is tiled to
the new shape; LSQ step sizes are copied and divided by k where the tensor they quantize was scaled
by 1/k (activations after a norm, ``W/k`` weights), so LSQ models keep their grids too.

Each grown model carries ``grown_from``, a dict from its parameter names to the parameter names of
the model it was grown from, which :func:`.growth_optim.move_optimizer_to_grown` uses to carry
Adam state over.
Width growth lays every duplicated dimension out as ``[original, copy, ...]``, so the pre-existing
units of each widened tensor are its leading block; the freeze window after a growth
(:mod:`trainables.growth_freeze`) relies on both.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from ..quant import LSQQuantizer, QuantLayer, apply_recipe, dequantize, prepare, quant_recipe
from .lm import ByteLM

GROWN_FROM_ATTR = "grown_from"


def _is_bit_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a BitLM (its growth lives in :mod:`.bit_lm_growth`)."""
    from .bit_lm import BitLM

    return isinstance(model, BitLM)


def _quant_names(model: nn.Module) -> list[str]:
    """Names of the outermost quantized layers of ``model``."""
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, QuantLayer) and not any(name.startswith(n + ".") for n in names):
            names.append(name)
    return names


def _copy_lambdas(source: nn.Module, target: nn.Module) -> None:
    """Give every quantized layer of ``target`` the blend factors of ``source``'s layers."""
    layers = [m for m in source.modules() if isinstance(m, QuantLayer)]
    if not layers:
        return
    by_name = dict(source.named_modules())
    for name, module in target.named_modules():
        if isinstance(module, QuantLayer):
            ref = by_name.get(name)
            ref = ref if isinstance(ref, QuantLayer) else layers[0]
            module.quant_lambda = ref.quant_lambda
            module.eval_lambda = ref.eval_lambda


def _name_map(old: nn.Module, new: nn.Module, memo: dict[int, object]) -> dict[str, str]:
    """New parameter name -> old parameter name, through a deepcopy memo (old id -> new object)."""
    new_names = {id(p): n for n, p in new.named_parameters()}
    out: dict[str, str] = {}
    for name, param in old.named_parameters():
        twin = memo.get(id(param))
        if twin is not None and id(twin) in new_names:
            out[new_names[id(twin)]] = name
    return out


def _finish(new: ByteLM, old: ByteLM, grown_from: dict[str, str]) -> ByteLM:
    object.__setattr__(new, GROWN_FROM_ATTR, grown_from)
    new.train(old.training)
    new.exit_at_inference = old.exit_at_inference
    new.step = old.step
    return new


def grow_depth(
    model: ByteLM,
    n_new: int = 1,
    *,
    position: int | None = None,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> ByteLM:
    """A copy of ``model`` with ``n_new`` identity-initialized blocks inserted at ``position``.

    Args:
        model: the model to grow (left unchanged).
        n_new: how many blocks to add.
        position: insertion index among the blocks, ``0..n_layers``; default ``n_layers`` (on top,
            just below the final norm).
        noise_std: if positive, the zeroed branch outputs get ``N(0, (noise_std * init_std)^2)``
            instead of exact zeros (breaks exact preservation by that much).
        generator: random source for the new blocks' initialization and the noise.

    With early exit, the new layers get fresh exit gates (appending on top also gives the former
    last layer, which had none, a fresh gate). A quantized model's new blocks are quantized with
    the model's recipe and its blend factor; the zero output weights quantize to exactly zero.
    """
    if _is_bit_lm(model):  # BitTransformerLM (seed 004): same rules, its own layout
        from .bit_lm_growth import grow_depth as grow_bit_depth

        return grow_bit_depth(
            model, n_new, position=position, noise_std=noise_std, generator=generator
        )  # type: ignore[return-value]
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
    blocks = list(new.blocks)
    fresh_blocks = []
    with torch.random.fork_rng(enabled=generator is not None):
        if generator is not None:
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for _ in range(n_new):
            block = _identity_block(new, noise_std)
            block = block.to(device=ref.device, dtype=ref.dtype)
            if recipe is not None:
                block = apply_recipe(block, recipe)
            fresh_blocks.append(block)
        gates = [new.new_gate().to(device=ref.device, dtype=ref.dtype) for _ in range(n_new)]
    new.blocks = nn.ModuleList(blocks[:position] + fresh_blocks + blocks[position:])
    if new.exit_gates is not None:
        old_gates = list(new.exit_gates)
        at = min(position, n_old - 1)
        new.exit_gates = nn.ModuleList(old_gates[:at] + gates + old_gates[at:])
    _copy_lambdas(model, new)
    return _finish(new, model, _name_map(model, new, memo))


def _identity_block(model: ByteLM, noise_std: float) -> nn.Module:
    """A new block whose residual branches output zero (plus optional noise)."""
    from .blocks import Block

    block = Block(model.config)
    model.init_block(block)
    with torch.no_grad():
        for module in block.branch_outputs():
            weight: Tensor = module.weight  # type: ignore[assignment]
            weight.zero_()
            if noise_std > 0:
                weight.normal_(0.0, noise_std * model.config.init_std)
    return block


def _split_in(w: Tensor, k: int, noise_std: float, gen: torch.Generator | None) -> Tensor:
    """``[o, i]`` -> ``[o, k*i]``: ``k`` copies of ``w / k`` plus noise summing to 0 over copies."""
    out = w.repeat(1, k) / k  # [o, k*i]
    if noise_std > 0:
        o, i = w.shape
        scale = noise_std * float(w.std()) if w.numel() > 1 else noise_std
        e = torch.randn(o, k, i, generator=gen, dtype=torch.float64) * scale
        e = e - e.mean(dim=1, keepdim=True)  # the copies' noise cancels: [o, k, i]
        out = out + e.reshape(o, k * i).to(w.dtype)
    return out


def _map_units(old: int, new: int) -> tuple[Tensor, Tensor]:
    """Net2Net unit map for ``old -> new`` units: source index of each new unit and copy counts."""
    src = torch.arange(new) % old  # [new]
    counts = torch.bincount(src, minlength=old).to(torch.float64)  # [old]
    return src, counts


def _reads_norm(name: str, subln: bool) -> bool:
    """Whether the Linear weight ``name`` reads the output of an RMSNorm / LayerNorm."""
    if name == "head.weight" or name.endswith(("fc1.weight", "_norm.weight", "norm.bias")):
        return True
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return True
    if name.endswith(("up_proj.weight", "gate_proj.weight")):
        return True
    return subln and name.endswith(("o_proj.weight", "down_proj.weight"))


def _widen(
    name: str,
    t: Tensor,
    k: int,
    subln: bool,
    gates: tuple[int, int],
    noise: float,
    gen: torch.Generator | None,
) -> Tensor:
    """The widened version of state-dict entry ``name`` (see :func:`grow_width`)."""
    if name == "embed.weight":
        return t.repeat(1, k)  # [V, k*D]: residual [x, x]
    if t.dim() == 1:
        if name.endswith("post_norm.weight"):
            return t.repeat(k)  # writes the residual stream: copies keep the full value
        if name.endswith("fc1.bias") or name.endswith("fc2.bias"):
            src, _ = _map_units(*gates)
            return t[src] if name.endswith("fc1.bias") else t.clone()
        return t.repeat(k) / k  # a norm feeding a split: it carries the 1/k
    if name.endswith("fc2.weight"):
        src, counts = _map_units(*gates)
        return (t[:, src] / counts[src].to(t.dtype)).contiguous()
    if name.endswith("fc1.weight"):
        src, _ = _map_units(*gates)
        t = t[src]  # [gh_new, D]
    elif name != "head.weight":
        t = t.repeat(k, 1)  # duplicate the output units: [k*out, in]
    split = _split_in(t, k, noise, gen)  # [out', k*in], copies of t/k
    return split * k if _reads_norm(name, subln) else split


def _tile_to(t: Tensor, shape: torch.Size) -> Tensor:
    """Repeat ``t`` along each dimension to reach ``shape`` (integer multiples only)."""
    if t.shape == shape:
        return t.clone()
    if t.dim() != len(shape) or any(n % o for n, o in zip(shape, t.shape, strict=True)):
        raise ValueError(f"cannot tile {tuple(t.shape)} to {tuple(shape)}")
    return t.repeat(*(n // o for n, o in zip(shape, t.shape, strict=True)))


def _carry_quant_state(old: nn.Module, layer: nn.Module, k: int, reads_norm: bool) -> None:
    """Copy a quantized layer's extra state (tiled to the new shapes) and rescale LSQ steps.

    A layer reading a norm gets its input scaled by ``1/k`` (the norm carries the split) and keeps
    its weight; any other layer keeps its input and gets ``W/k``. LSQ step sizes follow the tensor
    they quantize, so the grown layer quantizes on the same (scaled) grid.
    """
    extra = {k_: v for k_, v in old.state_dict().items() if k_ not in ("weight", "bias")}
    state = layer.state_dict()
    with torch.no_grad():
        for key in extra.keys() & state.keys():
            state[key] = _tile_to(extra[key], state[key].shape)
        layer.load_state_dict(state, strict=True)  # runs the layers' own load hooks
        for module in layer.modules():
            if isinstance(module, nn.RMSNorm) and module.weight is not None and reads_norm:
                module.weight.div_(k)  # an input norm re-normalizes [y/k, y/k]: it carries the 1/k
            if isinstance(module, LSQQuantizer) and module.is_initialized:
                is_act = module.kind == "activation"
                if is_act == reads_norm:
                    module.step.div_(k)


def grow_width(
    model: ByteLM,
    factor: int = 2,
    *,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> ByteLM:
    """A new model ``factor`` times wider (``d_model``, ``n_heads``, ``d_ff``), Net2Net-style.

    Every residual dimension, head and FFN unit is duplicated ``factor`` times (copies laid out as
    ``[x, x, ...]``); every weight that reads duplicated units is split, ``W -> [W/k, ..., W/k]``.
    The exit gates' hidden layer is remapped (``d_model // 4`` units, copies divided by their
    count).

    ``noise_std`` (relative to each weight's std) adds noise that cancels across the copies of an
    input, so the full-precision function is still preserved while duplicated units stop receiving
    identical gradients. With ``noise_std = 0`` the copies stay tied under any optimizer: pass a
    small value (for example 1e-2) when the grown model will be trained.

    A quantized model is dequantized, widened and re-quantized with its recipe (drift figures in
    the module docstring). Every parameter changes shape, so
    :func:`.growth_optim.move_optimizer_to_grown` gives all of them fresh optimizer state.
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    if _is_bit_lm(model):
        from .bit_lm_growth import grow_width as grow_bit_width

        return grow_bit_width(model, factor, noise_std=noise_std, generator=generator)  # type: ignore[return-value]
    cfg = model.config
    new_cfg = cfg.replace(
        d_model=cfg.d_model * factor, n_heads=cfg.n_heads * factor, d_ff=cfg.ffn_hidden * factor
    )
    recipe = quant_recipe(model)
    fp = copy.deepcopy(model)
    if recipe is not None:
        fp = dequantize(fp)
    ref = model.embed.weight
    gates = (cfg.gate_hidden, new_cfg.gate_hidden)
    state = {}
    with torch.no_grad():
        for name, t in fp.state_dict().items():
            t = t.detach().cpu()
            state[name] = _widen(name, t, factor, cfg.subln, gates, noise_std, generator)
    new = ByteLM(new_cfg)
    new.load_state_dict(state, strict=True)
    new = new.to(device=ref.device, dtype=ref.dtype)
    if recipe is not None:
        # the same swap pass over the same structure: first/last-layer policies apply alike
        options = dict(recipe.options)
        new = prepare(
            new, recipe.scheme, keep_head=recipe.keep_head, exclude=recipe.exclude, **options
        )
        old_modules = dict(model.named_modules())
        for name in _quant_names(model):
            reads_norm = _reads_norm(name + ".weight", cfg.subln)
            _carry_quant_state(old_modules[name], new.get_submodule(name), factor, reads_norm)
        _copy_lambdas(model, new)
    return _finish(new, model, {n: n for n, _ in new.named_parameters()})


def grow_context(model: ByteLM, factor: int = 2, *, seq_len: int | None = None) -> ByteLM:
    """A copy of ``model`` accepting ``seq_len`` (default ``factor * seq_len``) positions.

    RoPE has no learned positions: no weight changes, outputs on sequences that fitted before are
    unchanged (in full precision and quantized alike).
    """
    if _is_bit_lm(model):
        from .bit_lm_growth import grow_context as grow_bit_context

        return grow_bit_context(model, factor, seq_len=seq_len)  # type: ignore[return-value]
    cfg = model.config
    new_len = cfg.seq_len * factor if seq_len is None else seq_len
    if new_len <= cfg.seq_len:
        raise ValueError(f"the new seq_len must exceed seq_len={cfg.seq_len}, got {new_len}")
    memo: dict[int, object] = {}
    new = copy.deepcopy(model, memo)
    new.config = cfg.replace(seq_len=new_len)
    new.rope.resize(new_len)
    return _finish(new, model, _name_map(model, new, memo))
