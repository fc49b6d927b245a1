"""Predictions and accuracy on a data set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..outputs import flatten_positions, logits_of


@dataclass
class Predictions:
    """Per-prediction outputs of one model on one split (aligned with ``indices``): one row per
    example, or per position for language models."""

    logits: torch.Tensor
    labels: torch.Tensor
    indices: torch.Tensor

    @property
    def predicted(self) -> torch.Tensor:
        return self.logits.argmax(dim=1)

    @property
    def confidence(self) -> torch.Tensor:
        """Softmax probability of the predicted class."""
        return self.logits.softmax(dim=1).max(dim=1).values

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in percent."""
        return accuracy(self.predicted, self.labels)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``predicted == labels``."""
    return 100.0 * float((predicted == labels).float().mean()) if len(labels) else 0.0


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, *, device: torch.device | str = "cpu", batch_size: int = 256) -> Predictions:
    """Run ``model`` over ``data`` in eval mode; logits are returned in fp32 on the CPU.

    The output may be a tensor or a Hugging Face ``ModelOutput`` (:func:`~condensa.outputs.logits_of`).
    Per-position outputs (``[batch, positions, classes]`` logits with ``[batch, positions]``
    labels, as language models give) become one row per position; the id of position ``t`` of
    example ``i`` is ``i * positions + t``, so flipped ids and exemplars name positions.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    logits, labels = [], []
    positions = 1
    for inputs, targets in DataLoader(data, batch_size=batch_size, shuffle=False):
        out = logits_of(model(inputs.to(device))).float().cpu()
        if out.dim() > 2:
            positions = out.shape[1]
            out, targets, _ = flatten_positions(out, targets)
        logits.append(out)
        labels.append(targets)
    model.train(was_training)
    indices = getattr(data, "indices", None)
    if indices is None:
        indices = torch.arange(sum(len(t) for t in labels))
    elif positions > 1:
        indices = (torch.as_tensor(indices).reshape(-1, 1) * positions + torch.arange(positions)).reshape(-1)
    return Predictions(torch.cat(logits), torch.cat(labels), torch.as_tensor(indices))
