"""Predictions and accuracy on a data set.

Only what the metrics need is kept per prediction (label, argmax, its softmax probability and the
label's negative log-likelihood): a language model's full logits are positions x vocabulary floats
(54,848 x 50,257 x 4 bytes = 11 GB for one split of a GPT-2-sized vocabulary), so they are kept
only when asked for (``keep_logits``, which a ``metrics.agreement`` score needs).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..outputs import flatten_positions, logits_of


@dataclass
class Predictions:
    """Per-prediction outputs of one model on one split (aligned with ``indices``): one row per
    example, or per position for language models. ``logits`` is ``None`` unless kept."""

    predicted: torch.Tensor
    confidence: torch.Tensor  #: softmax probability of the predicted class
    nll: torch.Tensor  #: negative log-likelihood of the label (nats)
    labels: torch.Tensor
    indices: torch.Tensor
    logits: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: torch.Tensor, labels: torch.Tensor, indices: torch.Tensor,
                    keep_logits: bool = True) -> Predictions:
        predicted, confidence, nll = summarize(logits, labels)
        return cls(predicted, confidence, nll, labels, indices, logits if keep_logits else None)

    @property
    def accuracy(self) -> float:
        """Top-1 accuracy in percent."""
        return accuracy(self.predicted, self.labels)

    @property
    def mean_nll(self) -> float:
        return float(self.nll.mean()) if len(self.nll) else 0.0


def summarize(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Argmax, its softmax probability, and the label's negative log-likelihood of ``[N, C]`` logits."""
    logits = logits.float()
    log_probs = F.log_softmax(logits, dim=1)
    top, predicted = log_probs.max(dim=1)
    nll = -log_probs.gather(1, labels.reshape(-1, 1).to(logits.device)).reshape(-1)
    return predicted, top.exp(), nll


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of ``predicted == labels``."""
    return 100.0 * float((predicted == labels).float().mean()) if len(labels) else 0.0


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, *, device: torch.device | str = "cpu", batch_size: int = 256,
            keep_logits: bool = True) -> Predictions:
    """Run ``model`` over ``data`` in eval mode; results are returned on the CPU (logits in fp32).

    The output may be a tensor or a Hugging Face ``ModelOutput`` (:func:`~condensa.outputs.logits_of`).
    Per-position outputs (``[batch, positions, classes]`` logits with ``[batch, positions]``
    labels, as language models give) become one row per position; the id of position ``t`` of
    example ``i`` is ``i * positions + t``, so flipped ids and exemplars name positions.
    ``keep_logits=False`` keeps only the per-prediction summary (computed batch by batch on
    ``device``), so memory does not grow with the number of classes.
    """
    device = torch.device(device)
    was_training = model.training
    model.eval().to(device)
    parts: list[tuple[torch.Tensor, ...]] = []
    logits = []
    positions = 1
    for inputs, targets in DataLoader(data, batch_size=batch_size, shuffle=False):
        out = logits_of(model(inputs.to(device)))
        if out.dim() > 2:
            positions = out.shape[1]
            out, targets, _ = flatten_positions(out, targets)
        parts.append(tuple(t.cpu() for t in summarize(out, targets)) + (targets.cpu(),))
        if keep_logits:
            logits.append(out.float().cpu())
    model.train(was_training)
    predicted, confidence, nll, labels = (torch.cat(column) for column in zip(*parts))
    indices = getattr(data, "indices", None)
    if indices is None:
        indices = torch.arange(len(labels))
    elif positions > 1:
        indices = (torch.as_tensor(indices).reshape(-1, 1) * positions + torch.arange(positions)).reshape(-1)
    return Predictions(predicted, confidence, nll, labels, torch.as_tensor(indices), torch.cat(logits) if keep_logits else None)
