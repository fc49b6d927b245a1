"""Constrained Bayesian optimization of compression knobs.

The problem: pick knob values ``x`` (densities, bit widths, ...) minimizing an objective ``f(x)``
(footprint, FLOPs, latency) subject to ``c_j(x) <= u_j`` (accuracy drop, mismatch rate), where
measuring ``c_j`` means compressing, fine-tuning and validating a model: minutes per point, so
the budget is ~10 evaluations and every one must count.

What we chose and why
---------------------
* **Surrogates.** One botorch ``SingleTaskGP`` per constraint metric, and one for the objective
  only when it is expensive (latency, a user metric): RBF kernel with ARD and botorch's
  dimension-scaled lengthscale prior, fitted noise, inputs in the unit cube (log-scaled knobs are
  already log-transformed by :class:`~condensa.knobs.Range`, a ``Choice`` is an ordered
  categorical), outcomes standardized (``Standardize(m=1)``), hyperparameters by
  ``fit_gpytorch_mll`` [botorch: Balandat et al., NeurIPS 2020]. GPs are the standard surrogate
  for a handful of noisy, expensive evaluations and give the calibrated uncertainty that the
  probability of feasibility needs.
* **Constraint values are bilog-transformed around their bound**, ``sign(v-u) log(1+|v-u|)``,
  before modeling (as in SCBO, Eriksson & Poloczek, "Scalable Constrained Bayesian Optimization",
  AISTATS 2021). The transform is monotone with ``u -> 0``, so feasibility is unchanged, but an
  accuracy drop that explodes from 1 to 80 points at tiny densities no longer dominates the
  standardized GP: the model spends its flexibility near the bound, where decisions are made.
* **Cheap objectives are computed, not modeled.** Footprint and FLOPs depend only on the knob
  values, so the improvement is exact. Computing them still costs a model copy, so a GP through
  exact values at a few anchors ranks the candidate set and only the best 16 candidates are
  computed exactly (cached) to pick the winner.
* **Acquisition: constrained expected improvement** (Gardner et al., "Bayesian Optimization with
  Inequality Constraints", ICML 2014): EI of the objective over the best *feasible observation*
  times the probability of feasibility (PoF) under the constraint GPs, evaluated in log space
  (``log EI + sum_j log PoF_j``; Ament et al., "Unexpected Improvements to Expected Improvement",
  NeurIPS 2023) so that candidates stay ranked when the products underflow. With a cheap
  objective the improvement is exact: ``max(0, best - f(x))``. Before anything feasible has been
  seen we maximize PoF, preferring the best objective among candidates whose PoF is within 10% of
  the maximum. When no candidate can improve (the incumbent is already at the cheapest end) we
  sample where feasibility is most uncertain (max ``PoF (1 - PoF)``).
  For the typical one-knob problem (accuracy falls as density falls, footprint rises with
  density) this reproduces the two phases of Condensa's optimizer (Joshi et al., "Condensa:
  Programmable Model Compression", arXiv 1911.02497): first locate where the accuracy constraint
  becomes active, then settle on the best feasible point next to that boundary. Unlike a
  bisection it needs no monotonicity, handles several knobs and constraints, noise and
  expensive objectives.
* **Acquisition optimizer.** A dense scrambled-Sobol candidate set (2048 points, more in higher
  dimensions) plus Gaussian perturbations of the incumbent at several scales, snapped to valid
  knob values. In the <= 4 dimensions knobs usually have this is exact enough, cheap, and
  deterministic; gradient multi-start optimizers struggle with the flat plateaus of constrained
  EI and with rounded (integer/choice) knobs.
* **No (near-)duplicates.** Candidates within 0.2% of the unit range (per dimension; identical
  for integer/choice knobs) of an evaluated point are dropped: re-measuring a point, or one whose
  footprint differs by ~1%, teaches little with a 10-evaluation budget.
* **Initial design.** A maximin Latin hypercube (best of 64 seeded LHS draws by minimum pairwise
  distance): 3 points for one knob, ``2d+1`` for ``d`` knobs (capped at budget - 1). For so few
  points it covers each axis more evenly than the first points of a Sobol sequence, which in 1-D
  can put two of three points in the same third.
* **Recommendation: observed and modeled feasibility.** The answer is always an evaluated point
  (never a prediction), but with noisy constraints (a 360-image validation split moves an
  accuracy drop by 0.28 points per image) the cheapest point that *happened* to land under the
  bound is often just lucky, and fails on test. So a BO search recommends the best evaluated point
  that is feasible both as observed and under the constraint GPs' posterior mean at that point
  (the noise-aware recommendation of Letham et al., "Constrained Bayesian Optimization with Noisy
  Experiments", Bayesian Analysis 2019); points set aside this way are listed in the result. If
  the model trusts none, the best observed feasible point is returned.
* **Determinism.** Every random choice (design, candidate sets, GP fitting) is seeded from
  ``(seed, step)`` only, inside a forked RNG so the caller's global RNG is untouched: a search
  resumed from its journal proposes exactly the points an uninterrupted search would have.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch
from torch.quasirandom import SobolEngine

from .space import Space

DTYPE = torch.float64
#: candidates closer than this (unit cube, per continuous dimension) to an evaluated point are skipped
DUPLICATE_TOL = 2e-3
#: how many of the top-ranked candidates get their cheap objective computed exactly
EXACT_TOP = 16


def step_seed(seed: int, step: int, salt: int = 0) -> int:
    """A seed that depends only on ``(seed, step, salt)``."""
    return (1_000_003 * (int(seed) + 1) + 7_919 * int(step) + 104_729 * int(salt)) % (2**31 - 1)


def generator(seed: int, step: int, salt: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(step_seed(seed, step, salt))


def sobol(n: int, dim: int, seed: int) -> torch.Tensor:
    return SobolEngine(dim, scramble=True, seed=seed).draw(n).to(DTYPE)


def initial_design(space: Space, n: int, seed: int) -> list[list[float]]:
    """``n`` space-filling unit points: the best of 64 seeded Latin hypercubes by min distance."""
    if n <= 0:
        return []
    g = generator(seed, -1)
    best, best_score = None, -math.inf
    for _ in range(64):
        strata = torch.stack([torch.randperm(n, generator=g) for _ in range(space.dim)], dim=-1).to(DTYPE)
        points = (strata + torch.rand(n, space.dim, generator=g, dtype=DTYPE)) / n
        snapped = torch.tensor([space.snap(p) for p in points.tolist()], dtype=DTYPE)
        score = torch.pdist(snapped).min().item() if n > 1 else 0.0
        if score > best_score + 1e-12:
            best, best_score = snapped, score
    return best.tolist()


class GPFitError(RuntimeError):
    """Fitting a GP's hyperparameters failed. Callers fall back visibly (a random point, the
    observed recommendation) instead of proposing from a prior-only model."""


def fit_gp(x: torch.Tensor, y: torch.Tensor, seed: int):
    """A fitted ``SingleTaskGP`` on ``x`` (n x d in [0,1]) and ``y`` (n), without touching the
    caller's global RNG; raises :class:`GPFitError` when the fit fails."""
    with warnings.catch_warnings():  # gpytorch's import calls torch.jit.script (a FutureWarning nobody can act on)
        warnings.simplefilter("ignore", FutureWarning)
        # botorch and gpytorch cost ~0.7 s of start-up that only a BO step needs (every command loads the search)
        from botorch.exceptions.errors import ModelFittingError
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood
        from linear_operator.utils.errors import NotPSDError

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SingleTaskGP(x, y.unsqueeze(-1), outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(model.likelihood, model)
        try:
            fit_gpytorch_mll(mll)
        except (ModelFittingError, NotPSDError, RuntimeError) as error:
            first = (str(error).strip().splitlines() or [""])[0]
            raise GPFitError(f"{type(error).__name__}: {first}"[:200]) from error
    model.eval()
    return model


def posterior(model, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        post = model.posterior(x)
        return post.mean.squeeze(-1), post.variance.clamp_min(1e-12).sqrt().squeeze(-1)


def bilog(v: torch.Tensor) -> torch.Tensor:
    """``sign(v) log(1 + |v|)``: monotone, identity-like near 0, compresses large values."""
    return torch.sign(v) * torch.log1p(v.abs())


def bilog_inverse(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`bilog`."""
    return torch.sign(z) * torch.expm1(z.abs())


def log_ei(best: float, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``log E[max(0, best - Y)]`` for ``Y ~ N(mean, std^2)``, stable far into the tail."""
    std = std.clamp_min(1e-12)
    z = (best - mean) / std
    h = torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi) + z * torch.special.ndtr(z)
    # For z << 0, h(z) ~ phi(z) / z^2: use the asymptote where h underflows or cancels.
    tail = -0.5 * z * z - 0.5 * math.log(2 * math.pi) - 2 * torch.log(z.abs().clamp_min(1e-12))
    log_h = torch.where(z > -6, torch.log(h.clamp_min(1e-300)), tail)
    return log_h + torch.log(std)


def candidates(space: Space, incumbent: Sequence[float] | None, seed: int, step: int) -> torch.Tensor:
    """Quasi-random points over the cube plus Gaussian perturbations around the incumbent."""
    n_global = 2048 if space.dim <= 2 else 1024 * min(space.dim, 6)
    parts = [sobol(n_global, space.dim, step_seed(seed, step, 1))]
    if incumbent is not None:
        g = generator(seed, step, 2)
        center = torch.tensor(list(incumbent), dtype=DTYPE)
        for scale in (0.003, 0.01, 0.03, 0.1, 0.3):
            parts.append((center + scale * torch.randn(128, space.dim, generator=g, dtype=DTYPE)).clamp(0, 1))
    return space.snap_many(torch.cat(parts))


def drop_near(space: Space, cand: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Candidates that are not (near-)duplicates of an evaluated point."""
    if len(x) == 0 or len(cand) == 0:
        return cand
    tol = torch.tensor([1e-9 if space.discrete(j) else DUPLICATE_TOL for j in range(space.dim)], dtype=DTYPE)
    close = ((cand.unsqueeze(1) - x.unsqueeze(0)).abs() <= tol).all(-1).any(-1)
    return cand[~close]


def propose(
    space: Space,
    x: list[list[float]],
    constraint_values: list[list[float]],
    uppers: list[float],
    losses: list[float | None],
    feasible: list[bool],
    cheap_loss: Callable[[list[float]], float] | None,
    seed: int,
    step: int,
) -> list[float]:
    """The next unit point by constrained EI.

    ``x``: evaluated unit points; ``constraint_values[j][i]``: constraint ``j`` at point ``i``
    (finite; failed evaluations already imputed as clearly infeasible); ``losses``: objective
    values oriented so that lower is better (None where unknown); ``feasible``: observed
    feasibility; ``cheap_loss``: the objective as a function of a unit point, if cheap.
    """
    train_x = torch.tensor(x, dtype=DTYPE)
    best_index = min((i for i in range(len(x)) if feasible[i] and losses[i] is not None),
                     key=lambda i: losses[i], default=None)
    incumbent = x[best_index] if best_index is not None else None
    cand = drop_near(space, candidates(space, incumbent, seed, step), train_x)
    if len(cand) == 0:  # everything is (nearly) evaluated already: any fresh random point
        g = generator(seed, step, 3)
        return space.snap(torch.rand(space.dim, generator=g, dtype=DTYPE).tolist())

    log_pof = torch.zeros(len(cand), dtype=DTYPE)
    for mean, std in constraint_posteriors(train_x, constraint_values, uppers, cand, seed, step):
        log_pof = log_pof + torch.special.log_ndtr(-mean / std)

    best = losses[best_index] if best_index is not None else None
    if cheap_loss is not None:
        loss_mean = cheap_estimate(space, cheap_loss, cand, train_x, seed, step)
        loss_std = None
    else:
        known = [i for i, v in enumerate(losses) if v is not None]
        if len(known) >= 2:
            gp = fit_gp(train_x[known], torch.tensor([losses[i] for i in known], dtype=DTYPE), step_seed(seed, step, 5))
            loss_mean, loss_std = posterior(gp, cand)
        else:  # nothing to model the objective with yet: only feasibility matters
            loss_mean, loss_std = torch.zeros(len(cand), dtype=DTYPE), torch.ones(len(cand), dtype=DTYPE)

    score = acquisition(log_pof, loss_mean, loss_std, best)
    if cheap_loss is not None:
        # The estimate ranked the candidates; compute the objective exactly for the best few.
        top = torch.argsort(score, descending=True, stable=True)[:EXACT_TOP]
        exact = torch.tensor([cheap_loss(p) for p in cand[top].tolist()], dtype=DTYPE)
        top_score = acquisition(log_pof[top], exact, None, best)
        return cand[top[_argmax(top_score)]].tolist()
    return cand[_argmax(score)].tolist()


def constraint_posteriors(train_x: torch.Tensor, constraint_values: list[list[float]], uppers: list[float],
                          at: torch.Tensor, seed: int, step: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per constraint ``j``: posterior ``(mean, std)`` at ``at`` of the GP on
    ``bilog(value - upper_j)`` (feasible where negative), seeded from ``(seed, step, j)``."""
    models = []
    for j, upper in enumerate(uppers):
        y = bilog(torch.tensor(constraint_values[j], dtype=DTYPE) - upper)
        models.append(posterior(fit_gp(train_x, y, step_seed(seed, step, 10 + j)), at))
    return models


def model_feasible(x: list[list[float]], constraint_values: list[list[float]], uppers: list[float],
                   seed: int, step: int) -> list[bool]:
    """Per evaluated point: does every constraint GP's posterior mean there satisfy the bound?"""
    train_x = torch.tensor(x, dtype=DTYPE)
    ok = torch.ones(len(x), dtype=torch.bool)
    for mean, _ in constraint_posteriors(train_x, constraint_values, uppers, train_x, seed, step):
        ok &= mean <= 0
    return ok.tolist()


def _argmax(score: torch.Tensor) -> int:
    """First index of the maximum (deterministic on ties)."""
    return int(torch.nonzero(score == score.max())[0, 0])


def acquisition(log_pof: torch.Tensor, loss_mean: torch.Tensor, loss_std: torch.Tensor | None,
                best: float | None) -> torch.Tensor:
    """log constrained EI (``loss_std`` None: exact improvement); see the module docstring for
    the phase before any feasible point and the no-improvement fallback."""
    if best is None:
        near = log_pof >= log_pof.max() + math.log(0.9)
        return torch.where(near, -loss_mean, torch.full_like(loss_mean, -math.inf))
    if loss_std is None:
        log_improvement = torch.log((best - loss_mean).clamp_min(0))
    else:
        log_improvement = log_ei(best, loss_mean, loss_std)
    score = log_improvement + log_pof
    if not bool(torch.isfinite(score).any()):
        # Nothing can improve on the incumbent: sharpen the feasibility boundary instead.
        pof = log_pof.exp()
        return pof * (1 - pof)
    return score


def cheap_estimate(space: Space, cheap_loss: Callable[[list[float]], float], cand: torch.Tensor,
                   x: torch.Tensor, seed: int, step: int) -> torch.Tensor:
    """A GP through exact values at a fixed anchor set plus the evaluated points: computing a
    cheap objective (a model copy each) for thousands of candidates would still be slow."""
    if space.dim == 1:
        anchors = torch.linspace(0, 1, 9, dtype=DTYPE).unsqueeze(-1)
    else:
        anchors = sobol(8 * space.dim + 8, space.dim, step_seed(seed, 0, 4))
    points = torch.cat([space.snap_many(anchors), x])
    values = torch.tensor([cheap_loss(p) for p in points.tolist()], dtype=DTYPE)
    mean, _ = posterior(fit_gp(points, values, step_seed(seed, step, 6)), cand)
    return mean


def constraint_band(x: Sequence[float], values: Sequence[float], upper: float, at: Sequence[float],
                    seed: int = 0) -> tuple[list[float], list[float], list[float]] | None:
    """The search's constraint model for one knob, for plotting: ``(mean, low, high)`` at ``at``.

    ``x`` and ``at`` are knob values in the unit interval, ``values`` the measured constraint
    values; the model is the GP on ``bilog(value - upper)`` the search uses, and the band is its
    posterior mean +- 2 sigma mapped back to metric units. None with fewer than 3 points.
    """
    if len(x) < 3:
        return None
    train_x = torch.tensor(list(x), dtype=DTYPE).unsqueeze(-1)
    train_y = bilog(torch.tensor(list(values), dtype=DTYPE) - upper)
    try:
        mean, std = posterior(fit_gp(train_x, train_y, seed), torch.tensor(list(at), dtype=DTYPE).unsqueeze(-1))
    except GPFitError:  # no band rather than a prior-only one
        return None

    def back(z: torch.Tensor) -> list[float]:
        return (bilog_inverse(z) + upper).tolist()

    return back(mean), back(mean - 2 * std), back(mean + 2 * std)
