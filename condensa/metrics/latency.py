"""Measured latency: warm-up, then the median of repeated timed forwards."""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn


@torch.no_grad()
def measure_latency(
    model: nn.Module, example_input: torch.Tensor, *, repeats: int = 20, warmup: int = 5, threads: int | None = None
) -> dict[str, float]:
    """Median wall-clock milliseconds per forward of ``example_input`` (batch size and threads
    are recorded with the figure, since latency means nothing without them)."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    was_training = model.training
    try:
        model.eval()
        device = example_input.device
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        for _ in range(warmup):
            model(example_input)
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(example_input)
            sync()
            times.append((time.perf_counter() - start) * 1000.0)
        return {
            "latency_ms": statistics.median(times),
            "latency_batch_size": int(example_input.shape[0]),
            "latency_threads": torch.get_num_threads(),
            "latency_repeats": repeats,
        }
    finally:
        torch.set_num_threads(previous)
        model.train(was_training)
