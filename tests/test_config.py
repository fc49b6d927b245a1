"""Config parsing: YAML into dataclasses, errors that name the key, overrides, strategies.

Bad input through the command line (one line, exit code 2) is tested in ``test_bad_inputs.py``;
the cases here are the Python API's."""

from __future__ import annotations

from pathlib import Path

import pytest

from condensa import Compose, Prune, Quantize, Range
from condensa.config import load_config, parse_config
from condensa.errors import ConfigError, KnobError
from condensa.strategies import available_schemes, build_strategy, load_scheme

BASE = {"strategy": {"scheme": "prune_quantize"}}


REPO = Path(__file__).resolve().parents[1]


def test_every_shipped_config_parses():
    for path in sorted((REPO / "configs").glob("*.yaml")):
        config = load_config(path)
        assert config.strategy.scheme or config.strategy.ops, path


def test_overrides_apply_before_validation():
    config = parse_config(dict(BASE), ["search.budget=5", "data.batch_size=32", "strategy.args.density=0.2"])
    assert config.search.budget == 5
    assert config.data.batch_size == 32
    assert config.strategy.args == {"density": 0.2}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({**BASE, "bogus": 1}, "bogus: unknown key; allowed: model, data"),
        ({**BASE, "data": {"batch_size": "big"}}, "data.batch_size: expected an integer"),
        ({**BASE, "search": {"method": "annealing"}}, "search.method: must be one of"),
        ({**BASE, "data": {"name": "mnist"}}, "data.name: must be one of"),
        ({"strategy": {}}, "strategy: give 'scheme'"),
        ({**BASE, "model": {"train": {"lr": "fast"}}}, "model.train.lr: expected a number"),
    ],
)
def test_bad_config_names_the_key(raw, message):
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_shipped_schemes_build_strategies():
    assert {"prune_quantize", "filter", "sparse_2_4", "two_knob"} <= set(available_schemes())
    strategy = load_scheme("prune_quantize", {"density": {"low": 0.01, "high": 0.5, "log": True}})
    assert strategy.knobs() == {"prune.density": Range(0.01, 0.5, log=True)}
    two = load_scheme("two_knob", {"conv_density": {"low": 0.1, "high": 0.9}, "linear_density": 0.2})
    assert list(two.knobs()) == ["prune0.density"]


def test_scheme_from_file(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("from condensa import Prune\n\ndef strategy(density=0.3):\n    return Prune(density=density)\n")
    assert load_scheme(str(path), {"density": 0.2}) == Prune(density=0.2)


def test_unknown_scheme_and_argument_are_named():
    with pytest.raises(ConfigError, match="unknown scheme 'nope'; available"):
        load_scheme("nope")
    with pytest.raises(ConfigError, match=r"unknown argument\(s\) \['sparsity'\]"):
        load_scheme("prune_quantize", {"sparsity": 0.5})


def test_ops_list_builds_compose():
    strategy = build_strategy(None, None, [{"Prune": {"density": {"low": 0.01, "high": 0.2}}}, {"Quantize": {"dtype": "int8"}}])
    assert isinstance(strategy, Compose)
    assert isinstance(strategy.ops[1], Quantize)
    assert list(strategy.knobs()) == ["prune.density"]


@pytest.mark.parametrize(
    "ops, message",
    [
        ([{"Sparsify": {}}], "unknown operator 'Sparsify'"),
        ([{"Prune": {"sparsity": 0.1}}], "unknown argument(s) ['sparsity']"),
        ([{"Prune": {"density": 1.5}}], "density must be a number in (0, 1]"),
        ([{"Prune": {"density": {"low": 0.5, "high": 0.1}}}], "needs low < high"),
        ([{"Quantize": {"dtype": "int9"}}], "Quantize.dtype must be one of"),
    ],
)
def test_bad_operator_entries(ops, message):
    with pytest.raises((ConfigError, KnobError)) as info:
        build_strategy(None, None, ops)
    assert message in str(info.value)
