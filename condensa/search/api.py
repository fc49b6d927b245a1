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
                   seed: Any = 0, direction: Any = "minimize", workers: Any = 1, ray_address: Any = None,
                   resources_per_evaluation: Any = None, ranks_per_evaluation: Any = 1, where: str = "search") -> None:
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
    _check_parallel(workers, method, ray_address, resources_per_evaluation, ranks_per_evaluation, where)


def _check_parallel(workers, method, ray_address, resources, ranks, where: str) -> None:
    """The parallel-search settings (``search.workers`` and the Ray keys; see :mod:`.parallel`)."""
    if not _is_int(workers) or workers < 1:
        raise ConfigError(f"{where}.workers: must be an integer >= 1, got {workers!r}")
    if workers > 1 and method == "bisection":
        raise ConfigError(f"{where}.workers: bisection is sequential (each point depends on the previous one); "
                          "use workers: 1, or method bo, random or grid")
    if ray_address is not None and (not isinstance(ray_address, str)
                                    or (ray_address != "auto" and ":" not in ray_address)):
        raise ConfigError(f"{where}.ray_address: must be null (start a local Ray), auto, ray://host:port or "
                          f"host:port, got {ray_address!r}")
    resources = {"cpu": 1} if resources is None else resources
    if not isinstance(resources, Mapping):
        raise ConfigError(f"{where}.resources_per_evaluation: must be a mapping like {{cpu: 1, gpu: 1}}, got {resources!r}")
    for key, value in resources.items():
        if key not in ("cpu", "gpu"):
            raise ConfigError(f"{where}.resources_per_evaluation.{key}: unknown key; allowed: cpu, gpu")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (key == "cpu" and value == 0):
            raise ConfigError(f"{where}.resources_per_evaluation.{key}: must be a number "
                              f"{'> 0' if key == 'cpu' else '>= 0'}, got {value!r}")
    if not _is_int(ranks) or ranks < 1:
        raise ConfigError(f"{where}.ranks_per_evaluation: must be an integer >= 1, got {ranks!r}")
    if ranks > 1 and workers == 1:
        raise ConfigError(f"{where}.ranks_per_evaluation: > 1 runs each evaluation as a torchrun job inside a Ray "
                          "task and needs search.workers > 1; with one worker start the search itself under torchrun")
    gpu = resources.get("gpu", 0)
    if ranks > 1 and gpu and gpu != ranks:
        raise ConfigError(f"{where}.ranks_per_evaluation: {ranks} ranks need resources_per_evaluation.gpu: {ranks} "
                          f"(one GPU per rank) or gpu: 0 (CPU ranks), got gpu: {gpu}")


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
    workers: int = 1,
    executor: Any = None,
    on_pending: Callable[[list], None] | None = None,
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
    ``workers > 1`` keeps that many evaluations in flight (:mod:`condensa.search.parallel`) on
    ``executor`` (an :class:`~condensa.search.executors.Executor`, or a factory
    ``f(evaluate, workers)`` called only when there is work left; default: a local Ray instance);
    ``on_pending(in_flight)`` is called whenever the set of running evaluations changes.
    """
    if isinstance(objective, str):
        objective = Objective(objective)
    if not isinstance(objective, Objective):
        raise ConfigError(f"search.objective: expected an Objective or a metric name, got {objective!r}")
    check_settings(budget=budget, method=method, recommend=recommend, n_init=n_init, seed=seed, workers=workers)
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

    # workers > 1, an executor, or a journal a parallel search wrote (its steps are not 0..n-1 in
    # order): the driver of parallel.py runs the loop; otherwise the sequential loop below, as always.
    parallel = workers > 1 or executor is not None or bool(store is not None and store.pending)
    n_full = n_init if n_init is not None else default_n_init(space.dim)
    if parallel and n_init is None:
        n_full = max(n_full, workers)  # the first round of a wide search is space-filling too
    n_design = min(n_full, budget if n_init is not None else max(1, budget - 1))  # default: >= 1 model-guided step
    # The design is drawn at its uncapped size and truncated, so raising the budget later keeps it.
    design = bo.initial_design(space, n_full, seed)[:n_design] if method == "bo" else []
    better_end = _better_end(space, objective, cheap_loss) if method == "bisection" else 0.0
    size = space.size()

    if parallel:
        from .parallel import run_parallel  # the parallel driver (and Ray) only when asked for

        run_parallel(strategy, evaluate, objective, constraints, budget, seed, method, space, evaluations, store,
                     design, better_end, cheap_loss, workers, executor, on_evaluation, on_pending)
    for step in range(budget if parallel else len(evaluations), budget):
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
        return _failed(step, values, " ".join(str(error).split()), time.perf_counter() - start, constraints, method)
    seconds = time.perf_counter() - start
    if not isinstance(metrics, Mapping):
        raise SearchError(f"evaluate must return a dict of metrics, got {type(metrics).__name__}")
    return _measured(step, values, metrics, seconds, objective, constraints, method)


def _failed(step, values, message: str, seconds: float, constraints, method) -> Evaluation:
    return Evaluation(step, values, {}, [math.inf] * len(constraints), None, False, "failed", message, seconds, method)


def _measured(step, values, metrics: Mapping[str, Any], seconds: float, objective, constraints, method) -> Evaluation:
    """An evaluation from the metrics ``evaluate`` returned: constraint values, objective, feasibility."""
    metrics = dict(metrics)
    constraint_values = [c.value(metrics) for c in constraints]
    value = objective.value(metrics, values)
    feasible = all(v <= c.upper for v, c in zip(constraint_values, constraints)) and math.isfinite(value)
    return Evaluation(step, values, metrics, constraint_values, value, feasible, "ok", "", seconds, method)
