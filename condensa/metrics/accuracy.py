"""Predictions and accuracy on a data set."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass
class Predictions:
    """Per-example outputs of one model on one split (aligned with ``indices``)."""

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
    """Run ``model`` over ``data`` in eval mode; logits are returned in fp32 on the CPU."""
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    logits, labels = [], []
    for inputs, targets in DataLoader(data, batch_size=batch_size, shuffle=False):
        logits.append(model(inputs.to(device)).float().cpu())
        labels.append(targets)
    model.train(was_training)
    indices = getattr(data, "indices", None)
    if indices is None:
        indices = torch.arange(sum(len(t) for t in labels))
    return Predictions(torch.cat(logits), torch.cat(labels), torch.as_tensor(indices))
