"""Measurements: accuracy, mismatches, density, footprint, FLOPs, latency."""

from .accuracy import Predictions, accuracy, predict
from .density import layer_densities, overall_density
from .fidelity import mismatches
from .flops import count_flops
from .footprint import Footprint, footprint, tensor_cost
from .latency import measure_latency

__all__ = [
    "Predictions", "accuracy", "predict", "layer_densities", "overall_density", "mismatches",
    "count_flops", "Footprint", "footprint", "tensor_cost", "measure_latency",
]
