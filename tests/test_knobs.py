"""Open knobs: Range / Choice specs, knob names, bind, validation and unit-cube mapping."""

from __future__ import annotations

import math
import re

import pytest

from condensa import (
    BlockPrune,
    Choice,
    Compose,
    ConfigError,
    FilterPrune,
    KnobError,
    NeuronPrune,
    Prune,
    Quantize,
    Range,
)
from condensa.knobs import check_value, is_open, knob_from_dict
from condensa.operators import NMPrune
from condensa.operators.base import parse_arg

# --------------------------------------------------------------------------------------------------
# Range and Choice
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((0.5, 0.5), "low < high"),
        ((0.6, 0.5), "low < high"),
        ((float("nan"), 1.0), "finite"),
        ((0.0, float("inf")), "finite"),
        ((True, 2), "finite number"),
        (("0.1", 1.0), "finite number"),
        ((0.0, 1.0, True), "log=True needs low > 0"),
        ((-1.0, 1.0, True), "log=True needs low > 0"),
    ],
)
def test_range_validation(args, message):
    with pytest.raises(KnobError, match=re.escape(message)):
        Range(*args)


def test_range_contains():
    r = Range(0.1, 0.5)
    assert r.contains(0.1) and r.contains(0.5) and r.contains(0.3) and r.contains(1 / 3)
    assert not r.contains(0.05) and not r.contains(0.6)
    assert not r.contains(True) and not r.contains("0.3") and not r.contains(None)
    i = Range(1, 8, integer=True)
    assert i.contains(3) and i.contains(3.0) and not i.contains(3.5) and not i.contains(9)


@pytest.mark.parametrize(
    "spec",
    [Range(0.1, 0.5), Range(0.01, 1.0, log=True), Range(-3, 7), Range(1e-4, 10, log=True)],
    ids=["linear", "log", "negative", "log-wide"],
)
def test_range_unit_round_trip(spec):
    for unit in (0.0, 0.1, 0.25, 0.5, 0.77, 1.0):
        value = spec.from_unit(unit)
        assert spec.low <= value <= spec.high
        assert spec.to_unit(value) == pytest.approx(unit, abs=1e-12)
    for value in (spec.low, spec.high, (spec.low + spec.high) / 2):
        assert spec.from_unit(spec.to_unit(value)) == pytest.approx(value, rel=1e-12)


def test_range_log_scale_is_geometric():
    spec = Range(0.01, 1.0, log=True)
    assert spec.from_unit(0.5) == pytest.approx(0.1)
    assert spec.to_unit(0.1) == pytest.approx(0.5)
    assert Range(0.0, 1.0).from_unit(0.5) == pytest.approx(0.5)


def test_range_integer_rounds_and_clips():
    spec = Range(2, 8, integer=True)
    assert spec.from_unit(0.0) == 2 and spec.from_unit(1.0) == 8
    assert spec.from_unit(0.5) == 5 and isinstance(spec.from_unit(0.5), int)
    assert spec.from_unit(0.3) == 4  # 2 + 1.8 -> 4
    assert all(spec.from_unit(spec.to_unit(v)) == v for v in range(2, 9))
    log_int = Range(1, 64, log=True, integer=True)
    assert log_int.from_unit(0.5) == 8
    assert all(log_int.from_unit(log_int.to_unit(v)) == v for v in (1, 2, 8, 33, 64))


def test_integer_range_with_fractional_bounds_stays_inside():
    # regression: from_unit rounded after clipping, so 0.5 -> 0 and 3.5 -> 4, values bind() rejects
    spec = Range(0.5, 3.5, integer=True)
    values = [spec.from_unit(u / 20) for u in range(21)]
    assert set(values) == {1, 2, 3}
    assert all(spec.contains(v) for v in values)
    assert Range(0.5, 3.5).from_unit(0.0) == 0.5  # a float range with the same bounds is unaffected
    with pytest.raises(KnobError, match="contains no integer"):
        Range(1.2, 1.8, integer=True)


