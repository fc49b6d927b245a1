"""Char LSTM at one density: how do mismatches of L-C + distillation compare with fine-tuning + CE,
as the reference's training and the recovery budget change?

Issue 15 asks ``condensa compress configs/lm-char-lstm.yaml --set strategy.args.density=0.2`` with
``recovery.method=lc, recovery.loss=distill`` to leave half the mismatches of ``finetune`` + ``ce``
at most 0.5 points less accurate. This script measures that comparison for other reference
trainings (``model.train.epochs``) and recovery budgets (``recovery.epochs``), everything else as
the config has it; one seed per row (the recovery seed of the config). Figures on all test
positions.

    python benchmarks/lstm_fidelity.py [--density 0.2] [--reference-epochs 6 15] [--recovery-epochs 2 8] [--lr X] [--variants]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

# benchmarks/recovery.py (this script's folder is on sys.path when it runs)
from recovery import FORMER
from recovery import METHODS as RECOVERY_METHODS

from condensa.config import parse_config
from condensa.pipeline import Workspace
from condensa.recovery import RecoveryConfig, recover
from condensa.strategies import build_strategy

REPO = Path(__file__).resolve().parents[1]
#: the two settings the issue compares, as benchmarks/recovery.py defines them
METHODS = {label: RECOVERY_METHODS[label] for label in ("finetune + ce", "lc + distill")}
#: other label-preserving losses (``--variants``) than the default (KL + flip at margin 0.3 + CE/2):
#: KL alone (the default before), KL + flip without CE, and a higher temperature
VARIANTS = {
    "lc + distill, kl only": FORMER["lc + kl"],
    "lc + distill, kl + flip": {"method": "lc", "loss": "distill", "weights": {"kl": 1, "flip": 1}},
    "lc + distill, T = 2": {"method": "lc", "loss": "distill", "temperature": 2.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/lm-char-lstm.yaml")
    parser.add_argument("--density", type=float, default=0.2)
    parser.add_argument("--reference-epochs", nargs="+", type=int, default=[6, 15])
    parser.add_argument("--recovery-epochs", nargs="+", type=int, default=[2, 8])
    parser.add_argument("--lr", type=float, help="recovery learning rate (default: the config's)")
    parser.add_argument("--variants", action="store_true", help="also the losses in VARIANTS")
    parser.add_argument("--methods", nargs="+", choices=[*METHODS, *VARIANTS], help="only these rows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    raw = yaml.safe_load((REPO / args.config).read_text())
    print(f"recovery lr {args.lr or raw['recovery'].get('lr', 'auto')}, density {args.density}\n")
    print("| reference epochs | reference accuracy % | recovery epochs | method | accuracy % | mismatches | of | seconds |")
    print("|---:|---:|---:|---|---:|---:|---:|---:|")
    strategy = build_strategy(raw["strategy"]["scheme"], {**raw["strategy"]["args"], "density": args.density}, None)
    for reference_epochs in args.reference_epochs:
        raw["model"]["train"]["epochs"] = reference_epochs
        config = parse_config(raw)
        ws = Workspace.from_config(config, log=lambda *_: None)  # trained once per setting, then cached
        reference = ws.reference_predictions("test")
        for epochs in args.recovery_epochs:
            for label, method in {**METHODS, **(VARIANTS if args.variants else {})}.items():
                if args.methods and label not in args.methods:
                    continue
                start = time.perf_counter()
                model, _ = strategy.apply(ws.reference)
                settings = RecoveryConfig.from_dict({**config.recovery, **method, "epochs": epochs,
                                                     **({"lr": args.lr} if args.lr else {})})
                model = recover(model, ws.reference, ws.splits.train, settings, strategy=strategy, seed=config.seed)
                metrics = ws.measure(model, "test")
                print(f"| {reference_epochs} | {reference.accuracy:.2f} | {epochs} | {label} | {metrics['accuracy']:.2f} | "
                      f"{metrics['mismatches']} | {metrics['predictions']} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
