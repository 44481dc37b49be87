"""Every metric a trial can report: the one declaration of the metrics contract.

Torch-free (stdlib only), so ``bitsweep validate`` checks objectives without importing the
trainables' torch code, and the MLflow tracker and the reporters share the names.

A metric is a static name (``val/loss``) or a pattern with one ``<placeholder>`` part
(``bits/<layer>``: a module's qualified name, ``route/exit_frac/<exit>``: an exit layer 1..L).
:func:`declared` / :func:`is_declared` say whether a name belongs to the contract at all;
:func:`reported_metrics` gives what one run config reports (the spec's objective check), and
:func:`reports` / :func:`unreported_problem` match a name against such a set.
"""

from __future__ import annotations

import difflib
import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# the placeholders a pattern may hold, and the name parts each one matches
PLACEHOLDERS: Mapping[str, str] = {
    "layer": r"\w+(?:\.\w+)*",  # a qualified module name, e.g. blocks.0.attn.q_proj
    "exit": r"[1-9][0-9]*",  # an exit layer, 1..L
}
# the scheme capability (trainables.quant.registry.LEARNABLE_BITS) of schemes reporting bits/<layer>
LEARNABLE_BITS = "learnable_bits"
EVERY_RUN = "every run"

# --- names the reporters use -------------------------------------------------------------------
STEP = "step"
TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
TRAIN_GRAD_NORM = "train/grad_norm"
QUANT_LAMBDA = "quant/lambda"
VAL_LOSS = "val/loss"
VAL_BPB = "val/bpb"
VAL_ACC = "val/acc"
PERF_TOKENS = "perf/tokens_per_s"
PERF_SAMPLES = "perf/samples_per_s"
PERF_SAVED_ACTIVATION = "perf/saved_activation_mib"  # first report of a run from step 0
VAL_LOSS_START = "val/loss_start"  # the first report, with train.eval_at_start
VAL_BPB_START = "val/bpb_start"
VAL_ACC_START = "val/acc_start"
GROWTH_STAGE = "growth/stage"
MODEL_PARAMS = "model/params"
MODEL_BITS_TOTAL = "model/bits_total"
MODEL_BITS_PER_WEIGHT = "model/bits_per_weight"
MODEL_PACKED_BYTES = "model/packed_bytes"
MODEL_QUANT_BITS_PER_WEIGHT = "model/quant_bits_per_weight"
MODEL_LAYERS_DROPPED = "model/layers_dropped"
LAYER_BITS = "bits/<layer>"
VAL_LOSS_EXIT = "val/loss_exit"
VAL_EXIT_LAYER_MEAN = "val/exit_layer_mean"
VAL_COMPUTE_FRAC = "val/compute_frac"
ROUTE_EXIT_LAYER = "route/exit_layer"
ROUTE_EXIT_FRAC = "route/exit_frac/<exit>"
VAL_PARITY_ERROR = "val/parity_error"
VAL_BPB_PARITY = "val/bpb_parity"
VAL_ACT_MEAN_LAYERS = "val/act_mean_layers"
TELEMETRY_DRIFT = "telemetry/drift"  # reported exactly at the evaluations where a metric drifted
TELEMETRY_HALTED = "telemetry/halted"
TELEMETRY_DRIFT_EVENTS = "telemetry/drift_events"
TELEMETRY_DRIFT_PREFIX = "telemetry/drift/"
TELEMETRY_METRICS = ("K", "C", "S")  # negentropy, LZ complexity, symbiosis (seed 004)
DISTILL_FIELDS = ("attempts", "passed", "d_model", "params", *TELEMETRY_METRICS)
# growth events (trainables.growth_events encodes them): kind, new and old sizes, learning rates
GROWTH_SIZE_FIELDS = ("params", "n_layers", "d_model", "seq_len")
GROWTH_EVENT_METRICS = frozenset(
    {"growth/kind", "growth/lr", "growth/lr_before", "growth/freeze_steps"}
    | {f"growth/{f}" for f in GROWTH_SIZE_FIELDS}
    | {f"growth/{f}_before" for f in GROWTH_SIZE_FIELDS}
)


def bits_name(layer: str) -> str:
    """``bits/<layer>``: the metric of one layer's learned bit-width."""
    return f"bits/{layer}"


def exit_frac_name(layer: int) -> str:
    """``route/exit_frac/<exit>``: the share of validation tokens exiting at ``layer``."""
    return f"route/exit_frac/{layer}"


