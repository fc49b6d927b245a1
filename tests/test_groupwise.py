"""Group-wise int4: ``Quantize("int4", group_size=G)`` (dtype ``int4gG``), its exact footprint,
the packed round trip and ``condensa eval`` of an export."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from condensa import Choice, Compose, Prune, Quantize, Range
from condensa.errors import ConfigError, KnobError, ModelError
from condensa.export import load, save
from condensa.metrics.footprint import footprint
from condensa.operators import NeuronPrune, NMPrune, params
from condensa.operators.codebook import QuantizeAux
from condensa.operators.groupwise import group_dequantize, group_quantize
from condensa.packing import layout as packing


def quantize(w: torch.Tensor, g: int, bits: int = 4) -> torch.Tensor:
    q, s, live = group_quantize(w, bits, g)
    return group_dequantize(q, s, live, g, w.shape)


def test_math_by_hand_fp16_scales_first_and_a_partial_last_group():
    s16 = 936 / 65536  # fp16(0.1 / 7): the fp32 scale 0.0142857 rounded to the fp16 grid (2^-16 here)
    w = torch.tensor([[0.875, -0.3, 0.4375, 0.1, -1.75],
                      [0.1, 0.1 / 7 * 3.4995, 0.0, 0.0, 0.0]])
    q, scale, live = group_quantize(w, 4, 2)  # groups: columns {0, 1}, {2, 3}, {4} (the last one shorter)
    assert live.all()
    # row 0: scales 0.875/7, 0.4375/7, 1.75/7 are exact in fp16; row 1: 0.1/7 rounds, empty groups get 1
    assert scale.tolist() == [[0.125, 0.0625, 0.25], [s16, 1.0, 1.0]]
    # 0.1/7*3.4995 / the fp32 scale = 3.4995 -> 3, but / the fp16 scale = 3.5004 -> 4: codes use the rounded scale
    assert q.tolist() == [[7, -2, 7, 2, -7], [7, 4, 0, 0, 0]]
    expected = torch.tensor([[0.875, -0.25, 0.4375, 0.125, -1.75], [7 * s16, 4 * s16, 0, 0, 0]])
    assert torch.equal(quantize(w, 2), expected)


def test_dead_columns_are_skipped_so_removing_them_later_changes_nothing():
    torch.manual_seed(0)
    w = torch.randn(6, 40)
    dead = torch.tensor([1, 5, 6, 17, 33])
    w[:, dead] = 0
    keep = torch.ones(40, dtype=torch.bool)
    keep[dead] = False
    for g in (4, 8, 32):
        assert torch.equal(quantize(w, g)[:, keep], quantize(w[:, keep], g))  # quantize-then-shrink == shrink-then-quantize
        assert not quantize(w, g)[:, dead].any()


def test_a_column_rounded_to_zero_is_regrouped_so_quantizing_is_idempotent():
    w = torch.tensor([[1.0, 0.01, 0.5, 2.0], [0.75, -0.02, 0.25, 1.5]])
    once = quantize(w, 2)
    assert not once[:, 1].any()  # rounded to zero in every row: groups become {0, 2}, {3}
    assert torch.equal(quantize(once, 2), once)
    q, _, live = group_quantize(w, 4, 2)
    assert live.tolist() == [True, False, True, True] and q.shape == (2, 3)
    torch.manual_seed(1)
    dense = torch.randn(16, 100)
    assert torch.equal(quantize(quantize(dense, 32), 32), quantize(dense, 32))


def _mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(100, 48), nn.ReLU(), nn.Linear(48, 10))


def test_operator_labels_gradient_and_idempotence():
    model = _mlp()
    compressed, record = Quantize("int4", group_size=32).apply(model)
    assert record.to_dict()["0.weight"]["dtype"] == "int4g32" and record.layers["0.weight"].ops == ["int4g32"]
    assert Quantize(bits=4, group_size=64).apply(model)[1].layers["0.weight"].dtype == "int4g64"
    weight = compressed[0].weight
    expected = quantize(params.raw_tensor(compressed[0], "weight").detach(), 32)
    assert torch.equal(weight.detach(), expected)
    again, _ = Quantize("int4", group_size=32).apply(compressed)
    assert torch.equal(again[0].weight.detach(), weight.detach())
    x = torch.randn(5, 100)
    compressed(x).sum().backward()  # straight-through: the raw weight gets the gradient of the quantized one
    raw = params.raw_tensor(compressed[0], "weight")
    assert raw.grad is not None and raw.grad.abs().sum() > 0


def test_group_size_knob_and_config():
    op = Quantize("int4", group_size=Choice([32, 64, 128]))
    assert op.knobs() == {"quantize.group_size": Choice([32, 64, 128])}
    bound = Compose([Prune(0.5), op]).bind({"quantize.group_size": 64})
    _, record = bound.apply(_mlp())
    assert record.layers["0.weight"].dtype == "int4g64"
    assert "group_size" not in Quantize("int4").to_dict()["Quantize"]  # old fingerprints unchanged
    from condensa.strategies import build_strategy

    strategy = build_strategy(None, None, [{"Quantize": {"dtype": "int4", "group_size": {"choice": [32, 128]}}}])
    assert list(strategy.knobs()) == ["quantize.group_size"]


@pytest.mark.parametrize("kwargs, message", [
    ({"dtype": "fp16", "group_size": 32}, "Quantize.group_size applies to integer dtypes"),
    ({"dtype": Choice(["int4", "bf16"]), "group_size": 32}, "Quantize.group_size applies to integer dtypes"),
    ({"dtype": "int4", "group_size": 1}, "Quantize.group_size must be null or an integer in [2, 65536]"),
    ({"dtype": "int4", "group_size": 32.0}, "Quantize.group_size must be null or an integer in [2, 65536]"),
    ({"dtype": "int4", "group_size": True}, "Quantize.group_size must be null or an integer in [2, 65536]"),
    ({"dtype": "int4", "group_size": 1 << 17}, "Quantize.group_size must be null or an integer in [2, 65536]"),
    ({"dtype": "int4", "group_size": Choice([32, 0])}, "Quantize.group_size must be null or an integer in [2, 65536]"),
    ({"dtype": "int4", "group_size": Range(16, 128, integer=True)}, "Quantize.group_size knob must be a choice"),
])
def test_bad_group_sizes_are_refused_in_one_line(kwargs, message):
    with pytest.raises((ConfigError, KnobError)) as error:
        Quantize(**kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("g, groups", [(32, 8), (64, 4), (128, 2)])
def test_hand_computed_size_of_a_linear(g, groups):
    torch.manual_seed(0)
    model, _ = Quantize("int4", group_size=g).apply(nn.Linear(256, 24))
    fixed_width = packing.Options(index=("dense",), rows=False, entropy_values=False)
    specs = packing.specs(model)
    plan = packing.plan_tensor(next(s for s in specs if s.name == "weight"), fixed_width)
    # kind 3 + bits 3 + constant 1 + rows flag 1 + index 2 + G-1 16 + column flag 1 + fp16 scales
    # + raw/entropy flag 1 + 4-bit codes (15 symbols -> 4 bits)
    assert plan.bits == 3 + 3 + 1 + 1 + 2 + 16 + 1 + 24 * groups * 16 + 1 + 24 * 256 * 4
    assert plan.bits / (24 * 256) == pytest.approx(4 + 16 / g, abs=0.01)
    size = packing.packed_size(specs, fixed_width)
    bias_bits = 3 + 1 + 2 + 24 * 32  # kind, constant, index (dense), fp32 values
    assert size.bits == packing.HEADER_BITS + plan.bits + bias_bits
    assert size.file_bytes == packing.container_bytes(math.ceil(size.bits / 8))


def _dead_rows_and_columns(model: nn.Module) -> nn.Module:
    mask = torch.ones(48, 100, dtype=torch.bool)
    mask[[3, 7, 40]] = False  # dead rows
    mask[:, [0, 1, 2, 50, 99]] = False  # dead input columns
    params.set_mask(model[0], "weight", mask)
    return model


def _strategies():
    return {
        "dense": (lambda m: m, Quantize("int4", group_size=32)),
        "pruned": (lambda m: m, Compose([Prune(0.3), Quantize("int4", group_size=64)])),
        "dead": (_dead_rows_and_columns, Quantize("int4", group_size=32)),
        "mixed": (lambda m: m, Compose([NMPrune(2, 4, layers=["0"]), Quantize("int4", group_size=128, layers=["0"]),
                                        Quantize("int8", layers=["2"]), QuantizeAux("fp16")])),
    }


@pytest.mark.parametrize("case", ["dense", "pruned", "dead", "mixed"])
def test_footprint_is_the_written_file_and_the_round_trip_is_bit_exact(case, tmp_path):
    prepare, strategy = _strategies()[case]
    model, record = strategy.apply(prepare(_mlp()))
    size = footprint(model).bytes
    manifest = save(model, tmp_path, strategy=strategy, record=record, model_factory=None, example_input=torch.randn(2, 100))
    assert manifest["files"]["model.safetensors"]["bytes"] == size == (tmp_path / "model.safetensors").stat().st_size
    assert manifest["tensors"]["0.weight"]["kind"] == "grouped4"
    assert "error" not in manifest["files"]["model.onnx"], manifest["files"]["model.onnx"]  # dequantized fp32 in ONNX
    loaded, _ = load(tmp_path, model_factory=_mlp)
    baked = params.baked_copy(model).state_dict()
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, baked[name]), name
    if case == "dead":
        assert manifest["tensors"]["0.weight"]["live_columns"] == 95 and manifest["tensors"]["0.weight"]["rows"]
        assert not loaded[0].weight[[3, 7, 40]].any() and not loaded[0].weight[:, [0, 50, 99]].any()
    # the loaded (finalized) model re-quantized from its record: same values, same footprint
    from condensa.runs import attach_quantizers

    attach_quantizers(loaded, manifest["record"])
    assert footprint(loaded).bytes == size
    for name, tensor in loaded.state_dict().items():
        if name in baked:
            assert torch.equal(tensor, baked[name]), name


def test_composes_with_prune_in_either_order():
    model = _mlp()
    first, rec = Compose([Prune(0.2), Quantize("int4", group_size=32)]).apply(model)
    second, _ = Compose([Quantize("int4", group_size=32), Prune(0.2)]).apply(model)
    mask = params.get_mask(first[0], "weight")
    assert rec.density == pytest.approx(0.2, abs=0.01)
    assert not first[0].weight[~mask].any()  # pruned entries stay exactly zero under the quantizer
    assert torch.equal(first[0].weight, second[0].weight)  # masks come first whatever the order
    assert torch.equal(first[0].weight, quantize(params.masked_tensor(first[0], "weight"), 32))


def test_surgery_that_would_regroup_a_tensor_stores_it_unshrunk(tmp_path):
    strategy = Compose([NeuronPrune(0.5), Quantize("int4", group_size=16)])
    model, record = strategy.apply(_mlp())
    x = torch.randn(3, 100)
    manifest = save(model, tmp_path, strategy=strategy, record=record, example_input=x, onnx=False)
    assert not manifest["surgery"]["applied"] and "would regroup" in manifest["surgery"]["reason"]
    loaded, _ = load(tmp_path, model_factory=_mlp)
    assert torch.equal(loaded(x), model.eval()(x))
    with pytest.raises(ModelError, match="2.weight: surgery removes nonzero input columns"):
        save(model, tmp_path / "forced", strategy=strategy, record=record, example_input=x, onnx=False, surgery=True)


def test_surgery_of_dead_columns_keeps_every_group(tmp_path):
    """NeuronPrune masks layer 0's rows; with the consumer's columns masked too, they are dead, so
    quantize-then-shrink == shrink-then-quantize and the shrunk export holds the same values."""
    strategy = Compose([NeuronPrune(0.5), Quantize("int4", group_size=16)])
    model, record = strategy.apply(_mlp())
    alive = params.get_mask(model[0], "weight").any(dim=1)
    params.set_mask(model[2], "weight", alive.expand(10, 48))
    x = torch.randn(3, 100)
    manifest = save(model, tmp_path, strategy=strategy, record=record, example_input=x, onnx=False, surgery=True)
    assert manifest["surgery"]["applied"] and manifest["tensors"]["2.weight"]["shape"] == [10, 24]
    loaded, _ = load(tmp_path, model_factory=_mlp)
    baked = params.baked_copy(model)
    assert torch.equal(loaded[2].weight, baked[2].weight[:, alive])
    assert torch.equal(loaded[0].weight, baked[0].weight[alive])
    assert torch.allclose(loaded(x), baked(x), atol=1e-6)


def test_compress_export_eval_gives_identical_metrics(tmp_path):
    from condensa import commands
    from condensa.config import parse_config

    config = parse_config({
        "model": {"name": "digits_mlp", "train": {"epochs": 30, "lr": 0.002}},
        "data": {"name": "digits"},
        "strategy": {"ops": [{"Prune": {"density": 0.3, "layers": ["Linear"]}},
                             {"Quantize": {"dtype": "int4", "group_size": 32, "layers": ["Linear"]}}]},
        "recovery": {"method": "finetune", "loss": "ce", "epochs": 1},
        "device": "cpu", "seed": 0,
    })
    run = tmp_path / "run"
    result = commands.compress(config, out=str(run), quiet=True)
    commands.export(run, out=str(tmp_path / "export"), onnx=False, quiet=True)
    evaluated = commands.evaluate_export(tmp_path / "export", quiet=True)
    assert result["record"]["net.1.weight"]["dtype"] == "int4g32"
    for key in ("accuracy", "mismatches", "footprint_bytes"):
        assert evaluated[key] == result[key], key
