"""Constrained Bayesian optimization of compression knobs.

What we chose and why
---------------------
* **Surrogates.** One botorch ``SingleTaskGP`` (Matérn-5/2, ARD, fitted noise; inputs in the unit
  cube with log-scaled knobs already log-transformed, outcomes standardized) per constraint
  metric, and one for the objective when it is expensive (latency, a user callable). GPs are the
  standard surrogate for <= 10-50 noisy, expensive evaluations and give calibrated uncertainty,
  which the feasibility probability needs [botorch; Rasmussen & Williams 2006].
* **Cheap objectives are computed, not modeled.** Footprint and FLOPs depend only on the knob
  values (masks and bit widths), not on training, so they are evaluated exactly for the
  candidates that matter: a GP fitted on a handful of exact values ranks the candidate set and
  the best few are then computed exactly.
* **Acquisition: constrained expected improvement** (Gardner et al., "Bayesian Optimization with
  Inequality Constraints", ICML 2014): EI of the objective over the best *feasible* observation,
  times the probability that every constraint holds under its GP. With a cheap objective the
  improvement is exact. Before anything feasible has been seen we maximize the probability of
  feasibility, preferring the better objective among candidates close to the best probability.
  In the common one-knob case (accuracy falls as density falls, footprint rises with density)
  this reproduces the two phases of Condensa's optimizer (Joshi et al., "Condensa: Programmable
  Model Compression", arXiv 1911.02497): find where the constraint becomes active, then settle
  on the best feasible point next to that boundary; it also works for several knobs and for
  objectives that are not monotone.
* **Initial design.** A scrambled Sobol sequence (3 points for one knob, 2d+1 for d knobs) covers
  the space evenly before any model is trusted.
* **Determinism.** Every random choice (Sobol scrambling, candidate sets, GP fitting restarts)
  is seeded from ``(seed, step)``, so a search resumed from its journal proposes exactly the
  points an uninterrupted search would have.
* The acquisition is maximized over a dense quasi-random candidate set plus perturbations of the
  incumbent, which is robust and exact enough in <= 4 dimensions (the typical knob count), and
  avoids the multi-start gradient optimizer's sensitivity to flat regions of CEI.
"""

from __future__ import annotations

import math
import warnings
from typing import Callable

import torch
from torch.quasirandom import SobolEngine

from .space import Space

DTYPE = torch.float64


def generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * (seed + 1) + step)


def sobol(n: int, dim: int, seed: int) -> torch.Tensor:
    return SobolEngine(dim, scramble=True, seed=seed).draw(n).to(DTYPE)


def initial_design(space: Space, n: int, seed: int) -> list[list[float]]:
    """``n`` space-filling unit points; in 1-D a shuffled stratified design (one point per stratum)."""
    if n <= 0:
        return []
    points = sobol(n, space.dim, seed).tolist()
    return [space.snap(p) for p in points]


