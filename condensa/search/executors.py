"""Where a parallel search's evaluations run: Ray tasks, a simulated cluster, or this process.

An executor only computes. ``submit(step, knobs, bound)`` starts one evaluation and returns at
once; ``wait()`` blocks until at least one has finished and returns ``(step, outcome)`` pairs.
The driver (:mod:`.parallel`) turns outcomes into evaluations and writes the journal; a task
never touches it.

An outcome is ``{"status": "ok", "metrics", "seconds"}``, ``{"status": "failed", "message",
"seconds"}`` (a failed evaluation: the search goes on) or ``{"status": "stop", "error"}`` (a
condensa error that means the search itself is wrong, raised again in the driver).

Failure semantics (the same classification as the sequential loop of ``api.search``):

* an :class:`~condensa.errors.EvaluationError` (recovery diverged, ...) is a failed evaluation;
* any other condensa error (a bad config value, ``evaluate`` not returning a dict) stops the search;
* any other exception is a failed evaluation **when the evaluation ran in another process**
  (a Ray task, or the simulated cluster that stands for one), and propagates when it ran in this
  process (``InlineExecutor``, i.e. ``workers: 1``, exactly as the sequential loop). Why the
  difference: in a Ray task the exception is local to that worker (its GPU ran out of memory, its
  node lost a disk) while other evaluations are still running on other workers, and stopping would
  throw their work away; in-process nothing else is running and the traceback of what is most
  likely a bug is the useful output. A worker process that dies is a failed evaluation too.
"""

from __future__ import annotations

import heapq
import math
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import CondensaError, EvaluationError, SearchError

#: what a task returns (see the module docstring)
Outcome = dict


def run_task(evaluate: Callable[[Any], Mapping[str, Any]], knobs: dict[str, Any], bound: Any, *,
             threads: int | None = None, contain: bool = True) -> Outcome:
    """One evaluation, as a task runs it. ``evaluate`` gets the bound strategy, or the knob values
    if it has ``takes_knobs = True`` (an evaluation that rebuilds the strategy elsewhere, e.g. in
    the ranks of a torchrun job). ``contain``: turn unexpected exceptions into failed evaluations
    (another process) instead of raising them (this process)."""
    if threads is not None:
        import torch

        torch.set_num_threads(int(threads))
    start = time.perf_counter()
    try:
        metrics = evaluate(knobs if getattr(evaluate, "takes_knobs", False) else bound)
    except EvaluationError as error:
        return {"status": "failed", "message": " ".join(str(error).split()), "seconds": time.perf_counter() - start}
    except CondensaError as error:
        if not contain:
            raise
        return {"status": "stop", "error": error}
    except Exception as error:
        # User-code boundary: ``evaluate`` is the caller's code (compress, train, measure) running in
        # a worker process; whatever it raises there is that evaluation's failure (module docstring).
        if not contain:
            raise
        message = f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]
        last = traceback.extract_tb(error.__traceback__)[-1:]
        if last:
            message += f" (at {last[0].filename}:{last[0].lineno})"
        return {"status": "failed", "message": message, "seconds": time.perf_counter() - start}
    if not isinstance(metrics, Mapping):
        error = SearchError(f"evaluate must return a dict of metrics, got {type(metrics).__name__}")
        if not contain:
            raise error
        return {"status": "stop", "error": error}
    return {"status": "ok", "metrics": dict(metrics), "seconds": time.perf_counter() - start}


class Executor:
    """Runs evaluations; ``submit`` returns at once, ``wait`` blocks until at least one finished."""

    workers: int = 1

    def submit(self, step: int, knobs: dict[str, Any], bound: Any) -> None:
        raise NotImplementedError

    def wait(self) -> list[tuple[int, Outcome]]:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop every evaluation in flight (Ctrl-C, or the search stops on an error)."""

    def close(self) -> None:
        """Release what the executor started (a local Ray instance)."""

    def now(self) -> float:
        """The executor's clock: wall seconds (simulated seconds for :class:`SimulatedExecutor`)."""
        return time.perf_counter()


class InlineExecutor(Executor):
    """One evaluation at a time in this process, run when waited for (``workers: 1`` resuming a
    journal that a parallel search wrote). Unexpected exceptions propagate, as in the sequential loop."""

    def __init__(self, evaluate: Callable[[Any], Mapping[str, Any]]) -> None:
        self.evaluate, self.workers, self.queue = evaluate, 1, []

    def submit(self, step: int, knobs: dict[str, Any], bound: Any) -> None:
        self.queue.append((step, knobs, bound))

    def wait(self) -> list[tuple[int, Outcome]]:
        step, knobs, bound = self.queue.pop(0)
        return [(step, run_task(self.evaluate, knobs, bound, contain=False))]

    def cancel(self) -> None:
        self.queue.clear()


class SimulatedExecutor(Executor):
    """A discrete-event stand-in for a cluster: evaluations run in this process (at once) but
    finish on a simulated clock after ``duration(step, bound)`` seconds, ``workers`` at a time.
    For tests and benchmarks of the *algorithm* (evaluations and rounds to the optimum), not of Ray;
    exceptions are contained as in a Ray task."""

    def __init__(self, evaluate: Callable[[Any], Mapping[str, Any]], workers: int,
                 duration: Callable[[int, Any], float]) -> None:
        self.evaluate, self.workers, self.duration = evaluate, workers, duration
        self.clock, self.heap, self.counter = 0.0, [], 0

    def submit(self, step: int, knobs: dict[str, Any], bound: Any) -> None:
        if len(self.heap) >= self.workers:
            raise SearchError("SimulatedExecutor: more evaluations submitted than workers")
        outcome = run_task(self.evaluate, knobs, bound)
        self.counter += 1
        heapq.heappush(self.heap, (self.clock + float(self.duration(step, bound)), self.counter, step, outcome))

    def wait(self) -> list[tuple[int, Outcome]]:
        finish, _, step, outcome = heapq.heappop(self.heap)
        self.clock = finish
        return [(step, outcome)]

    def cancel(self) -> None:
        self.heap.clear()

    def now(self) -> float:
        return self.clock


