"""``search``: find the knob values that optimize an objective under constraints.

The search sees only knob specs (``strategy.knobs()``), ``strategy.bind(values)`` and an
``evaluate`` callable that returns a metrics dict; it knows nothing about pruning. Every finished
evaluation goes to the journal before the next one starts, so a killed search resumes where it
stopped and, because every proposal is a deterministic function of (seed, step, history),
reproduces the trace of an uninterrupted run.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import ConfigError, EvaluationError, SearchError
from . import baselines, bo
from .journal import Journal
from .objectives import DIRECTIONS, Constraint, Objective
from .space import Space

SEARCH_METHODS = ("bo", "random", "grid", "bisection")
RECOMMEND = ("model", "observed")
#: how a proposal that replaced a failed model step starts
FALLBACK = "random fallback"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_settings(*, budget: Any = 10, method: Any = "bo", recommend: Any = "model", n_init: Any = None,
                   seed: Any = 0, direction: Any = "minimize", where: str = "search") -> None:
    """Validate search settings (the config's ``search`` section and :func:`search`'s arguments);
    raises :class:`ConfigError` naming ``where.field`` and what is allowed."""
    if not _is_int(budget) or budget < 1:
        raise ConfigError(f"{where}.budget: must be an integer >= 1, got {budget!r}")
    if method not in SEARCH_METHODS:
        raise ConfigError(f"{where}.method: must be one of {list(SEARCH_METHODS)}, got {method!r}")
    if recommend not in RECOMMEND:
        raise ConfigError(f"{where}.recommend: must be one of {list(RECOMMEND)}, got {recommend!r}")
    if n_init is not None and (not _is_int(n_init) or n_init < 1):
        raise ConfigError(f"{where}.n_init: must be an integer >= 1, got {n_init!r}")
    if not _is_int(seed):
        raise ConfigError(f"{where}.seed: must be an integer, got {seed!r}")
    if direction not in DIRECTIONS:
        raise ConfigError(f"{where}.direction: must be one of {list(DIRECTIONS)}, got {direction!r}")


@dataclass
class Evaluation:
    """One evaluated knob assignment (validation metrics).

    ``constraints[j]`` is the value of the ``j``-th constraint (inf for a failed evaluation);
    ``objective`` the objective value as measured (None when the evaluation failed);
    ``status`` is ``"ok"`` or ``"failed"`` (then ``message`` says why); ``resumed`` marks an
    evaluation loaded from the journal instead of run; ``proposal`` says how the point was chosen
    (``initial design``, ``bo``, a baseline's name, or a fallback and why).
    """

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
    resumed: bool = False
    proposal: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SearchResult:
    """What a search found. ``best_*`` is the best *observed* feasible evaluation (never a
    model prediction); when nothing is feasible, ``least_violating`` holds the evaluation that
    came closest and ``message`` says so."""

    best_knobs: dict[str, Any] | None
    best_metrics: dict[str, Any] | None
    feasible: bool
    evaluations: list[Evaluation] = field(default_factory=list)
    least_violating: dict[str, Any] | None = None
    message: str = ""
    #: indices of evaluations feasible as observed that the constraint model judged lucky noise
    set_aside: list[int] = field(default_factory=list)

    @property
    def samples(self) -> int:
        """Number of evaluations (run or loaded from the journal)."""
        return len(self.evaluations)

    @property
    def best(self) -> Evaluation | None:
        return next((e for e in self.evaluations if e.feasible and e.knobs == self.best_knobs), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "best_knobs": self.best_knobs, "best_metrics": self.best_metrics, "feasible": self.feasible,
            "samples": self.samples, "least_violating": self.least_violating, "message": self.message,
            "set_aside": list(self.set_aside),
            "evaluations": [e.to_dict() for e in self.evaluations],
        }


def _format_knobs(knobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in knobs.items())


def _violation(evaluation: Evaluation, constraints: Sequence[Constraint]) -> tuple[int, float]:
    """(number of violated constraints, sum of violations relative to their bounds)."""
    if evaluation.status != "ok":
        return (len(constraints) + 1, math.inf)
    excess = [max(0.0, v - c.upper) / max(abs(c.upper), 1e-6) for v, c in zip(evaluation.constraints, constraints)]
    return (sum(e > 0 for e in excess), sum(excess))


def summarize(evaluations: list[Evaluation], objective: Objective, constraints: Sequence[Constraint],
              trusted: Sequence[bool] | None = None) -> SearchResult:
    """The result of a list of evaluations: best feasible (first one on ties), or the least violating.

    ``trusted[i]`` (optional) says whether the constraint model agrees that evaluation ``i`` is
    feasible; observed-feasible points it does not trust are passed over unless none is left."""
    feasible = [(e, trusted is None or trusted[i]) for i, e in enumerate(evaluations) if e.feasible and e.objective is not None]
    if feasible:
        believed = [e for e, ok in feasible if ok]
        kept = believed or [e for e, _ in feasible]  # the model trusts none: fall back to what was measured
        set_aside = [e.index for e, ok in feasible if not ok] if believed else []
        best = min(kept, key=lambda e: objective.sign * e.objective)
        note = ""
        if set_aside:
            note = f"; set aside as probably noise (observed feasible, modeled infeasible): #{', #'.join(map(str, set_aside))}"
        return SearchResult(dict(best.knobs), dict(best.metrics), True, evaluations,
                            message=f"best feasible: {_format_knobs(best.knobs)} ({objective.metric} = {best.objective:.6g}) "
                                    f"after {len(evaluations)} evaluations{note}", set_aside=set_aside)
    result = SearchResult(None, None, False, evaluations)
    ok = [e for e in evaluations if e.status == "ok"]
    if ok:
        closest = min(ok, key=lambda e: _violation(e, constraints))
        result.least_violating = {"index": closest.index, "knobs": dict(closest.knobs), "metrics": dict(closest.metrics),
                                  "constraints": list(closest.constraints), "objective": closest.objective}
        broken = ", ".join(f"{c.metric} {v:.4g} > {c.upper:g}" for v, c in zip(closest.constraints, constraints) if v > c.upper)
        if not broken:
            broken = f"{objective.metric} = {closest.objective}"
        result.message = (f"no feasible point found in {len(evaluations)} evaluations; least violating: "
                          f"{_format_knobs(closest.knobs)} ({broken})")
    elif evaluations:
        result.message = f"no feasible point found: all {len(evaluations)} evaluations failed ({evaluations[-1].message})"
    else:
        result.message = "no evaluations"
    return result


def default_n_init(dim: int) -> int:
    """Initial design size before the budget cap: 3 for one knob, 2d+1 for d knobs."""
    return 3 if dim == 1 else 2 * dim + 1


def search(
    strategy: Any,
    evaluate: Callable[[Any], Mapping[str, Any]],
    objective: Objective | str = "footprint_bytes",
    constraints: Sequence[Constraint] = (),
    budget: int = 10,
    seed: int = 0,
    method: str = "bo",
    journal: Any = None,
    fingerprint: Mapping[str, Any] | None = None,
    n_init: int | None = None,
    on_evaluation: Callable[[Evaluation, SearchResult], None] | None = None,
    recommend: str = "model",
) -> SearchResult:
    """Search ``strategy``'s open knobs; see :mod:`condensa.search.bo` for the algorithm.

    ``evaluate(bound_strategy)`` returns validation metrics; an :class:`EvaluationError` it raises
    (e.g. recovery diverged) is recorded as a failed evaluation (infeasible) and the search goes on. ``budget`` is the
    total number of evaluations, the initial design included. ``method`` is ``"bo"`` or a
    baseline: ``"random"``, ``"grid"``, ``"bisection"`` (one knob, monotone problems).
    With ``journal`` (a path, or a :class:`Journal`) every finished evaluation is appended to that file, and a later
    call with the same journal and config (``fingerprint`` plus the search settings, budget
    excluded) loads the finished evaluations and continues to the budget. ``on_evaluation
    (evaluation, result_so_far)`` is called after each evaluation, also for those loaded from the
    journal (``evaluation.resumed``), so a progress display starts where the search stands.
    ``recommend="model"`` (BO only) passes over measured-feasible points that the constraint GPs
    judge over the bound (lucky noise); use ``"observed"`` when ``evaluate`` is noiseless.
    """
    if isinstance(objective, str):
        objective = Objective(objective)
    if not isinstance(objective, Objective):
        raise ConfigError(f"search.objective: expected an Objective or a metric name, got {objective!r}")
    check_settings(budget=budget, method=method, recommend=recommend, n_init=n_init, seed=seed)
    constraints = list(constraints)
    for c in constraints:
        if not isinstance(c, Constraint):
            raise ConfigError(f"search.constraints: expected Constraint objects, got {c!r}")
        if isinstance(c.upper, bool) or not isinstance(c.upper, (int, float)) or not math.isfinite(c.upper):
            raise ConfigError(f"search.constraints: the bound of '{c.metric}' must be a finite number, got {c.upper!r}")
    knobs = strategy.knobs()
    if not knobs:
        raise SearchError("the strategy has no open knobs to search")
    space = Space(knobs)
    if method == "bisection" and space.dim != 1:
        raise SearchError(f"bisection searches exactly one knob; this strategy has {space.dim}: {', '.join(space.names)}")

    cheap_cache: dict[tuple, float] = {}

    def cheap_loss(unit: list[float]) -> float:
        values = space.decode(unit)
        key = space.key(values)
        if key not in cheap_cache:
            cheap_cache[key] = objective.sign * float(objective.cheap(values))
        return cheap_cache[key]

    evaluations: list[Evaluation] = []
    store = journal if isinstance(journal, Journal) or journal is None else Journal(journal)
    if store is not None:
        settings = {"objective": objective.describe(), "constraints": [c.describe() for c in constraints],
                    "method": method, "seed": seed, "n_init": n_init}
        rows = store.start({**dict(fingerprint or {}), "search": settings}, space.describe())
        for row in rows[:budget]:
            row = {**row, "knobs": space.restore(row["knobs"]), "resumed": True}
            row.setdefault("message", "")
            evaluations.append(Evaluation(**{k: v for k, v in row.items() if k in Evaluation.__dataclass_fields__}))
        if on_evaluation is not None:
            for i in range(len(evaluations)):
                on_evaluation(evaluations[i], summarize(evaluations[: i + 1], objective, constraints))

    n_full = n_init if n_init is not None else default_n_init(space.dim)
    n_design = min(n_full, budget if n_init is not None else max(1, budget - 1))  # default: >= 1 model-guided step
    # The design is drawn at its uncapped size and truncated, so raising the budget later keeps it.
    design = bo.initial_design(space, n_full, seed)[:n_design] if method == "bo" else []
    better_end = _better_end(space, objective, cheap_loss) if method == "bisection" else 0.0
    size = space.size()

    for step in range(len(evaluations), budget):
        if size is not None and len({space.key(e.knobs) for e in evaluations}) >= size:
            break  # every possible knob assignment has been evaluated
        unit, proposal = _next_point(method, space, evaluations, constraints, objective, cheap_loss, design, better_end,
                                     seed, step, budget)
        evaluation = _run_one(strategy, space.decode(unit), evaluate, objective, constraints, step, method)
        evaluation.proposal = proposal
        evaluations.append(evaluation)
        if store is not None:
            store.append(evaluation.to_dict())
        if on_evaluation is not None:
            on_evaluation(evaluation, summarize(evaluations, objective, constraints))
    trusted, note = None, ""
    if method == "bo" and recommend == "model" and constraints and sum(e.status == "ok" for e in evaluations) >= 3:
        x = [space.encode(e.knobs) for e in evaluations]
        try:
            trusted = bo.model_feasible(x, _constraint_columns(evaluations, constraints), [c.upper for c in constraints],
                                        seed, len(evaluations))
        except bo.GPFitError as error:
            note = f"; the constraint model could not be fitted ({error}), so the best observed feasible point is recommended"
    result = summarize(evaluations, objective, constraints, trusted)
    result.message += note
    return result


def _better_end(space: Space, objective: Objective, cheap_loss) -> float:
    """For bisection: the end of the knob's range with the better objective."""
    if objective.cheap is not None:
        return 0.0 if cheap_loss([0.0]) <= cheap_loss([1.0]) else 1.0
    return 0.0 if objective.direction == "minimize" else 1.0


def _next_point(method, space, evaluations, constraints, objective, cheap_loss, design, better_end, seed, step,
                budget) -> tuple[list[float], str]:
    """The next unit point and how it was chosen (recorded in the journal as ``proposal``)."""
    x = [space.encode(e.knobs) for e in evaluations]
    if method == "grid":
        return baselines.grid_point(space, step, budget), "grid"
    if method == "random":
        return baselines.random_point(space, seed, step), "random"
    if method == "bisection":
        return baselines.bisection_point(space, x, [e.feasible for e in evaluations], better_end), "bisection"
    if step < len(design):
        return design[step], "initial design"
    if sum(e.status == "ok" for e in evaluations) < 2:  # too little to model: keep exploring
        return baselines.random_point(space, seed, step), "random: fewer than 2 successful evaluations to model"
    columns = _constraint_columns(evaluations, constraints)
    if objective.cheap is not None:
        losses = [cheap_loss(u) for u in x]
    else:
        losses = [objective.sign * e.objective if e.status == "ok" and e.objective is not None and math.isfinite(e.objective)
                  else None for e in evaluations]
    try:
        return bo.propose(space, x, columns, [c.upper for c in constraints], losses, [e.feasible for e in evaluations],
                          cheap_loss if objective.cheap is not None else None, seed, step), "bo"
    except bo.GPFitError as error:  # never propose from a prior-only model: say so and explore
        return baselines.random_point(space, seed, step), f"{FALLBACK}: the GP fit failed ({error})"


def _constraint_columns(evaluations: list[Evaluation], constraints: Sequence[Constraint]) -> list[list[float]]:
    """``columns[j][i]``: constraint ``j`` at evaluation ``i``, finite for the GPs: failed (or
    non-finite) evaluations count as clearly infeasible, worse than anything observed."""
    columns = []
    ok = [e for e in evaluations if e.status == "ok"]
    for j, constraint in enumerate(constraints):
        observed = [e.constraints[j] for e in ok if math.isfinite(e.constraints[j])]
        spread = max(observed) - min(observed) if len(observed) > 1 else 1.0
        worst = max(observed + [constraint.upper]) + max(spread, 1.0)
        columns.append([e.constraints[j] if e.status == "ok" and math.isfinite(e.constraints[j]) else worst for e in evaluations])
    return columns


def _run_one(strategy, values, evaluate, objective, constraints, step, method) -> Evaluation:
    start = time.perf_counter()
    try:
        metrics = evaluate(strategy.bind(values))
    except EvaluationError as error:
        return Evaluation(step, values, {}, [math.inf] * len(constraints), None, False, "failed",
                          " ".join(str(error).split()), time.perf_counter() - start, method)
    seconds = time.perf_counter() - start
    if not isinstance(metrics, Mapping):
        raise SearchError(f"evaluate must return a dict of metrics, got {type(metrics).__name__}")
    metrics = dict(metrics)
    constraint_values = [c.value(metrics) for c in constraints]
    value = objective.value(metrics, values)
    feasible = all(v <= c.upper for v, c in zip(constraint_values, constraints)) and math.isfinite(value)
    return Evaluation(step, values, metrics, constraint_values, value, feasible, "ok", "", seconds, method)
