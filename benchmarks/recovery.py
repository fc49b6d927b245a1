"""Recovery with default settings only: does L-C and the label-preserving loss beat fine-tuning?

Every method gets the same step budget, the same compressed model (Prune to a global density +
int8) and the same seeds; only ``method`` and ``loss`` differ, everything else is the library's
default (``lr: auto``, the budget-derived L-C schedule, KL distillation at T=1). Figures on the
test split; mean ± std over seeds (the recovery seed: data order and the range test's batches;
the reference model is fixed).

    python benchmarks/recovery.py [--models digits_cnn digits_mlp char_lstm] [--seeds 3] [--points 1 2]

Operating points: point 1 is where fine-tuning with CE loses about one point, point 2 is harsher.
The speaker-encoder model of the study behind the defaults is not in this script (it needs the
``resemblyzer`` wheel's weights and a synthetic-speech front end).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
import yaml

from condensa.config import parse_config
from condensa.pipeline import Workspace
from condensa.recovery import RecoveryConfig, recover
from condensa.strategies import build_strategy

REPO = Path(__file__).resolve().parents[1]
#: model -> (config with its reference and data, layers compressed (None: the scheme's Conv2d + Linear),
#: densities at points 1 and 2, step budget)
MODELS = {
    "digits_cnn": ("configs/digits.yaml", None, (0.02, 0.015), {"epochs": 30}),
    "digits_mlp": ("configs/digits-mlp.yaml", ["Linear"], (0.042, 0.035), {"epochs": 30}),
    "char_lstm": ("configs/lm-char-lstm.yaml", ["LSTM", "Linear", "Embedding"], (0.07, 0.05), {"epochs": 2}),
}
METHODS = {
    "none": {"method": "none"},
    "finetune + ce": {"method": "finetune", "loss": "ce"},
    "finetune + distill": {"method": "finetune", "loss": "distill"},
    "lc + ce": {"method": "lc", "loss": "ce"},
    "lc + distill": {"method": "lc", "loss": "distill"},
}


def ms(values: list[float], digits: int = 2) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.{digits}f} ± {sd:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--points", nargs="+", type=int, default=[1, 2], choices=[1, 2])
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    args = parser.parse_args()
    torch.set_num_threads(1)
    print("| model | point | density | method | accuracy % | mismatches | lr | seconds |")
    print("|---|---:|---:|---|---:|---:|---:|---:|")
    for name in args.models:
        config_file, layers, densities, budget = MODELS[name]
        config = parse_config(yaml.safe_load((REPO / config_file).read_text()))
        ws = Workspace.from_config(config, log=lambda *_: None)
        print(f"| {name} | reference | | | {ws.reference_predictions('test').accuracy:.2f} | of {len(ws.splits.test)} | | |",
              flush=True)
        for point in args.points:
            density = densities[point - 1]
            strategy = build_strategy("prune_quantize", {"density": density, **({"layers": layers} if layers else {})}, None)
            for label in args.methods:
                settings = {**budget, "batch_size": config.recovery.get("batch_size", 64), **METHODS[label]}
                runs = []
                for seed in range(1 if label == "none" else args.seeds):  # no recovery: nothing random
                    start = time.perf_counter()
                    model, _ = strategy.apply(ws.reference)
                    report: dict = {}
                    model = recover(model, ws.reference, ws.splits.train, RecoveryConfig.from_dict(settings), strategy=strategy,
                                    seed=seed, report=report)
                    seconds = time.perf_counter() - start
                    metrics = ws.measure(model, "test")
                    runs.append((metrics["accuracy"], metrics["mismatches"], report.get("lr", 0.0), seconds))
                acc, mm, lr, sec = (list(column) for column in zip(*runs))
                print(f"| {name} | {point} | {density} | {label} | {ms(acc)} | {ms(mm, 1)} | {statistics.mean(lr):.2g} | "
                      f"{ms(sec, 0)} |", flush=True)


if __name__ == "__main__":
    main()