# -- Ray ------------------------------------------------------------------------------------------------
def import_ray():
    """``ray``, or a one-line error naming the extra. Imported here, not at the top: ``workers: 1``
    never loads it, and ``import ray`` alone costs about a second."""
    from ..extras import require

    require("ray")
    import ray

    return ray


#: per worker process: the evaluate callable of the current search, unpickled once
_WORKER_CACHE: dict[str, Any] = {}


def _remote_evaluate(payload: list, knobs: dict[str, Any], bound: Any, threads: int) -> Outcome:
    """The Ray task: the evaluate callable comes from the object store once per worker process."""
    import ray

    (ref,) = payload  # wrapped in a list so that Ray passes the reference, not the value
    key = ref.hex()
    if key not in _WORKER_CACHE:
        _WORKER_CACHE.clear()  # one search at a time per worker: drop the previous workspace
        try:
            _WORKER_CACHE[key] = ray.get(ref)
        except Exception as error:
            # User-code boundary: unpickling runs the caller's code (imports of their modules); the
            # driver stops the search with this message.
            return {"status": "setup", "message": f"{type(error).__name__}: {' '.join(str(error).split())[-300:]}"}
    return run_task(_WORKER_CACHE[key], knobs, bound, threads=threads)


class RayExecutor(Executor):
    """Evaluations as Ray tasks.

    ``address``: None starts a local Ray instance sized for ``workers`` evaluations (unless this
    process already joined one, which is then used and left running); ``"auto"`` or
    ``"ray://host:port"`` joins a running cluster. ``resources``: what each task asks for,
    ``{"cpu": 1}`` by default (``gpu`` too); the task runs torch with ``cpu`` threads.
    ``evaluate`` (with everything it holds: data, reference model) is put in the object store once
    and unpickled once per worker process. Tasks are never retried by Ray: a retried evaluation
    would silently double its cost; a failure is a failed evaluation.
    """

    def __init__(self, evaluate: Callable[[Any], Mapping[str, Any]], workers: int, *, address: str | None = None,
                 resources: Mapping[str, float] | None = None, runtime_env: Mapping[str, Any] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        from .api import check_settings

        check_settings(workers=workers, ray_address=address, resources_per_evaluation=resources)
        ray = import_ray()
        self.ray, self.workers = ray, workers
        resources = dict(resources or {})
        self.cpu = float(resources.get("cpu", 1))
        self.gpu = float(resources.get("gpu", 0))
        self.started_here = False
        start = time.perf_counter()
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "ERROR", "log_to_driver": True}
            if runtime_env:
                kwargs["runtime_env"] = dict(runtime_env)
            if address is None:  # a new local instance, even if `ray start` runs one on this machine
                kwargs["address"] = "local"
                kwargs["num_cpus"] = max(1, math.ceil(workers * self.cpu))
                if self.gpu:
                    kwargs["num_gpus"] = math.ceil(workers * self.gpu)
            else:
                kwargs["address"] = address
            ray.init(**kwargs)
            self.started_here = True
        self.init_seconds = time.perf_counter() - start
        if log is not None:
            where = "a local Ray instance" if address is None else f"Ray at {address}"
            log(f"search: {workers} evaluations at once on {where} ({self.init_seconds:.1f} s to start)")
        self.payload = [ray.put(evaluate)]
        self.task = ray.remote(_remote_evaluate).options(num_cpus=self.cpu, num_gpus=self.gpu, max_retries=0,
                                                         retry_exceptions=False)
        self.threads = max(1, int(self.cpu))
        self.refs: dict[Any, int] = {}

    def submit(self, step: int, knobs: dict[str, Any], bound: Any) -> None:
        self.refs[self.task.remote(self.payload, knobs, bound, self.threads)] = step

    def wait(self) -> list[tuple[int, Outcome]]:
        ray = self.ray
        while True:  # short timeouts keep Ctrl-C responsive
            ready, _ = ray.wait(list(self.refs), num_returns=1, timeout=0.5)
            if ready:
                break
        out = []
        for ref in ready:
            step = self.refs.pop(ref)
            try:
                outcome = ray.get(ref)
            except ray.exceptions.RayError as error:  # the worker died (os._exit, OOM kill), the node was lost, ...
                first = " ".join(str(error).split())[:300]
                outcome = {"status": "failed", "message": f"{type(error).__name__}: {first}", "seconds": 0.0}
            if outcome.get("status") == "setup":
                raise SearchError(f"a Ray worker cannot load the evaluate function and its data: {outcome['message']}; "
                                  "the code it needs must be importable on the workers (installed, or shipped with "
                                  "a runtime_env)")
            out.append((step, outcome))
        return out

    def cancel(self) -> None:
        for ref in list(self.refs):
            try:
                self.ray.cancel(ref, force=True)
            except (self.ray.exceptions.RayError, ValueError):  # already finished or gone
                pass
        self.refs.clear()

    def close(self) -> None:
        if self.started_here and self.ray.is_initialized():
            self.ray.shutdown()
