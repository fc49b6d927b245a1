"""Constrained search on cheap synthetic problems with known optima (no training)."""

from __future__ import annotations

import json
import math
import random

import pytest

from condensa import Choice, Compose, Prune, Quantize, Range
from condensa.errors import CondensaWarning, ConfigError, RecoveryError, SearchError
from condensa.search import Constraint, Objective, accuracy_drop, search

TRUE = 0.04
ONE_KNOB = Prune(density=Range(0.005, 0.5, log=True))
FOOTPRINT = Objective("footprint_bytes", cheap=lambda k: 1000 * k["prune.density"])


def one_knob_evaluator(noise: float = 0.0, seed: int = 0, calls: list | None = None):
    """Accuracy drop falls with log density and crosses 1 point at density 0.04."""
    rng = random.Random(seed)

    def evaluate(bound):
        density = bound.density
        if calls is not None:
            calls.append(density)
        drop = max(0.0, 2 * (math.log(TRUE) - math.log(density)) + 1.0) + rng.gauss(0, noise)
        return {"accuracy_drop": drop, "footprint_bytes": 1000 * density, "mismatch_rate": drop}

    return evaluate


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_bo_finds_the_constraint_boundary_in_ten_evaluations(seed):
    # Noiseless evaluator: trust the measurements (a GP smooths the kink and may doubt a point 0.003 under the bound).
    result = search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=10, seed=seed, recommend="observed")
    assert result.feasible
    assert result.samples == 10
    assert abs(result.best_knobs["prune.density"] / TRUE - 1) < 0.05
    assert result.best_metrics["accuracy_drop"] <= 1.0


def test_bo_with_noise_returns_a_feasible_answer_near_the_boundary():
    for seed in range(3):
        result = search(ONE_KNOB, one_knob_evaluator(noise=0.3, seed=seed), FOOTPRINT, [accuracy_drop(1.0)], budget=10, seed=seed)
        assert result.feasible
        assert result.best_metrics["accuracy_drop"] <= 1.0
        assert 0.025 < result.best_knobs["prune.density"] < 0.07


def test_model_recommendation_passes_over_a_lucky_measurement():
    """Density 0.03 measured twice, once lucky (0.9 under the bound of 1) and once not (1.7): whatever
    hyperparameters the GP fits, its mean there lies between the two and above the bound, so the
    lucky point is set aside and the cheapest point feasible as measured *and* modeled wins."""
    from condensa.search import api, bo

    trace = [(0.01, 4.2), (0.02, 2.6), (0.03, 0.9), (0.03, 1.7), (0.04, 0.6), (0.06, 0.2), (0.1, 0.0), (0.2, 0.0)]
    space = api.Space(ONE_KNOB.knobs())
    evaluations = [api.Evaluation(i, {"prune.density": d}, {"accuracy_drop": drop}, [drop], 1000 * d, drop <= 1.0)
                   for i, (d, drop) in enumerate(trace)]
    x = [space.encode(e.knobs) for e in evaluations]
    trusted = bo.model_feasible(x, [[drop for _, drop in trace]], [1.0], seed=0, step=len(trace))
    assert trusted[2] is False and all(trusted[4:])
    observed = api.summarize(evaluations, FOOTPRINT, [accuracy_drop(1.0)])
    modeled = api.summarize(evaluations, FOOTPRINT, [accuracy_drop(1.0)], trusted)
    assert observed.best_knobs == {"prune.density": 0.03}
    assert modeled.best_knobs == {"prune.density": 0.04}
    assert modeled.set_aside == [2] and "set aside" in modeled.message


