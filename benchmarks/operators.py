"""What do the operators cost? Apply time on resnet18, and the training-step overhead of masks.

For each operator:

* ``apply ms``   wall-clock time of ``strategy.apply(model)`` on torchvision ``resnet18`` (random
  weights; includes the deep copy ``apply`` makes), median of 3. ``n/a`` where the operator selects
  nothing in resnet18 (NeuronPrune: its only Linear is the classifier, excluded by default).
* ``dense ms`` / ``masked ms``  one Adam training step (zero_grad, forward, cross-entropy, backward,
  step) at batch 64 on the digits CNN, dense and compressed, *alternated in the same run* (each
  round times one dense and one compressed step, the order flipping every round), after warm-up;
  medians over the rounds.
* ``ratio``      masked / dense median wall-clock step time; the goal is <= 1.2.
* ``paired ratio``   median over the rounds of (masked / dense) within the round.
* ``CPU-time ratio``  the same with process CPU time (``time.process_time``), which is far less
  sensitive to other processes competing for the cores than wall-clock time.
* ``min ratio``  fastest masked step / fastest dense step: the overhead with the least
  interference from other processes (on a loaded 2-core machine the medians at 2 threads swing by
  +-30% between runs; run with ``--threads 1`` to see the intrinsic overhead).

``torch.set_num_threads(2)`` (``--threads``), CPU.

    python benchmarks/operators.py [--rounds 50] [--warmup 10] [--threads 2] [--only NAME]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from condensa import BlockPrune, Compose, FilterPrune, NeuronPrune, NMPrune, Prune, Quantize  # noqa: E402
from condensa.errors import LayerSelectionError  # noqa: E402
from condensa.models.digits import DigitsCNN  # noqa: E402

STRATEGIES = {
    "Prune 0.1 global": Prune(0.1),
    "Prune 0.1 layer": Prune(0.1, scope="layer"),
    "FilterPrune 0.5": FilterPrune(0.5),
    "NeuronPrune 0.5": NeuronPrune(0.5),
    "BlockPrune 0.25 (1x4)": BlockPrune(0.25, block_size=(1, 4)),
    "NMPrune 2:4 (exclude @first)": NMPrune(2, 4, exclude=["@first"]),
    "Quantize int8": Quantize("int8"),
    "Quantize fp16": Quantize("fp16"),
    "Compose(Prune 0.1, Quantize int8)": Compose([Prune(0.1), Quantize("int8")]),
}


def apply_ms(strategy, model: nn.Module, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        strategy.apply(model)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def make_step(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor):
    """A closure running one Adam step; returns ``(wall ms, process CPU ms)``."""
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def step() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        optimizer.zero_grad(set_to_none=True)
        loss = nn.functional.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        return (time.perf_counter() - wall) * 1000, (time.process_time() - cpu) * 1000

    return step


def step_ratio(strategy, rounds: int, warmup: int) -> dict[str, float]:
    torch.manual_seed(0)
    dense = DigitsCNN()
    masked, _ = strategy.apply(dense)
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(64, 1, 8, 8, generator=g)
    labels = torch.randint(0, 10, (64,), generator=g)
    dense_step = make_step(copy.deepcopy(dense), inputs, labels)
    masked_step = make_step(masked, inputs, labels)
    for _ in range(warmup):
        dense_step()
        masked_step()
    dense_times, masked_times = [], []
    for i in range(rounds):
        if i % 2:
            masked_times.append(masked_step())
            dense_times.append(dense_step())
        else:
            dense_times.append(dense_step())
            masked_times.append(masked_step())
    d = statistics.median(t[0] for t in dense_times)
    m = statistics.median(t[0] for t in masked_times)
    d_cpu = statistics.median(t[1] for t in dense_times)
    m_cpu = statistics.median(t[1] for t in masked_times)
    paired = statistics.median(mt[0] / dt[0] for mt, dt in zip(masked_times, dense_times, strict=False))
    fastest = min(t[0] for t in masked_times) / min(t[0] for t in dense_times)
    return {"dense": d, "masked": m, "ratio": m / d, "paired": paired, "cpu_ratio": m_cpu / d_cpu, "min_ratio": fastest}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default=None, help="run only strategies whose name contains this")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    resnet = torchvision.models.resnet18(weights=None).eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; digits CNN batch 64, Adam, "
          f"{args.rounds} alternated rounds after {args.warmup} warm-up\n")
    print("| strategy | apply resnet18 (ms) | dense step (ms) | masked step (ms) | ratio | paired ratio | CPU-time ratio "
          "| min ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, strategy in STRATEGIES.items():
        if args.only and args.only not in name:
            continue
        try:
            apply_cell = f"{apply_ms(strategy, resnet):.0f}"
        except LayerSelectionError:  # e.g. NeuronPrune: resnet18's only Linear is the excluded classifier
            apply_cell = "n/a"
        r = step_ratio(strategy, args.rounds, args.warmup)
        flag = "" if r["ratio"] <= 1.2 else " **>1.2**"
        print(f"| {name} | {apply_cell} | {r['dense']:.2f} | {r['masked']:.2f} | {r['ratio']:.2f}{flag} | "
              f"{r['paired']:.2f} | {r['cpu_ratio']:.2f} | {r['min_ratio']:.2f} |", flush=True)

if __name__ == "__main__":
    main()
