"""Parallel search (issue 16): how much does ``search.workers`` buy?

(a) The default digits search (configs/digits.yaml: Prune + int8, density open, accuracy drop
    <= 1 point, budget 10) with ``workers: 1`` and ``workers: 2`` on this machine, one torch
    thread per worker, the same budget: the whole ``condensa search`` command is timed (Ray's
    start included for workers 2; reference model cached beforehand), and the answer found.
    Wall times depend on the machine's load: the runs alternate (1, 2, 1, 2, ...) so that both
    see the same conditions, and the load average is printed beside them. ``--default-threads``
    adds a ``workers: 1`` run with torch's default thread count.

(b) The cheap synthetic problem of tests/test_search.py (accuracy drop crossing 1 point at
    density 0.04, footprint = 1000 x density, so the optimum is 40) with simulated evaluation
    times (log-normal, median 1 time unit, sigma 0.3, seeded per step) on a simulated cluster of
    1, 4 and 16 workers: evaluations and wall-clock rounds (simulated time / mean evaluation
    time) until a feasible point within 5% of the optimum has *finished*, over 5 seeds, BO
    beside random search with the same workers. These numbers do not depend on the CPU load.

    python benchmarks/parallel.py [--part a|b|both] [--seeds 5] [--repeats 1] [--default-threads] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


class Reached(BaseException):
    """Raised by the simulated cluster when the target was reached (stops the search early)."""

    def __init__(self, evaluations: int, clock: float) -> None:
        super().__init__(evaluations, clock)
        self.evaluations, self.clock = evaluations, clock


def synthetic(workers_list, seeds, caps, sigma=0.3):
    import random

    import parallel_synthetic as syn
    import torch

    from condensa.search import accuracy_drop, search
    from condensa.search.executors import SimulatedExecutor

    torch.set_num_threads(1)
    optimum = 1000 * syn.TRUE
    mean_duration = math.exp(sigma**2 / 2)  # of a log-normal with median 1

    class Cluster(SimulatedExecutor):
        finished = 0

        def wait(self):
            out = super().wait()
            self.finished += 1
            for _, outcome in out:
                m = outcome.get("metrics") or {}
                if outcome["status"] == "ok" and m["accuracy_drop"] <= 1.0 and m["footprint_bytes"] <= 1.05 * optimum:
                    raise Reached(self.finished, self.clock)
            return out

    rows = []
    for method in ("bo", "random"):
        for workers in workers_list:
            for seed in seeds:
                def duration(step, bound, seed=seed):
                    return random.Random(1_000_003 * seed + step).lognormvariate(0.0, sigma)

                evaluate = syn.Evaluator()
                cluster = Cluster(evaluate, workers, duration)
                cap = caps[method][workers]
                start = time.perf_counter()
                try:
                    search(syn.strategy(), evaluate, syn.objective(), [accuracy_drop(1.0)], budget=cap, seed=seed,
                           method=method, workers=workers, executor=cluster, recommend="observed")
                    evals, rounds = None, None
                except Reached as hit:
                    evals, rounds = hit.evaluations, hit.clock / mean_duration
                rows.append({"method": method, "workers": workers, "seed": seed, "evaluations": evals,
                             "rounds": rounds, "cap": cap, "cpu_seconds": time.perf_counter() - start})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table_b(rows, workers_list, seeds):
    def fmt(v, cap):
        return f">{cap}" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))

    lines = ["| method | workers | evaluations to within 5% (per seed) | median | rounds to within 5% (per seed) | median | rounds vs 1 worker |",
             "|---|---|---|---|---|---|---|"]
    medians = {}
    for method in ("bo", "random"):
        for workers in workers_list:
            sel = [r for r in rows if r["method"] == method and r["workers"] == workers]
            evals = [r["evaluations"] if r["evaluations"] is not None else math.inf for r in sel]
            rounds = [r["rounds"] if r["rounds"] is not None else math.inf for r in sel]
            medians[method, workers] = statistics.median(rounds)
            ratio = medians[method, workers] / medians[method, workers_list[0]]
            lines.append(f"| {method} | {workers} | {', '.join(fmt(r['evaluations'], r['cap']) for r in sel)} | "
                         f"{statistics.median(evals):.0f} | "
                         f"{', '.join(fmt(r['rounds'], r['cap']) for r in sel)} | {medians[method, workers]:.1f} | "
                         f"{ratio:.2f} |")
    # the done criterion: 16 workers within a third of 1 worker's rounds, per seed
    if 1 in workers_list and 16 in workers_list:
        one = {r["seed"]: r["rounds"] for r in rows if r["method"] == "bo" and r["workers"] == 1}
        wide = {r["seed"]: r["rounds"] for r in rows if r["method"] == "bo" and r["workers"] == 16}
        ok = sum(1 for s in seeds if one[s] is not None and wide[s] is not None and wide[s] <= one[s] / 3)
        lines.append(f"\nBO, 16 workers within a third of 1 worker's rounds: {ok} of {len(seeds)} seeds")
    return "\n".join(lines)


def digits(repeats: int, budget: int, eval_epochs: int | None, final_epochs: int | None = None,
           default_threads: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # one thread per worker
    base = [sys.executable, "-m", "condensa.cli", "search", str(REPO / "configs" / "digits.yaml"), "--quiet",
            "--set", f"search.budget={budget}"]
    if eval_epochs is not None:
        base += ["--set", f"search.eval_epochs={eval_epochs}"]
    if final_epochs is not None:
        base += ["--set", f"recovery.epochs={final_epochs}"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # Warm the reference-model cache (trained once) so that neither timed run pays for it.
        subprocess.run(base + ["--out", f"{tmp}/warm", "--set", "search.budget=1", "--set", "search.eval_epochs=1",
                               "--set", "recovery.epochs=1"], env=env, check=True, cwd=REPO)
        for repeat in range(repeats):
            runs = ((1, "1"), (2, "1")) + (((1, "default"),) if default_threads else ())
            for workers, threads in runs:
                out = Path(tmp) / f"w{workers}-{threads}-{repeat}"
                load = os.getloadavg()[0]
                start = time.perf_counter()
                run_env = env if threads == "1" else {k: v for k, v in env.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
                done = subprocess.run(base + ["--out", str(out), "--set", f"search.workers={workers}"], env=run_env,
                                      cwd=REPO, capture_output=True, text=True)
                seconds = time.perf_counter() - start
                if done.returncode != 0:
                    raise SystemExit(done.stderr[-3000:])
                result = json.loads((out / "result.json").read_text())
                evaluations = result["search"]["evaluations"]
                rows.append({"workers": workers, "threads": threads, "repeat": repeat, "seconds": seconds, "load": load,
                             "load_after": os.getloadavg()[0], "feasible": result["feasible"],
                             "samples": result["samples"], "density": (result["knobs"] or {}).get("prune.density"),
                             "ratio": result.get("compression_ratio"), "test_drop": result.get("accuracy_drop"),
                             "eval_seconds": sum(e["seconds"] for e in evaluations)})
                print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table_a(rows):
    lines = ["| repeat | workers | threads per worker | wall s (command) | load avg before/after | evaluations | feasible | density | ratio | test drop | sum of eval s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['repeat']} | {r['workers']} | {r['threads']} | {r['seconds']:.0f} | {r['load']:.1f}/{r['load_after']:.1f} | "
                     f"{r['samples']} | {r['feasible']} | {r['density']:.4g} | {r['ratio']:.1f} | {r['test_drop']:.2f} | "
                     f"{r['eval_seconds']:.0f} |")
    for repeat in sorted({r["repeat"] for r in rows}):
        one = next(r for r in rows if r["repeat"] == repeat and r["workers"] == 1 and r["threads"] == "1")
        two = next(r for r in rows if r["repeat"] == repeat and r["workers"] == 2)
        default = next((r for r in rows if r["repeat"] == repeat and r["workers"] == 1 and r["threads"] == "default"),
                       None)
        line = f"\nrepeat {repeat}: wall time workers 2 / workers 1 = {two['seconds'] / one['seconds']:.2f} (1 thread each)"
        if default is not None:
            line += f"; vs workers 1 with torch's default threads: {two['seconds'] / default['seconds']:.2f}"
        lines.append(line)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["a", "b", "both"], default="both")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--eval-epochs", type=int, help="(a): override search.eval_epochs (default: the config's 10)")
    parser.add_argument("--final-epochs", type=int, help="(a): override recovery.epochs (default: the config's 20)")
    parser.add_argument("--default-threads", action="store_true",
                        help="(a): also run workers 1 with torch's default thread count")
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    if args.part in ("b", "both"):
        workers_list = [1, 4, 16]
        caps = {"bo": {1: 40, 4: 48, 16: 80}, "random": {1: 300, 4: 300, 16: 320}}
        seeds = list(range(args.seeds))
        if args.quick:
            workers_list, seeds, caps = [1, 4], [0], {"bo": {1: 12, 4: 12}, "random": {1: 20, 4: 20}}
        rows = synthetic(workers_list, seeds, caps)
        print("## (b) synthetic problem, simulated evaluation times (load-independent)\n")
        print(table_b(rows, workers_list, seeds) + "\n")
    if args.part in ("a", "both"):
        budget, epochs, final = (3, 1, 1) if args.quick else (10, args.eval_epochs, args.final_epochs)
        rows = digits(args.repeats, budget, epochs, final, args.default_threads)
        print(f"## (a) digits search, workers 1 vs 2, one thread each (wall times under the load shown; "
              f"eval_epochs={epochs or 'config'}, recovery.epochs={final or 'config'})\n")
        print(table_a(rows) + "\n")


if __name__ == "__main__":
    main()
