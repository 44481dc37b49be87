"""Data parallelism after the model is built (trainables/parallel.py): the single-process context
(no wrapper, no collective), its checkpoint layout, the context read from a real gloo process
group, and two real gloo ranks on CPU: DDP and FSDP2 average gradients, reduce metrics, and write
checkpoints (``state.pt`` from rank 0; a sharded DCP checkpoint from every rank) that load back.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from trainables.parallel import (
    DCP_DIR,
    EXTRA_FILE,
    STATE_FILE,
    Parallel,
    pick_device,
    raw_architecture_template,
    unwrap,
)

CPU = torch.device("cpu")


class _Net(nn.Module):
    """Two linear blocks (``blocks``: FSDP2 shards each on its own) and a head."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([nn.Linear(8, 16), nn.Linear(16, 16)])
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 8] -> [B, 2]
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def _net(seed: int = 0) -> _Net:
    torch.manual_seed(seed)
    return _Net()


def _batch(rank: int) -> torch.Tensor:
    """Rank ``rank``'s batch: different data on each rank."""
    return torch.linspace(-1.0, 1.0, 32).reshape(4, 8) * (rank + 1)


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor) -> None:
    opt.zero_grad()
    model(x).pow(2).mean().backward()
    opt.step()


# --- one process, no process group -------------------------------------------------------------


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only answers")
def test_pick_device_without_cuda() -> None:
    assert pick_device("cpu") == CPU and pick_device("auto", local_rank=3) == CPU
    with pytest.raises(RuntimeError, match=r"train\.device is 'cuda'"):
        pick_device("cuda")


@pytest.mark.parametrize("strategy", ["none", "ddp", "fsdp"])
def test_without_a_process_group_every_strategy_is_one_plain_process(strategy: str) -> None:
    par = Parallel.from_environment(strategy, CPU, find_unused_parameters=True)  # type: ignore[arg-type]
    assert (par.strategy, par.rank, par.world_size, par.is_main) == ("none", 0, 1, True)
    assert par.find_unused_parameters
    model = _net()
    assert par.wrap(model) is model


@pytest.mark.parametrize("strategy", ["none", "ddp", "fsdp"])
def test_one_rank_wraps_nothing_and_reduces_without_collectives(strategy: str) -> None:
    """world_size 1 never touches torch.distributed (no group exists here: a call would fail)."""
    par = Parallel(strategy, 0, 1, CPU)  # type: ignore[arg-type]
    model = _net()
    assert par.wrap(model) is model
    assert par.mean(2.5) == 2.5
    assert par.mean_dict({"a": 1.0, "b": 3.0}) == {"a": 1.0, "b": 3.0}
    par.barrier()
    assert par.full_model(model) is model


