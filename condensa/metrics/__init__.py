"""Measurements: accuracy, mismatches, density, footprint, FLOPs, latency. Metrics measure; they never train."""

from .accuracy import Predictions, accuracy, predict
from .density import layer_densities, overall_density
from .fidelity import mismatches
from .flops import count_flops
from .footprint import Footprint, footprint, tensor_cost
from .latency import measure_latency

#: the metric each built-in objective keyword of a config minimizes
OBJECTIVE_METRICS = {"footprint": "footprint_bytes", "flops": "flops_effective", "latency": "latency_ms"}

__all__ = [
    "OBJECTIVE_METRICS",
    "Predictions", "accuracy", "predict", "layer_densities", "overall_density", "mismatches",
    "count_flops", "Footprint", "footprint", "tensor_cost", "measure_latency",
]
