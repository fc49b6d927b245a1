"""``search``: find the knob values that optimize an objective under constraints.

The search sees only knob specs and an ``evaluate`` callable that returns a metrics dict; it knows
nothing about pruning. Every finished evaluation goes to the journal before the next starts.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from ..errors import ConfigError, RecoveryError, SearchError
from . import baselines, bo
from .journal import Journal
from .objectives import Constraint, Objective
from .space import Space

METHODS = ("bo", "random", "grid", "bisection")


@dataclass
class Evaluation:
    """One evaluated knob assignment (validation metrics)."""

    index: int
    knobs: dict[str, Any]
    metrics: dict[str, Any]
    constraints: list[float]
    objective: float | None
    feasible: bool
    status: str = "ok"
    message: str = ""
    seconds: float = 0.0
    method: str = "bo"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    best_knobs: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    feasible: bool
    evaluations: list[Evaluation] = field(default_factory=list)
    least_violating: dict[str, Any] | None = None
    message: str = ""

    @property
    def samples(self) -> int:
        return len(self.evaluations)

    @property
    def best(self) -> Evaluation | None:
        return next((e for e in self.evaluations if e.knobs == self.best_knobs and e.feasible), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_knobs": self.best_knobs, "best_metrics": self.best_metrics, "feasible": self.feasible,
            "samples": self.samples, "least_violating": self.least_violating, "message": self.message,
            "evaluations": [e.to_dict() for e in self.evaluations],
        }


def _violation(evaluation: Evaluation, constraints: Sequence[Constraint]) -> float:
    if evaluation.status != "ok":
        return math.inf
    return sum(max(0.0, v - c.upper) / max(abs(c.upper), 1e-9) for v, c in zip(evaluation.constraints, constraints))


def _summarize(evaluations: list[Evaluation], objective: Objective, constraints: Sequence[Constraint]) -> SearchResult:
    feasible = [e for e in evaluations if e.feasible and e.objective is not None]
    if feasible:
        best = min(feasible, key=lambda e: objective.sign * e.objective)
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in best.knobs.items())
        return SearchResult(dict(best.knobs), dict(best.metrics), True, evaluations,
                            message=f"best feasible: {knobs} ({objective.metric} = {best.objective:.6g}) after {len(evaluations)} evaluations")
    result = SearchResult(None, None, False, evaluations)
    ok = [e for e in evaluations if e.status == "ok"]
    if ok:
        worst = min(ok, key=lambda e: _violation(e, constraints))
        result.least_violating = {"knobs": worst.knobs, "metrics": worst.metrics, "constraints": worst.constraints}
        broken = ", ".join(f"{c.metric} {v:.3g} > {c.upper:g}" for v, c in zip(worst.constraints, constraints) if v > c.upper)
        knobs = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in worst.knobs.items())
        result.message = f"no feasible point found in {len(evaluations)} evaluations; least violating: {knobs} ({broken})"
    else:
        result.message = f"no feasible point found: all {len(evaluations)} evaluations failed"
    return result


def default_n_init(dim: int, budget: int) -> int:
    return max(1, min(budget - 1 if budget > 1 else 1, 3 if dim == 1 else 2 * dim + 1))


def search(
    strategy: Any,
    evaluate: Callable[[Any], dict[str, Any]],
    objective: Objective | str = "footprint_bytes",
    constraints: Sequence[Constraint] = (),
    budget: int = 10,
    seed: int = 0,
    method: str = "bo",
    journal: str | None = None,
    fingerprint: dict[str, Any] | None = None,
    n_init: int | None = None,
    on_evaluation: Callable[[Evaluation, SearchResult], None] | None = None,
) -> SearchResult:
    """Search ``strategy``'s open knobs; see :mod:`condensa.search.bo` for the algorithm.

    ``evaluate(bound_strategy)`` returns validation metrics; a :class:`RecoveryError` it raises
    is recorded as a failed evaluation and the search goes on. With ``journal`` every finished
    evaluation is appended to that file, and a later call with the same journal resumes.
    """
    if isinstance(objective, str):
        from .objectives import objective as make_objective

        objective = make_objective(objective)
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ConfigError(f"search.budget: must be an integer >= 1, got {budget!r}")
    if method not in METHODS:
        raise ConfigError(f"search.method: must be one of {list(METHODS)}, got {method!r}")
    knobs = strategy.knobs()
    if not knobs:
        raise SearchError("the strategy has no open knobs to search")
    space = Space(knobs)
    if method == "bisection" and space.dim != 1:
        raise SearchError(f"bisection searches exactly one knob; this strategy has {space.dim}: {space.names}")
    constraints = list(constraints)
    requested_n_init = n_init
    n_init = default_n_init(space.dim, budget) if n_init is None else max(1, min(n_init, budget))

    cheap_cache: dict[tuple, float] = {}

    def cheap_loss(unit: list[float]) -> float:
        values = space.decode(unit)
        key = space.key(values)
        if key not in cheap_cache:
            cheap_cache[key] = objective.sign * float(objective.cheap(values))
        return cheap_cache[key]

    store = Journal(journal) if journal else None
    evaluations: list[Evaluation] = []
    if store is not None:
        space_desc = space.describe()
        settings = {"objective": objective.describe(), "constraints": [c.describe() for c in constraints],
                    "method": method, "seed": seed, "n_init": requested_n_init}
        rows = store.start({**(fingerprint or {}), "search": settings}, space_desc)
        evaluations = [Evaluation(**row) for row in rows][:budget]

    design = bo.initial_design(space, n_init, seed) if method == "bo" else []
    better_end = 0.0
    if method == "bisection":
        if objective.cheap is not None:
            better_end = 0.0 if cheap_loss([0.0]) <= cheap_loss([1.0]) else 1.0
        else:
            better_end = 0.0 if objective.direction == "minimize" else 1.0

    for step in range(len(evaluations), budget):
        seen = {space.key(e.knobs) for e in evaluations}
        ok = [e for e in evaluations if e.status == "ok"]
        x = [space.encode(e.knobs) for e in evaluations]
        feasible = [e.feasible for e in evaluations]
        if method == "grid":
            unit = baselines.grid_point(space, step, budget)
        elif method == "random":
            unit = baselines.random_point(space, seed, step)
        elif method == "bisection":
            unit = baselines.bisection_point(space, x, feasible, better_end)
        elif step < len(design) or len(ok) < 2:
            unit = design[step] if step < len(design) else baselines.random_point(space, seed, step)
        else:
            unit = _propose(space, evaluations, constraints, objective, cheap_loss if objective.cheap else None, seen, seed, step)
        values = space.decode(unit)
        evaluation = _run_one(strategy, values, evaluate, objective, constraints, step, method)
        evaluations.append(evaluation)
        if store is not None:
            store.append(evaluation.to_dict())
        if on_evaluation is not None:
            on_evaluation(evaluation, _summarize(evaluations, objective, constraints))
    return _summarize(evaluations, objective, constraints)


def _propose(space, evaluations, constraints, objective, cheap_loss, seen, seed, step) -> list[float]:
    ok = [e for e in evaluations if e.status == "ok"]
    # Failed evaluations count as clearly infeasible: worse than anything observed.
    columns = []
    for j, constraint in enumerate(constraints):
        observed = [e.constraints[j] for e in ok if math.isfinite(e.constraints[j])]
        worst = max(observed + [constraint.upper]) + (max(observed) - min(observed) if len(observed) > 1 else 1.0)
        columns.append([e.constraints[j] if e.status == "ok" and math.isfinite(e.constraints[j]) else worst for e in evaluations])
    losses = [objective.sign * e.objective if e.objective is not None and e.status == "ok" else None for e in evaluations]
    if cheap_loss is not None:
        losses = [cheap_loss(space.encode(e.knobs)) for e in evaluations]
    x = [space.encode(e.knobs) for e in evaluations]
    return bo.propose(space, x, columns, [c.upper for c in constraints], losses, [e.feasible for e in evaluations],
                      cheap_loss, seen, seed, step)


def _run_one(strategy, values, evaluate, objective, constraints, step, method) -> Evaluation:
    start = time.perf_counter()
    try:
        metrics = evaluate(strategy.bind(values))
    except RecoveryError as error:
        return Evaluation(step, values, {}, [math.inf] * len(constraints), None, False, "failed",
                          " ".join(str(error).split()), time.perf_counter() - start, method)
    seconds = time.perf_counter() - start
    constraint_values = [c.value(metrics) for c in constraints]
    value = objective.value(metrics, values)
    feasible = all(v <= c.upper for v, c in zip(constraint_values, constraints)) and math.isfinite(value)
    return Evaluation(step, values, metrics, constraint_values, value, feasible, "ok", "", seconds, method)