def test_from_unit_clips_outside_the_unit_interval():
    spec = Range(0.1, 0.5)
    assert spec.from_unit(-0.5) == 0.1 and spec.from_unit(1.5) == 0.5
    assert Choice(["a", "b"]).from_unit(7) == "b"


def test_choice():
    with pytest.raises(KnobError, match="at least one option"):
        Choice([])
    with pytest.raises(KnobError, match="distinct"):
        Choice(["int8", "int8"])
    c = Choice(["int8", "int4", "int2"])
    assert c.options == ("int8", "int4", "int2")
    assert c.contains("int4") and not c.contains("int3")
    assert [c.to_unit(o) for o in c.options] == [0.0, 0.5, 1.0]
    assert [c.from_unit(u) for u in (0.0, 0.24, 0.26, 0.74, 0.76, 1.0)] == ["int8", "int8", "int4", "int4", "int2", "int2"]
    assert all(c.from_unit(c.to_unit(o)) == o for o in c.options)
    assert Choice(["only"]).to_unit("only") == 0.5 and Choice(["only"]).from_unit(0.9) == "only"
    assert Choice((8, 4)) == Choice([8, 4])  # value semantics
    assert c.describe() == "one of 'int8', 'int4', 'int2'"
    assert c.to_dict() == {"choice": ["int8", "int4", "int2"]}


def test_describe_and_to_dict():
    assert Range(0.05, 0.5).describe() == "float in [0.05, 0.5]"
    assert Range(1, 8, integer=True).describe() == "int in [1, 8]"
    assert Range(0.01, 1, log=True).describe() == "float in [0.01, 1] (log)"
    assert Range(0.01, 1, log=True).to_dict() == {"low": 0.01, "high": 1, "log": True, "integer": False}
    assert is_open(Range(0, 1)) and is_open(Choice([1])) and not is_open(0.5) and not is_open("int8")


def test_knob_from_dict():
    assert knob_from_dict({"low": 0.1, "high": 0.5}, "x") == Range(0.1, 0.5)
    assert knob_from_dict({"low": 0.01, "high": 1, "log": True}, "x") == Range(0.01, 1, log=True)
    assert knob_from_dict({"choice": ["int8", "int4"]}, "x") == Choice(["int8", "int4"])
    for data, message in [
        ({"low": 0.1}, "needs both low and high"),
        ({"low": 0.1, "high": 0.5, "step": 1}, "unknown key(s) ['step']"),
        ({"choice": "int8"}, "expected a list"),
        ({"choice": ["a"], "low": 0}, "unknown key(s) ['low'] in a choice"),
        ([0.1, 0.5], "expected a mapping"),
        ({"low": 0.5, "high": 0.1}, "low < high"),
    ]:
        with pytest.raises(KnobError, match=re.escape(message)) as info:
            knob_from_dict(data, "strategy.prune.density")
        assert "strategy.prune.density" in str(info.value)


def test_parse_arg_turns_mappings_into_knobs_and_leaves_literals():
    assert parse_arg({"low": 0.1, "high": 0.3}, "w") == Range(0.1, 0.3)
    assert parse_arg({"choice": [8, 4]}, "w") == Choice([8, 4])
    assert parse_arg(0.3, "w") == 0.3 and parse_arg([1, 4], "w") == [1, 4]


def test_check_value():
    assert check_value("k", Range(1, 8, integer=True), 3.0) == 3
    assert isinstance(check_value("k", Range(1, 8, integer=True), 3.0), int)
    assert check_value("k", Range(0.1, 0.5), 0.5 + 1e-12) == 0.5  # clipped within tolerance
    assert check_value("k", Choice(["int8", "int4"]), "int4") == "int4"
    with pytest.raises(KnobError, match=re.escape("knob 'k' = 'int3' is outside its range (one of 'int8', 'int4')")):
        check_value("k", Choice(["int8", "int4"]), "int3")


# --------------------------------------------------------------------------------------------------
# Knobs on operators and Compose
# --------------------------------------------------------------------------------------------------


