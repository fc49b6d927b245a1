"""Metrics: accuracy, mismatches on hand-made predictions, density, FLOPs and latency."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from condensa import FilterPrune, Prune, finalize
from condensa.data.digits import IndexedTensorDataset
from condensa.metrics import (
    Predictions,
    accuracy,
    count_flops,
    layer_densities,
    measure_latency,
    mismatches,
    overall_density,
    predict,
)


def make_predictions(pred: list[int], labels: list[int], ids: list[int], confidence: list[float], classes: int = 3) -> Predictions:
    """Logits whose argmax is ``pred`` with the predicted logit equal to ``confidence``."""
    logits = torch.zeros(len(pred), classes)
    for i, (p, c) in enumerate(zip(pred, confidence, strict=False)):
        logits[i, p] = c
    return Predictions.from_logits(logits, torch.tensor(labels), torch.tensor(ids))


LABELS = [0, 0, 0, 1, 1, 1, 2, 2]
IDS = [10, 3, 7, 42, 5, 8, 1, 99]
REF = [0, 0, 1, 1, 1, 2, 2, 2]  # wrong on positions 2 and 5
CMP = [0, 2, 1, 0, 1, 1, 2, 0]  # differs from REF on positions 1, 3, 5, 7
REF_CONF = [2.0, 1.0, 2.0, 3.0, 2.0, 2.5, 2.0, 0.5]


@pytest.fixture()
def pair() -> tuple[Predictions, Predictions]:
    return make_predictions(REF, LABELS, IDS, REF_CONF), make_predictions(CMP, LABELS, IDS, [1.0] * 8)


def softmax_max(logit: float, classes: int = 3) -> float:
    return math.exp(logit) / (math.exp(logit) + classes - 1)


def test_prediction_properties(pair):
    ref, cmp = pair
    assert ref.predicted.tolist() == REF and cmp.predicted.tolist() == CMP
    assert ref.accuracy == 75.0  # 6 of 8
    assert cmp.accuracy == 50.0  # positions 0, 4, 5, 6
    assert ref.confidence[3].item() == pytest.approx(softmax_max(3.0))
    assert accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 0, 3])) == pytest.approx(200 / 3)
    assert accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)) == 0.0


def test_mismatch_counts_and_rates(pair):
    result = mismatches(*pair)
    assert result["mismatches"] == 4
    assert result["mismatch_rate"] == 50.0
    assert result["mismatches_ref_correct"] == 3  # positions 1, 3, 7
    assert result["mismatches_ref_wrong"] == 1  # position 5
    assert result["mismatch_rate_ref_correct"] == 50.0  # 3 of the 6 the reference got right


def test_mismatch_per_class_and_bias(pair):
    result = mismatches(*pair)
    assert result["per_class_mismatches"] == {"0": 1, "1": 2, "2": 1}
    rates = result["per_class_mismatch_rate"]
    assert rates["0"] == pytest.approx(100 / 3) and rates["1"] == pytest.approx(200 / 3) and rates["2"] == 50.0
    # worst class 66.7% / mean (33.3 + 66.7 + 50) / 3 = 50%
    assert result["mismatch_bias"] == pytest.approx(4 / 3)


def test_flipped_ids_and_exemplars(pair):
    result = mismatches(*pair)
    assert result["flipped_ids"] == [3, 8, 42, 99]  # dataset ids, not positions, sorted
    exemplars = result["exemplars"]
    # ordered by the reference's confidence, most confident first: positions 3 (3.0), 5 (2.5), 1 (1.0), 7 (0.5)
    assert [e["id"] for e in exemplars] == [42, 8, 3, 99]
    first = exemplars[0]
    assert first == {
        "id": 42,
        "label": 1,
        "reference_pred": 1,
        "compressed_pred": 0,
        "reference_confidence": round(softmax_max(3.0), 4),
        "compressed_confidence": round(softmax_max(1.0), 4),
    }
    assert [e["id"] for e in mismatches(*pair, exemplars=2)["exemplars"]] == [42, 8]
    assert mismatches(*pair, exemplars=0)["exemplars"] == []


def test_no_mismatches():
    ref = make_predictions(REF, LABELS, IDS, REF_CONF)
    same = make_predictions(REF, LABELS, IDS, [5.0] * 8)
    result = mismatches(ref, same)
    assert result["mismatches"] == 0 and result["mismatch_rate"] == 0.0
    assert result["mismatch_bias"] == 0.0
    assert result["flipped_ids"] == [] and result["exemplars"] == []
    assert result["per_class_mismatches"] == {"0": 0, "1": 0, "2": 0}


def test_evenly_spread_flips_have_bias_one():
    labels = [0, 0, 1, 1]
    ref = make_predictions([0, 0, 1, 1], labels, [0, 1, 2, 3], [1.0] * 4, classes=2)
    cmp = make_predictions([1, 0, 0, 1], labels, [0, 1, 2, 3], [1.0] * 4, classes=2)
    result = mismatches(ref, cmp)
    assert result["per_class_mismatch_rate"] == {"0": 50.0, "1": 50.0}
    assert result["mismatch_bias"] == 1.0


def test_num_classes_lists_every_class():
    ref = make_predictions([0, 1], [0, 1], [0, 1], [1.0, 1.0], classes=4)
    cmp = make_predictions([1, 1], [0, 1], [0, 1], [1.0, 1.0], classes=4)
    result = mismatches(ref, cmp, num_classes=4)
    assert result["per_class_mismatches"] == {"0": 1, "1": 0, "2": 0, "3": 0}
    assert result["per_class_mismatch_rate"]["2"] == 0.0  # no examples: rate 0, no division by zero


def test_mismatches_on_different_examples_is_an_error(pair):
    ref, _ = pair
    other = make_predictions(CMP, LABELS, [i + 1 for i in IDS], [1.0] * 8)
    with pytest.raises(ValueError, match="not on the same examples"):
        mismatches(ref, other)


def test_predict_keeps_dataset_ids_and_training_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.Dropout(0.5)).train()
    x = torch.randn(5, 1, 2, 2)
    data = IndexedTensorDataset(x, torch.tensor([0, 1, 2, 0, 1]), torch.tensor([11, 4, 9, 2, 30]))
    out = predict(model, data, batch_size=2)
    assert model.training  # restored
    assert out.indices.tolist() == [11, 4, 9, 2, 30]
    assert out.labels.tolist() == [0, 1, 2, 0, 1]
    assert out.logits.dtype == torch.float32 and out.logits.shape == (5, 3)
    torch.testing.assert_close(out.logits, model.eval()(x))  # eval mode: no dropout
    plain = torch.utils.data.TensorDataset(x, torch.zeros(5, dtype=torch.long))
    assert predict(model, plain).indices.tolist() == [0, 1, 2, 3, 4]


# --------------------------------------------------------------------------------------------------
# Density
# --------------------------------------------------------------------------------------------------


def test_density_of_a_pruned_model(tiny):
    model, record = Prune(0.2).apply(tiny)
    densities = layer_densities(model)
    assert set(densities) == {"conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"}
    for name, value in densities.items():
        assert value == pytest.approx(record.layers[name].density)
    assert overall_density(model) == pytest.approx(record.density)
    total = sum(getattr(tiny, n).weight.numel() for n in ("conv1", "conv2", "fc1", "fc2"))
    assert overall_density(model) == round(0.2 * total) / total
    finalize(model)
    assert overall_density(model) == pytest.approx(record.density)
    assert overall_density(tiny) == 1.0


# --------------------------------------------------------------------------------------------------
# FLOPs and latency
# --------------------------------------------------------------------------------------------------


def test_linear_flops_dense_and_effective():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32))
    x = torch.randn(1, 64)
    assert count_flops(model, x) == {"flops_dense": 2 * 64 * 32, "flops_effective": 2 * 64 * 32}
    assert count_flops(model, torch.randn(3, 64))["flops_dense"] == 3 * 2 * 64 * 32
    for density in (0.5, 0.25, 0.1):
        pruned, _ = Prune(density, scope="layer").apply(model)
        kept = round(density * 64 * 32) / (64 * 32)
        flops = count_flops(pruned, x)
        assert flops["flops_dense"] == 2 * 64 * 32
        assert flops["flops_effective"] == pytest.approx(2 * 64 * 32 * kept)


def test_conv_flops_scale_per_layer(tiny):
    x = torch.randn(1, 3, 8, 8)
    dense = count_flops(tiny, x)["flops_dense"]
    conv1 = 2 * 8 * 3 * 9 * 64
    conv2 = 2 * 16 * 8 * 9 * 64
    fc = 2 * 16 * 12 + 2 * 12 * 10
    assert dense == conv1 + conv2 + fc
    model, _ = FilterPrune(0.5).apply(tiny)  # conv1 keeps half its filters, so conv2 half its inputs
    flops = count_flops(model, x)
    assert flops["flops_dense"] == dense
    assert flops["flops_effective"] == pytest.approx(dense - conv1 / 2 - conv2 / 2)
    assert model.training is False and tiny.training is False


@pytest.mark.parametrize("name, x", [("digits_cnn", torch.randn(2, 1, 8, 8)), ("resnet18", torch.randn(1, 3, 32, 32))])
def test_effective_flops_of_filter_pruning_equal_the_shrunk_models_count(name, x):
    from torch.utils.flop_counter import FlopCounterMode

    from condensa.models.registry import build_model
    from condensa.surgery import shrink

    model = build_model(name).eval()
    masked, _ = FilterPrune(0.5, exclude=() if name == "resnet18" else ("@last",)).apply(model)
    small = shrink(masked, x[:1])
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        small(x)
    shrunk = counter.get_total_flops()
    effective = count_flops(masked, x)["flops_effective"]
    assert abs(effective - shrunk) <= 0.01 * shrunk, (effective, shrunk)
    assert shrunk < 0.6 * count_flops(model, x)["flops_dense"]


def test_count_flops_restores_training_mode():
    model = nn.Sequential(nn.Linear(4, 2)).train()
    count_flops(model, torch.randn(1, 4))
    assert model.training


def test_latency_records_median_batch_size_and_threads():
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    previous = torch.get_num_threads()
    result = measure_latency(model, torch.randn(8, 64), repeats=5, warmup=1, threads=1)
    assert result["latency_ms"] > 0
    assert result["latency_batch_size"] == 8
    assert result["latency_threads"] == 1
    assert result["latency_repeats"] == 5
    assert torch.get_num_threads() == previous  # restored
    assert measure_latency(model, torch.randn(2, 64), repeats=3, warmup=0)["latency_threads"] == previous


def test_session_cache_is_private(_private_cache):
    # conftest points CONDENSA_CACHE at a temporary directory for every test (and CLI subprocess)
    import os
    from pathlib import Path

    from condensa.models.reference import cache_dir

    assert os.environ["CONDENSA_CACHE"] == _private_cache
    assert cache_dir() == Path(_private_cache)
    assert Path.home() / ".cache" / "condensa" not in (cache_dir(), *cache_dir().parents)


def test_the_metric_names_a_config_may_use_are_the_ones_an_evaluation_measures():
    """``pipeline.METRICS`` (checked against objectives and constraints before training) must stay
    what ``Workspace.evaluate`` really returns."""
    from condensa import Prune
    from condensa.config import MetricsConfig
    from condensa.data import digits_splits
    from condensa.models.digits import DigitsCNN
    from condensa.pipeline import LATENCY_METRICS, METRICS, Workspace

    splits = digits_splits(limit=40)
    workspace = Workspace(DigitsCNN(), splits, recovery={"method": "none"}, device="cpu", objective=lambda model, m: 1.0,
                          metrics=MetricsConfig(latency=True, latency_repeats=1))
    metrics = workspace.evaluate(Prune(0.5)).metrics
    numbers = {k for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert numbers == set(METRICS) | set(LATENCY_METRICS) | {"objective"}
