"""The one training loop: masked fine-tuning, L-C's L steps, reference and memorization models.

Masks and fake quantizers are parametrizations, so this ordinary loop keeps pruned weights at
exactly zero and trains through quantization (straight-through). Cosine (or constant) learning
rate, SGD or Adam, device-agnostic, optional autocast, DDP through ``wrap``, progress per epoch,
and a NaN/inf loss raised as :class:`~condensa.errors.RecoveryError`. L-C adds its penalty with
``penalty`` and runs its C steps from ``after_step``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..errors import ConfigError, RecoveryError
from ..outputs import flatten_positions, logits_of
from .config import TrainConfig

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
SCHEDULES = ("cosine", "constant")


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


def batch_loss(model: nn.Module, teacher: nn.Module | None, inputs: torch.Tensor, labels: torch.Tensor, loss_fn: LossFn,
               device: torch.device, amp: str) -> torch.Tensor:
    """One mini-batch's loss under autocast (the teacher's outputs without gradients).

    Outputs may be tensors or ``ModelOutput`` objects; per-position logits ``[B, T, C]`` with
    labels ``[B, T]`` are flattened to one row per position first, so every loss (CE, the
    distillation terms, L-C's task loss, user losses) is per token."""
    with autocast(device, amp):
        logits = logits_of(model(inputs))
        teacher_logits = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = logits_of(teacher(inputs)).float()
        logits, labels, teacher_logits = flatten_positions(logits, labels, teacher_logits)
        return loss_fn(logits.float(), labels, teacher_logits)


def lr_factor(step: int, total: int, schedule: str = "cosine", warmup: int = 0) -> float:
    """Multiplier of the base learning rate before optimizer step ``step`` (0-based) of ``total``:
    linear warmup over ``warmup`` steps, then cosine decay to zero or constant."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def total_steps(config: TrainConfig, batches_per_epoch: int) -> int:
    """The step budget: ``epochs`` passes over the data, at most ``max_steps``."""
    steps = max(1, config.epochs * batches_per_epoch)
    return steps if config.max_steps is None else min(steps, config.max_steps)


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
    loader: DataLoader | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    penalty: Callable[[], torch.Tensor] | None = None,
    after_step: Callable[[int], None] | None = None,
    schedule: str = "cosine",
    warmup: float = 0.0,
    schedule_span: tuple[int, int] | None = None,
) -> nn.Module:
    """Train ``model`` in place for ``min(epochs * batches, max_steps)`` steps; returns it in eval mode.

    ``teacher`` (frozen, eval mode) provides teacher logits to ``loss_fn``; ``penalty()`` is added
    to every step's loss and ``after_step(steps_done)`` runs after every optimizer step (L-C uses
    both). ``schedule``: ``cosine`` decay to zero or ``constant``, after a linear warmup over the
    first ``warmup`` share of the schedule's steps; ``schedule_span=(offset, total)`` makes this run steps ``offset`` on
    of a ``total``-step schedule (L-C continues one schedule over two runs). A NaN or inf loss raises
    :class:`RecoveryError` so a search can record the evaluation as failed and go on.
    """
    if schedule not in SCHEDULES:
        raise ConfigError(f"schedule: must be one of {list(SCHEDULES)}, got {schedule!r}")
    torch.manual_seed(seed)
    model.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    loader = loader or make_loader(data, config.batch_size, shuffle=True, seed=seed)
    trainable = wrap(model) if wrap is not None else model
    budget = total_steps(config, len(loader))
    optimizer = make_optimizer(model, config)
    scaler = torch.amp.GradScaler("cuda") if config.amp == "fp16" and device.type == "cuda" else None
    offset, span = schedule_span or (0, budget)
    warmup_steps = int(round(warmup * span))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s + offset, span, schedule, warmup_steps))
    step = 0
    for epoch in range(config.epochs):
        if hasattr(loader, "sampler") and hasattr(loader.sampler, "set_epoch"):
            loader.sampler.set_epoch(epoch)
        running, count = 0.0, 0
        for inputs, labels in loader:
            if step >= budget:
                break
            inputs, labels = inputs.to(device), labels.to(device)
            loss = batch_loss(trainable, teacher, inputs, labels, loss_fn, device, config.amp)
            if penalty is not None:
                loss = loss + penalty()
            if not torch.isfinite(loss):
                if step == 0:  # no update has happened yet: the learning rate cannot be the cause
                    raise RecoveryError(f"recovery: the loss is {loss.item()} at the first step, before any weight update: "
                                        "the model's outputs (or the inputs) are not finite")
                raise RecoveryError(f"recovery.lr: training diverged (loss {loss.item()} at epoch {epoch + 1}, step {step + 1}); "
                                    "lower recovery.lr")
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
            if after_step is not None:
                after_step(step)
        if progress is not None:
            progress(epoch + 1, running / max(1, count))
        if step >= budget:
            break
    return model.eval()
