"""The pipeline behind ``condensa compress`` and ``condensa search``.

A :class:`Workspace` holds what every evaluation shares (data splits, the reference model and
its predictions); ``evaluate`` compresses a copy of the reference with a concrete strategy,
recovers accuracy and measures it. The search only sees ``evaluate`` as a callable.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .config import Config, MetricsConfig, parse_config
from .data import Splits
from .data.loaders import data_key, load_splits, splits_key
from .device import resolve_device
from .errors import CondensaWarning, ConfigError, KnobError, LayerSelectionError
from .loading import is_file_spec, load_callable
from .metrics import OBJECTIVE_METRICS, count_flops, footprint, measure_latency, mismatches, overall_density, predict
from .metrics.accuracy import Predictions
from .models.reference import load_weights, train_reference
from .models.registry import build_model, is_hf_spec
from .operators import Strategy
from .operators.base import Record, measure_record
from .outputs import logits_of
from .recovery import RecoveryConfig, TrainConfig, check_distributed, make_loss, recover
from .strategies import build_strategy
from .surgery import runnable

#: the numbers ``Workspace.evaluate`` measures: what a search objective or constraint can name
METRICS = (
    "predictions", "reference_accuracy", "accuracy", "accuracy_drop", "nll", "reference_nll", "perplexity", "reference_perplexity",
    "perplexity_increase", "mismatches", "mismatch_rate", "mismatches_ref_correct", "mismatch_rate_ref_correct",
    "mismatches_ref_wrong", "mismatch_bias", "density", "footprint_bytes", "reference_bytes", "compression_ratio",
    "flops_dense", "flops_effective", "flops_ratio", "seconds",
)
#: measured only with ``metrics.latency: true`` (or the ``latency`` objective)
LATENCY_METRICS = ("latency_ms", "latency_batch_size", "latency_threads", "latency_repeats")
#: measured only with ``metrics.agreement`` set: the user's score and ``1 - score`` (what a constraint bounds)
AGREEMENT_METRICS = ("agreement", "disagreement")


def is_callable_spec(objective: str) -> bool:
    """True when a config's objective names a function (``pkg.module:function`` / ``file.py:function``)."""
    return objective not in OBJECTIVE_METRICS and (":" in objective or is_file_spec(objective))


