"""Language models: what each operator costs char_gpt and the char LSTM, per token.

For every strategy: perplexity increase (%), top-1 agreement with the reference over all test
positions (%), footprint ratio, measured latency ratio dense / compressed (batch 1 and 16, side by
side in interleaved rounds in this process; structured strategies are timed after surgery, the
others as the dense module they run as), seconds (apply + recovery). Then the fidelity comparison
of the recovery methods on char_gpt per token (none / ce / distill / lc / lc + distill, defaults
only: ``lr: auto``, the budget-derived L-C schedule; mean ± std over seeds).

    python benchmarks/lm.py [--models char_gpt char_lstm] [--steps 60] [--seeds 3] [--search RUN_DIR ...] [--no-fidelity]

The references are the configs' (trained on first use and cached like every reference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

# benchmarks/recovery.py (this script's folder is on sys.path when it runs): its five recovery
# settings and its mean ± std format, one definition for both tables
from recovery import METHODS, ms

from condensa import Compose, HeadPrune, MLPPrune, NMPrune, Prune, Quantize
from condensa.config import load_config
from condensa.metrics import footprint, mismatches, predict
from condensa.pipeline import Workspace, _likelihood
from condensa.recovery import RecoveryConfig, recover
from condensa.runs import load_run_config
from condensa.strategies import build_strategy
from condensa.surgery import runnable

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {"char_gpt": "configs/lm-char-gpt.yaml", "char_lstm": "configs/lm-char-lstm.yaml"}


def search_result(run_dir: str) -> tuple[str, str, object]:
    """``(model name, label, strategy)`` of a finished ``condensa search`` run: its config's
    strategy bound to the chosen knobs."""
    config = load_run_config(Path(run_dir))
    result = json.loads((Path(run_dir) / "result.json").read_text())
    strategy = build_strategy(config.strategy.scheme, config.strategy.args, config.strategy.ops).bind(result["knobs"])
    knobs = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in result["knobs"].items())
    return config.model.name, f"search best ({knobs})", strategy


def strategies(model_name: str) -> dict[str, object]:
    linear = ["Linear"]
    out = {
        "Prune 0.3": Prune(0.3, layers=linear if model_name == "char_gpt" else ["LSTM", "Linear", "Embedding"]),
        "2:4 (Linear)": NMPrune(2, 4, layers=linear),
        "int8": Quantize("int8"),
        "int4 g32": Quantize("int4", group_size=32),
        "int4 g128": Quantize("int4", group_size=128),
    }
    if model_name == "char_gpt":
        out["HeadPrune 0.5 + MLPPrune 0.5"] = Compose([HeadPrune(0.5), MLPPrune(0.5)])
    return out


@torch.no_grad()
def latency_ratio(dense, compressed, example, rounds: int = 9, threads: int = 2) -> dict[int, float]:
    """Median over interleaved rounds of dense_ms / compressed_ms, per batch size."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    out = {}
    try:
        for batch in (1, 16):
            x = example[:batch]
            for m in (dense, compressed):
                m(x)
            ratios = []
            for _ in range(rounds):
                times = []
                for m in (dense, compressed):
                    start = time.perf_counter()
                    for _ in range(3):
                        m(x)
                    times.append(time.perf_counter() - start)
                ratios.append(times[0] / times[1])
            out[batch] = statistics.median(ratios)
    finally:
        torch.set_num_threads(previous)
    return out


def operator_table(ws: Workspace, name: str, steps: int, extra: dict, threads: int) -> None:
    reference = ws.reference.eval()
    ref_test = ws.reference_predictions("test")
    example = ws.splits.test.inputs[:16]
    print(f"\n### {name}: reference test perplexity {_likelihood(ref_test, ref_test)['perplexity']:.3f}, "
          f"{len(ref_test.labels):,} test predictions, {steps} recovery steps (finetune + ce, lr: auto)\n")
    print("| strategy | perplexity increase (%) | top-1 agreement (%) | footprint ratio | latency ratio b1 | latency ratio b16 | seconds |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    config = RecoveryConfig.from_dict({"epochs": 1, "max_steps": steps, "batch_size": 64})
    for label, strategy in {**strategies(name), **extra}.items():
        start = time.perf_counter()
        model, _ = strategy.apply(reference)
        model = recover(model, reference, ws.splits.train, config, strategy=strategy, seed=0, log=lambda *_: None)
        seconds = time.perf_counter() - start
        test = predict(model, ws.splits.test, batch_size=256)
        fid = mismatches(ref_test, test, ws.splits.num_classes)
        ppl = _likelihood(ref_test, test)["perplexity_increase"]
        lat = latency_ratio(reference, runnable(model.eval()), example, threads=threads)
        print(f"| {label} | {ppl:+.2f} | {100 - fid['mismatch_rate']:.2f} | {footprint(model).compression_ratio:.2f} | "
              f"{lat[1]:.2f} | {lat[16]:.2f} | {seconds:.0f} |", flush=True)


def fidelity_table(ws: Workspace, steps: int, seeds: int) -> None:
    reference = ws.reference
    ref_test = ws.reference_predictions("test")
    strategy = Compose([Prune(0.2, layers=["Linear"]), Quantize("int8")])
    print(f"\n### fidelity on char_gpt, Prune 0.2 (Linear) + int8, {steps} optimizer steps, defaults, {seeds} seeds, "
          f"{len(ref_test.labels):,} test positions\n")
    print("| recovery | accuracy (%) | perplexity increase (%) | mismatches | where reference correct | lr |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, settings in METHODS.items():
        acc, ppl, mm, ok, lrs = [], [], [], [], []
        for seed in range(seeds if label != "none" else 1):
            model, _ = strategy.apply(reference)
            report: dict = {}
            config = RecoveryConfig.from_dict({"epochs": 1, "max_steps": steps, "batch_size": 64, **settings})
            model = recover(model, reference, ws.splits.train, config, strategy=strategy, seed=seed, report=report,
                            log=lambda *_: None)
            test = predict(model, ws.splits.test, batch_size=256)
            fid = mismatches(ref_test, test, ws.splits.num_classes)
            acc.append(test.accuracy)
            ppl.append(_likelihood(ref_test, test)["perplexity_increase"])
            mm.append(fid["mismatches"])
            ok.append(fid["mismatches_ref_correct"])
            lrs.append(report.get("lr", 0.0))
        print(f"| {label} | {ms(acc)} | {ms(ppl)} | {ms(mm, 0)} | {ms(ok, 0)} | {statistics.mean(lrs):.2g} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=60, help="recovery optimizer steps (every strategy and method)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--no-fidelity", action="store_true")
    parser.add_argument("--threads", type=int, default=2, help="threads for the latency ratios")
    parser.add_argument("--search", nargs="*", default=[], metavar="RUN_DIR",
                        help="finished search runs whose best strategy gets a row (under the model of their config)")
    args = parser.parse_args()
    found = [search_result(run_dir) for run_dir in args.search]
    for name in args.models:
        torch.set_num_threads(1)  # recovery and predictions single-threaded (comparable seconds)
        ws = Workspace.from_config(load_config(REPO / CONFIGS[name]), log=lambda *_: None)
        operator_table(ws, name, args.steps, {label: s for model, label, s in found if model == name}, args.threads)
        if name == "char_gpt" and not args.no_fidelity:
            fidelity_table(ws, args.steps, args.seeds)


if __name__ == "__main__":
    main()
