"""Data parallelism applied after the model is built: none, DDP, or FSDP2 (``fully_shard``).

Model code stays single-device; this module wraps it and knows how each strategy checkpoints:
``none`` and ``ddp`` write one ``state.pt`` from rank 0; ``fsdp`` writes a sharded
``torch.distributed.checkpoint`` (DCP) from every rank. FSDP2 runs on CPU with gloo, which Ray's
own ``prepare_model(parallel_strategy="fsdp")`` (FSDP1) does not.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
from torch import nn

Strategy = Literal["none", "ddp", "fsdp"]
STATE_FILE = "state.pt"
EXTRA_FILE = "extra.pt"
DCP_DIR = "dcp"


def pick_device(preference: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> the local CUDA device when there is one, else the CPU."""
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class Parallel:
    """The data-parallel context of one training process.

    ``Parallel()`` is a single process. Inside Ray Train workers (or any initialized
    ``torch.distributed`` process group) use :meth:`from_environment`.
    """

    strategy: Strategy = "none"
    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    find_unused_parameters: bool = False

    @classmethod
    def from_environment(
        cls, strategy: Strategy, device: torch.device, *, find_unused_parameters: bool = False
    ) -> Parallel:
        """The context of this process in an initialized process group (or a single process)."""
        if dist.is_available() and dist.is_initialized():
            return cls(
                strategy, dist.get_rank(), dist.get_world_size(), device, find_unused_parameters
            )
        return cls("none" if strategy != "none" else strategy, 0, 1, device, find_unused_parameters)

    @property
    def is_main(self) -> bool:
        """True on rank 0, which writes single-file checkpoints and final artifacts."""
        return self.rank == 0

    def wrap(self, model: nn.Module) -> nn.Module:
        """Apply the strategy to a single-device ``model`` already on ``device``."""
        if self.world_size == 1 or self.strategy == "none":
            return model
        if self.strategy == "ddp":
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            return DistributedDataParallel(
                model, device_ids=ids, find_unused_parameters=self.find_unused_parameters
            )
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.world_size,))
        # Shard each transformer block on its own so only one block is unsharded at a time.
        for block in getattr(model, "blocks", []):
            fully_shard(block, mesh=mesh)
        fully_shard(model, mesh=mesh)
        return model

    def mean(self, value: float) -> float:
        """The mean of ``value`` over ranks."""
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size

    def mean_dict(self, values: dict[str, float]) -> dict[str, float]:
        """Each value averaged over ranks (every rank must pass the same keys, in order)."""
        if self.world_size == 1 or not values:
            return values
        tensor = torch.tensor(
            list(values.values()), dtype=torch.float64, device=self._comm_device()
        )
        dist.all_reduce(tensor)
        return dict(zip(values, (tensor / self.world_size).tolist(), strict=True))

    def barrier(self) -> None:
        """Wait for every rank (no-op in a single process)."""
        if self.world_size > 1:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        return self.device if dist.get_backend() == "nccl" else torch.device("cpu")

    # --- checkpoints ----------------------------------------------------------------------

    def save(
        self,
        directory: Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        extra: dict[str, Any],
    ) -> None:
        """Write model, optimizer and ``extra`` (plain data and tensors) into ``directory``."""
        if self.strategy == "fsdp" and self.world_size > 1:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            model_sd, optim_sd = get_state_dict(model, optimizer)
            dcp.save({"model": model_sd, "optimizer": optim_sd}, checkpoint_id=directory / DCP_DIR)
            if self.is_main:
                torch.save(extra, directory / EXTRA_FILE)
            return
        if self.is_main:
            state = {
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                **extra,
            }
            torch.save(state, directory / STATE_FILE)

    @staticmethod
    def read_extra(directory: Path) -> dict[str, Any]:
        """The ``extra`` data of a checkpoint of either layout (safe: ``weights_only``)."""
        if (directory / STATE_FILE).exists():
            return torch.load(directory / STATE_FILE, map_location="cpu", weights_only=True)
        if (directory / EXTRA_FILE).exists():
            return torch.load(directory / EXTRA_FILE, map_location="cpu", weights_only=True)
        raise FileNotFoundError(
            f"no training checkpoint in {directory} ({STATE_FILE} or {DCP_DIR})"
        )

    def load(self, directory: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        """Load model and optimizer state saved by :meth:`save` (model already wrapped)."""
        if (directory / DCP_DIR).exists():
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            model_sd, optim_sd = get_state_dict(model, optimizer)
            state = {"model": model_sd, "optimizer": optim_sd}
            dcp.load(state, checkpoint_id=directory / DCP_DIR)
            set_state_dict(
                model,
                optimizer,
                model_state_dict=state["model"],
                optim_state_dict=state["optimizer"],
            )
            return
        state = torch.load(directory / STATE_FILE, map_location=self.device, weights_only=True)
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])

    def full_model(self, model: nn.Module) -> nn.Module | None:
        """A plain single-device copy of the whole model on rank 0 (None on other ranks).

        Under FSDP the full state is gathered (every rank must call this); otherwise the unwrapped
        model itself is returned on rank 0.
        """
        raw = unwrap(model)
        if self.strategy != "fsdp" or self.world_size == 1:
            return raw if self.is_main else None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(model, options=options)
        if not self.is_main:
            return None
        plain = copy.deepcopy(raw_architecture_template(raw))
        plain.load_state_dict(state)
        return plain


def unwrap(model: nn.Module) -> nn.Module:
    """The single-device module inside a DDP wrapper (FSDP2 shards in place: no wrapper)."""
    return (
        model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model
    )


def raw_architecture_template(model: nn.Module) -> nn.Module:
    """A CPU module with ``model``'s architecture and no sharding, for loading a full state dict."""
    template = getattr(model, "bitsweep_template", None)
    if template is None:
        raise RuntimeError("FSDP export needs the model's unsharded template (set by the loop)")
    return template