def test_a_gp_that_cannot_be_fitted_falls_back_visibly(monkeypatch, tmp_path):
    import botorch.fit
    from botorch.exceptions.errors import ModelFittingError

    from condensa.tables import evaluations_table

    def fail(*args, **kwargs):
        raise ModelFittingError("All attempts to fit the model have failed.")

    monkeypatch.setattr(botorch.fit, "fit_gpytorch_mll", fail)
    journal = tmp_path / "journal.jsonl"
    result = search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=6, seed=0, journal=journal)
    assert result.samples == 6 and result.feasible
    proposals = [e.proposal for e in result.evaluations]
    assert proposals[:3] == ["initial design"] * 3
    assert all(p.startswith("random fallback: the GP fit failed (ModelFittingError: All attempts") for p in proposals[3:])
    rows = [json.loads(line) for line in journal.read_text().splitlines()][1:]
    assert [row["evaluation"]["proposal"] for row in rows] == proposals
    assert "constraint model could not be fitted" in result.message
    assert "#3 was proposed by a random fallback: the GP fit failed" in evaluations_table(result.evaluations, "footprint_bytes")


def test_recommend_must_be_known():
    with pytest.raises(ConfigError, match="search.recommend"):
        search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=2, recommend="best")


TWO_KNOBS = Compose([Prune(density=Range(0.01, 0.5, log=True), layers=["Conv2d"]),
                     Prune(density=Range(0.01, 0.5, log=True), layers=["Linear"])])


def two_knob_evaluate(bound):
    conv, linear = bound.ops[0].density, bound.ops[1].density
    drop = max(0.0, math.log(0.1 / conv)) + max(0.0, math.log(0.03 / linear))
    return {"accuracy_drop": drop, "footprint_bytes": 100 * conv + 1000 * linear}


def test_bo_two_knobs_beats_random_at_equal_budget():
    # Optimum: conv * linear = 0.003 / e with 100 conv = 1000 linear -> footprint 20.98.
    cheap = Objective("footprint_bytes", cheap=lambda k: 100 * k["prune0.density"] + 1000 * k["prune1.density"])
    bo, rnd = [], []
    for seed in range(3):
        bo.append(search(TWO_KNOBS, two_knob_evaluate, cheap, [accuracy_drop(1.0)], budget=12, seed=seed).best_metrics["footprint_bytes"])
        rnd.append(search(TWO_KNOBS, two_knob_evaluate, cheap, [accuracy_drop(1.0)], budget=12, seed=seed, method="random").best_metrics["footprint_bytes"])
    assert max(bo) < 20.98 * 1.10
    assert sum(bo) < sum(rnd)


def test_expensive_objective_is_modeled_and_maximize_works():
    # Maximize "speed" = 1/density: the same boundary, without a cheap objective.
    def evaluate(bound):
        metrics = one_knob_evaluator()(bound)
        metrics["speed"] = 1.0 / bound.density
        return metrics

    result = search(ONE_KNOB, evaluate, Objective("speed", "maximize"), [accuracy_drop(1.0)], budget=10, seed=0)
    assert result.feasible
    assert abs(result.best_knobs["prune.density"] / TRUE - 1) < 0.15


def test_infeasible_everywhere_reports_least_violating():
    def evaluate(bound):
        return {"accuracy_drop": 5.0 - bound.density, "footprint_bytes": bound.density}

    result = search(ONE_KNOB, evaluate, FOOTPRINT, [accuracy_drop(1.0)], budget=5)
    assert not result.feasible
    assert result.best_knobs is None
    assert "no feasible point found in 5 evaluations" in result.message
    assert result.least_violating["knobs"]["prune.density"] == max(e.knobs["prune.density"] for e in result.evaluations)


def test_failed_evaluation_is_recorded_and_search_goes_on():
    state = {"n": 0}

    def evaluate(bound):
        state["n"] += 1
        if state["n"] == 2:
            raise RecoveryError("recovery diverged: loss is nan")
        return one_knob_evaluator()(bound)

    result = search(ONE_KNOB, evaluate, FOOTPRINT, [accuracy_drop(1.0)], budget=6)
    assert result.samples == 6
    failed = [e for e in result.evaluations if e.status == "failed"]
    assert len(failed) == 1 and "nan" in failed[0].message and not failed[0].feasible
    assert result.feasible


