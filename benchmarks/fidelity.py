"""Do label-preserving recovery methods cut mismatches against the reference model?

Digits CNN (cached reference); two strategies; every method gets the same number of optimizer
steps and the same seeds; figures on the test split, mean ± std over seeds.

    python benchmarks/fidelity.py [--seeds 3] [--epochs 10]
"""

from __future__ import annotations

import argparse
import statistics

import torch

import condensa
from condensa import Compose, Prune, Quantize
from condensa.metrics import mismatches, predict
from condensa.recovery import RecoveryConfig, recover


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ws = condensa.workspace("digits_cnn", log=lambda *_: None)
    splits, reference = ws.splits, ws.reference
    steps = args.epochs * -(-len(splits.train) // 64)
    per_l = 15
    lc_steps = max(2, (steps - 2 * per_l) // per_l + 1)
    first = steps - (lc_steps - 1) * per_l
    base = {"lr": 0.003, "epochs": args.epochs}
    lc = {"method": "lc", "lr": 0.003, "lc_steps": lc_steps, "mb_iterations_first_l": first, "mb_iterations_per_l": per_l}
    fixed = {"ce": 1.0, "kl": 1.0, "logit": 0.1, "flip": 1.0}
    methods = {
        "no recovery": {"method": "none"},
        "fine-tune, CE": {**base, "loss": "ce"},
        "L-C, CE": {**lc, "loss": "ce"},
        "fine-tune, distill (fixed weights)": {**base, "loss": "distill", "weights": fixed},
        "fine-tune, distill (SoftAdapt)": {**base, "loss": "distill", "weights": "auto"},
        "L-C, distill (SoftAdapt)": {**lc, "loss": "distill", "weights": "auto"},
    }
    strategies = {"Prune 0.05": Prune(density=0.05), "Prune 0.1 + int8": Compose([Prune(density=0.1), Quantize("int8")])}
    reference_test = predict(reference, splits.test)
    print(f"reference test accuracy {reference_test.accuracy:.2f}%; {steps} optimizer steps per method "
          f"(L-C: {first} + {lc_steps - 1} x {per_l}); {args.seeds} seeds; test split ({len(splits.test)} examples)\n")
    for label, strategy in strategies.items():
        print(f"### {label}\n")
        print("| method | accuracy (%) | mismatches | where reference correct |")
        print("|---|---:|---:|---:|")
        results = {}
        for name, settings in methods.items():
            acc, mm, mm_ok = [], [], []
            for seed in range(args.seeds):
                model, _ = strategy.apply(reference)
                model = recover(model, reference, splits.train, RecoveryConfig.from_dict(settings), strategy=strategy, seed=seed)
                predictions = predict(model, splits.test)
                fidelity = mismatches(reference_test, predictions, splits.num_classes)
                acc.append(predictions.accuracy)
                mm.append(fidelity["mismatches"])
                mm_ok.append(fidelity["mismatches_ref_correct"])
            results[name] = (statistics.mean(acc), statistics.mean(mm))
            def sd(xs):
                return (statistics.stdev(xs) if len(xs) > 1 else 0.0)
            print(f"| {name} | {statistics.mean(acc):.2f} ± {sd(acc):.2f} | {statistics.mean(mm):.1f} ± {sd(mm):.1f} | "
                  f"{statistics.mean(mm_ok):.1f} ± {sd(mm_ok):.1f} |")
        ce_acc, ce_mm = results["fine-tune, CE"]
        label_preserving = {k: v for k, v in results.items() if "distill" in k or "L-C" in k}
        best = min(label_preserving, key=lambda k: label_preserving[k][1])
        best_acc, best_mm = label_preserving[best]
        ratio = ce_mm / best_mm if best_mm else float("inf")
        print(f"\nfewest mismatches: {best}: {ratio:.2f}x fewer than CE fine-tuning "
              f"({best_mm:.1f} vs {ce_mm:.1f}), accuracy {best_acc - ce_acc:+.2f} pts\n")


if __name__ == "__main__":
    main()
