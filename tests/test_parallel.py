"""Parallel search (search.workers > 1) without Ray: batch BO with pending points, the driver on a
simulated cluster, the journal's pending records and resume, failure semantics, settings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from condensa.errors import ConfigError, SearchError
from condensa.search import Journal, Space, accuracy_drop, bo, check_settings, search
from condensa.search.batch import propose_batch
from condensa.search.executors import InlineExecutor, SimulatedExecutor

sys.path.insert(0, str(Path(__file__).parent))
import parallel_synthetic as syn  # noqa: E402


def rows(journal: Path, kind: str = "evaluation") -> list[dict]:
    out = []
    for line in journal.read_text().splitlines():
        record = json.loads(line)
        if record["type"] == kind:
            out.append(record[kind])
    return out


def durations(step: int, bound) -> float:
    """Simulated evaluation times: 1 to 3 'minutes', varying by step so completions reorder."""
    return 1.0 + 2.0 * ((step * 7919) % 11) / 10


def run(workers: int, budget: int = 10, seed: int = 0, journal=None, evaluate=None, executor=None, **kw):
    evaluate = evaluate or syn.Evaluator()
    executor = executor or SimulatedExecutor(evaluate, workers, durations)
    result = search(syn.strategy(), evaluate, syn.objective(), [accuracy_drop(1.0)], budget=budget, seed=seed,
                    journal=journal, workers=workers, executor=executor, recommend="observed", **kw)
    return result, executor


# -- batch proposals ----------------------------------------------------------------------------------
def _state(densities=None):
    space = Space(syn.strategy().knobs())
    if densities is None:
        x = bo.initial_design(space, 3, 0) + [[0.62], [0.2]]
    else:
        x = [space.encode({"prune.density": d}) for d in densities]
    densities = [space.decode(u)["prune.density"] for u in x]
    cheap = lambda u: 1000 * space.decode(u)["prune.density"]  # noqa: E731
    drops = [syn.drop(d) for d in densities]
    return space, x, [drops], [cheap(u) for u in x], [d <= 1 for d in drops], cheap


def test_without_pending_points_the_proposal_is_the_sequential_one():
    space, x, columns, losses, feasible, cheap = _state()
    assert propose_batch(space, x, columns, [1.0], losses, feasible, cheap, 0, 5, []) == \
        bo.propose(space, x, columns, [1.0], losses, feasible, cheap, 0, 5)


def test_pending_points_push_the_next_proposal_elsewhere_deterministically():
    space, x, columns, losses, feasible, cheap = _state()
    first = bo.propose(space, x, columns, [1.0], losses, feasible, cheap, 0, 5)
    second = propose_batch(space, x, columns, [1.0], losses, feasible, cheap, 0, 6, [first])
    assert abs(second[0] - first[0]) > bo.DUPLICATE_TOL
    assert propose_batch(space, x, columns, [1.0], losses, feasible, cheap, 0, 6, [first]) == second
    d1, d2 = space.decode(first)["prune.density"], space.decode(second)["prune.density"]
    assert 0.02 < d1 < 0.08 and 0.02 < d2 < 0.08  # both near the boundary at 0.04


def test_before_anything_is_feasible_the_batch_looks_for_a_feasible_point_not_the_cheapest_one():
    # Every finished point is infeasible (density <= 0.02, boundary at 0.04). A pending point at
    # density 0.3 is very likely feasible, so every candidate keeps the batch's probability of
    # feasibility near 1: ranking by the raw objective would take the cheapest end of the range;
    # the proposal must instead be likely feasible and cheaper than the pending point.
    space, x, columns, losses, feasible, cheap = _state([0.006, 0.01, 0.02])
    assert not any(feasible)
    pending = space.encode({"prune.density": 0.3})
    unit = propose_batch(space, x, columns, [1.0], losses, feasible, cheap, 0, 3, [pending])
    density = space.decode(unit)["prune.density"]
    assert 0.025 < density < 0.3
    assert propose_batch(space, x, columns, [1.0], losses, feasible, cheap, 0, 3, [pending]) == unit
    # with a pending point as hopeless as the finished ones, the proposal moves up towards feasibility
    low = space.encode({"prune.density": 0.015})
    density_low = space.decode(propose_batch(space, x, columns, [1.0], losses, feasible, cheap, 0, 3, [low]))["prune.density"]
    assert density_low > 0.02


# -- the driver on a simulated cluster ------------------------------------------------------------------
def test_workers_1_through_the_driver_reproduces_the_sequential_search(tmp_path):
    sequential = search(syn.strategy(), syn.Evaluator(), syn.objective(), [accuracy_drop(1.0)], budget=8, seed=2,
                        journal=tmp_path / "a.jsonl", recommend="observed")
    assert rows(tmp_path / "a.jsonl", "pending") == []  # the sequential journal, untouched
    driven, _ = run(1, budget=8, seed=2, journal=tmp_path / "b.jsonl")
    assert [e.knobs for e in driven.evaluations] == [e.knobs for e in sequential.evaluations]
    assert [e.proposal for e in driven.evaluations] == [e.proposal for e in sequential.evaluations]
    assert [r["knobs"] for r in rows(tmp_path / "b.jsonl")] == [r["knobs"] for r in rows(tmp_path / "a.jsonl")]


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow)])  # ~30 s each
def test_four_workers_find_the_boundary_in_fewer_rounds(seed):
    one, ex1 = run(1, budget=12, seed=seed)
    four, ex4 = run(4, budget=12, seed=seed)
    for result in (one, four):
        assert result.feasible and result.samples == 12
        assert sorted(e.index for e in result.evaluations) == list(range(12))
    assert abs(four.best_knobs["prune.density"] / syn.TRUE - 1) < 0.05
    assert ex4.clock < 0.5 * ex1.clock
    assert any(e.proposal.startswith("bo (") for e in four.evaluations)  # proposals with pending points


def test_journal_is_in_completion_order_and_resume_reruns_only_in_flight_points(tmp_path):
    journal = tmp_path / "j.jsonl"

    class Interrupted(SimulatedExecutor):
        finished = 0

        def wait(self):
            if self.finished == 5:
                raise KeyboardInterrupt
            self.finished += 1
            return super().wait()

    evaluate = syn.Evaluator()
    with pytest.raises(KeyboardInterrupt):
        run(3, budget=10, journal=journal, executor=Interrupted(evaluate, 3, durations))
    finished = rows(journal)
    assert len(finished) == 5
    in_flight = {r["index"]: r["knobs"] for r in rows(journal, "pending")}
    for r in finished:
        in_flight.pop(r["index"])
    assert len(in_flight) == 3  # three evaluations were running at the interrupt

    submitted = []

    class Recording(SimulatedExecutor):
        def submit(self, step, knobs, bound):
            submitted.append((step, bound.density))
            super().submit(step, knobs, bound)

    resumed, _ = run(3, budget=10, journal=journal, executor=Recording(evaluate, 3, durations))
    indices = [r["index"] for r in rows(journal)]
    assert sorted(indices) == list(range(10)) and len(set(indices)) == 10  # nothing lost, nothing twice
    assert indices != sorted(indices)  # completion order, not step order
    assert not any(step in {r["index"] for r in finished} for step, _ in submitted)  # finished work never re-run
    assert {s: d for s, d in submitted[:3]} == {s: k["prune.density"] for s, k in in_flight.items()}  # same points again
    assert resumed.feasible and [e.index for e in resumed.evaluations] == list(range(10))


def test_a_journal_with_pending_records_resumes_through_the_driver_even_with_one_worker(tmp_path):
    journal = tmp_path / "j.jsonl"

    class StopAfter(SimulatedExecutor):
        def wait(self):
            if self.clock > 2.5:
                raise KeyboardInterrupt
            return super().wait()

    with pytest.raises(KeyboardInterrupt):
        run(4, budget=8, journal=journal, executor=StopAfter(syn.Evaluator(), 4, durations))
    result = search(syn.strategy(), syn.Evaluator(), syn.objective(), [accuracy_drop(1.0)], budget=8, seed=0,
                    journal=journal, recommend="observed")  # workers=1, no executor: in-process
    indices = [r["index"] for r in rows(journal)]
    assert sorted(indices) == list(range(8)) and result.samples == 8


def test_pending_records_go_through_the_journal_checks(tmp_path):
    path = tmp_path / "j.jsonl"

    class StopAfter(SimulatedExecutor):
        def wait(self):
            if self.clock > 1.5:
                raise KeyboardInterrupt
            return super().wait()

    with pytest.raises(KeyboardInterrupt):
        run(3, budget=6, journal=path, executor=StopAfter(syn.Evaluator(), 3, durations))
    good = path.read_bytes()
    pending = rows(path, "pending")
    path.write_bytes(good + b'{"type": "pending", "pend')  # a write torn by kill -9
    with pytest.warns(UserWarning, match="cannot be read"):
        result, _ = run(3, budget=6, journal=path)
    indices = [r["index"] for r in rows(path)]
    assert sorted(indices) == list(range(6)) and result.samples == 6  # the readable pending records were kept
    assert rows(path, "pending")[: len(pending)] == pending
    path.write_bytes(good + b'{"type": "pending", "pending": {"knobs": {}}}\n')  # edited by hand
    with pytest.raises(SearchError, match="line .* is a pending record without an integer 'index'"):
        run(3, budget=6, journal=path)


def test_only_a_writable_journal_gets_pending_records(tmp_path):
    path = tmp_path / "j.jsonl"
    search(syn.strategy(), syn.Evaluator(), syn.objective(), [accuracy_drop(1.0)], budget=2, journal=path,
           recommend="observed")  # a header to read
    before = path.read_bytes()
    reader = Journal(path, writable=False)  # what a torchrun rank other than 0 holds
    run(2, budget=5, journal=reader)
    assert path.read_bytes() == before
    run(2, budget=5, journal=Journal(path))
    assert len(rows(path, "pending")) == 3 and len(rows(path)) == 5


def test_progress_hears_of_every_change_of_the_evaluations_in_flight():
    seen = []
    run(3, budget=6, on_pending=lambda running: seen.append(sorted(p.step for p in running)))
    assert max(len(s) for s in seen) == 3 and seen[-1] == []
    assert {step for s in seen for step in s} == set(range(6))


# -- failures -------------------------------------------------------------------------------------------
def test_a_raising_evaluation_is_a_failed_evaluation_and_the_search_goes_on():
    result, _ = run(3, budget=8, evaluate=syn.Evaluator(fail_below=0.01))
    failed = [e for e in result.evaluations if e.status == "failed"]
    assert failed and all("RuntimeError: synthetic crash" in e.message and not e.feasible for e in failed)
    assert result.samples == 8 and result.feasible


def test_in_this_process_an_unexpected_exception_still_stops_the_search(tmp_path):
    """workers: 1 keeps the sequential semantics (a bug shows its traceback), also when it resumes a
    parallel journal through the driver; see condensa/search/executors.py for why tasks differ."""
    evaluate = syn.Evaluator(fail_below=1.0)  # every evaluation raises
    with pytest.raises(RuntimeError, match="synthetic crash"):
        search(syn.strategy(), evaluate, syn.objective(), [accuracy_drop(1.0)], budget=4, seed=0, recommend="observed")
    with pytest.raises(RuntimeError, match="synthetic crash"):
        run(1, budget=4, executor=InlineExecutor(evaluate))


@pytest.mark.parametrize("workers", [1, 3])
def test_evaluation_errors_fail_one_evaluation_and_condensa_errors_stop_the_search(workers):
    from condensa.errors import RecoveryError

    def diverges(bound):
        if bound.density < 0.02:
            raise RecoveryError("loss is nan")
        return syn.Evaluator()(bound)

    executor = InlineExecutor(diverges) if workers == 1 else None
    result, _ = run(workers, budget=6, evaluate=diverges, executor=executor)
    assert any(e.status == "failed" and e.message == "loss is nan" for e in result.evaluations)

    def misconfigured(bound):
        raise ConfigError("search.objective: bad")

    with pytest.raises(ConfigError, match="bad"):
        run(workers, budget=4, evaluate=misconfigured, executor=InlineExecutor(misconfigured) if workers == 1 else None)

    def not_a_dict(bound):
        return 3.0

    with pytest.raises(SearchError, match="must return a dict"):
        run(workers, budget=4, evaluate=not_a_dict, executor=InlineExecutor(not_a_dict) if workers == 1 else None)


# -- settings -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("settings, fragment", [
    ({"workers": 0}, "search.workers: must be an integer >= 1"),
    ({"workers": 2.5}, "search.workers: must be an integer >= 1"),
    ({"workers": 2, "method": "bisection"}, "bisection is sequential"),
    ({"ray_address": "cluster"}, "search.ray_address: must be"),
    ({"resources_per_evaluation": {"tpu": 1}}, "resources_per_evaluation.tpu: unknown key"),
    ({"resources_per_evaluation": {"cpu": 0}}, "resources_per_evaluation.cpu: must be a number > 0"),
    ({"resources_per_evaluation": {"gpu": -1}}, "resources_per_evaluation.gpu: must be a number >= 0"),
    ({"ranks_per_evaluation": 2}, "needs search.workers > 1"),
    ({"workers": 2, "ranks_per_evaluation": 2, "resources_per_evaluation": {"gpu": 1}}, "need resources_per_evaluation.gpu: 2"),
])
def test_parallel_settings_are_checked_in_one_place(settings, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        check_settings(**settings)


def test_config_keys_reach_the_settings_check():
    from condensa.config import parse_config

    config = parse_config({"strategy": {"scheme": "prune_quantize"},
                           "search": {"workers": 4, "ray_address": "auto", "resources_per_evaluation": {"cpu": 2, "gpu": 1}}})
    assert config.search.workers == 4 and config.search.resources_per_evaluation == {"cpu": 2, "gpu": 1}
    assert parse_config({"strategy": {"scheme": "prune_quantize"}}).search.workers == 1
    with pytest.raises(ConfigError, match="search.workers"):
        parse_config({"strategy": {"scheme": "prune_quantize"}}, ["search.workers=0"])
    with pytest.raises(ConfigError, match="search.resources_per_evaluation.gpu"):
        parse_config({"strategy": {"scheme": "prune_quantize"}}, ["search.resources_per_evaluation={gpu: x}"])


def test_random_and_grid_run_in_parallel_with_the_same_points():
    for method in ("random", "grid"):
        one, ex1 = run(1, budget=6, method=method)
        four, ex4 = run(4, budget=6, method=method)
        assert [e.knobs for e in four.evaluations] == [e.knobs for e in one.evaluations]
        assert ex4.clock < 0.6 * ex1.clock


def test_missing_ray_is_one_line_naming_the_extra(monkeypatch):
    from condensa.extras import MissingExtraError

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'condensa\[ray\]'"):
        search(syn.strategy(), syn.Evaluator(), syn.objective(), [accuracy_drop(1.0)], budget=3, workers=2)


def test_one_worker_never_imports_ray():
    code = ("import sys, parallel_synthetic as s; from condensa.search import search, accuracy_drop;"
            "search(s.strategy(), s.Evaluator(), s.objective(), [accuracy_drop(1.0)], budget=2);"
            "print('ray' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_search_with_workers_and_no_ray_is_one_line_before_any_work(monkeypatch, capsys, tmp_path):
    import importlib.util

    from condensa import cli, extras

    config = tmp_path / "c.yaml"
    config.write_text("strategy: {scheme: prune_quantize, args: {density: {low: 0.01, high: 0.5, log: true}}}\n")
    real = importlib.util.find_spec
    monkeypatch.setattr(extras.importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    assert cli.main(["search", str(config), "--out", str(tmp_path / "run"), "--set", "search.workers=2"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "condensa[ray]" in lines[0] and "ray is not installed" in lines[0], lines
    assert not (tmp_path / "run").exists()  # refused before the run folder or any training
