"""Recovery after compression: masked fine-tuning, L-C, label-preserving distillation.

:func:`recover` trains a compressed (parametrized) model back to accuracy with one training loop
(:mod:`.train`); :mod:`.lc` runs learning-compression on top of it; :mod:`.losses` holds the
label-preserving teacher-student loss.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .. import distributed
from ..errors import ConfigError
from .config import RecoveryConfig, TrainConfig
from .lc import lc_recover
from .losses import DistillLoss
from .train import ce_loss, train


def check_distributed(config: RecoveryConfig) -> None:
    """``distributed: true`` needs a torchrun launch with several processes (DDP is automatic there)."""
    if config.distributed and int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        raise ConfigError("recovery.distributed: true needs a torchrun launch with 2 or more processes (WORLD_SIZE is "
                          "unset or 1); under torchrun DDP is automatic, so leave it false")


def make_loss(config: RecoveryConfig) -> Callable:
    if config.loss == "distill":
        return DistillLoss(config.temperature, config.weights, config.softadapt_window, config.softadapt_beta, config.margin)
    return ce_loss


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
) -> nn.Module:
    """Recover the accuracy of a compressed (parametrized) ``model``.

    ``method``: ``none`` returns it untouched, ``finetune`` trains it with its masks and quantizers
    in place, ``lc`` runs learning-compression from the reference weights and re-applies
    ``strategy``. ``loss: distill`` uses ``teacher`` (the reference). Under ``torchrun`` (or with
    ``distributed: true``) training uses DDP with each rank on its shard of every batch. The
    returned model is still parametrized, so it is exactly compressed. ``trace`` (a list) receives
    L-C's convergence per C step (``mu`` and the distance of the weights from their compressed form).
    """
    device = torch.device(device)
    check_distributed(config)
    if config.method == "none" or (config.method == "finetune" and config.epochs == 0):
        return model.to(device).eval()
    loss_fn = make_loss(config)
    teacher_for_loss = teacher if config.loss == "distill" else None
    loader, wrap = None, None
    if distributed.init_from_env(device) or config.distributed:
        world = distributed.world_size()
        sampler = distributed.sampler(data, shuffle=config.shuffle, seed=seed)
        loader = DataLoader(data, batch_size=max(1, config.batch_size // world), sampler=sampler)
        wrap = lambda m: distributed.wrap(m.to(device), device)  # noqa: E731
    elif not config.shuffle:
        loader = DataLoader(data, batch_size=config.batch_size, shuffle=False)
    if config.method == "lc":
        if teacher is None:
            raise ValueError("recovery.method=lc starts from the reference model; pass it as teacher")
        return lc_recover(model, teacher, data, config, strategy=strategy, device=device, loss_fn=loss_fn, seed=seed,
                          progress=progress, loader=loader, wrap=wrap, trace=trace)
    train(model, data, config.training(), device=device, loss_fn=loss_fn, teacher=teacher_for_loss, seed=seed,
          progress=progress, loader=loader, wrap=wrap)
    return model


__all__ = ["RecoveryConfig", "TrainConfig", "DistillLoss", "recover", "train", "make_loss", "check_distributed"]
