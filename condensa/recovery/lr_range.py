"""``recovery.lr: auto``: a learning-rate range test on the compressed model.

A fixed default rate fails on models trained with another optimizer or scale: in the study
behind the defaults, the digits CNN pruned to 2 % (+ int8) recovered 94.2 % at Adam 1e-3 and
96.7 % at the range-test rate (0.020), and L-C with a budgeted schedule reached 46.7 % at 1e-3
vs 98.75 % at the tested rate. The test (Smith 2017, as in fastai's ``lr_find``) trains a copy
of the compressed model for ``steps`` mini-batches of the recovery loss while the rate grows
exponentially from ``low`` to ``high``, smooths the loss (a bias-corrected moving average),
stops once it exceeds 4x its minimum, and picks the rate with fastai's *valley* rule: two thirds
of the way down the longest run of falling loss before the minimum.

Written here rather than taken from ``torch-lr-finder``: its criterion sees ``(output, label)``
only, while recovery losses need the teacher's outputs, and it offers only the steepest-slope
suggestion.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..operators import params
from .config import TrainConfig
from .train import batch_loss, make_optimizer

#: rates tried per optimizer: six decades where each optimizer's useful rates live
RANGES = {"adam": (1e-6, 1.0), "sgd": (1e-5, 10.0)}


@dataclass
class RangeTest:
    """The curve of one range test and the rate it picked."""

    lr: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed

    def to_dict(self) -> dict:
        return {"lr": self.lr, "lrs": self.lrs, "losses": self.losses}


def _cycle(loader: DataLoader) -> Iterator:
    for _ in itertools.count():
        yield from loader


def valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley rule: 2/3 of the way down the longest falling run before the minimum."""
    if len(lrs) < 3:
        return lrs[0]
    n = min(range(len(losses)), key=losses.__getitem__) + 1
    run = [1] * n  # longest strictly falling subsequence ending at i
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
    end = max(range(n), key=run.__getitem__)
    start = end - run[end] + 1
    return lrs[start + (end - start) * 2 // 3]


def range_test(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: Callable,
    config: TrainConfig,
    *,
    device: torch.device,
    teacher: nn.Module | None = None,
    steps: int = 60,
    smooth: float = 0.9,
    diverge: float = 4.0,
) -> RangeTest:
    """Run the test on a copy of ``model`` (the model itself is not changed)."""
    low, high = RANGES[config.optimizer]
    params.detach_rnn_caches(model)  # a parametrized LSTM's cached weights cannot be deep-copied
    probe = copy.deepcopy(model).to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer = make_optimizer(probe, config)
    ratio = (high / low) ** (1 / max(1, steps - 1))
    lrs: list[float] = []
    losses: list[float] = []
    average, best = 0.0, math.inf
    for i, (inputs, labels) in zip(range(steps), _cycle(loader)):
        lr = low * ratio**i
        for group in optimizer.param_groups:
            group["lr"] = lr
        inputs, labels = inputs.to(device), labels.to(device)
        loss = batch_loss(probe, teacher, inputs, labels, loss_fn, device, config.amp)
        value = float(loss.detach())
        if not math.isfinite(value):
            break
        average = smooth * average + (1 - smooth) * value
        smoothed = average / (1 - smooth ** (i + 1))
        lrs.append(lr)
        losses.append(smoothed)
        best = min(best, smoothed)
        if i > 10 and smoothed > diverge * best:
            break
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    if not lrs:  # the loss was not finite at the smallest rate: let training report it
        return RangeTest(low)
    return RangeTest(valley(lrs, losses), lrs, losses)


__all__ = ["RangeTest", "range_test", "valley", "RANGES"]