@dataclass(frozen=True)
class Metric:
    """One declared metric: its name (or pattern), what it measures and which runs report it."""

    name: str
    description: str
    when: str = EVERY_RUN

    @property
    def is_pattern(self) -> bool:
        """Whether ``name`` holds a ``<placeholder>`` (see :data:`PLACEHOLDERS`)."""
        return "<" in self.name

    def matches(self, name: str) -> bool:
        """Whether ``name`` is this metric (equal, or an instance of the pattern)."""
        if not self.is_pattern:
            return name == self.name
        return _pattern_regex(self.name).fullmatch(name) is not None


@functools.cache
def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"<(\w+)>", pattern)  # static, placeholder, static, ...
    regex = "".join(
        PLACEHOLDERS[part] if index % 2 else re.escape(part) for index, part in enumerate(parts)
    )
    return re.compile(regex)


def _m(name: str, description: str, when: str = EVERY_RUN) -> Metric:
    return Metric(name, description, when)


_EARLY_EXIT = "model.early_exit"
_BIT_LM = "model.arch bit_lm"
_GROWTH = "growth.enabled"
_EVAL_AT_START = "train.eval_at_start"
_growth_event = f"at the evaluations where the model grew ({_GROWTH})"

METRICS: tuple[Metric, ...] = (
    # the loop, every evaluation (trainables.loop)
    _m(STEP, "the training step of the report"),
    _m(TRAIN_LOSS, "mean joint training loss since the last report"),
    _m(TRAIN_LR, "learning rate at the report"),
    _m(TRAIN_GRAD_NORM, "mean total gradient norm before clipping"),
    _m(QUANT_LAMBDA, "the lam warm-up value (fraction of quantization applied)"),
    _m(GROWTH_STAGE, "how many times the model has grown (0 without growth)"),
    _m("loss/task", "mean task loss (cross-entropy) of the training steps"),
    _m(VAL_LOSS, "validation cross-entropy at lam = 1 (nats)"),
    _m(VAL_BPB, "validation bits per byte", "task.kind lm"),
    _m(PERF_TOKENS, "training throughput in tokens per second", "task.kind lm"),
    _m(VAL_ACC, "validation accuracy", "task.kind vision"),
    _m(PERF_SAMPLES, "training throughput in samples per second", "task.kind vision"),
    _m(
        PERF_SAVED_ACTIVATION,
        "MiB autograd saves for backward in the first micro-batch of step 0 (main rank; in the "
        "first report of a run started from step 0, not after a resume)",
    ),
    # the evaluation before the first step (trainables.loop), in the first report only
    _m(VAL_LOSS_START, "val/loss before the first training step", _EVAL_AT_START),
    _m(
        VAL_BPB_START,
        "val/bpb before the first training step",
        f"task.kind lm and {_EVAL_AT_START}",
    ),
    _m(
        VAL_ACC_START,
        "val/acc before the first training step",
        f"task.kind vision and {_EVAL_AT_START}",
    ),
    # model size (trainables.metrics)
    _m(MODEL_PARAMS, "number of parameters"),
    _m(MODEL_BITS_TOTAL, "bits a packed checkpoint of the model stores"),
    _m(MODEL_BITS_PER_WEIGHT, "model/bits_total over model/params"),
    _m(MODEL_PACKED_BYTES, "bytes of the packed model"),
    _m(MODEL_QUANT_BITS_PER_WEIGHT, "mean stored bits per weight of the quantized layers"),
    _m(
        LAYER_BITS,
        "a layer's rounded learned bit-width (seed 000)",
        "a quant.scheme with learnable bit-widths",
    ),
    # enabled loss terms (trainables.objective)
    _m("loss/quant", "quantization MSE term", "loss.lambda_q > 0"),
    _m("loss/bits", "bit-balanced loss term (seed 000)", "loss.fn bit_balanced_ce"),
    _m(
        "loss/route",
        "routing compute cost of the exit gates",
        f"{_EARLY_EXIT} and loss.lambda_r > 0",
    ),
    _m("loss/exit", "LayerSkip early-exit loss", "loss.lambda_exit > 0"),
    _m("loss/br_w", "weight bin regularization (seed 002)", "loss.lambda_br > 0"),
    _m("loss/br_a", "activation bin regularization (seed 002)", "loss.lambda_br_act > 0"),
    _m("loss/ponder", "ACT ponder cost", f"{_BIT_LM} and loss.lambda_act > 0"),
    *(
        _m(f"loss/{m}", f"telemetry regularizer 1 - {m}", f"{_BIT_LM} and loss.lambda_{m} > 0")
        for m in TELEMETRY_METRICS
    ),
    # early exit and layer dropout (trainables.models.lm, trainables.exit_eval)
    _m("route/expected_exit", "expected exit layer under the gates (training)", _EARLY_EXIT),
    _m("route/sampled_exit", "mean sampled exit layer (training)", _EARLY_EXIT),
    _m(
        "route/final_loss",
        "training cross-entropy at the last layer",
        f"{_EARLY_EXIT} and model.exit_task_loss other than final",
    ),
    _m(ROUTE_EXIT_LAYER, "mean realized exit layer at validation", _EARLY_EXIT),
    _m(ROUTE_EXIT_FRAC, "share of validation tokens exiting at that layer", _EARLY_EXIT),
    _m(VAL_LOSS_EXIT, "validation cross-entropy at the realized exits", _EARLY_EXIT),
    _m(VAL_EXIT_LAYER_MEAN, "mean realized exit layer at validation", _EARLY_EXIT),
    _m(VAL_COMPUTE_FRAC, "block computations run over full depth at validation", _EARLY_EXIT),
    _m(
        MODEL_LAYERS_DROPPED,
        "blocks skipped by layer dropout per training step",
        "model.layer_dropout > 0",
    ),
    # the bit LM (trainables.evaluation, trainables.models.bit_lm, trainables.bit_control)
    _m(VAL_PARITY_ERROR, "share of generated bytes whose parity bit is wrong", _BIT_LM),
    _m(VAL_BPB_PARITY, "validation bits per byte of the parity bits", f"{_BIT_LM}, causal"),
    _m("act/mean_layers", "mean ACT halting depth (training)", f"{_BIT_LM} with model.act"),
    _m("act/ponder", "ACT ponder cost (training)", f"{_BIT_LM} with model.act"),
    _m(VAL_ACT_MEAN_LAYERS, "mean ACT halting depth at validation", f"{_BIT_LM} with model.act"),
    _m("telemetry/K", "negentropy of the validation predictions", _BIT_LM),
    _m("telemetry/S", "symbiosis of the validation predictions with the data", _BIT_LM),
    _m("telemetry/C", "LZ complexity of a gated generation", _BIT_LM),
    _m("telemetry/S_gen", "symbiosis of a gated generation", _BIT_LM),
    _m("telemetry/refused", "generations the safety gate refused so far", _BIT_LM),
    _m("telemetry/gate_passed", "1 when the last generation passed the safety gate", _BIT_LM),
    _m(TELEMETRY_DRIFT_EVENTS, "drift events so far", _BIT_LM),
    _m(TELEMETRY_DRIFT, "number of drifted telemetry metrics, at a drift", _BIT_LM),
    _m(TELEMETRY_HALTED, "1 when drift stopped the run", _BIT_LM),
    *(
        _m(f"{TELEMETRY_DRIFT_PREFIX}{m}", f"change of telemetry/{m} at a drift", _BIT_LM)
        for m in TELEMETRY_METRICS
    ),
    _m(
        "diffusion/parity_fixes",
        "parity corrections of the last diffusion sample",
        f"{_BIT_LM}, not causal",
    ),
    *(
        _m(f"distill/{f}", f"distillation (seed 004): {f}", f"{_BIT_LM} with distill.enabled")
        for f in DISTILL_FIELDS
    ),
    # growth events (trainables.growth_events)
    *(
        _m(name, "growth event: " + name.removeprefix("growth/"), _growth_event)
        for name in sorted(GROWTH_EVENT_METRICS)
    ),
)
DECLARED: Mapping[str, Metric] = {metric.name: metric for metric in METRICS}
_PATTERNS = tuple(metric for metric in METRICS if metric.is_pattern)