def test_single_file_checkpoint_round_trip(tmp_path: Path) -> None:
    par = Parallel()
    model = _net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _sgd_step(model, opt, _batch(0))
    par.save(tmp_path, model, opt, {"step": 7, "rng": torch.arange(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == [STATE_FILE]
    extra = Parallel.read_extra(tmp_path)
    assert extra["step"] == 7 and torch.equal(extra["rng"], torch.arange(3))
    fresh = _net(seed=1)
    fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
    par.load(tmp_path, fresh, fresh_opt)
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the optimizer state came back too: the next step is the same step
    _sgd_step(model, opt, _batch(1))
    _sgd_step(fresh, fresh_opt, _batch(1))
    assert torch.equal(model.head.weight, fresh.head.weight)


def test_only_rank_zero_writes_a_single_file_checkpoint(tmp_path: Path) -> None:
    model = _net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    Parallel("ddp", 1, 2, CPU).save(tmp_path, model, opt, {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_read_extra_reads_either_layout_and_names_both_when_neither_is_there(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError, match=f"{STATE_FILE} or {DCP_DIR}"):
        Parallel.read_extra(tmp_path)
    torch.save({"step": 3}, tmp_path / EXTRA_FILE)  # the sharded layout's plain data
    assert Parallel.read_extra(tmp_path) == {"step": 3}


def test_unwrap_and_the_export_template() -> None:
    model = _net()
    holder = nn.Module()
    holder.module = model  # what DDP looks like
    assert unwrap(holder) is model and unwrap(model) is model
    odd = nn.Module()
    odd.module = "not a module"  # type: ignore[assignment]
    assert unwrap(odd) is odd
    assert Parallel("ddp", 1, 2, CPU).full_model(model) is None  # only rank 0 exports
    with pytest.raises(RuntimeError, match="unsharded template"):
        raw_architecture_template(model)
    template = copy.deepcopy(model)
    object.__setattr__(model, "bitsweep_template", template)  # as the loop sets it
    assert raw_architecture_template(model) is template


def test_a_one_process_gloo_group_keeps_the_strategy(tmp_path: Path) -> None:
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        par = Parallel.from_environment("ddp", CPU)
        assert (par.strategy, par.rank, par.world_size) == ("ddp", 0, 1)
        model = _net()
        assert par.wrap(model) is model  # one rank: nothing to synchronize
        assert par.mean(4.0) == 4.0
    finally:
        dist.destroy_process_group()


# --- two real gloo ranks ------------------------------------------------------------------------


def _rank_main(rank: int, world: int, folder: str) -> None:
    """One rank, for DDP then FSDP2 in the same group: wrap, one SGD step on its own batch,
    reductions, a checkpoint saved and loaded into a fresh model (files under folder/strategy)."""
    torch.set_num_threads(1)
    store = dist.FileStore(str(Path(folder) / "store"), world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        for strategy in ("ddp", "fsdp"):
            _one_strategy(rank, strategy, Path(folder) / strategy)
    finally:
        dist.destroy_process_group()


def _one_strategy(rank: int, strategy: str, out: Path) -> None:
    out.mkdir(exist_ok=True)
    par = Parallel.from_environment(strategy, CPU)  # type: ignore[arg-type]
    report: dict[str, Any] = {
        "rank": par.rank,
        "world": par.world_size,
        "strategy": par.strategy,
        "mean": par.mean(float(rank + 1)),
        "mean_dict": par.mean_dict({"a": float(rank), "b": 10.0 * rank}),
    }
    model = _net()
    object.__setattr__(model, "bitsweep_template", copy.deepcopy(model))
    wrapped = par.wrap(model)
    report["wrapped_in_place"] = wrapped is model
    report["unwrapped"] = unwrap(wrapped) is model
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.5)
    _sgd_step(wrapped, opt, _batch(rank))
    full = par.full_model(wrapped)  # a collective under FSDP: every rank calls it
    report["full_on_this_rank"] = full is not None
    if full is not None:
        torch.save(full.state_dict(), out / "stepped.pt")
    checkpoint = out / "checkpoint"
    checkpoint.mkdir(exist_ok=True)
    par.barrier()
    par.save(checkpoint, wrapped, opt, {"step": 1})
    par.barrier()
    fresh = _net(seed=5)
    object.__setattr__(fresh, "bitsweep_template", copy.deepcopy(fresh))
    fresh_wrapped = par.wrap(fresh)
    fresh_opt = torch.optim.SGD(fresh_wrapped.parameters(), lr=0.5)
    par.load(checkpoint, fresh_wrapped, fresh_opt)
    reloaded = par.full_model(fresh_wrapped)
    if reloaded is not None:
        torch.save(reloaded.state_dict(), out / "reloaded.pt")
    (out / f"rank{rank}.json").write_text(json.dumps(report))


# two spawned processes importing torch: ~25 s of CPU on this machine, so it runs with the slow set
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_gloo_ranks_average_gradients_and_checkpoint(tmp_path: Path) -> None:
    """DDP wraps, FSDP2 shards in place; both average the two ranks' gradients, reduce metrics,
    export the full model on rank 0 and load their own checkpoint layout back exactly."""
    mp.spawn(_rank_main, args=(2, str(tmp_path)), nprocs=2, join=True)
    # one SGD step on the mean of the two ranks' losses: what data parallelism must compute
    expected = _net()
    opt = torch.optim.SGD(expected.parameters(), lr=0.5)
    opt.zero_grad()
    loss = (expected(_batch(0)).pow(2).mean() + expected(_batch(1)).pow(2).mean()) / 2
    loss.backward()
    opt.step()
    layouts = {"ddp": {STATE_FILE}, "fsdp": {DCP_DIR, EXTRA_FILE}}
    for strategy, layout in layouts.items():
        out = tmp_path / strategy
        for rank in (0, 1):
            report = json.loads((out / f"rank{rank}.json").read_text())
            assert (report["rank"], report["world"], report["strategy"]) == (rank, 2, strategy)
            assert report["mean"] == pytest.approx(1.5)  # (1 + 2) / 2
            assert report["mean_dict"] == pytest.approx({"a": 0.5, "b": 5.0})
            # DDP wraps the model; FSDP2 shards it in place
            assert report["wrapped_in_place"] == (strategy == "fsdp") and report["unwrapped"]
            assert report["full_on_this_rank"] == (rank == 0)
        stepped = torch.load(out / "stepped.pt", weights_only=True)
        for name, value in expected.state_dict().items():
            torch.testing.assert_close(stepped[name], value, rtol=1e-5, atol=1e-6, msg=name)
        assert {p.name for p in (out / "checkpoint").iterdir()} == layout, strategy
        assert Parallel.read_extra(out / "checkpoint")["step"] == 1
        reloaded = torch.load(out / "reloaded.pt", weights_only=True)
        for name, value in stepped.items():
            assert torch.equal(reloaded[name], value), f"{strategy}: {name}"
