"""Label-preserving teacher-student loss with automatically weighted terms.

A compressed model can keep its accuracy while changing many of the reference model's answers.
Distilling from the reference (the teacher) with extra terms aimed at agreement cuts those
mismatches (Joshi et al., "Preserving label fidelity in compressed models"; Hinton et al. 2015
for the temperature-scaled KL term). Terms:

* ``ce``: cross-entropy on the true labels;
* ``kl``: KL(teacher || student) of the softmax at temperature T, scaled by T^2 so its gradient
  magnitude does not shrink with T;
* ``logit``: mean squared error between student and teacher logits;
* ``flip``: a hinge on the teacher's predicted label, ``max(0, margin - (s[t] - max_{j!=t} s[j]))``:
  zero once the student agrees with the teacher by a margin, so it acts only on examples whose
  label would flip (or nearly does).

The defaults (the ``recovery`` section's) are KL at T = 1 + flip (margin 0.3) + CE at half
weight; see :data:`~condensa.recovery.config.DISTILL_WEIGHTS`. Weights are fixed, or tuned during
training by SoftAdapt (Heydari et al., arXiv 1912.12355): every ``window`` steps each term's
relative rate of change over the window is computed, the rates are normalized by their largest
magnitude, and the weights become ``softmax(beta * rate)``. A term that has stopped improving
(rate near 0) while others still fall gets more weight; weights always sum to 1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .. import distributed
from .config import DISTILL_WEIGHTS

TERMS = ("ce", "kl", "logit", "flip")


def kl_term(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    student = F.log_softmax(logits / temperature, dim=1)
    teacher = F.log_softmax(teacher_logits / temperature, dim=1)
    return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature**2


def flip_term(logits: torch.Tensor, teacher_logits: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    target = teacher_logits.argmax(dim=1)
    target_logit = logits.gather(1, target.unsqueeze(1)).squeeze(1)
    others = logits.scatter(1, target.unsqueeze(1), float("-inf")).max(dim=1).values
    return F.relu(margin - (target_logit - others)).mean()


def loss_terms(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
               margin: float = 1.0) -> dict[str, torch.Tensor]:
    return {
        "ce": F.cross_entropy(logits, labels),
        "kl": kl_term(logits, teacher_logits, temperature),
        "logit": F.mse_loss(logits, teacher_logits),
        "flip": flip_term(logits, teacher_logits, margin),
    }


class SoftAdapt:
    """SoftAdapt weights from each term's recent relative rate of change."""

    def __init__(self, names: tuple[str, ...] = TERMS, window: int = 10, beta: float = 5.0) -> None:
        self.names, self.window, self.beta = names, max(2, window), beta
        self.history: dict[str, list[float]] = {n: [] for n in names}
        self.weights = {n: 1.0 / len(names) for n in names}

    def rates(self) -> dict[str, float]:
        """Relative change of each term between the two halves of the last window."""
        out = {}
        for name, values in self.history.items():
            recent = values[-self.window :]
            half = len(recent) // 2
            first, second = sum(recent[:half]) / half, sum(recent[half:]) / (len(recent) - half)
            out[name] = (second - first) / max(abs(first), 1e-12)
        return out

    def update(self, values: Mapping[str, float]) -> dict[str, float]:
        for name in self.names:
            self.history[name].append(float(values[name]))
        if len(self.history[self.names[0]]) % self.window == 0:
            rates = self.rates()
            scale = max(abs(r) for r in rates.values()) or 1.0
            exps = {n: torch.exp(torch.tensor(self.beta * rates[n] / scale)).item() for n in self.names}
            total = sum(exps.values())
            self.weights = {n: exps[n] / total for n in self.names}
        return self.weights


class DistillLoss:
    """Callable ``(student_logits, labels, teacher_logits) -> loss`` for the training loop."""

    def __init__(self, temperature: float = 1.0, weights: str | Mapping[str, float] = DISTILL_WEIGHTS, window: int = 10,
                 beta: float = 5.0, margin: float = 0.3) -> None:
        self.temperature, self.margin = temperature, margin
        self.adapt = SoftAdapt(TERMS, window, beta) if weights == "auto" else None
        if self.adapt is None:
            weights = dict(weights)
            total = sum(weights.values())
            self.fixed = {n: float(weights.get(n, 0.0)) / total for n in TERMS}
        self.last_terms: dict[str, float] = {}

    @property
    def weights(self) -> dict[str, float]:
        return dict(self.adapt.weights) if self.adapt is not None else dict(self.fixed)

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None) -> torch.Tensor:
        if teacher_logits is None:
            raise ValueError("the distillation loss needs the reference model's logits")
        terms = loss_terms(logits, labels, teacher_logits, self.temperature, self.margin)
        values = [float(terms[n].detach()) for n in TERMS]
        if self.adapt is not None:
            # under torchrun each rank sees its share of the batch: SoftAdapt adapts to the whole
            # batch's terms (their mean over ranks), so every rank uses the weights one process would
            values = distributed.all_mean(values)
        self.last_terms = dict(zip(TERMS, values))
        weights = self.weights
        loss = sum(weights[n] * terms[n] for n in TERMS)
        if self.adapt is not None:
            self.adapt.update(self.last_terms)
        return loss