def declared(name: str) -> Metric | None:
    """The declared metric ``name`` is (a static name or an instance of a pattern), or None."""
    if name in DECLARED:
        return DECLARED[name]
    return next((metric for metric in _PATTERNS if metric.matches(name)), None)


def is_declared(name: str) -> bool:
    """Whether ``name`` is a metric of the contract (see :data:`METRICS`)."""
    return declared(name) is not None


def reported_metrics(cfg: Any) -> frozenset[str]:
    """The names (and patterns, e.g. ``bits/<layer>``) a run of ``cfg`` (a RunConfig) reports.

    Every entry is declared; the conditions are those of :data:`METRICS`' ``when``. Exit
    fractions are named per layer when the depth is fixed, as a pattern when the model grows.
    """
    model, loss = cfg.model, cfg.loss
    names = {m.name for m in METRICS if m.when == EVERY_RUN}
    if cfg.task.kind == "lm":
        names |= {VAL_BPB, PERF_TOKENS}
    else:
        names |= {VAL_ACC, PERF_SAMPLES}
    if cfg.train.eval_at_start:
        names |= {VAL_LOSS_START, VAL_BPB_START if cfg.task.kind == "lm" else VAL_ACC_START}
    if cfg.quant.has(LEARNABLE_BITS):
        names.add(LAYER_BITS)
    for term, weight in (("quant", loss.lambda_q), ("exit", loss.lambda_exit),
                         ("br_w", loss.lambda_br), ("br_a", loss.lambda_br_act)):  # fmt: skip
        if weight > 0:
            names.add(f"loss/{term}")
    if loss.fn == "bit_balanced_ce":
        names.add("loss/bits")
    if model.early_exit:
        names |= {"route/expected_exit", "route/sampled_exit", ROUTE_EXIT_LAYER}
        names |= {VAL_LOSS_EXIT, VAL_EXIT_LAYER_MEAN, VAL_COMPUTE_FRAC}
        if model.exit_task_loss != "final":
            names.add("route/final_loss")
        if cfg.growth.enabled:
            names.add(ROUTE_EXIT_FRAC)
        else:
            names |= {exit_frac_name(layer) for layer in range(1, model.n_layers + 1)}
        if loss.lambda_r > 0:
            names.add("loss/route")
    if model.layer_dropout > 0:
        names.add(MODEL_LAYERS_DROPPED)
    if model.arch == "bit_lm":
        names |= _bit_lm_metrics(cfg)
    if cfg.growth.enabled:
        names |= GROWTH_EVENT_METRICS
    return frozenset(names)