def test_resume_after_interruption_matches_uninterrupted_trace(tmp_path):
    full = search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=8, seed=3, journal=tmp_path / "a.jsonl")
    calls: list[float] = []
    inner = one_knob_evaluator(calls=calls)

    def crashing(bound):
        if len(calls) == 4:
            raise KeyboardInterrupt
        return inner(bound)

    with pytest.raises(KeyboardInterrupt):
        search(ONE_KNOB, crashing, FOOTPRINT, [accuracy_drop(1.0)], budget=8, seed=3, journal=tmp_path / "b.jsonl")
    assert len(calls) == 4
    calls.clear()
    resumed = search(ONE_KNOB, inner, FOOTPRINT, [accuracy_drop(1.0)], budget=8, seed=3, journal=tmp_path / "b.jsonl")
    assert len(calls) == 4  # only the missing evaluations ran
    assert [e.knobs for e in resumed.evaluations] == [e.knobs for e in full.evaluations]
    assert resumed.best_knobs == full.best_knobs
    calls.clear()
    again = search(ONE_KNOB, inner, FOOTPRINT, [accuracy_drop(1.0)], budget=8, seed=3, journal=tmp_path / "b.jsonl")
    assert calls == [] and again.samples == 8


def test_journal_from_a_different_config_is_refused(tmp_path):
    journal = tmp_path / "j.jsonl"
    search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=2, journal=journal, fingerprint={"model": "digits_cnn"})
    with pytest.raises(SearchError, match=r"different config: fingerprint.model differs \(\"digits_cnn\" vs \"resnet18\"\)"):
        search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=2, journal=journal, fingerprint={"model": "resnet18"})
    with pytest.raises(SearchError, match="constraints"):
        search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(2.0)], budget=2, journal=journal, fingerprint={"model": "digits_cnn"})


def finished_journal(tmp_path, budget: int):
    journal = tmp_path / "j.jsonl"
    search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=budget, journal=journal)
    return journal


def records(journal) -> list[dict]:
    return [json.loads(line) for line in journal.read_bytes().split(b"\n") if line.strip()]  # every line parses


def test_a_complete_last_record_without_its_newline_is_kept(tmp_path):  # truncate -s -1 journal.jsonl
    journal = finished_journal(tmp_path, 10)
    journal.write_bytes(journal.read_bytes()[:-1])
    calls: list[float] = []
    result = search(ONE_KNOB, one_knob_evaluator(calls=calls), FOOTPRINT, [accuracy_drop(1.0)], budget=10, journal=journal)
    assert calls == [] and result.samples == 10  # the 10th record was kept, not re-evaluated
    search(ONE_KNOB, one_knob_evaluator(calls=calls), FOOTPRINT, [accuracy_drop(1.0)], budget=11, journal=journal)
    assert len(calls) == 1 and [r["type"] for r in records(journal)] == ["header"] + ["evaluation"] * 11
    assert list(tmp_path.iterdir()) == [journal]  # nothing was set aside


