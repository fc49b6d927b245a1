"""A cheap synthetic search for the parallel tests and benchmarks/parallel.py (no training).

``python tests/parallel_synthetic.py JOURNAL --workers N [--sleep S] [--fail-at K] [--budget B]``
runs a Ray search on the one-knob problem of test_search.py whose evaluations sleep ``S`` seconds
(so a test can kill it mid-flight) and prints one JSON line with the result.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import time

TRUE = 0.04


def strategy():
    from condensa import Prune, Range

    return Prune(density=Range(0.005, 0.5, log=True))


def objective():
    from condensa.search import Objective

    return Objective("footprint_bytes", cheap=lambda k: 1000 * k["prune.density"])


def drop(density: float) -> float:
    """Accuracy drop of the synthetic problem: crosses 1 point at density 0.04."""
    return max(0.0, 2 * (math.log(TRUE) - math.log(density)) + 1.0)


class Evaluator:
    """Picklable evaluator: sleeps, optionally raises or kills its worker process below a density."""

    def __init__(self, sleep: float = 0.0, fail_below: float | None = None, die_below: float | None = None,
                 marker: str | None = None) -> None:
        self.sleep, self.fail_below, self.die_below, self.marker = sleep, fail_below, die_below, marker

    def __call__(self, bound):
        density = bound.density
        if self.marker:
            with open(self.marker, "a") as handle:  # one line per evaluation actually started
                handle.write(f"{density!r} {os.getpid()}\n")
        if self.sleep:
            time.sleep(self.sleep)
        if self.die_below is not None and density < self.die_below:
            os._exit(17)  # the worker process dies
        if self.fail_below is not None and density < self.fail_below:
            raise RuntimeError(f"synthetic crash at density {density:.4g}")
        d = drop(density)
        return {"accuracy_drop": d, "footprint_bytes": 1000 * density, "mismatch_rate": d}


def main() -> None:
    # Ctrl-C must raise KeyboardInterrupt even when the test run was started in the background: a
    # non-interactive shell starts `cmd &` with SIGINT ignored, and that disposition is inherited.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser()
    parser.add_argument("journal")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--budget", type=int, default=8)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--marker")
    parser.add_argument("--method", default="bo")
    args = parser.parse_args()
    from condensa.search import accuracy_drop, search
    from condensa.search.executors import RayExecutor

    evaluate = Evaluator(sleep=args.sleep, marker=args.marker)

    def executor(evaluate, workers):
        return RayExecutor(evaluate, workers, resources={"cpu": 1})

    start = time.perf_counter()
    result = search(strategy(), evaluate, objective(), [accuracy_drop(1.0)], budget=args.budget, seed=0,
                    method=args.method, journal=args.journal, workers=args.workers, executor=executor,
                    recommend="observed")
    print(json.dumps({"best": result.best_knobs, "samples": result.samples, "seconds": time.perf_counter() - start,
                      "indices": [e.index for e in result.evaluations]}))


if __name__ == "__main__":
    main()
