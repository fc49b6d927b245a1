"""Issue 17: entropy coder, weight sharing (Codebook), bits as knobs, and the packed format whose
size the footprint metric computes exactly. Every encoding round-trips bit-exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import make_tiny

from condensa import Codebook, Compose, Prune, Quantize, QuantizeAux, Range, finalize
from condensa.operators import params
from condensa.operators.codebook import SharedWeights, kmeans1d
from condensa.packing import entropy as E

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