DAMAGE = {
    "a torn last line": lambda good: good + b'{"type": "evaluation", "evaluation": {"index": 3, "kn',
    "interleaved writes in the middle": lambda good: good.replace(b"\n", b'\n}{"type": "evaluation", "ev\n', 2),
    "3,000 random bytes": lambda good: random.Random(7).randbytes(3000).replace(b"\n", b" "),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_unreadable_journal_content_is_set_aside_never_deleted(tmp_path, damage):
    journal = finished_journal(tmp_path, 3)
    damaged = DAMAGE[damage](journal.read_bytes())
    journal.write_bytes(damaged)
    calls: list[float] = []
    with pytest.warns(CondensaWarning, match=r"cannot be read .* kept in j\.jsonl\.corrupt-") as warned:
        result = search(ONE_KNOB, one_knob_evaluator(calls=calls), FOOTPRINT, [accuracy_drop(1.0)], budget=4, journal=journal)
    corrupt = list(tmp_path.glob("j.jsonl.corrupt-*"))
    assert len(corrupt) == 1 and corrupt[0].read_bytes() == damaged  # the journal as found, byte for byte
    assert corrupt[0].name in str(warned[0].message)
    fresh = damage == "3,000 random bytes"
    assert len(calls) == (4 if fresh else 1) and result.samples == 4  # every readable evaluation was kept
    assert [r["type"] for r in records(journal)] == ["header"] + ["evaluation"] * 4


def test_evaluations_without_a_readable_header_are_refused_untouched(tmp_path):
    journal = finished_journal(tmp_path, 2)
    damaged = b"#" + journal.read_bytes()
    journal.write_bytes(damaged)
    with pytest.raises(SearchError, match="2 evaluations but no readable header"):
        search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=3, journal=journal)
    assert journal.read_bytes() == damaged and list(tmp_path.iterdir()) == [journal]


def test_a_journal_without_evaluations_never_blocks_a_changed_config(tmp_path):
    journal = tmp_path / "j.jsonl"
    with pytest.raises(ConfigError, match="no metric 'smallness'"):  # fails at the first evaluation, after the header
        search(ONE_KNOB, one_knob_evaluator(), Objective("smallness"), [accuracy_drop(1.0)], budget=2, journal=journal)
    assert [r["type"] for r in records(journal)] == ["header"]
    result = search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=2, journal=journal)
    assert result.samples == 2 and records(journal)[0]["fingerprint"]["search"]["objective"]["metric"] == "footprint_bytes"


@pytest.mark.parametrize("method", ["grid", "random", "bisection"])
def test_baselines_respect_the_budget(method):
    calls: list[float] = []
    result = search(ONE_KNOB, one_knob_evaluator(calls=calls), FOOTPRINT, [accuracy_drop(1.0)], budget=7, method=method)
    assert len(calls) == 7 and result.samples == 7
    assert result.feasible


def test_bisection_converges_and_refuses_two_knobs():
    result = search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=10, method="bisection")
    assert abs(result.best_knobs["prune.density"] / TRUE - 1) < 0.05
    with pytest.raises(SearchError, match="bisection searches exactly one knob"):
        search(TWO_KNOBS, two_knob_evaluate, FOOTPRINT, [accuracy_drop(1.0)], budget=3, method="bisection")


def test_choice_knob_and_callable_constraint():
    strategy = Compose([Prune(density=Range(0.01, 0.5, log=True)), Quantize(dtype=Choice(["int4", "int8"]))])

    def evaluate(bound):
        density, dtype = bound.ops[0].density, bound.ops[1].dtype
        penalty = 0.8 if dtype == "int4" else 0.0
        drop = max(0.0, 2 * math.log(0.04 / density)) + penalty
        return {"accuracy_drop": drop, "footprint_bytes": density * (4 if dtype == "int4" else 8)}

    only_small_drops = Constraint("custom", 1.0, fn=lambda m: m["accuracy_drop"])
    result = search(strategy, evaluate, Objective("footprint_bytes"), [only_small_drops], budget=12, seed=0)
    assert result.feasible
    assert all(e.constraints[0] == e.metrics["accuracy_drop"] for e in result.evaluations)
    # int4 wins: it may go down to density 0.04 * exp(-0.1) (footprint 0.145), int8 only to 0.04 (0.32)
    assert result.best_knobs["quantize.dtype"] == "int4"
    assert result.best_metrics["footprint_bytes"] < 0.04 * math.exp(-0.1) * 4 * 1.15


def test_budget_must_be_positive():
    with pytest.raises(ConfigError, match="search.budget: must be an integer >= 1"):
        search(ONE_KNOB, one_knob_evaluator(), FOOTPRINT, [accuracy_drop(1.0)], budget=0)
