"""Metrics: accuracy, mismatches on hand-made predictions, density, FLOPs and latency."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from condensa import FilterPrune, NMPrune, Prune, Quantize, finalize
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
    tensor_cost,
)
from condensa.metrics.footprint import footprint, relative_cost


def make_predictions(pred: list[int], labels: list[int], ids: list[int], confidence: list[float], classes: int = 3) -> Predictions:
    """Logits whose argmax is ``pred`` with the predicted logit equal to ``confidence``."""
    logits = torch.zeros(len(pred), classes)
    for i, (p, c) in enumerate(zip(pred, confidence, strict=False)):
        logits[i, p] = c
    return Predictions(logits, torch.tensor(labels), torch.tensor(ids))


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
# tensor_cost on hand-made tensors (every expected figure computed by hand)
# --------------------------------------------------------------------------------------------------


def test_cost_of_a_dense_tensor_is_numel_times_value_bits():
    t = torch.arange(1, 33, dtype=torch.float32).reshape(4, 8)  # no zeros
    cost = tensor_cost(t, 32)
    # dense 32*32 = 1024; bitmask 32 + 32*32 = 1056; relative (b=1, no fillers) 32*33 = 1056
    assert (cost.bits, cost.encoding, cost.nnz, cost.numel) == (1024, "dense", 32, 32)
    assert tensor_cost(t, 8).bits == 32 * 8
    assert tensor_cost(t, 16).bits == 32 * 16


def test_cost_bitmask_is_numel_plus_nnz_times_bits():
    # 1-D (no N:M, no rows): nonzeros at 0..5 and 11..15, one run of 5 zeros in between
    t = torch.zeros(16)
    t[:6] = 1.0
    t[11:] = 2.0
    cost = tensor_cost(t, 32)
    # dense 512; bitmask 16 + 11*32 = 368; relative: gaps [0]*6 + [5] + [0]*4:
    #   b=1: 5>>1 = 2 fillers -> 13*33 = 429; b=2: 1 filler -> 12*34 = 408; b=3: 11*35 = 385
    assert cost.encoding == "bitmask"
    assert cost.bits == 16 + 11 * 32 == 368
    assert relative_cost(t != 0, 16, 32) == (385, 3)


def test_cost_relative_index_with_filler_entries_by_hand():
    # 20 nonzeros, each after a run of 3 zeros except the 11th, after 5 zeros; then 10 trailing zeros
    gaps = [5 if i == 10 else 3 for i in range(20)]
    positions, p = [], -1
    for gap in gaps:
        p += gap + 1
        positions.append(p)
    t = torch.zeros(positions[-1] + 1 + 10)
    t[positions] = torch.arange(1, 21, dtype=torch.float32)
    assert t.numel() == 92 and positions[-1] == 81
    # value_bits 4. Gap g needs g >> b fillers (a filler holds a zero value and covers 2^b positions):
    #   b=1: 19*1 + 2 = 21 fillers -> (20+21)*(4+1) = 205
    #   b=2: 0 + 5>>2 = 1 filler   -> (20+1)*(4+2)  = 126   <- best
    #   b=3: none                  -> 20*(4+3)      = 140
    # bitmask 92 + 20*4 = 172, dense 92*4 = 368; trailing zeros cost nothing in relative coding
    cost = tensor_cost(t, 4)
    assert (cost.bits, cost.encoding, cost.index_bits) == (126, "relative", 2)
    assert relative_cost(t != 0, t.numel(), 4) == (126, 2)
    # one more zero in the long run (gap 6) still takes one filler at b=2; gap 8 takes two
    assert relative_cost(_with_gap(gaps, 10, 6) != 0, 200, 4) == (126, 2)
    assert relative_cost(_with_gap(gaps, 10, 8) != 0, 200, 4) == (132, 2)  # (20+2)*6
    # a leading gap counts from position 0: one nonzero at position 4 (gap 4):
    #   b=1: 2 fillers -> 3*5 = 15; b=2: 1 filler -> 2*6 = 12; b=3: none -> 1*7 = 7
    single = torch.zeros(8)
    single[4] = 1.0
    assert relative_cost(single != 0, 8, 4) == (7, 3)


def test_cost_nm_2_4_tensor():
    # [4, 8]: every group of 4 consecutive inputs keeps exactly 2 (alternating layouts, so that the
    # long runs between groups make relative coding pay fillers)
    t = torch.zeros(4, 8)
    for r in range(4):
        t[r, 0:2] = r + 1.0  # group 0 keeps inputs 0, 1
        t[r, 6:8] = r + 2.0  # group 1 keeps inputs 6, 7
    groups, n = 8, 2
    nm_bits = groups * n * (32 + 2)  # 2 values and 2-bit positions per group of 4
    assert nm_bits == 544
    # 2:4 metadata is one bit per element on average, so N:M ties with the bitmask (32 + 16*32)
    cost = tensor_cost(t, 32)
    assert cost.bits == nm_bits == 32 + 16 * 32
    assert cost.encoding in ("bitmask", "nm")
    # with int8 values and one scale per row: 8*2*(8+2) + 4*32
    assert tensor_cost(t, 8, scales=4).bits == 160 + 128
    # 1:4 is strictly cheaper as N:M: 8 groups * (32 + 2) = 272 < bitmask 32 + 8*32 = 288
    one = t.clone()
    one[:, 1] = 0
    one[:, 6] = 0
    cost = tensor_cost(one, 32)
    assert (cost.bits, cost.encoding, cost.nm, cost.index_bits) == (272, "nm", (1, 4), 2)


def test_cost_of_an_nm_pruned_layer_is_the_nm_formula():
    torch.manual_seed(0)
    model, _ = NMPrune(2, 4).apply(nn.Sequential(nn.Linear(64, 32)))
    w = model[0].weight.detach()
    assert tensor_cost(w, 32).bits == (32 * 64 // 4) * 2 * 34


def test_int8_scales_cost_32_bits_per_output_channel():
    t = torch.arange(1, 61, dtype=torch.float32).reshape(6, 10)  # dense
    assert tensor_cost(t, 8, scales=6).bits == 60 * 8 + 6 * 32
    assert tensor_cost(t, 8).bits == 60 * 8
    # the scales are added to the sparse encodings too: bitmask numel + nnz*8 + scales
    sparse = t.clone()
    sparse[:, ::2] = 0  # 30 nonzeros, gaps of 1: relative b=1 costs 30*9 = 270 < bitmask 60 + 240
    assert tensor_cost(sparse, 8, scales=6).bits == 30 * 9 + 6 * 32
    # footprint of an int8-quantized Linear(10, 6): codes + one fp32 scale per output row; the bias
    # is untouched fp32
    torch.manual_seed(0)
    model, _ = Quantize("int8").apply(nn.Sequential(nn.Linear(10, 6)))
    costs = footprint(model).tensors
    assert costs["0.weight"].bits == 60 * 8 + 6 * 32
    assert costs["0.bias"].bits == 6 * 32


def _with_gap(gaps: list[int], index: int, gap: int) -> torch.Tensor:
    gaps = list(gaps)
    gaps[index] = gap
    t = torch.zeros(200)
    p = -1
    for g in gaps:
        p += g + 1
        t[p] = 1.0
    return t


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
