"""How sample-efficient is the constrained search? (digits CNN, Prune + int8, drop <= 1 point)

1. A 40-point log grid over density gives the ground truth: the best feasible density.
2. BO, random and bisection, budget 10 each, over several seeds: evaluations until a feasible
   point within 5% (relative) of the ground-truth density, final compression ratio, whether the
   returned answer is feasible on validation and (after the full recovery) on test, wall time.
3. A two-knob variant (conv vs linear density): best feasible footprint, BO vs random.

Every evaluation really compresses, fine-tunes and measures the model; evaluations are
deterministic functions of the knob values (fixed recovery seed), so identical knob values are
measured once and reused across methods.

    python benchmarks/search.py [--seeds 5] [--eval-epochs 10] [--quick]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time

import torch

import condensa
from condensa import Compose, Prune, Quantize, Range
from condensa.search import Objective, accuracy_drop, search


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--eval-epochs", type=int, default=10)
    parser.add_argument("--final-epochs", type=int, default=20)
    parser.add_argument("--grid", type=int, default=40)
    parser.add_argument("--quick", action="store_true", help="tiny settings to check the script runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.eval_epochs, args.final_epochs, args.grid = 1, 1, 1, 5
    torch.set_num_threads(2)
    ws = condensa.workspace("digits_cnn", recovery={"epochs": args.eval_epochs, "lr": 0.003}, log=lambda *_: None)
    strategy = Compose([Prune(density=Range(0.005, 0.5, log=True)), Quantize("int8")])
    memo: dict[tuple, dict] = {}
    counter = {"evaluations": 0}

    def evaluate(bound):
        key = repr(bound.to_dict())
        if key not in memo:
            counter["evaluations"] += 1
            memo[key] = ws.evaluate(bound, split="val").metrics
        return memo[key]

    objective = Objective("footprint_bytes", cheap=ws.cheap_objective(strategy))
    constraint = [accuracy_drop(1.0)]

    start = time.perf_counter()
    grid = search(strategy, evaluate, objective, constraint, budget=args.grid, method="grid")
    truth = grid.best_knobs["prune.density"]
    print(f"## Ground truth: {args.grid}-point log grid ({time.perf_counter() - start:.0f} s)\n")
    print(f"best feasible density {truth:.4f}, compression ratio {grid.best_metrics['compression_ratio']:.1f}x, "
          f"validation accuracy drop {grid.best_metrics['accuracy_drop']:.2f} pts\n")

    def test_feasible(knobs) -> tuple[bool, float]:
        final = ws.evaluate(strategy.bind(knobs), split="test", epochs=args.final_epochs).metrics
        return final["accuracy_drop"] <= 1.0, final["compression_ratio"]

    rows = []
    for method in ("bo", "random", "bisection"):
        for seed in range(args.seeds):
            memo_before = counter["evaluations"]
            t0 = time.perf_counter()
            result = search(strategy, evaluate, objective, constraint, budget=10, seed=seed, method=method)
            seconds = time.perf_counter() - t0
            within = next((e.index + 1 for e in result.evaluations
                           if e.feasible and abs(e.knobs["prune.density"] / truth - 1) <= 0.05), None)
            ok_test, ratio_test = test_feasible(result.best_knobs) if result.feasible else (False, float("nan"))
            rows.append((method, seed, within, result.best_knobs["prune.density"] if result.feasible else float("nan"),
                         result.best_metrics["compression_ratio"] if result.feasible else float("nan"),
                         result.feasible, ok_test, ratio_test, seconds, counter["evaluations"] - memo_before))
    print("## One knob: Prune density + int8, budget 10\n")
    print("| method | seed | evals to within 5% | density | val ratio | feasible (val) | feasible (test) | test ratio | wall s |")
    print("|---|---:|---:|---:|---:|---|---|---:|---:|")
    for method, seed, within, density, ratio, ok_val, ok_test, ratio_test, seconds, _ in rows:
        print(f"| {method} | {seed} | {within if within else '>10'} | {density:.4f} | {ratio:.1f} | {ok_val} | {ok_test} | {ratio_test:.1f} | {seconds:.0f} |")
    print("\n| method | runs within 5% in <= 8 evals | mean val ratio | feasible val | feasible test |")
    print("|---|---:|---:|---:|---:|")
    for method in ("bo", "random", "bisection"):
        mine = [r for r in rows if r[0] == method]
        hits = sum(1 for r in mine if r[2] is not None and r[2] <= 8)
        ratios = [r[4] for r in mine if not math.isnan(r[4])]
        print(f"| {method} | {hits}/{len(mine)} | {statistics.mean(ratios) if ratios else float('nan'):.1f} | "
              f"{sum(r[5] for r in mine)}/{len(mine)} | {sum(r[6] for r in mine)}/{len(mine)} |")

    two = Compose([Prune(density=Range(0.02, 0.6, log=True), layers=["Conv2d"]),
                   Prune(density=Range(0.005, 0.5, log=True), layers=["Linear"]), Quantize("int8")])
    objective2 = Objective("footprint_bytes", cheap=ws.cheap_objective(two))
    print("\n## Two knobs: conv density x linear density + int8, budget 12\n")
    print("| method | seed | best feasible footprint (bytes) | ratio |")
    print("|---|---:|---:|---:|")
    summary: dict[str, list[float]] = {"bo": [], "random": []}
    for method in ("bo", "random"):
        for seed in range(max(1, min(3, args.seeds))):
            result = search(two, evaluate, objective2, constraint, budget=12, seed=seed, method=method)
            value = result.best_metrics["footprint_bytes"] if result.feasible else float("nan")
            summary[method].append(value)
            print(f"| {method} | {seed} | {value:.0f} | {result.best_metrics['compression_ratio'] if result.feasible else float('nan'):.1f} |")
    print(f"\nmean best footprint: BO {statistics.mean(summary['bo']):.0f} B, random {statistics.mean(summary['random']):.0f} B")
    print(f"\n{counter['evaluations']} distinct evaluations, {time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    sys.exit(main())
