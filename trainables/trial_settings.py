"""What a trial needs besides its run config: one typed object, the same in every process.

The Tune driver builds :class:`TrialSettings` from the sweep's ``resources`` block and puts it in
Tune's ``param_space`` under :data:`TRIAL_SETTINGS_KEY`, beside the flat run config under
:data:`RUN_CONFIG_KEY`; a trial hands both, under the same keys, to its Ray Train workers
(``train_loop_config``). These keys are the only strings a trial's config is read by. Torch-free
and Ray-free, so the orchestrator and the workers import it alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

# Keys of a trial's config (Tune's ``param_space``) and of a worker's ``train_loop_config``.
RUN_CONFIG_KEY = "run_config"
TRIAL_SETTINGS_KEY = "bitsweep"

Strategy = Literal["none", "ddp", "fsdp"]
STRATEGIES: tuple[str, ...] = ("none", "ddp", "fsdp")


@dataclass(frozen=True, kw_only=True)
class TrialSettings:
    """How one trial runs: its workers, their resources, checkpoint cadence and retries.

    Attributes:
        workers_per_trial: Ray Train workers (ranks) of a multi-worker trial.
        strategy: ``none`` (one process), ``ddp`` or ``fsdp``.
        cpus_per_worker: CPUs each worker asks Ray for.
        gpus_per_worker: GPUs each worker asks Ray for (0: CPU only).
        train_storage: where a multi-worker trial's Train runs keep their checkpoints
            (``<experiment dir>/train``); unused by one-process trials.
        checkpoint_every: offer a checkpoint every this many steps (rounded to evaluations);
            None: at every evaluation (``trainables.loop.train``'s default).
        max_failures: retries of a failed Train run (Train's ``FailureConfig``).
        keep_checkpoints: a multi-worker trial's Train run keeps its latest checkpoint and this
            many best ones by ``score_metric`` (``storage.keep_checkpoints``); None keeps all.
        score_metric, score_mode: the metric and direction that rank checkpoints (the sweep's
            first objective).
    """

    workers_per_trial: int = 1
    strategy: Strategy = "none"
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    train_storage: str | None = None
    checkpoint_every: int | None = None
    max_failures: int = 0
    keep_checkpoints: int | None = None
    score_metric: str | None = None
    score_mode: Literal["min", "max"] = "min"

    def __post_init__(self) -> None:
        # built from a validated ResourcesSpec; these checks catch a caller that bypassed it
        if self.workers_per_trial < 1:
            raise ValueError(f"workers_per_trial must be >= 1, got {self.workers_per_trial}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.workers_per_trial > 1 and self.strategy == "none":
            raise ValueError("workers_per_trial > 1 needs strategy 'ddp' or 'fsdp'")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("cpus_per_worker must be > 0 and gpus_per_worker >= 0")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.max_failures < 0:
            raise ValueError(f"max_failures must be >= 0, got {self.max_failures}")
        if self.keep_checkpoints is not None and self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")

    @property
    def worker_resources(self) -> dict[str, float]:
        """Ray resources of one worker (``ScalingConfig.resources_per_worker``)."""
        resources = {"CPU": float(self.cpus_per_worker)}
        if self.gpus_per_worker:
            resources["GPU"] = float(self.gpus_per_worker)
        return resources

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain mapping (for logs and state files)."""
        return asdict(self)

    @classmethod
    def from_value(cls, value: TrialSettings | Mapping[str, Any] | None) -> TrialSettings:
        """The settings a config holds: the object itself, or the untyped mapping a sweep saved
        before settings were typed (resumed sweeps); None gives the one-process defaults."""
        if value is None:
            return cls()
        if isinstance(value, TrialSettings):
            return value
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in value.items() if k in known})


def trial_settings(config: Mapping[str, Any]) -> TrialSettings:
    """The :class:`TrialSettings` of a trial's (or worker's) config."""
    return TrialSettings.from_value(config.get(TRIAL_SETTINGS_KEY))


def worker_config(run_config: Mapping[str, Any], settings: TrialSettings) -> dict[str, Any]:
    """A worker's ``train_loop_config``: the resolved flat run config and the trial settings."""
    return {RUN_CONFIG_KEY: dict(run_config), TRIAL_SETTINGS_KEY: settings}