def fit_gp(x: torch.Tensor, y: torch.Tensor, seed: int):
    """A fitted ``SingleTaskGP`` on ``x`` (n x d in [0,1]) and ``y`` (n)."""
    from botorch.fit import fit_gpytorch_mll
    from botorch.models import SingleTaskGP
    from botorch.models.transforms import Standardize
    from gpytorch.mlls import ExactMarginalLogLikelihood

    torch.manual_seed(seed)
    model = SingleTaskGP(x, y.unsqueeze(-1), outcome_transform=Standardize(m=1))
    mll = ExactMarginalLogLikelihood(model.likelihood, model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fit_gpytorch_mll(mll)
        except Exception:  # noqa: BLE001 - an unfitted GP still carries sensible priors
            pass
    model.eval()
    return model


def posterior(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        post = model.posterior(x)
        return post.mean.squeeze(-1), post.variance.clamp_min(1e-12).sqrt().squeeze(-1)


def normal_cdf(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def normal_pdf(z: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def candidates(space: Space, incumbent: list[float] | None, seed: int, step: int) -> torch.Tensor:
    """Quasi-random points over the cube plus Gaussian perturbations around the incumbent."""
    n_global = 512 if space.dim == 1 else 1024 * min(space.dim, 4)
    base = sobol(n_global, space.dim, seed * 7919 + step)
    parts = [base]
    if incumbent is not None:
        g = generator(seed, step)
        center = torch.tensor(incumbent, dtype=DTYPE)
        for scale in (0.01, 0.03, 0.1):
            parts.append((center + scale * torch.randn(128, space.dim, generator=g, dtype=DTYPE)).clamp(0, 1))
    cand = torch.cat(parts)
    return torch.tensor([space.snap(p) for p in cand.tolist()], dtype=DTYPE)


def propose(
    space: Space,
    x: list[list[float]],
    constraint_values: list[list[float]],
    uppers: list[float],
    losses: list[float | None],
    feasible: list[bool],
    cheap_loss: Callable[[list[float]], float] | None,
    seen: set,
    seed: int,
    step: int,
) -> list[float]:
    """Next unit point by constrained EI; ``losses`` are objective values oriented so lower is better
    (None where unknown), ``constraint_values[j][i]`` is constraint j at point i."""
    train_x = torch.tensor(x, dtype=DTYPE)
    best_index = min((i for i in range(len(x)) if feasible[i] and losses[i] is not None), key=lambda i: losses[i], default=None)
    incumbent = x[best_index] if best_index is not None else None
    cand = candidates(space, incumbent, seed, step)
    keep = [i for i, p in enumerate(cand.tolist()) if space.key(space.decode(p)) not in seen]
    if not keep:
        return space.snap(torch.rand(space.dim, generator=generator(seed, step), dtype=DTYPE).tolist())
    cand = cand[keep]

    pof = torch.ones(len(cand), dtype=DTYPE)
    for j, upper in enumerate(uppers):
        y = torch.tensor(constraint_values[j], dtype=DTYPE)
        gp = fit_gp(train_x, y, seed * 31 + step * 7 + j)
        mean, std = posterior(gp, cand)
        pof = pof * normal_cdf((upper - mean) / std)

    if cheap_loss is not None:
        loss_mean = _cheap_estimate(space, cheap_loss, cand, x, seed, step)
        loss_std = torch.zeros_like(loss_mean)
    else:
        known = [i for i, v in enumerate(losses) if v is not None]
        gp = fit_gp(train_x[known], torch.tensor([losses[i] for i in known], dtype=DTYPE), seed * 31 + step * 7 + 99)
        loss_mean, loss_std = posterior(gp, cand)
    best = losses[best_index] if best_index is not None else None
    score = _score(pof, loss_mean, loss_std, best, exact=cheap_loss is not None)
    if cheap_loss is not None:
        # The estimate ranked the candidates; compute the objective exactly for the best 32.
        top = torch.argsort(score, descending=True)[:32]
        exact = torch.tensor([cheap_loss(p) for p in cand[top].tolist()], dtype=DTYPE)
        score_top = _score(pof[top], exact, torch.zeros_like(exact), best, exact=True)
        return cand[top[int(torch.argmax(score_top))]].tolist()
    return cand[int(torch.argmax(score))].tolist()


def _score(pof, loss_mean, loss_std, best, *, exact: bool) -> torch.Tensor:
    """Constrained EI (or, before any feasible point, the best objective among the likeliest
    feasible candidates)."""
    if best is None:
        near = pof >= 0.9 * pof.max()
        return torch.where(near, -loss_mean, torch.full_like(loss_mean, -math.inf))
    if exact:
        improvement = (best - loss_mean).clamp_min(0)
    else:
        z = (best - loss_mean) / loss_std.clamp_min(1e-12)
        improvement = (best - loss_mean) * normal_cdf(z) + loss_std * normal_pdf(z)
    acquisition = improvement * pof
    if float(acquisition.max()) <= 1e-12:
        # No expected gain anywhere: refine the boundary where feasibility is most uncertain.
        return pof * (1 - pof)
    return acquisition


def _cheap_estimate(space, cheap_loss, cand, x, seed, step) -> torch.Tensor:
    """A GP through exact values at a small anchor set plus the observed points: computing a
    cheap objective for thousands of candidates would still be slow for big models."""
    anchors = torch.linspace(0, 1, 9, dtype=DTYPE).unsqueeze(-1) if space.dim == 1 else sobol(8 * space.dim + 8, space.dim, seed + 17)
    anchors = torch.tensor([space.snap(p) for p in anchors.tolist()], dtype=DTYPE)
    ax = torch.cat([anchors, torch.tensor(x, dtype=DTYPE)])
    ay = torch.tensor([cheap_loss(p) for p in ax.tolist()], dtype=DTYPE)
    gp = fit_gp(ax, ay, seed * 13 + step)
    mean, _ = posterior(gp, cand)
    return mean