def _bit_lm_metrics(cfg: Any) -> set[str]:
    model, loss = cfg.model, cfg.loss
    names = {m.name for m in METRICS if m.when == _BIT_LM}
    names |= {f"loss/{m}" for m in TELEMETRY_METRICS if getattr(loss, f"lambda_{m}") > 0}
    if model.causal:
        names.add(VAL_BPB_PARITY)
    else:
        names.add("diffusion/parity_fixes")
    if model.act:
        names |= {"act/mean_layers", "act/ponder", VAL_ACT_MEAN_LAYERS}
    if loss.lambda_act > 0:
        names.add("loss/ponder")
    if cfg.distill.enabled:
        names |= {f"distill/{f}" for f in DISTILL_FIELDS}
    return names


def reports(reported: Iterable[str], name: str) -> bool:
    """Whether ``name`` is among ``reported`` (names and patterns from :func:`reported_metrics`)."""
    reported = set(reported)
    if name in reported:
        return True
    metric = declared(name)
    return metric is not None and metric.is_pattern and metric.name in reported


def shown(reported: Iterable[str]) -> list[str]:
    """``reported`` for a message: sorted, per-layer names folded into their pattern."""
    folded = set()
    for name in reported:
        metric = declared(name)
        folded.add(metric.name if metric is not None else name)
    return sorted(folded)


def unreported_problem(name: str, reported: Iterable[str]) -> str | None:
    """None when a run reporting ``reported`` reports ``name``; else why not, naming the metrics.

    An undeclared name gets the closest declared spelling; a declared one the runs that report it.
    """
    reported = set(reported)
    if reports(reported, name):
        return None
    listing = ", ".join(shown(reported))
    metric = declared(name)
    if metric is None:
        close = difflib.get_close_matches(name, shown(reported) + list(DECLARED), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return (
            f"{name!r} is not a metric these trials report: no such metric is declared{hint} "
            f"(declared metrics these trials report: {listing})"
        )
    instances = sorted(n for n in reported if metric.matches(n))
    if instances:  # e.g. an exit layer beyond model.n_layers
        return (
            f"{name!r} is not a metric these trials report: of {metric.name} they report "
            f"{', '.join(instances)}"
        )
    return (
        f"{name!r} is not a metric these trials report: runs report it with {metric.when} "
        f"(these trials report: {listing})"
    )
