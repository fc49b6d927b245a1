"""Batch constrained BO: the next point given the finished evaluations *and* the pending ones.

With ``search.workers: N > 1`` up to N evaluations run at once; when one finishes the driver
asks for the next point while the others are still running. Proposing it with the sequential
acquisition (``bo.propose``) would mostly return the point that is already running, so the
pending points enter the acquisition. We use what botorch provides for that:

* **qLogNoisyExpectedImprovement with ``X_pending``** (Ament et al., NeurIPS 2023; botorch's
  *incremental* q-NEI: the pending points join the baseline, so the value of a candidate is its
  expected improvement over the best of the finished *and* the pending points, with the pending
  points' constraint values drawn jointly with the candidate's from the GP posterior, i.e.
  integrated over fantasies by quasi-Monte Carlo). A candidate close to a pending point gains
  almost nothing, which spreads the batch without a hand-made penalty.
* **Constraints** are botorch's ``constraints=`` callables on the samples of the same constraint
  GPs as ``bo.py`` (one ``SingleTaskGP`` per constraint on ``bilog(value - upper)``, feasible
  where negative), gathered in a ``ModelListGP``; botorch smooths the indicator (``eta``).
* **Before anything feasible has finished** (the phase where ``bo.py`` maximizes the probability
  of feasibility), the batch analogue: ``qLogProbabilityOfFeasibility`` with ``X_pending``, i.e.
  the probability that *at least one* of the pending points and the candidate is feasible. As in
  ``bo.py`` every candidate within 10% of the best such probability is acceptable; among them we
  take the one with the best qLogNEI (whose incumbent, in posterior samples where no point is
  feasible, is botorch's lower bound of the objective: improvement then means "feasible, and
  the cheaper the better"). The second step matters when a pending point is already likely
  feasible: every candidate then keeps the batch's probability near 1, and ranking them by the
  raw objective, as ``bo.py``'s tie-break does, would pick the cheapest, surely infeasible, end of
  the range; qLogNEI instead asks for a point likely feasible *and* cheaper than that pending one.
* **A cheap objective** (footprint, FLOPs: a function of the knob values) is not modeled: it
  enters as a ``GenericMCObjective(lambda samples, X: -loss(X))``, exact at the evaluated, the
  pending and the top candidates (a lookup table), and the same anchor GP as ``bo.py`` elsewhere
  (only to rank thousands of candidates). An expensive objective gets its own GP, first in the
  model list.
* **Acquisition optimizer**: the same snapped candidate set as ``bo.py`` (Sobol + perturbations of
  the incumbent; integer/choice knobs stay valid), minus the (near-)duplicates of evaluated *and*
  pending points; the top 16 are re-scored with exact objective values.
* **Determinism**: the GP fits, the QMC base samples (``SobolQMCNormalSampler(seed=...)``), the
  candidate set and botorch's internal draws (baseline pruning, the objective's lower bound) are
  seeded from ``(seed, step)`` inside a forked RNG, so a proposal is a function of
  ``(seed, step, finished evaluations, pending points)``.

With nothing pending the driver calls ``bo.propose`` unchanged, so ``workers: 1`` (and every
proposal a parallel search makes while nothing else runs) is exactly the sequential algorithm.
A GP that cannot be fitted raises :class:`~condensa.search.bo.GPFitError`, as in ``bo.py``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import torch

from . import bo
from .space import Space

DTYPE = bo.DTYPE
#: quasi-Monte Carlo samples of the joint posterior per acquisition value
MC_SAMPLES = 256
#: candidates scored per batched acquisition call (memory: chunk x (n + pending + 1) points x samples)
CHUNK = 512
#: before anything is feasible, candidates within this factor of the best probability are acceptable (as bo.py)
POF_BAND = 0.9


def propose_batch(
    space: Space,
    x: list[list[float]],
    constraint_values: list[list[float]],
    uppers: list[float],
    losses: list[float | None],
    feasible: list[bool],
    cheap_loss: Callable[[list[float]], float] | None,
    seed: int,
    step: int,
    pending: Sequence[Sequence[float]],
) -> list[float]:
    """The next unit point given evaluated points ``x`` (arguments as in :func:`bo.propose`) and
    the unit points ``pending`` that are being evaluated now."""
    if not pending:
        return bo.propose(space, x, constraint_values, uppers, losses, feasible, cheap_loss, seed, step)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        # botorch's advice to use qLogPF when no sample has a feasible baseline point: the
        # infeasible phase below does exactly that; qLogNEI only ranks inside its band.
        warnings.filterwarnings("ignore", message="When all training points are infeasible")
        torch.manual_seed(bo.step_seed(seed, step, 21))
        return _propose(space, x, constraint_values, uppers, losses, feasible, cheap_loss, seed, step, pending)


def _propose(space, x, constraint_values, uppers, losses, feasible, cheap_loss, seed, step, pending):
    with warnings.catch_warnings():  # gpytorch's import calls torch.jit.script (a FutureWarning nobody can act on)
        warnings.simplefilter("ignore", FutureWarning)
        # botorch costs ~0.7 s of start-up that only a BO step needs
        from botorch.acquisition.logei import qLogNoisyExpectedImprovement, qLogProbabilityOfFeasibility
        from botorch.acquisition.objective import GenericMCObjective
        from botorch.models import ModelListGP
        from botorch.sampling import SobolQMCNormalSampler

    train_x = torch.tensor(x, dtype=DTYPE)
    x_pending = torch.tensor([list(p) for p in pending], dtype=DTYPE)
    best_index = min((i for i in range(len(x)) if feasible[i] and losses[i] is not None),
                     key=lambda i: losses[i], default=None)
    incumbent = x[best_index] if best_index is not None else None
    taken = torch.cat([train_x, x_pending])
    cand = bo.drop_near(space, bo.candidates(space, incumbent, seed, step), taken)
    if len(cand) == 0:  # everything is (nearly) evaluated or running: any fresh random point
        g = bo.generator(seed, step, 3)
        return space.snap(torch.rand(space.dim, generator=g, dtype=DTYPE).tolist())

    models = []
    if cheap_loss is None:
        known = [i for i, v in enumerate(losses) if v is not None]
        if len(known) >= 2:
            models.append(bo.fit_gp(train_x[known], torch.tensor([losses[i] for i in known], dtype=DTYPE),
                                    bo.step_seed(seed, step, 5)))
        else:  # nothing to model the objective with: a flat objective, only feasibility matters
            cheap_loss = _zero
    offset = len(models)
    for j, upper in enumerate(uppers):
        y = bo.bilog(torch.tensor(constraint_values[j], dtype=DTYPE) - upper)
        models.append(bo.fit_gp(train_x, y, bo.step_seed(seed, step, 10 + j)))
    if not models:  # a cheap objective and no constraint: nothing uncertain, take the best candidate
        return _best_cheap(space, cheap_loss, cand, seed, step)

    model = ModelListGP(*models)
    table = None
    if cheap_loss is not None:
        table = _Table(_surrogate(space, cheap_loss, taken, seed, step))
        table.add(taken, cheap_loss)
        objective = GenericMCObjective(lambda samples, X: -table(X).expand(samples.shape[:-1]))
    else:
        objective = GenericMCObjective(lambda samples, X: -samples[..., 0])
    constraints = [(lambda samples, k=offset + j: samples[..., k]) for j in range(len(uppers))] or None
    nei = qLogNoisyExpectedImprovement(
        model, X_baseline=train_x,
        sampler=SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=bo.step_seed(seed, step, 22)),
        objective=objective, constraints=constraints, X_pending=x_pending, prune_baseline=True, cache_root=False,
    )

    if best_index is None and constraints:
        # Nothing feasible has finished: maximize the probability that the batch finds a feasible
        # point, then rank the acceptable candidates by qLogNEI (module docstring).
        pof = qLogProbabilityOfFeasibility(
            model, constraints=constraints, X_pending=x_pending,
            sampler=SobolQMCNormalSampler(sample_shape=torch.Size([MC_SAMPLES]), seed=bo.step_seed(seed, step, 23)),
        )
        log_pof = _score(pof, cand)
        band = log_pof >= log_pof.max() + math.log(POF_BAND)
        cand, log_pof = cand[band], log_pof[band]

    score = _score(nei, cand)
    if table is not None:
        # The surrogate ranked the candidates; compute the objective exactly for the best few.
        top = torch.argsort(score, descending=True, stable=True)[: bo.EXACT_TOP]
        table.add(cand[top], cheap_loss)
        cand, score = cand[top], _score(nei, cand[top])
        if best_index is None and constraints:
            log_pof = log_pof[top]
    if not bool(torch.isfinite(score).any()):  # no candidate can improve: the likeliest feasible one
        if best_index is None and constraints:
            return cand[bo._argmax(log_pof)].tolist()
        return cand[0].tolist()
    return cand[bo._argmax(score)].tolist()


def _zero(unit: list[float]) -> float:
    return 0.0


def _score(acqf, cand: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        parts = [acqf(cand[i: i + CHUNK].unsqueeze(1)) for i in range(0, len(cand), CHUNK)]
    score = torch.cat(parts)
    return torch.where(torch.isfinite(score), score, torch.full_like(score, -torch.inf))


def _surrogate(space, cheap_loss, x, seed, step) -> Callable[[torch.Tensor], torch.Tensor]:
    """The ``bo.cheap_estimate`` GP (anchors + evaluated + pending points) as a function."""
    if space.dim == 1:
        anchors = torch.linspace(0, 1, 9, dtype=DTYPE).unsqueeze(-1)
    else:
        anchors = bo.sobol(8 * space.dim + 8, space.dim, bo.step_seed(seed, 0, 4))
    points = torch.cat([space.snap_many(anchors), x])
    values = torch.tensor([cheap_loss(p) for p in points.tolist()], dtype=DTYPE)
    gp = bo.fit_gp(points, values, bo.step_seed(seed, step, 6))

    def mean(at: torch.Tensor) -> torch.Tensor:
        return bo.posterior(gp, at)[0]

    return mean


class _Table:
    """Exact objective values at known unit points; the surrogate elsewhere."""

    def __init__(self, surrogate: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.surrogate = surrogate
        self.points = torch.empty(0, 0, dtype=DTYPE)
        self.values = torch.empty(0, dtype=DTYPE)

    def add(self, points: torch.Tensor, fn: Callable[[list[float]], float]) -> None:
        new = torch.tensor([fn(p) for p in points.tolist()], dtype=DTYPE)
        self.points = points.clone() if self.points.numel() == 0 else torch.cat([self.points, points])
        self.values = torch.cat([self.values, new])

    def __call__(self, X: torch.Tensor) -> torch.Tensor:
        flat = X.reshape(-1, X.shape[-1]).detach()
        out = torch.empty(len(flat), dtype=DTYPE)
        hit = torch.zeros(len(flat), dtype=torch.bool)
        if len(self.points):
            close = (flat.unsqueeze(1) - self.points.unsqueeze(0)).abs().amax(-1) <= 1e-12
            hit = close.any(-1)
            out[hit] = self.values[close[hit].float().argmax(-1)]
        if (~hit).any():
            out[~hit] = self.surrogate(flat[~hit])
        return out.reshape(X.shape[:-1])


def _best_cheap(space, cheap_loss, cand, seed, step) -> list[float]:
    surrogate = _surrogate(space, cheap_loss, cand[:0], seed, step)
    top = torch.argsort(surrogate(cand), stable=True)[: bo.EXACT_TOP]
    exact = torch.tensor([cheap_loss(p) for p in cand[top].tolist()], dtype=DTYPE)
    return cand[top[bo._argmax(-exact)]].tolist()
