"""Footprint: the fixed-width layout costs (``tensor_cost``) on hand-made tensors, computed by hand,
and the model footprint, which is the exact size of the packed file ``save`` writes."""

from __future__ import annotations

import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from condensa import Compose, FilterPrune, NeuronPrune, NMPrune, Prune, Quantize, finalize
from condensa.metrics import footprint, tensor_cost
from condensa.metrics.footprint import relative_cost


def sparse_1d(numel: int, positions: list[int], value: float = 1.5) -> torch.Tensor:
    t = torch.zeros(numel)
    t[positions] = value
    return t


def simulate_relative(t: torch.Tensor, value_bits: int, b: int) -> int:
    """Encode the nonzeros of ``t`` as (value, b-bit gap) entries, inserting filler entries (a stored
    zero) whenever more than 2^b - 1 zeros precede a value; return the bits."""
    entries, zeros = 0, 0
    for x in t.reshape(-1).tolist():
        if x == 0:
            zeros += 1
            continue
        while zeros > 2**b - 1:
            entries += 1  # filler: 2^b - 1 zeros then the stored zero itself
            zeros -= 2**b
        entries += 1
        zeros = 0
    return entries * (value_bits + b)


def random_nm(rows: int, cols: int, n: int, m: int, seed: int = 0) -> torch.Tensor:
    """Positive values with a random n-of-m pattern along dim 1 (irregular gaps, so relative
    coding gets no free ride from a periodic pattern)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(rows, cols, generator=g) + 0.1
    order = torch.rand(rows, cols // m, m, generator=g).argsort(dim=-1)
    keep = torch.zeros(rows, cols // m, m, dtype=torch.bool).scatter_(-1, order[..., :n], True)
    return t * keep.reshape(rows, cols)


def test_dense_tensor_costs_numel_times_value_bits():
    t = torch.randn(10, 10).abs() + 0.1
    for bits in (32, 16, 8, 4):
        cost = tensor_cost(t, bits)
        assert (cost.bits, cost.encoding, cost.nnz, cost.numel) == (100 * bits, "dense", 100, 100)


def test_bitmask_costs_one_bit_per_element_plus_the_values():
    # nonzeros at 0-3 and 8-11 of 16: gaps 0,0,0,0,4,0,0,0
    t = sparse_1d(16, [0, 1, 2, 3, 8, 9, 10, 11])
    cost = tensor_cost(t, 8)
    # dense 16*8 = 128; bitmask 16 + 8*8 = 80; relative best b=3: 8 entries * 11 = 88 (b=1,2: 90)
    assert (cost.bits, cost.encoding, cost.nnz) == (80, "bitmask", 8)
    assert relative_cost(t != 0, 16, 8) == (88, 3)


def test_relative_index_bits_with_filler_entries_by_hand():
    # 100 values each preceded by 15 zeros, then one value preceded by 500 zeros; 8-bit values
    positions = [15 + 16 * i for i in range(100)]
    positions.append(positions[-1] + 501)
    t = sparse_1d(positions[-1] + 1, positions)
    numel, nnz = t.numel(), 101
    assert numel == 2101
    # b=4: fillers 500>>4 = 31 -> 132 entries * 12 = 1584
    # b=5: fillers 500>>5 = 15 -> 116 entries * 13 = 1508   <- best
    # b=6: fillers 7 -> 108 * 14 = 1512; b=7: 3 -> 104 * 15 = 1560; b=9: none -> 101 * 17 = 1717
    assert simulate_relative(t, 8, 4) == 1584
    assert simulate_relative(t, 8, 5) == 1508
    assert simulate_relative(t, 8, 6) == 1512
    assert simulate_relative(t, 8, 9) == 1717
    assert relative_cost(t != 0, numel, 8) == (1508, 5)
    cost = tensor_cost(t, 8)
    # bitmask would be 2101 + 101*8 = 2909, dense 16808
    assert (cost.bits, cost.encoding, cost.index_bits, cost.nnz) == (1508, "relative", 5, nnz)


def test_relative_gap_counts_from_the_start_and_exact_power_of_two_boundaries():
    # first value after 7 zeros: fits in b=3 (max gap 7); after 8 zeros needs one filler at b=3
    assert simulate_relative(sparse_1d(8, [7]), 32, 3) == 35
    assert simulate_relative(sparse_1d(9, [8]), 32, 3) == 70
    assert relative_cost(sparse_1d(8, [7]) != 0, 8, 32) == (33, 1) or relative_cost(sparse_1d(8, [7]) != 0, 8, 32)[0] <= 35
    # b=1 with gap 7: 3 fillers -> 4 entries * 33 = 132; b=3: 35; b=2: 7>>2 = 1 -> 2*34 = 68
    bits, b = relative_cost(sparse_1d(8, [7]) != 0, 8, 32)
    assert (bits, b) == (35, 3)


@pytest.mark.parametrize("seed", range(5))
def test_relative_cost_matches_an_explicit_encoder(seed):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(300, generator=g) * (torch.rand(300, generator=g) < 0.05 * (seed + 1))
    bits, b = relative_cost(t != 0, t.numel(), 8)
    assert bits == min(simulate_relative(t, 8, k) for k in range(1, 17))
    assert bits == simulate_relative(t, 8, b)


def test_all_zero_tensor():
    cost = tensor_cost(torch.zeros(4, 4), 32)
    assert cost.nnz == 0 and cost.bits == 0  # relative coding of no entries (shape lives in metadata)
    assert relative_cost(torch.zeros(16, dtype=torch.bool), 16, 32) == (0, 1)


def test_nm_2_4_cost():
    t = random_nm(8, 16, 2, 4)
    for bits in (8, 4, 32):
        cost = tensor_cost(t, bits)
        groups = 8 * 16 // 4
        nm_bits = groups * 2 * (bits + 2)  # n values and a 2-bit position each, per group
        assert cost.bits == nm_bits
        # for exactly 2:4 the N:M and bitmask layouts both cost numel * (1 + bits/2); the tie goes to
        # the bitmask (the first listed), the bit count is the same
        assert nm_bits == 128 + 64 * bits
        assert cost.encoding in ("nm", "bitmask")


def test_nm_1_4_wins():
    t = random_nm(8, 32, 1, 4)
    cost = tensor_cost(t, 8)
    assert cost.encoding == "nm" and cost.nm == (1, 4) and cost.index_bits == 2
    assert cost.bits == (8 * 32 // 4) * 1 * (8 + 2)
    assert cost.bits < 8 * 32 + cost.nnz * 8  # cheaper than the bitmask


@pytest.mark.parametrize(("n", "m"), [(2, 8), (1, 8)])
def test_nm_m8_patterns_are_found_and_costed_against_relative_coding(n, m):
    t = random_nm(8, 32, n, m)
    cost = tensor_cost(t, 8)
    nm_bits = (8 * 32 // m) * n * (8 + 3)
    rel_bits, _ = relative_cost(t.reshape(-1) != 0, t.numel(), 8)
    assert cost.bits == min(nm_bits, rel_bits, 8 * 32 + cost.nnz * 8)
    # regression: a 1:8 (2:8) tensor also satisfies 1:4 (2:4), which used to be picked although it
    # costs twice as much; here the m=8 layout is strictly the cheapest
    assert nm_bits < rel_bits
    assert (cost.encoding, cost.nm, cost.index_bits, cost.bits) == ("nm", (n, m), 3, nm_bits)


def test_nm_of_conv_weight_groups_input_channels():
    # [out=4, in=8, 3, 3] with 1:4 along the input channels at every kernel position
    t = random_nm(4 * 9, 8, 1, 4).reshape(4, 3, 3, 8).movedim(-1, 1)
    cost = tensor_cost(t, 8)
    assert cost.nm == (1, 4) and cost.bits == (4 * 8 * 9 // 4) * 1 * (8 + 2)


def test_rows_dropped_cost():
    torch.manual_seed(0)
    t = torch.randn(8, 16).abs() + 0.1
    t[[1, 4, 6]] = 0
    cost = tensor_cost(t, 32)
    # 5 kept rows dense (5*16*32 = 2560) + one bit per row (8); bitmask would be 128 + 80*32 = 2688
    assert (cost.bits, cost.encoding, cost.rows_dropped) == (2568, "rows+dense", 3)
    # int8 with per-channel scales: only the kept rows store a scale
    cost = tensor_cost(t, 8, scales=8)
    assert (cost.bits, cost.encoding) == (5 * 16 * 8 + 8 + 5 * 32, "rows+dense")


def test_rows_dropped_then_sparse_inside():
    t = random_nm(8, 16, 1, 4)
    t[[0, 7]] = 0
    cost = tensor_cost(t, 8)
    inner = (6 * 16 // 4) * 1 * (8 + 2)  # 1:4 on the 6 kept rows
    assert cost.encoding == "rows+nm" and cost.bits == inner + 8 and cost.rows_dropped == 2


def test_int_scales_are_32_bits_per_output_channel():
    t = torch.randn(4, 10).abs() + 0.1
    assert tensor_cost(t, 8, scales=4).bits == 4 * 10 * 8 + 4 * 32
    assert tensor_cost(t, 4, scales=4).bits == 4 * 10 * 4 + 4 * 32


def test_integer_and_empty_tensors_are_always_dense():
    t = torch.tensor([0, 0, 0, 5, 0, 0], dtype=torch.int64)
    cost = tensor_cost(t, 64)
    assert (cost.bits, cost.encoding) == (6 * 64, "dense")
    assert tensor_cost(torch.zeros(0, 3), 32).bits == 0


# --------------------------------------------------------------------------------------------------
# Model footprint
# --------------------------------------------------------------------------------------------------


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(OrderedDict(fc=nn.Linear(10, 4)))
    with torch.no_grad():
        model.fc.weight.copy_(torch.rand(4, 10) + 0.1)  # no zeros, so dense is cheapest
        model.fc.bias.copy_(torch.rand(4) + 0.1)
    return model


def written_bytes(model, tmp_path, **kwargs) -> int:
    from condensa.export import save

    manifest = save(model, tmp_path, onnx=False, surgery=False, **kwargs)
    assert manifest["size"]["file_bytes"] == (tmp_path / "model.safetensors").stat().st_size
    return manifest["size"]["file_bytes"]


def test_untouched_model_costs_its_dtype_bits(tmp_path):
    fp = footprint(linear_model())
    assert fp.tensors["fc.weight"] >= 40 * 32 and fp.tensors["fc.bias"] >= 4 * 32  # raw floats + a few header bits
    assert fp.reference_bytes == 44 * 4
    assert fp.bytes == written_bytes(linear_model(), tmp_path)
    assert 176 < fp.bytes < 176 + 100  # container and headers only
    assert fp.compression_ratio == fp.reference_bytes / fp.bytes


def test_int8_footprint_adds_one_scale_per_output_channel_and_leaves_bias_alone(tmp_path):
    model, record = Quantize("int8").apply(linear_model())
    fp = footprint(model)
    assert fp.tensors["fc.weight"] <= 40 * 8 + 4 * 32 + 16  # codes (entropy-coded when it pays) + fp32 scales
    assert fp.tensors["fc.bias"] >= 4 * 32
    assert fp.reference_bytes == 44 * 4
    assert fp.bytes == written_bytes(model, tmp_path / "a", record=record)
    assert set(fp.tensors) == {"fc.weight", "fc.bias"}  # parametrization internals are not counted twice
    # after finalize the bits come from the record
    finalize(model)
    assert footprint(model, bits=record.bits).bytes == fp.bytes
    assert footprint(model, record=record).bytes == fp.bytes
    assert footprint(model).bytes > fp.bytes  # without them the values look like fp32


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
def test_16_bit_float_footprint_has_no_scales(dtype, tmp_path):
    model, _ = Quantize(dtype).apply(linear_model())
    fp = footprint(model)
    assert 40 * 16 <= fp.tensors["fc.weight"] <= 40 * 16 + 8
    assert fp.bytes == written_bytes(model, tmp_path)


def test_footprint_of_buffers_and_norms(tmp_path):
    model = nn.Sequential(OrderedDict(conv=nn.Conv2d(2, 3, 1), bn=nn.BatchNorm2d(3)))
    with torch.no_grad():
        model.bn.running_mean.fill_(0.5)
        model.bn.bias.fill_(0.25)
        model.conv.weight.copy_(torch.rand(3, 2, 1, 1) + 0.1)
        model.conv.bias.fill_(0.1)
    fp = footprint(model)
    assert fp.tensors["bn.running_var"] < 3 * 32  # a constant tensor: one value
    assert fp.tensors["bn.num_batches_tracked"] < 64  # Exp-Golomb
    assert fp.reference_bytes == ((6 + 3 + 3 * 4) * 32 + 64) / 8
    assert fp.bytes == written_bytes(model, tmp_path)


def test_compression_ratio_is_fp32_bytes_over_footprint_bytes(tiny, tmp_path):
    strategy = Compose([Prune(0.1), Quantize("int8")])
    model, record = strategy.apply(tiny)
    fp = footprint(model)
    reference_bits = sum(t.numel() * (32 if t.is_floating_point() else t.element_size() * 8) for t in tiny.state_dict().values())
    assert fp.reference_bytes == reference_bits / 8
    assert fp.compression_ratio == pytest.approx(fp.reference_bytes / fp.bytes)
    assert fp.bytes > (sum(fp.tensors.values()) + 72) / 8  # tensors + payload header + safetensors header
    assert set(fp.tensors) == set(tiny.state_dict())
    assert fp.bytes == written_bytes(model, tmp_path, strategy=strategy, record=record)
    assert fp.compression_ratio > 4  # 8-bit values and 90% of the weights gone


def test_structured_pruning_footprint_drops_rows(tiny):
    model, _ = Compose([FilterPrune(0.5), NeuronPrune(0.5)]).apply(tiny)
    fp = footprint(model)
    dense = footprint(tiny)
    assert fp.tensors["conv1.weight"] <= 4 * 27 * 32 + 8 + 16  # the kept rows, a row bitmask and a header
    assert fp.tensors["fc1.weight"] <= 6 * 16 * 32 + 12 + 16
    assert dense.bytes - fp.bytes > (4 * 27 + 6 * 16) * 4 * 0.9  # the dropped rows' values


def test_nm_pruned_model_footprint(tiny, tmp_path):
    model, record = Compose([NMPrune(2, 4, exclude=["@first"]), Quantize("int8")]).apply(tiny)
    fp = footprint(model)
    assert fp.tensors["fc1.weight"] <= (12 * 16 // 4) * 2 * (8 + 2) + 12 * 32 + 64  # no worse than N:M positions
    assert math.isclose(fp.compression_ratio, fp.reference_bytes / fp.bytes)
    assert fp.bytes == written_bytes(model, tmp_path, record=record)


def test_footprint_of_a_parametrized_root_module():
    model, _ = Quantize("int8").apply(linear_model().fc)
    fp = footprint(model)
    assert set(fp.tensors) == {"weight", "bias"}  # no parametrization internals
    assert fp.bytes == footprint(Quantize("int8").apply(linear_model())[0]).bytes and fp.reference_bytes == 44 * 4
