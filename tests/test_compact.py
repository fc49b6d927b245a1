"""Issue 17: entropy coder, weight sharing (Codebook), bits as knobs, and the packed format whose
size the footprint metric computes exactly. Every encoding round-trips bit-exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny

from condensa import Codebook, Compose, Prune, Quantize, QuantizeAux, Range, finalize
from condensa.errors import CheckpointError
from condensa.export import load, save
from condensa.metrics.footprint import footprint
from condensa.operators import params
from condensa.operators.codebook import SharedWeights, kmeans1d
from condensa.packing import entropy as E
from condensa.packing import layout as packing

# -- entropy coder ------------------------------------------------------------------------------

STREAMS = {
    "empty": (np.zeros(0, dtype=np.int64), 16),
    "single": (np.full(50, 3), 16),
    "two": (np.array([0, 1] * 20 + [1]), 2),
    "uniform": (np.random.default_rng(0).integers(0, 16, 1000), 16),
    "geometric": (np.minimum(np.random.default_rng(1).geometric(0.05, 3000) - 1, 255), 256),
    "skewed": (np.concatenate([np.zeros(100000, dtype=np.int64), np.arange(30)]), 64),
    "fibonacci": (np.repeat(np.arange(25), [1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597,
                                            2584, 4181, 6765, 10946, 17711, 28657, 46368, 75025]), 32),
    "wide": (np.random.default_rng(2).integers(0, 70000, 500), 1 << 17),
}


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_entropy_stream_roundtrip_and_exact_size(name):
    symbols, alphabet = STREAMS[name]
    data = E.encode_streams([(symbols, alphabet), (symbols[::-1].copy(), alphabet)])
    assert len(data) == E.encoded_bytes([(symbols, alphabet), (symbols[::-1].copy(), alphabet)])
    back = E.decode_streams(data, [(symbols.size, alphabet)] * 2)
    assert np.array_equal(back[0], symbols) and np.array_equal(back[1], symbols[::-1])


def test_huffman_lengths_are_limited_and_prefix_free():
    counts = np.array([1, 1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 377, 610, 987, 1597, 2584, 4181, 6765, 10946, 17711])
    lengths = E.huffman_lengths(counts, limit=8)
    assert lengths.max() <= 8
    assert np.sum(2.0 ** -lengths) <= 1.0


def test_huffman_close_to_entropy_on_a_large_stream():
    symbols = np.minimum(np.random.default_rng(3).geometric(0.03, 200000) - 1, 255)
    assert E.encoded_bits(symbols, 256) <= 1.01 * E.entropy_bits(symbols) + 2000


@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 13, 64, 100])
def test_golomb_roundtrip_every_parameter(m):
    symbols = np.minimum(np.random.default_rng(m).geometric(0.04, 2000) - 1, 1023)
    maxq = int(symbols.max()) // m
    if maxq > E.MAX_UNARY:
        pytest.skip("quotient too long for this M")
    plan = E.StreamPlan(E.GOLOMB, 0, 1024, golomb=(m, maxq))
    writer = E.BitWriter()
    writer.write(5, 3)  # an unaligned start
    k = m.bit_length() - 1
    expected = int((E._golomb_lengths(m, symbols)).sum()) + E.MODE_BITS + E._exp_golomb_len(m - 1) + E._exp_golomb_len(maxq)
    object.__setattr__(plan, "bits", expected)
    E.write_stream(writer, symbols, 1024, plan)
    writer.write(1, 1)
    reader = E.BitReader(writer.getvalue())
    assert reader.read(3) == 5
    assert np.array_equal(E.read_stream(reader, symbols.size, 1024), symbols)
    assert reader.read(1) == 1
    assert k >= 0


def test_geometric_gaps_choose_golomb():
    symbols = np.random.default_rng(0).geometric(0.03, 300) - 1
    symbols = np.minimum(symbols, 255)
    assert E.plan(symbols, 256).mode == E.GOLOMB


# -- operators ----------------------------------------------------------------------------------

KINDS = ("Conv2d", "Linear")



def test_kmeans_reproduces_few_distinct_values():
    values = torch.tensor([0.5, -0.25, 0.5, 0.125, -0.25])
    centroids, codes = kmeans1d(values, 4)
    assert torch.equal(centroids[codes].float(), values)


def test_codebook_has_at_most_2_to_b_values_and_trains_centroids():
    model, record = Compose([Prune(0.5, layers=KINDS), Codebook(2, layers=KINDS, fixed_codes=True)]).apply(make_tiny())
    assert record.layers["conv2.weight"].dtype == "cb2" and record.layers["conv2.weight"].bits == 2
    w = model.conv2.weight
    assert torch.unique(w[w != 0]).numel() <= 4
    shared = params.get_quant(model.conv2, "weight")
    assert isinstance(shared, SharedWeights)
    model.train()
    model(torch.randn(2, 3, 8, 8)).sum().backward()
    assert shared.centroids.grad is not None and shared.centroids.grad.abs().sum() > 0
    assert (model.conv2.weight == 0).sum() == (~params.get_mask(model.conv2, "weight")).sum()


def test_codebook_straight_through_moves_weights_and_keeps_the_mask():
    model, _ = Compose([Prune(0.5, layers=KINDS), Codebook(3, layers=KINDS)]).apply(make_tiny())
    mask = params.get_mask(model.fc1, "weight").clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    model.train()
    model(torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))).pow(2).sum().backward()
    assert params.raw_tensor(model.fc1, "weight").grad.abs().sum() > 0
    optimizer.step()
    w = model.fc1.weight
    assert torch.equal(w != 0, mask & (w != 0)) and torch.unique(w[w != 0]).numel() <= 8


def test_codebook_idempotent_and_set_quant():
    model, _ = Compose([Prune(0.5, layers=KINDS), Codebook(3, layers=KINDS)]).apply(make_tiny())
    before = model.conv1.weight.detach().clone()
    Codebook(3, layers=KINDS).apply(model, inplace=True)
    assert torch.equal(model.conv1.weight, before)
    baked = finalize(model)
    params.set_quant(baked.conv1, "weight", "cb3")
    assert torch.equal(baked.conv1.weight, before)


def test_bits_knobs():
    strategy = Compose([Prune(density=Range(0.01, 0.1, log=True)), Quantize(bits=Range(2, 8), layers=("Linear",)),
                        Codebook(bits=Range(2, 6), layers=("Conv2d",))])
    knobs = strategy.knobs()
    assert knobs["quantize.bits"].integer and knobs["codebook.bits"].integer
    bound = strategy.bind({"prune.density": 0.05, "quantize.bits": 3, "codebook.bits": 4})
    _, record = bound.apply(make_tiny())
    assert record.layers["fc1.weight"].dtype == "int3" and record.layers["conv1.weight"].dtype == "cb4"
    with pytest.raises(Exception, match="bits"):
        Quantize(bits=9)


def test_fold_norm_keeps_outputs_and_pins_statistics():
    model = make_tiny()
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
    strategy = QuantizeAux("fp16")
    folded, _ = strategy.apply(model)
    strategy.finish(folded)
    assert torch.equal(folded.bn1.running_var + folded.bn1.eps, torch.ones(8))
    assert torch.equal(folded.bn1.running_mean, torch.zeros(8))
    folded.train()  # a folded norm keeps its constants in training mode too
    with torch.no_grad():
        out = folded(x)
    torch.testing.assert_close(out, expected, rtol=2e-3, atol=2e-3)
    assert torch.equal(folded.bn1.running_mean, torch.zeros(8))


def test_quantize_to_dict_unchanged_without_bits():
    """Old configs and journals keep their strategy fingerprint: ``bits`` is omitted when unused."""
    assert Quantize("int4").to_dict() == {"Quantize": {"dtype": "int4", "layers": list(Quantize().to_dict()["Quantize"]["layers"]),
                                                       "exclude": []}}
    assert Quantize(bits=3).to_dict()["Quantize"]["bits"] == 3 and Quantize(bits=3).dtype == "int3"


def test_codebook_from_yaml_ops_and_record():
    from condensa.operators import OPERATORS

    op = OPERATORS["Codebook"](bits=3, layers=["Conv2d"])
    model, record = op.apply(make_tiny())
    assert record.layers["conv1.weight"].dtype == "cb3" and record.layers["conv1.weight"].bits == 3
    assert torch.unique(model.conv1.weight).numel() <= 8


# -- the packed format: every encoding bit-exact, file bytes == footprint ------------------------

ROWS = {  # the benchmark's encodings (what the encoder may use) and a strategy to exercise them
    "dense fp32": (lambda: Compose([Prune(1.0, layers=KINDS)]), packing.Options(("dense",), False, False)),
    "bitmask+int8": (lambda: Compose([Prune(0.3, layers=KINDS), Quantize("int8", layers=KINDS)]),
                     packing.Options(("bitmask",), False, False)),
    "relative+int8": (lambda: Compose([Prune(0.3, layers=KINDS), Quantize("int8", layers=KINDS)]),
                      packing.Options(("relative",), False, False)),
    "relative+int4": (lambda: Compose([Prune(0.3, layers=KINDS), Quantize(bits=4, layers=KINDS)]),
                      packing.Options(("relative",), False, False)),
    "relative+codebook": (lambda: Compose([Prune(0.3, layers=KINDS), Codebook(3, layers=KINDS)]),
                          packing.Options(("relative",), False, False)),
    "entropy": (lambda: Compose([Prune(0.3, layers=KINDS), Codebook(3, layers=KINDS), QuantizeAux("int8")]), packing.Options()),
    "entropy fp16 aux": (lambda: Compose([Prune(0.2, layers=KINDS), Quantize(bits=5, layers=KINDS), QuantizeAux("fp16", fold_norm=False)]),
                         packing.Options()),
    "entropy dense codebook": (lambda: Compose([Codebook(2, layers=KINDS), QuantizeAux("bf16")]), packing.Options()),
    "structured rows": (lambda: Compose([Prune(0.05, layers=KINDS, scope="layer"), Quantize(bits=3, layers=KINDS)]), packing.Options()),
}


def _roundtrip(specs, options):
    from safetensors.torch import load as st_load

    digest = bytes(range(8))
    data, size = packing.encode(specs, digest, options)
    assert len(data) == size.file_bytes == packing.packed_size(specs, options).file_bytes
    state = packing.decode(st_load(data)[packing.ENTRY].numpy().tobytes(),
                           {s.name: (tuple(s.effective.shape), s.effective.dtype) for s in specs}, digest)
    for spec in specs:
        assert state[spec.name].dtype == spec.effective.dtype, spec.name
        assert torch.equal(state[spec.name], spec.effective), spec.name
    return size


@pytest.mark.parametrize("row", sorted(ROWS))
def test_every_encoding_roundtrips_bit_exact(row):
    make, options = ROWS[row]
    strategy = make()
    model, record = strategy.apply(make_tiny())
    strategy.finish(model)
    specs = packing.specs(model, packing.quant_plan(model, record))
    size = _roundtrip(specs, options)
    if options == packing.Options():
        assert size.file_bytes == footprint(model).bytes


@pytest.mark.parametrize("row", ["entropy", "relative+int4", "structured rows"])
def test_save_load_bit_exact_and_file_is_the_footprint(row, tmp_path):
    make, _ = ROWS[row]
    strategy = make()
    model, record = strategy.apply(make_tiny())
    strategy.finish(model)
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    manifest = save(model, tmp_path, strategy=strategy, record=record, example_input=x[:1], onnx=False, surgery=False)
    assert (tmp_path / "model.safetensors").stat().st_size == manifest["size"]["file_bytes"] == footprint(model).bytes
    loaded, _ = load(tmp_path, model_factory=make_tiny)
    state = loaded.state_dict()
    for spec in packing.specs(model, packing.quant_plan(model, record)):
        assert torch.equal(state[spec.name], spec.effective), spec.name
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.eval()(x), rtol=1e-5, atol=1e-5)


def test_finalized_model_with_record_has_the_same_bytes(tmp_path):
    strategy = Compose([Prune(0.3, layers=KINDS), Codebook(3, layers=("Conv2d",)), Quantize(bits=4, layers=("Linear",))])
    model, record = strategy.apply(make_tiny())
    effective = {s.name: s.effective for s in packing.specs(model)}
    planned = footprint(model).bytes
    finalize(model)
    assert footprint(model, record=record).bytes == planned
    manifest = save(model, tmp_path, record=record, onnx=False, surgery=False)
    assert manifest["size"]["file_bytes"] == planned
    loaded, _ = load(tmp_path, model_factory=make_tiny)
    for name, tensor in effective.items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_lstm_codebook_roundtrip(tmp_path):
    from condensa.models.text import CharLSTM

    torch.manual_seed(0)
    layers = ("LSTM", "Linear", "Embedding")
    strategy = Compose([Prune(0.1, layers=layers), Codebook(4, layers=layers), QuantizeAux("int8")])
    model, record = strategy.apply(CharLSTM(hidden=32))
    assert record.layers["lstm.bias_ih_l0"].dtype == "int8"
    _roundtrip(packing.specs(model, packing.quant_plan(model, record)), packing.Options())


def test_corrupt_payload_is_refused(tmp_path):
    model, record = Compose([Prune(0.3, layers=KINDS), Codebook(3, layers=KINDS)]).apply(make_tiny())
    save(model, tmp_path, record=record, onnx=False)
    path = tmp_path / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="hash mismatch"):
        load(tmp_path, model_factory=make_tiny)


def test_container_bytes_is_the_safetensors_size():
    from safetensors.torch import save as st_save

    for n in (0, 1, 7, 8, 999, 123457):
        assert packing.container_bytes(n) == len(st_save({packing.ENTRY: torch.zeros(n, dtype=torch.uint8)}))


def test_digits_smallest_config_has_density_and_bits_knobs():
    from pathlib import Path

    from condensa.config import load_config
    from condensa.strategies import build_strategy

    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits-smallest.yaml")
    strategy = build_strategy(config.strategy.scheme, config.strategy.args, config.strategy.ops)
    knobs = strategy.knobs()
    assert set(knobs) == {"prune.density", "codebook1.bits", "codebook2.bits"}
    assert knobs["codebook1.bits"].integer and config.search.budget <= 16 and config.search.objective == "footprint"
