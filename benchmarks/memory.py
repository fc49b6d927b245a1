"""Memory stays bounded: resident memory after every evaluation of the default digits search,
and the peak while compressing torchvision resnet18.

    python benchmarks/memory.py
"""

from __future__ import annotations

import gc
import resource
import tempfile

import torch


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from condensa import commands
    from condensa.config import load_config

    torch.set_num_threads(2)
    samples: list[float] = []
    import condensa.search.api as api

    original = api._run_one

    def measured(*args, **kwargs):
        result = original(*args, **kwargs)
        samples.append(rss_mib())
        return result

    api._run_one = measured
    with tempfile.TemporaryDirectory() as out:
        commands.run_search(load_config("configs/digits.yaml"), out=out, quiet=True, log=lambda *_: None)
    api._run_one = original
    print("## Default digits search (10 evaluations)\n")
    print("| evaluation | RSS after (MiB) |")
    print("|---:|---:|")
    for i, value in enumerate(samples):
        print(f"| {i} | {value:.0f} |")
    growth = samples[-1] - samples[2] if len(samples) > 3 else float("nan")
    print(f"\npeak RSS {peak_mib():.0f} MiB; growth from evaluation 2 to {len(samples) - 1}: {growth:+.0f} MiB\n")

    import torchvision

    from condensa import Compose, Prune, Quantize
    from condensa.metrics import footprint

    before = rss_mib()
    model = torchvision.models.resnet18()
    for round_ in range(6):
        compressed, _ = Compose([Prune(density=0.1), Quantize("int8")]).apply(model)
        with torch.no_grad():
            compressed(torch.randn(8, 3, 224, 224))
        footprint(compressed)
        del compressed
        gc.collect()
        print(f"resnet18 compress round {round_}: RSS {rss_mib():.0f} MiB")
    print(f"resnet18: RSS before {before:.0f} MiB, peak of the process {peak_mib():.0f} MiB "
          "(the first rounds grow the allocator's free lists; a leak would keep growing every round)")


if __name__ == "__main__":
    main()