def check_metric_names(search: Any, metrics: MetricsConfig) -> None:
    """Refuse an objective or constraint metric that no evaluation produces, before any training
    (afterwards the journal header is written and the corrected command would be a new config)."""
    callable_objective = is_callable_spec(search.objective)
    known = list(METRICS)
    if metrics.latency or search.objective == "latency":
        known += LATENCY_METRICS
    if callable_objective:
        known.append("objective")
    if metrics.agreement is not None:
        known += AGREEMENT_METRICS

    def check(name: str, where: str, keywords: tuple[str, ...] = ()) -> None:
        if name in known or name in keywords:
            return
        if name in LATENCY_METRICS:
            raise ConfigError(f"{where}: '{name}' is measured only with metrics.latency: true")
        if name in AGREEMENT_METRICS:
            raise ConfigError(f"{where}: '{name}' is measured only with metrics.agreement: pkg.module:function")
        close = difflib.get_close_matches(name, list(keywords) + known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        allowed = f"{', '.join(keywords)}, a function 'pkg.module:function' or a metric: " if keywords else ""
        raise ConfigError(f"{where}: no evaluation measures '{name}'{hint}; use {allowed}{', '.join(known)}")

    if not callable_objective:
        check(search.objective, "search.objective", tuple(OBJECTIVE_METRICS))
    for i, constraint in enumerate(search.constraints):
        check(constraint["metric"], f"search.constraints[{i}].metric")


@dataclass
class CompressedModel:
    """One compressed (still parametrized) model, what the strategy did, and its measurements."""

    model: nn.Module
    record: Record
    metrics: dict[str, Any]
    strategy: Strategy



class Workspace:
    """Data, reference model and reference predictions shared by every evaluation.

    Build it from objects (Python users) or with :meth:`from_config` (the CLI)::

        workspace = Workspace(reference_model, digits_splits(), recovery={"epochs": 4})
        evaluation = workspace.evaluate(Prune(0.05))
    """

    def __init__(
        self,
        reference: nn.Module,
        splits: Any,
        strategy: Strategy | None = None,
        *,
        recovery: dict[str, Any] | None = None,
        device: str = "auto",
        seed: int = 0,
        objective: str | Callable = "footprint",
        metrics: MetricsConfig | None = None,
        batch_size: int = 256,
        log: Callable[[str], None] = print,
        objective_fn: Callable | None = None,
    ) -> None:
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.reference = reference.to(self.device).eval()
        self.splits = splits
        self.strategy = strategy
        self.recovery = dict(recovery or {})
        self.seed = seed
        self.objective = objective
        self.metrics_config = metrics or MetricsConfig()
        self.log = log
        self._reference_predictions: dict[str, Predictions] = {}
        self._lr_cache: dict[str, float] = {}  # lr: auto, per bound strategy (see recovery.choose_lr)
        self._objective_fn: Callable | None = objective_fn
        if callable(objective):
            self._objective_fn = objective
        elif objective_fn is None and is_callable_spec(objective):
            self._objective_fn = load_callable(objective, "search.objective")
        agreement = self.metrics_config.agreement
        self._agreement_fn: Callable | None = (
            agreement if callable(agreement) or agreement is None else load_callable(agreement, "metrics.agreement"))
        # full logits are kept only for a user agreement score; otherwise a per-prediction summary
        # (memory independent of the vocabulary size, see condensa.metrics.accuracy)
        self._keep_logits = self._agreement_fn is not None
        recovery_config = self.recovery_config()  # validate early: a typo should fail before any training
        if recovery_config.loss not in ("ce", "distill"):
            make_loss(recovery_config)  # a user loss (module:function) must import before any training
        if recovery_config.amp == "fp16" and self.device.type != "cuda":
            warnings.warn(f"recovery.amp: fp16 autocast needs CUDA; on {self.device.type} recovery runs bf16 autocast "
                          "instead (set amp: bf16 to say so)", CondensaWarning, stacklevel=2)

    @classmethod
    def from_config(cls, config: Config, *, log: Callable[[str], None] = print, cache: str | None = None,
                    splits: Splits | None = None, check: Callable[[Strategy], None] | None = None) -> Workspace:
        """Load data, build (train or load) the reference model and the strategy of a config.

        ``splits`` replaces the config's data section (Python users with their own data); the
        reference is then trained on them, cached under a hash of their contents.
        ``check(strategy)`` runs before the reference is trained.
        """
        check_metric_names(config.search, config.metrics)
        recovery = RecoveryConfig.from_dict(dict(config.recovery), where="recovery")  # fail before any training
        check_distributed(recovery)
        objective_fn = None
        if is_callable_spec(config.search.objective):
            objective_fn = load_callable(config.search.objective, "search.objective")
        device = resolve_device(config.device)
        torch.manual_seed(config.seed)
        key = data_key(config.data) if splits is None else splits_key(splits)
        splits = load_splits(config.data) if splits is None else splits
        model_cfg = config.model
        strategy = build_strategy(config.strategy.scheme, config.strategy.args, config.strategy.ops)
        check_strategy(strategy, build_model(model_cfg.name, **model_cfg.kwargs),
                       where="strategy.ops" if config.strategy.ops else "strategy.scheme")
        if check is not None:
            check(strategy)
        if model_cfg.checkpoint:
            reference = load_weights(build_model(model_cfg.name, **model_cfg.kwargs), model_cfg.checkpoint)
        elif is_hf_spec(model_cfg.name):  # the folder's weights are the reference: nothing to train
            reference = build_model(model_cfg.name, **model_cfg.kwargs)
        else:
            train_cfg = TrainConfig(**dataclasses.asdict(model_cfg.train))
            reference = train_reference(
                model_cfg.name, model_cfg.kwargs, splits, train_cfg, data_key=key,
                seed=config.seed, device=device, cache=cache, log=log,
            )
        if config.data.name == "text":
            _check_vocabulary(reference, splits, config.data)
        return cls(reference, splits, strategy, recovery=config.recovery, device=config.device, seed=config.seed,
                   objective=config.search.objective, metrics=config.metrics,
                   batch_size=config.data.batch_size, log=log, objective_fn=objective_fn)

    # -- data ---------------------------------------------------------------------------------
    def split(self, name: str):
        if name not in ("train", "val", "test"):
            raise ConfigError(f"split must be train, val or test, got {name!r}")
        return getattr(self.splits, name)

    def example_input(self, batch_size: int = 1) -> torch.Tensor:
        """A batch of real validation inputs (repeated if the split is smaller)."""
        data = self.splits.val
        items = [data[i % len(data)][0] for i in range(batch_size)]
        return torch.stack(items).to(self.device)

    def reference_predictions(self, split: str) -> Predictions:
        if split not in self._reference_predictions:
            self._reference_predictions[split] = predict(self.reference, self.split(split), device=self.device,
                                                         batch_size=self.batch_size, keep_logits=self._keep_logits)
        return self._reference_predictions[split]

    # -- evaluation ---------------------------------------------------------------------------
    def recovery_config(self, epochs: int | None = None) -> RecoveryConfig:
        """The validated ``recovery`` section, with ``epochs`` overridden when given."""
        return RecoveryConfig.from_dict(dict(self.recovery), where="recovery").replace(epochs=epochs)

    def evaluate(self, strategy: Strategy, *, split: str = "val", epochs: int | None = None,
                 progress: Callable[[int, float], None] | None = None) -> CompressedModel:
        """Compress a copy of the reference with ``strategy``, recover, and measure on ``split``."""
        start = time.perf_counter()
        model, _ = strategy.apply(self.reference)
        recovery = self.recovery_config(epochs)
        trace: list[dict[str, float]] = []
        report: dict[str, Any] = {}
        model = recover(model, self.reference, self.splits.train, recovery, strategy=strategy, device=self.device,
                        seed=self.seed, progress=progress, trace=trace, report=report, lr_cache=self._lr_cache,
                        log=self.log)
        with torch.no_grad():
            strategy.finish(model)  # post-recovery steps (QuantizeAux folds BatchNorm statistics)
        record = measure_record(model)
        metrics = self.measure(model, split, record)
        if "lr" in report:
            metrics["recovery_lr"] = report["lr"]  # the rate recovery trained with (lr: auto records its pick)
        if trace:
            metrics["lc_trace"] = trace  # L-C convergence per C step: mu and ||w - Delta(theta)|| / ||w||
        metrics["seconds"] = time.perf_counter() - start
        return CompressedModel(model, record, metrics, strategy)

    def measure(self, model: nn.Module, split: str, record: Record | None = None) -> dict[str, Any]:
        """Accuracy, mismatches, density, footprint, FLOPs (and latency if configured)."""
        model.to(self.device).eval()
        reference = self.reference_predictions(split)
        compressed = predict(model, self.split(split), device=self.device, batch_size=self.batch_size,
                             keep_logits=self._keep_logits)
        size = footprint(model, record=record)
        metrics: dict[str, Any] = {
            "split": split,
            "predictions": len(compressed.labels),  # labels compared: examples, or positions of a language model
            "reference_accuracy": reference.accuracy,
            "accuracy": compressed.accuracy,
            "accuracy_drop": reference.accuracy - compressed.accuracy,
        }
        metrics.update(_likelihood(reference, compressed))
        metrics.update(mismatches(reference, compressed, self.splits.num_classes, class_names=self.splits.class_names))
        if self._agreement_fn is not None:
            metrics.update(agreement(self._agreement_fn, self.metrics_config.agreement, compressed, reference))
        metrics.update({
            "density": overall_density(model),
            "footprint_bytes": size.bytes,
            "reference_bytes": size.reference_bytes,
            "compression_ratio": size.compression_ratio,
        })
        metrics.update(count_flops(model, self.example_input(1)))
        metrics["flops_ratio"] = metrics["flops_dense"] / max(1.0, metrics["flops_effective"])
        if self.metrics_config.latency or self.objective == "latency":
            baked = runnable(model)  # zero attention heads / MLP neurons removed: latency of what really runs
            metrics.update(measure_latency(baked, self.example_input(self.metrics_config.latency_batch_size),
                                           repeats=self.metrics_config.latency_repeats))
        if self._objective_fn is not None:
            value = self._objective_fn(model, metrics)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                name = self.objective if isinstance(self.objective, str) else getattr(self.objective, "__name__", "objective")
                raise ConfigError(f"search.objective: {name} returned {value!r}; it must return a finite number")
            metrics["objective"] = float(value)
        return metrics

    def objective_metric(self) -> str:
        objective = self.objective
        if callable(objective):
            return "objective"
        if objective in OBJECTIVE_METRICS:
            return OBJECTIVE_METRICS[objective]
        return "objective" if self._objective_fn is not None else objective

    def cheap_objective(self, strategy: Strategy) -> Callable[[dict], float] | None:
        """For footprint and FLOPs the objective depends only on the knobs: compute it without
        training (apply the strategy to the reference and measure) instead of modeling it."""
        objective = self.objective
        if objective not in ("footprint", "flops"):
            return None
        example = self.example_input(1)

        def compute(knobs: dict) -> float:
            bound = strategy.bind(knobs)
            model, record = bound.apply(self.reference)
            if objective == "footprint":
                with torch.no_grad():
                    bound.finish(model)  # e.g. the BatchNorm fold: the stored file is the finished model
                return footprint(model).bytes
            return count_flops(model, example)["flops_effective"]

        return compute


@torch.no_grad()
def _check_vocabulary(model: nn.Module, splits: Splits, data: Any) -> None:
    """A language model must score every token id the data holds; a tokenizer with a larger
    vocabulary than the model's output would fail later, deep inside a loss."""
    was_training = model.training
    window = splits.val[0][0].unsqueeze(0).clone()
    window[0, -1] = splits.num_classes - 1  # the largest id the data may hold
    try:
        classes = logits_of(model.eval()(window)).shape[-1]
        problem = f"predicts {classes} classes" if classes < splits.num_classes else None
    except (IndexError, RuntimeError) as error:  # e.g. an embedding table smaller than the vocabulary
        problem = f"fails on them ({str(error).splitlines()[0]})"
    finally:
        model.train(was_training)
    if problem:
        source = f"data.tokenizer ({data.tokenizer})" if data.tokenizer else "data: the character vocabulary"
        raise ConfigError(f"{source} has {splits.num_classes} token ids but the model {problem}; "
                          "use the model's own tokenizer (data.tokenizer: model for hf: models)")


def check_strategy(strategy: Strategy, model: nn.Module, where: str | None = None) -> None:
    """Apply ``strategy`` (open knobs at their midpoints) to an untrained model, so a layer pattern
    that matches nothing or an N:M shape mismatch fails in a second, not after training. ``where``
    (the config field) starts the error message."""
    knobs = strategy.knobs()
    try:
        probe = strategy.bind({name: spec.from_unit(0.5) for name, spec in knobs.items()}) if knobs else strategy
        probe.apply(model)
    except (ConfigError, KnobError, LayerSelectionError) as error:
        if where is None:
            raise
        raise type(error)(f"{where}: {error}") from None


def _likelihood(reference: Predictions, compressed: Predictions) -> dict[str, float]:
    """Mean negative log-likelihood (nats) and perplexity of both models; for language models
    perplexity is the usual quality figure, and ``perplexity_increase`` (percent) a natural bound."""
    ref_nll, nll = reference.mean_nll, compressed.mean_nll
    ref_ppl, ppl = math.exp(min(ref_nll, 50.0)), math.exp(min(nll, 50.0))
    return {"nll": nll, "reference_nll": ref_nll, "perplexity": ppl, "reference_perplexity": ref_ppl,
            "perplexity_increase": 100.0 * (ppl / ref_ppl - 1.0)}


def agreement(fn: Callable, spec: Any, compressed: Predictions, reference: Predictions) -> dict[str, float]:
    """``metrics.agreement``: the user's score of the compressed outputs against the reference
    outputs on the whole split (for models that are not plain classifiers: embeddings, sigmoid
    probabilities, ...), and ``disagreement = 1 - agreement`` for a constraint's upper bound."""
    value = fn(compressed.logits, reference.logits, compressed.labels)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        name = spec if isinstance(spec, str) else getattr(spec, "__name__", "metrics.agreement")
        raise ConfigError(f"metrics.agreement: {name} returned {value!r}; it must return a finite number (higher = closer)")
    return {"agreement": float(value), "disagreement": 1.0 - float(value)}


def result_summary(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ["predictions", "reference_accuracy", "accuracy", "accuracy_drop", "perplexity", "reference_perplexity", "mismatches",
            "mismatches_ref_correct", "mismatches_ref_wrong", "mismatch_rate", "mismatch_bias", "agreement", "density", "footprint_bytes",
            "reference_bytes", "compression_ratio", "flops_dense", "flops_effective", "latency_ms"]
    return {k: metrics[k] for k in keys if k in metrics}


def workspace(
    model: str | nn.Module = "digits_cnn",
    data: str | Any = "digits",
    *,
    recovery: dict[str, Any] | None = None,
    device: str = "auto",
    seed: int = 0,
    objective: str | Callable = "footprint",
    model_kwargs: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    data_options: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Workspace:
    """A :class:`Workspace` in one call.

    ``model`` is a spec (``"digits_cnn"``, ``"resnet18"``, ``"pkg.mod:fn"``; trained on ``data``
    and cached when no weights exist) or your own trained ``nn.Module``; ``data`` is a data-set
    name (``"digits"``, ``"text"``, ...) or a :class:`condensa.data.Splits`.
    """
    if isinstance(model, nn.Module):
        splits = data if not isinstance(data, str) else load_splits(parse_config({"strategy": {"ops": []}, "data": {"name": data, **(data_options or {})}}).data)
        return Workspace(model, splits, recovery=recovery, device=device, seed=seed, objective=objective, log=log)
    raw: dict[str, Any] = {
        "model": {"name": model, "kwargs": dict(model_kwargs or {}), **({"train": train} if train else {})},
        "data": {"name": data, **(data_options or {})} if isinstance(data, str) else {"name": "digits"},
        "strategy": {"ops": [{"Prune": {}}]},
        "recovery": dict(recovery or {}),
        "device": device,
        "seed": seed,
        "search": {"objective": objective if isinstance(objective, str) else "footprint"},
    }
    created = Workspace.from_config(parse_config(raw), log=log, splits=None if isinstance(data, str) else data)
    created.strategy = None
    if callable(objective):
        created.objective, created._objective_fn = objective, objective
    return created


__all__ = ["Workspace", "CompressedModel", "workspace", "result_summary", "check_strategy",
           "check_metric_names", "METRICS", "LATENCY_METRICS", "AGREEMENT_METRICS"]
