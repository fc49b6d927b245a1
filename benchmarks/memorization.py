"""Do compression-induced label flips concentrate on memorized training examples?

Feldman-Zhang memorization on the digits training split (K digits-CNN models on random 70%
subsets), then several compressed models of the cached reference; flips are measured on the
training split (where memorization is defined) and compared with a one-sided Mann-Whitney test.

    python benchmarks/memorization.py [--models 48]
"""

from __future__ import annotations

import argparse
import time

import torch

import condensa
from condensa import Compose, Prune, Quantize
from condensa.analysis.memorization import memorization_scores, memorization_vs_flips
from condensa.metrics import mismatches, predict
from condensa.recovery import RecoveryConfig, TrainConfig, recover


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ws = condensa.workspace("digits_cnn", log=lambda *_: None)
    start = time.perf_counter()
    scores = memorization_scores("digits_cnn", {}, ws.splits.train, TrainConfig(epochs=args.epochs, lr=3e-3),
                                 models=args.models, data_key={"name": "digits"})
    seconds = time.perf_counter() - start
    values = sorted(scores.values())
    print(f"memorization: K={args.models} models x {args.epochs} epochs on 70% subsets, {seconds:.0f} s "
          f"(0 s when cached); {len(scores)} training examples scored; median {values[len(values) // 2]:.3f}, "
          f"{sum(v > 0.5 for v in values)} above 0.5\n")
    reference_train = predict(ws.reference, ws.splits.train)
    print("| strategy | recovery | train mismatches | mean mem. flipped | mean mem. others | Mann-Whitney p |")
    print("|---|---|---:|---:|---:|---:|")
    for label, strategy in [("Prune 0.02", Prune(density=0.02)), ("Prune 0.01", Prune(density=0.01)),
                            ("Prune 0.03 + int4", Compose([Prune(density=0.03), Quantize("int4")]))]:
        for recovery in ("ce", "distill"):
            model, _ = strategy.apply(ws.reference)
            model = recover(model, ws.reference, ws.splits.train,
                            RecoveryConfig.from_dict({"epochs": 4, "lr": 3e-3, "loss": recovery}), strategy=strategy)
            flips = mismatches(reference_train, predict(model, ws.splits.train), 10)
            relation = memorization_vs_flips(scores, flips["flipped_ids"])
            print(f"| {label} | {recovery} | {flips['mismatches']} | {relation['flipped_mean']:.3f} | "
                  f"{relation['other_mean']:.3f} | {relation['p_value']:.2g} |")


if __name__ == "__main__":
    main()
