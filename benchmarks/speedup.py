"""Does structured surgery make models faster? FLOPs ratio vs measured speedup, torch and onnxruntime.

FilterPrune (coupled groups, every conv selected: ``exclude=()``) at densities 0.75 / 0.5 / 0.25 on
resnet18, mobilenet_v2 and vgg11_bn with random weights, shrunk with ``condensa.surgery.shrink``.
For each model the dense and the three shrunk variants are timed *alternately in the same run*
(each round times every variant once, starting with a different one each round); the figure is
the median over the rounds (>= 20). ``torch.set_num_threads(2)``; onnxruntime gets 2 intra-op
threads. Batch 1 runs at 224x224; batch 32 at 112x112 by default (224x224 for vgg11_bn at batch 32
alone would take ~10 minutes on 2 cores; pass ``--size32 224`` to use it anyway).

* ``FLOPs x``   dense FLOPs / shrunk FLOPs (``torch.utils.flop_counter.FlopCounterMode``)
* ``speedup``   dense latency / shrunk latency (torch, median)
* ``eff``       speedup / FLOPs ratio (1.0 = the whole FLOPs reduction turns into time)
* ``ort``       the same speedup with onnxruntime on the exported ONNX files

A second table lists which of the ten models the surgery handles (FilterPrune 0.5, 64x64 input).

    python benchmarks/speedup.py [--rounds 20] [--size32 112] [--coverage-only] [--skip-coverage]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condensa import FilterPrune  # noqa: E402
from condensa.errors import ModelError  # noqa: E402
from condensa.export import onnx_bytes  # noqa: E402
from condensa.models.registry import build_model  # noqa: E402
from condensa.surgery import shrink_with_report  # noqa: E402

DENSITIES = (0.75, 0.5, 0.25)
SPEED_MODELS = ("resnet18", "mobilenet_v2", "vgg11_bn")
COVERAGE_MODELS = ("digits_cnn", "resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_small", "vgg11_bn",
                   "densenet121", "efficientnet_b0", "shufflenet_v2_x1_0", "regnet_y_400mf")


def flops(model: nn.Module, x: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    return float(counter.get_total_flops())


def onnx_session(model: nn.Module, x: torch.Tensor):
    import onnxruntime as ort

    data, _ = onnx_bytes(model, x)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def alternate(fns: list, rounds: int, warmup: int = 2) -> list[float]:
    """Median seconds of each callable, timed round-robin (rotating the starting one)."""
    for fn in fns:
        for _ in range(warmup):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        for k in range(len(fns)):
            i = (r + k) % len(fns)
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def speed(model_name: str, rounds: int, size32: int, round_to: int | None) -> list[dict]:
    torch.manual_seed(0)
    dense = torchvision.models.get_model(model_name, weights=None).eval()
    variants = [("dense", dense)]
    for density in DENSITIES:
        pruned, _ = FilterPrune(density, exclude=()).apply(dense)
        small, report = shrink_with_report(pruned, torch.randn(1, 3, 64, 64), round_to=round_to)
        variants.append((f"{density}", small))
    rows = []
    for batch, size in ((1, 224), (32, size32)):
        x = torch.randn(batch, 3, size, size)
        counts = [flops(m, x) for _, m in variants]
        with torch.no_grad():
            torch_times = alternate([lambda m=m, x=x: m(x) for _, m in variants], rounds)
        sessions = [onnx_session(m, x[:1]) for _, m in variants]
        feed = x.numpy()
        ort_times = alternate([lambda s=s, feed=feed: s.run(None, {"input": feed}) for s in sessions], rounds)
        del sessions
        for i, (label, model) in enumerate(variants):
            if i == 0:
                continue
            ratio = counts[0] / counts[i]
            speedup = torch_times[0] / torch_times[i]
            rows.append({
                "model": model_name, "density": label, "batch": batch, "size": size, "flops_ratio": ratio,
                "dense_ms": torch_times[0] * 1e3, "ms": torch_times[i] * 1e3, "speedup": speedup, "eff": speedup / ratio,
                "ort_dense_ms": ort_times[0] * 1e3, "ort_ms": ort_times[i] * 1e3, "ort_speedup": ort_times[0] / ort_times[i],
                "params": sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in dense.parameters()),
            })
        print(f"  {model_name} batch {batch} @ {size}: done", file=sys.stderr)
    return rows


def coverage() -> list[dict]:
    rows = []
    for name in COVERAGE_MODELS:
        torch.manual_seed(0)
        model = build_model(name).eval()
        x = torch.randn(2, 1, 8, 8) if name == "digits_cnn" else torch.randn(2, 3, 64, 64)
        start = time.perf_counter()
        row = {"model": name}
        try:
            pruned, _ = FilterPrune(0.5, exclude=()).apply(model)
            small, report = shrink_with_report(pruned, x[:1])
            with torch.no_grad():
                y, ys = pruned(x), small(x)
            blocked = {}
            from condensa.coupling import channel_groups

            groups = channel_groups(model, x[:1])
            for g in groups:
                if g.blocked and "model output" not in g.blocked:
                    key = "channel shuffle (view/transpose)" if "reshape" in g.blocked or "Torch-Pruning cannot map" in g.blocked \
                        else g.blocked[:60]
                    blocked[key] = blocked.get(key, 0) + 1
            row.update({
                "status": "full" if not blocked else "partial",
                "groups": len(groups), "blocked": sum(blocked.values()), "why": "; ".join(f"{n}x {k}" for k, n in blocked.items()),
                "params": sum(p.numel() for p in small.parameters()) / sum(p.numel() for p in model.parameters()),
                "flops": flops(model, x) / flops(small, x),
                "diff": float((y - ys).abs().max()) / max(float(y.abs().max()), 1e-30),
            })
        except ModelError as error:
            row.update({"status": "error", "why": str(error)[:120]})
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"  coverage {name}: {row['status']}", file=sys.stderr)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--size32", type=int, default=112, help="image size for batch 32 (default 112)")
    parser.add_argument("--round-to", type=int, default=None)
    parser.add_argument("--models", nargs="*", default=list(SPEED_MODELS))
    parser.add_argument("--coverage-only", action="store_true")
    parser.add_argument("--skip-coverage", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    began = time.perf_counter()
    print(f"threads 2, {args.rounds} alternating rounds, batch 1 @ 224x224, batch 32 @ {args.size32}x{args.size32}, "
          f"round_to={args.round_to}, load average at start {os.getloadavg()[0]:.2f}")
    if not args.coverage_only:
        rows = []
        for name in args.models:
            rows += speed(name, args.rounds, args.size32, args.round_to)
        print()
        print("| model | density | batch | FLOPs x | dense ms | shrunk ms | speedup | eff | ort dense ms | ort shrunk ms | ort speedup | ort eff | params |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['density']} | {r['batch']} | {r['flops_ratio']:.2f} | {r['dense_ms']:.1f} | {r['ms']:.1f} | "
                  f"{r['speedup']:.2f} | {r['eff']:.2f} | {r['ort_dense_ms']:.1f} | {r['ort_ms']:.1f} | {r['ort_speedup']:.2f} | "
                  f"{r['ort_speedup'] / r['flops_ratio']:.2f} | {r['params']:.2f} |")
    if not args.skip_coverage:
        rows = coverage()
        print()
        print("Surgery coverage (FilterPrune 0.5 on every conv, 64x64 input; 'blocked' groups stay at full width):")
        print("| model | status | groups | blocked | why | params kept | FLOPs x | rel. diff | s |")
        print("|---|---|---:|---:|---|---:|---:|---:|---:|")
        for r in rows:
            if r["status"] == "error":
                print(f"| {r['model']} | error | | | {r['why']} | | | | {r['seconds']:.1f} |")
                continue
            print(f"| {r['model']} | {r['status']} | {r['groups']} | {r['blocked']} | {r['why'] or '-'} | {r['params']:.2f} | "
                  f"{r['flops']:.2f} | {r['diff']:.1g} | {r['seconds']:.1f} |")
    print(f"\ntotal {time.perf_counter() - began:.0f}s, load average at end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