def test_operator_knob_names():
    assert Prune(Range(0.05, 0.5)).knobs() == {"prune.density": Range(0.05, 0.5)}
    assert Quantize(Choice(["int8", "int4"])).knobs() == {"quantize.dtype": Choice(["int8", "int4"])}
    assert FilterPrune(Range(0.2, 0.9)).knobs() == {"filter.density": Range(0.2, 0.9)}
    assert NeuronPrune(Range(0.2, 0.9)).knobs() == {"neuron.density": Range(0.2, 0.9)}
    assert BlockPrune(Range(0.2, 0.9)).knobs() == {"block.density": Range(0.2, 0.9)}
    assert Prune(0.1).knobs() == {} and NMPrune().knobs() == {}


def test_compose_knob_names_and_repeated_labels():
    strategy = Compose([Prune(Range(0.1, 0.9)), Prune(Range(0.05, 0.5), scope="layer"), Quantize(Choice(["int8", "int4"]))])
    assert list(strategy.knobs()) == ["prune0.density", "prune1.density", "quantize.dtype"]
    single = Compose([Prune(Range(0.1, 0.9)), Quantize("int8")])
    assert list(single.knobs()) == ["prune.density"]  # a unique label gets no index
    nested = Compose([Compose([Prune(Range(0.1, 0.9))]), Quantize(Choice(["int8", "int4"]))])
    assert list(nested.knobs()) == ["compose.prune.density", "quantize.dtype"]


def test_bind_returns_a_concrete_copy_and_leaves_the_original_open():
    open_prune = Prune(Range(0.05, 0.5), scope="layer")
    bound = open_prune.bind({"prune.density": 0.2})
    assert bound == Prune(0.2, scope="layer")
    assert bound.knobs() == {}
    assert open_prune.knobs() == {"prune.density": Range(0.05, 0.5)}
    assert isinstance(open_prune.density, Range)


def test_compose_bind_routes_values_to_each_operator():
    strategy = Compose([Prune(Range(0.1, 0.9)), Prune(Range(0.05, 0.5), scope="layer"), Quantize(Choice(["int8", "int4"]))])
    bound = strategy.bind({"prune0.density": 0.5, "prune1.density": 0.1, "quantize.dtype": "int4"})
    assert bound == Compose([Prune(0.5), Prune(0.1, scope="layer"), Quantize("int4")])
    assert bound.knobs() == {}
    assert len(strategy.knobs()) == 3  # original still open
    partial = strategy.bind({"prune1.density": 0.1})
    assert list(partial.knobs()) == ["prune0.density", "quantize.dtype"]
    nested = Compose([Compose([Prune(Range(0.1, 0.9))]), Quantize("int8")])
    assert nested.bind({"compose.prune.density": 0.3}) == Compose([Compose([Prune(0.3)]), Quantize("int8")])


@pytest.mark.parametrize(
    ("strategy", "values", "message"),
    [
        (Prune(Range(0.05, 0.5)), {"prune.density": 0.9}, "knob 'prune.density' = 0.9 is outside its range (float in [0.05, 0.5])"),
        (Prune(Range(0.05, 0.5)), {"prune.density": "0.2"}, "knob 'prune.density' = '0.2' is outside its range"),
        (Compose([Prune(Range(0.1, 0.9)), Prune(Range(0.05, 0.5))]), {"prune1.density": 0.01},
         "knob 'prune1.density' = 0.01 is outside its range (float in [0.05, 0.5])"),
        (Quantize(Choice(["int8", "int4"])), {"quantize.dtype": "fp16"},
         "knob 'quantize.dtype' = 'fp16' is outside its range (one of 'int8', 'int4')"),
    ],
)
def test_out_of_range_value_names_knob_and_range(strategy, values, message):
    with pytest.raises(KnobError, match=re.escape(message)):
        strategy.bind(values)


