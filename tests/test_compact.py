"""Issue 17: entropy coder, weight sharing (Codebook), bits as knobs, and the packed format whose
size the footprint metric computes exactly. Every encoding round-trips bit-exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from condensa.export import entropy as E

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
