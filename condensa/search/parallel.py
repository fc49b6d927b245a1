"""Parallel search: up to ``workers`` evaluations in flight (``search.workers``), on Ray.

The driver owns everything stateful: it proposes points, submits them to an executor
(:mod:`.executors`: Ray tasks, a simulated cluster, or this process) and appends every finished
evaluation to the journal *in completion order*. Tasks only compute; they never touch the
journal. Step indices are assigned when a point is proposed, so they stay ``0..budget-1`` and the
seeds of every proposal are ``(seed, step)`` as in the sequential loop.

Proposals. While nothing else is running a proposal is the sequential one (``api._next_point``:
initial design, baselines, ``bo.propose``), so ``workers: 1`` through this driver reproduces the
sequential search. With evaluations in flight, BO proposes with the pending points
(:mod:`.batch`); random and grid search propose the same points as sequentially, N at a time.
Each proposal is a function of (seed, step, the finished evaluations as a *set*, the pending
points): with N > 1 the trace of two runs can still differ, because which evaluations have
finished at a proposal depends on timing.

Resume. Before a point is submitted the driver appends a ``pending`` record (step, knob values,
how it was proposed) through the journal's write gate. A killed search leaves the in-flight points
as pending records with no matching evaluation; on restart they are submitted again first, with
the same step indices and knob values, then new steps follow. Finished steps are never re-run and
no step index appears twice among the evaluations.

Failures: see :mod:`.executors` (the same classification as the sequential loop; a worker that
raises or dies is a failed evaluation). Ctrl-C (any exception in the driver) cancels the tasks in
flight, leaves a valid journal (only whole lines are written; the in-flight points stay pending
and run again on resume) and re-raises.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import ConfigError
from .executors import Executor, InlineExecutor, Outcome, RayExecutor


@dataclass
class Pending:
    """An evaluation in flight."""

    step: int
    knobs: dict[str, Any]
    unit: list[float]
    proposal: str


def drive(*, strategy, space, evaluations: list, store, budget: int, workers: int, executor: Executor,
          propose: Callable[[int, list, list[Pending]], tuple[list[float], str] | None],
          finish: Callable[[Pending, Outcome], Any], resubmit: Sequence[Mapping[str, Any]] = (),
          on_evaluation: Callable[[Any], None] | None = None,
          on_pending: Callable[[list[Pending]], None] | None = None) -> list:
    """Keep up to ``workers`` evaluations in flight until ``budget`` evaluations have finished.

    ``propose(step, evaluations, pending)`` returns the next unit point and how it was chosen
    (None: nothing left to propose); ``finish(pending, outcome)`` turns an outcome into an
    ``Evaluation``; ``resubmit`` are journal ``pending`` records to run again first.
    """
    done = {e.index for e in evaluations}
    queue = list({r["index"]: r for r in resubmit if r["index"] not in done and r["index"] < budget}.values())
    used = [e.index for e in evaluations] + [r["index"] for r in resubmit]
    next_step = max(used, default=-1) + 1  # never reuse an index the journal holds, even one over the budget
    in_flight: dict[int, Pending] = {}
    exhausted = False

    def submit(pending: Pending, record: bool) -> None:
        if record and store is not None:
            store.append_pending({"index": pending.step, "knobs": pending.knobs, "proposal": pending.proposal})
        in_flight[pending.step] = pending
        executor.submit(pending.step, pending.knobs, strategy.bind(pending.knobs))
        if on_pending is not None:
            on_pending(list(in_flight.values()))

    try:
        while len(evaluations) < budget:
            while len(in_flight) < workers and len(evaluations) + len(in_flight) < budget:
                if queue:
                    row = queue.pop(0)
                    knobs = space.restore(row["knobs"])
                    submit(Pending(row["index"], knobs, space.encode(knobs), row.get("proposal", "")), record=False)
                    continue
                if exhausted:
                    break
                proposed = propose(next_step, evaluations, list(in_flight.values()))
                if proposed is None:
                    exhausted = True
                    break
                unit, proposal = proposed
                submit(Pending(next_step, space.decode(unit), list(unit), proposal), record=True)
                next_step += 1
            if not in_flight:
                break
            for step, outcome in executor.wait():
                if outcome.get("status") == "stop":
                    raise outcome["error"]
                evaluation = finish(in_flight.pop(step), outcome)
                evaluations.append(evaluation)
                if store is not None:
                    store.append(evaluation.to_dict())
                if on_evaluation is not None:
                    on_evaluation(evaluation)
            if on_pending is not None:
                on_pending(list(in_flight.values()))
    except BaseException:
        executor.cancel()
        raise
    finally:
        executor.close()
    return evaluations


def run_parallel(strategy, evaluate, objective, constraints, budget, seed, method, space, evaluations, store,
                 design, better_end, cheap_loss, workers, executor, on_evaluation, on_pending) -> None:
    """``api.search``'s loop with up to ``workers`` evaluations in flight; fills ``evaluations``
    (sorted by step index on return; the journal keeps completion order)."""
    from . import api, baselines, batch, bo

    if workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("search.workers: > 1 cannot run under torchrun (every rank would start its own search); "
                          "run the search without torchrun and give each evaluation several GPUs with "
                          "search.resources_per_evaluation.gpu and search.ranks_per_evaluation")
    size = space.size()

    def propose(step: int, finished: list, pending: list[Pending]) -> tuple[list[float], str] | None:
        taken = {space.key(e.knobs) for e in finished} | {space.key(p.knobs) for p in pending}
        if size is not None and len(taken) >= size:
            return None  # every possible knob assignment is evaluated or running
        done = sorted(finished, key=lambda e: e.index)  # proposals depend on the set, not on timing
        ok = sum(e.status == "ok" for e in done)
        if method != "bo" or step < len(design) or not pending or ok < 2:
            return api._next_point(method, space, done, constraints, objective, cheap_loss, design, better_end, seed,
                                   step, budget)
        x = [space.encode(e.knobs) for e in done]
        if objective.cheap is not None:
            losses = [cheap_loss(u) for u in x]
        else:
            losses = [objective.sign * e.objective if e.status == "ok" and e.objective is not None
                      and math.isfinite(e.objective) else None for e in done]
        running = [p.unit for p in sorted(pending, key=lambda p: p.step)]
        try:
            unit = batch.propose_batch(space, x, api._constraint_columns(done, constraints),
                                       [c.upper for c in constraints], losses, [e.feasible for e in done],
                                       cheap_loss if objective.cheap is not None else None, seed, step, running)
        except bo.GPFitError as error:  # as in the sequential loop: say so and explore
            return baselines.random_point(space, seed, step), f"{api.FALLBACK}: the GP fit failed ({error})"
        return unit, f"bo ({len(running)} pending)"

    def finish(pending: Pending, outcome: Outcome):
        if outcome["status"] == "ok":
            evaluation = api._measured(pending.step, pending.knobs, outcome["metrics"], outcome.get("seconds", 0.0),
                                       objective, constraints, method)
        else:
            evaluation = api._failed(pending.step, pending.knobs, outcome.get("message", "failed"),
                                     outcome.get("seconds", 0.0), constraints, method)
        evaluation.proposal = pending.proposal
        return evaluation

    def report(evaluation) -> None:
        if on_evaluation is not None:
            on_evaluation(evaluation, api.summarize(evaluations, objective, constraints))

    resubmit = list(store.pending) if store is not None else []
    if len(evaluations) < budget:
        if executor is None:
            executor = InlineExecutor(evaluate) if workers == 1 else RayExecutor(evaluate, workers)
        elif not isinstance(executor, Executor):
            executor = executor(evaluate, workers)  # a factory: start the engine only when there is work
        threads = torch.get_num_threads()
        if workers > 1:
            torch.set_num_threads(1)  # the driver only fits small GPs; leave the cores to the workers
        try:
            drive(strategy=strategy, space=space, evaluations=evaluations, store=store, budget=budget,
                  workers=workers, executor=executor, propose=propose, finish=finish, resubmit=resubmit,
                  on_evaluation=report, on_pending=on_pending)
        finally:
            torch.set_num_threads(threads)
    evaluations.sort(key=lambda e: e.index)