def test_unknown_knob_name_errors():
    with pytest.raises(KnobError, match=re.escape("unknown knob(s) ['prune.densty']; open knobs: ['prune.density']")):
        Prune(Range(0.05, 0.5)).bind({"prune.densty": 0.1})
    strategy = Compose([Prune(Range(0.1, 0.9)), Quantize("int8")])
    with pytest.raises(KnobError, match=re.escape("unknown knob(s) ['prune0.density']")):
        strategy.bind({"prune0.density": 0.5})
    with pytest.raises(KnobError, match="unknown knob"):
        strategy.bind({"quantize.dtype": "int4"})  # concrete field, not a knob
    assert strategy.bind({"prune.density": 0.5}) == Compose([Prune(0.5), Quantize("int8")])


def test_applying_with_an_open_knob_is_a_clear_error(tiny):
    with pytest.raises(KnobError, match=re.escape(
        "cannot apply a strategy with open knobs: prune.density (float in [0.05, 0.5]); bind() them first or run a search"
    )):
        Prune(Range(0.05, 0.5)).apply(tiny)
    with pytest.raises(KnobError, match=re.escape("quantize.dtype (one of 'int8', 'int4')")):
        Compose([Prune(0.1), Quantize(Choice(["int8", "int4"]))]).apply(tiny)
    # the check happens before anything is touched
    from torch.nn.utils import parametrize

    with pytest.raises(KnobError):
        Compose([Prune(0.1), Prune(Range(0.05, 0.5))]).apply(tiny, inplace=True)
    assert not any(parametrize.is_parametrized(m) for m in tiny.modules())


@pytest.mark.parametrize(
    "make",
    [
        lambda: Prune(Range(0.0, 0.5)),
        lambda: Prune(Range(-0.5, 0.5)),
        lambda: Prune(Range(0.5, 1.5)),
        lambda: FilterPrune(Range(0.5, 2.0)),
        lambda: BlockPrune(Range(0.0, 1.0)),
        lambda: Prune(0.0),
        lambda: Prune(1.0001),
    ],
)
def test_density_outside_zero_one_is_a_config_error(make):
    with pytest.raises(ConfigError, match=r"density"):
        make()


def test_density_range_up_to_one_is_fine():
    assert Prune(Range(0.01, 1.0, log=True)).bind({"prune.density": 1.0}).density == 1.0


def test_knob_on_a_field_that_is_not_tunable_errors():
    with pytest.raises(KnobError, match=re.escape("Prune.scope cannot be a knob; tunable: ['density']")):
        Prune(0.1, scope=Choice(["global", "layer"]))
    with pytest.raises(KnobError, match="NMPrune.n cannot be a knob"):
        NMPrune(n=Choice([1, 2]))


def test_quantize_knob_must_be_a_choice_of_dtypes():
    with pytest.raises(ConfigError, match="Quantize.dtype"):
        Quantize(Range(2, 8))
    with pytest.raises(ConfigError, match="'int9'"):
        Quantize(Choice(["int8", "int9"]))
    assert Quantize(Choice(["int8", "fp16", "bf16"])).bind({"quantize.dtype": "bf16"}) == Quantize("bf16")


def test_bound_value_types():
    bound = Prune(Range(0.05, 0.5)).bind({"prune.density": 0.25})
    assert isinstance(bound.density, float)
    spec = Range(0.05, 0.5, log=True)
    value = spec.from_unit(0.3)
    assert Prune(spec).bind({"prune.density": value}).density == pytest.approx(value)
    assert math.isclose(Prune(Range(0.05, 0.5)).bind({"prune.density": 0.05}).density, 0.05)


def test_open_strategy_serializes_its_knobs():
    assert Prune(Range(0.05, 0.5)).to_dict()["Prune"]["density"] == {"low": 0.05, "high": 0.5, "log": False, "integer": False}
    assert Quantize(Choice(["int8", "int4"])).to_dict()["Quantize"]["dtype"] == {"choice": ["int8", "int4"]}


def test_compose_rejects_non_operators():
    with pytest.raises(KnobError, match="at least one operator"):
        Compose([])
    with pytest.raises(KnobError, match="Compose takes operators"):
        Compose([Prune(0.1), "Quantize"])
