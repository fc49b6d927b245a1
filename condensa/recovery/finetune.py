"""Masked fine-tuning: the baseline recovery after compression.

Masks and fake quantizers are parametrizations, so the ordinary training loop below keeps pruned
weights at exactly zero and trains through quantization (straight-through). Cosine learning rate,
SGD or Adam, device-agnostic, optional autocast. The same loop trains the reference models.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, RecoveryError

OPTIMIZERS = ("adam", "sgd")
AMP_MODES = ("none", "bf16", "fp16")

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


@dataclass
class TrainConfig:
    """Hyper-parameters of a training run (units: epochs, learning rate, examples per batch)."""

    epochs: int = 8
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 64
    amp: str = "none"
    max_steps: int | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"recovery.optimizer must be one of {list(OPTIMIZERS)}, got {self.optimizer!r}")
        if self.amp not in AMP_MODES:
            raise ConfigError(f"recovery.amp must be one of {list(AMP_MODES)}, got {self.amp!r}")
        if not isinstance(self.epochs, int) or self.epochs < 0:
            raise ConfigError(f"recovery.epochs must be an integer >= 0, got {self.epochs!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ConfigError(f"recovery.lr must be a number > 0, got {self.lr!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"recovery.batch_size must be an integer >= 1, got {self.batch_size!r}")


def ce_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, labels)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    trainable = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(trainable, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    return torch.optim.Adam(trainable, lr=config.lr, weight_decay=config.weight_decay)


def autocast(device: torch.device, amp: str):
    """bf16 autocast works on CPU and CUDA; fp16 only on CUDA (falls back to bf16 on CPU)."""
    if amp == "none":
        return torch.autocast(device_type=device.type, enabled=False)
    dtype = torch.float16 if amp == "fp16" and device.type == "cuda" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_loader(data: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, sampler=None) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(data, batch_size=batch_size, shuffle=shuffle and sampler is None, generator=generator, sampler=sampler)


def train(
    model: nn.Module,
    data: Dataset,
    config: TrainConfig,
    *,
    device: torch.device,
    loss_fn: LossFn = ce_loss,
    teacher: nn.Module | None = None,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    step_hook: Callable[[nn.Module], torch.Tensor | None] | None = None,
    loader: DataLoader | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
) -> nn.Module:
    """Train ``model`` in place with a cosine schedule; returns it in eval mode.

    ``teacher`` (frozen, eval mode) provides teacher logits to ``loss_fn``; ``step_hook(model)``
    may return an extra loss term (the L-C penalty uses it). A NaN or inf loss raises
    :class:`RecoveryError` so a search can record the evaluation as failed and go on.
    """
    torch.manual_seed(seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    loader = loader or make_loader(data, config.batch_size, shuffle=True, seed=seed)
    trainable = wrap(model) if wrap is not None else model
    total_steps = max(1, config.epochs * len(loader))
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" and device.type == "cuda" else None
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / total_steps)))
    step = 0
    for epoch in range(config.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        running, count = 0.0, 0
        for inputs, labels in loader:
            if step >= total_steps:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            with autocast(device, config.amp):
                logits = trainable(inputs)
                teacher_logits = None
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(inputs)
                loss = loss_fn(logits.float(), labels, None if teacher_logits is None else teacher_logits.float())
            if step_hook is not None:
                extra = step_hook(model)
                if extra is not None:
                    loss = loss + extra
            if not torch.isfinite(loss):
                raise RecoveryError(f"recovery diverged: loss is {loss.item()} at epoch {epoch + 1}, step {step + 1}; lower recovery.lr")
            optimizer.zero_grad(set_to_none=True)
            if scaler is not None:  # fp16 on CUDA needs loss scaling; bf16 does not
                scaler.scale(loss).backward()
                scaler.step(optimizer)
                scaler.update()
            else:
                loss.backward()
                optimizer.step()
            scheduler.step()
            running += float(loss.detach()) * len(labels)
            count += len(labels)
            step += 1
        if progress is not None:
            progress(epoch + 1, running / max(1, count))
        if step >= total_steps:
            break
    return model.eval()
