"""Recovery after compression: masked fine-tuning, L-C, label-preserving distillation.

:func:`recover` trains a compressed (parametrized) model back to accuracy with one training loop
(:mod:`.train`); :mod:`.lc` runs learning-compression on top of it; :mod:`.losses` holds the
label-preserving teacher-student loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..errors import ConfigError, RecoveryError
from ..io import canonical_json
from ..loading import load_callable
from .config import RecoveryConfig, TrainConfig
from .lc import lc_recover
from .losses import DistillLoss
from .lr_range import range_test
from .train import ce_loss, make_loader, train


def check_distributed(config: RecoveryConfig) -> None:
    """``distributed: true`` needs a torchrun launch with several processes (DDP is automatic there)."""
    if config.distributed and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise ConfigError("recovery.distributed: true needs a torchrun launch with 2 or more processes (WORLD_SIZE is "
                          "unset or 1); under torchrun DDP is automatic, so leave it false")


def make_loss(config: RecoveryConfig) -> Callable:
    """The training loss ``(output, labels, teacher_output) -> scalar`` that ``config.loss`` names."""
    if config.loss == "distill":
        return DistillLoss(config.temperature, config.weights, config.softadapt_window, config.softadapt_beta, config.margin)
    if config.loss == "ce":
        return ce_loss
    user = config.loss if callable(config.loss) else load_callable(config.loss, "recovery.loss")
    name = config.loss if isinstance(config.loss, str) else getattr(config.loss, "__name__", "the loss")

    def user_loss(output: torch.Tensor, labels: torch.Tensor, teacher_output: torch.Tensor | None) -> torch.Tensor:
        value = user(output, teacher_output, labels)
        if not isinstance(value, torch.Tensor) or value.numel() != 1:
            raise RecoveryError(f"recovery.loss: {name} must return a scalar tensor, got "
                                f"{type(value).__name__}{tuple(value.shape) if isinstance(value, torch.Tensor) else ''}")
        return value.reshape(())

    return user_loss


def uses_teacher(config: RecoveryConfig) -> bool:
    """Whether the loss needs the reference model's outputs (distill and user losses do)."""
    return config.loss != "ce"


def recover(
    model: nn.Module,
    teacher: nn.Module | None,
    data: Dataset,
    config: RecoveryConfig,
    *,
    strategy=None,
    device: torch.device | str = "cpu",
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    trace: list[dict[str, float]] | None = None,
    report: dict[str, Any] | None = None,
    lr_cache: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
) -> nn.Module:
    """Recover the accuracy of a compressed (parametrized) ``model``.

    ``method``: ``none`` returns it untouched, ``finetune`` trains it with its masks and quantizers
    in place, ``lc`` runs learning-compression from the reference weights and re-applies
    ``strategy``. ``loss: distill`` uses ``teacher`` (the reference). Under ``torchrun`` (or with
    ``distributed: true``) training uses DDP with each rank on its shard of every batch. The
    returned model is still parametrized, so it is exactly compressed. ``trace`` (a list) receives
    L-C's convergence per C step (``mu`` and the distance of the weights from their compressed form).

    ``lr: auto`` runs a learning-rate range test on the compressed model with the recovery loss
    (:mod:`.lr_range`); ``report`` (a dict) receives the rate used (``lr``), where it came from
    (``lr_source``: ``config``, ``range test`` or ``cached``) and the test's curve. ``lr_cache``
    (a dict, e.g. one per search) keeps tested rates under ``lr_cache_key`` so that an identical
    evaluation (same bound strategy, loss and optimizer) does not test again; ``log`` prints the
    rate a test picked.
    """
    device = torch.device(device)
    check_distributed(config)
    if config.method == "none" or (config.method == "finetune" and config.epochs == 0):
        return model.to(device).eval()
    loss_fn = make_loss(config)
    teacher_for_loss = teacher if uses_teacher(config) else None
    loader, wrap = None, None
    if distributed.init_from_env(device) or config.distributed:
        world = distributed.world_size()
        sampler = distributed.sampler(data, shuffle=config.shuffle, seed=seed)
        loader = DataLoader(data, batch_size=max(1, config.batch_size // world), sampler=sampler)
        wrap = lambda m: distributed.wrap(m.to(device), device)  # noqa: E731
    elif not config.shuffle:
        loader = DataLoader(data, batch_size=config.batch_size, shuffle=False)
    config = choose_lr(model, teacher_for_loss, data, config, device=device, seed=seed,
                       strategy=strategy, report=report, lr_cache=lr_cache, log=log)
    if config.method == "lc":
        if teacher is None:
            raise ValueError("recovery.method=lc starts from the reference model; pass it as teacher")
        return lc_recover(model, teacher, data, config, strategy=strategy, device=device, loss_fn=loss_fn, seed=seed,
                          progress=progress, loader=loader, wrap=wrap, trace=trace)
    train(model, data, config.training(), device=device, loss_fn=loss_fn, teacher=teacher_for_loss, seed=seed,
          progress=progress, loader=loader, wrap=wrap, warmup=config.warmup_share)
    return model


def lr_cache_key(strategy, config: RecoveryConfig, seed: int) -> str:
    """What a range test depends on: the bound strategy, the loss and the optimizer settings."""
    fields = {k: getattr(config, k) for k in ("method", "loss", "temperature", "weights", "margin", "optimizer",
                                               "momentum", "weight_decay", "batch_size", "amp", "lr_test_steps")}
    if callable(fields["loss"]):  # a Python loss: its qualified name stands for it
        fields["loss"] = f"{getattr(fields['loss'], '__module__', '')}.{getattr(fields['loss'], '__qualname__', repr(fields['loss']))}"
    return canonical_json({"strategy": strategy.to_dict() if strategy is not None else None, "seed": seed, **fields}).decode()


def choose_lr(model: nn.Module, teacher: nn.Module | None, data: Dataset, config: RecoveryConfig, *,
              device: torch.device, seed: int, strategy=None, report: dict[str, Any] | None = None,
              lr_cache: dict[str, float] | None = None, log: Callable[[str], None] | None = None) -> RecoveryConfig:
    """``config`` with a numeric ``lr``: the configured one, or (``auto``) the range test's pick.

    Every rank of a torchrun job runs the same test on the same (ordinary, seeded) batches and
    the ranks average the result, so they train with one rate. The test uses a loss object of its
    own: SoftAdapt's state must not carry over into training."""
    report = report if report is not None else {}
    if config.lr != "auto":
        report.update(lr=config.lr, lr_source="config")
        return config
    key = lr_cache_key(strategy, config, seed)
    if lr_cache is not None and key in lr_cache:
        report.update(lr=lr_cache[key], lr_source="cached")
        return config.replace(lr=lr_cache[key])
    probe_loader = make_loader(data, config.batch_size, shuffle=True, seed=seed + 1000)
    # the test sets its own rates; lr=1.0 only makes the settings a valid TrainConfig
    test = range_test(model, probe_loader, make_loss(config), config.replace(lr=1.0).training(), device=device, teacher=teacher,
                      steps=config.lr_test_steps)
    lr = float(distributed.all_mean([test.lr])[0])
    if lr_cache is not None:
        lr_cache[key] = lr
    report.update(lr=lr, lr_source="range test", lr_test={"lrs": test.lrs, "losses": test.losses})
    if log is not None:
        log(f"recovery.lr: auto -> {lr:.3g} (range test over {len(test.lrs)} steps)")
    return config.replace(lr=lr)


__all__ = ["RecoveryConfig", "TrainConfig", "DistillLoss", "recover", "train", "make_loss", "check_distributed", "choose_lr",
           "lr_cache_key"]
