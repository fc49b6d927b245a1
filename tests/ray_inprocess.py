"""In-process Ray checks, run by test_parallel_ray.py in a child pytest of its own session.

Not collected on its own (the name does not start with ``test_``): Ray workers and the raylet of an
in-process instance live in the test process's session, and a search run that died inside these
checks once took the whole CI run down with it, silently; in a child process, whatever happens here
is one failed test with its output.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

sys.path.insert(0, str(Path(__file__).parent))
import parallel_synthetic as syn  # noqa: E402
from test_parallel import run  # noqa: E402

from condensa.errors import ConfigError, SearchError  # noqa: E402
from condensa.search.executors import RayExecutor  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.cloudpickle.register_pickle_by_value(syn)  # the workers do not have tests/ on their path
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_ray_search_failures_in_tasks_are_failed_evaluations(local_ray):
    dies = syn.Evaluator(die_below=0.01)  # the worker process exits
    result, executor = run(2, budget=6, evaluate=dies, executor=RayExecutor(dies, 2))
    assert not executor.started_here and ray.is_initialized()  # it used the running instance and left it alone
    failed = [e for e in result.evaluations if e.status == "failed"]
    assert failed and all("died" in e.message.lower() or "worker" in e.message.lower() for e in failed), \
        [e.message for e in failed]
    assert result.samples == 6 and result.feasible

    raises = syn.Evaluator(fail_below=0.01)
    result, _ = run(2, budget=6, evaluate=raises, executor=RayExecutor(raises, 2))
    failed = [e for e in result.evaluations if e.status == "failed"]
    assert failed and all(e.message.startswith("RuntimeError: synthetic crash") for e in failed)
    assert result.samples == 6 and result.feasible


def test_ray_search_stops_on_a_config_error_and_on_an_evaluate_the_workers_cannot_load(local_ray):
    def misconfigured(bound):
        raise ConfigError("search.objective: bad")

    with pytest.raises(ConfigError, match="search.objective: bad"):
        run(2, budget=4, evaluate=misconfigured, executor=RayExecutor(misconfigured, 2))

    import types

    module = types.ModuleType("not_on_the_workers")
    exec("class Evaluate:\n    def __call__(self, bound):\n        return {}\n", module.__dict__)
    sys.modules["not_on_the_workers"] = module
    evaluate = module.Evaluate()
    with pytest.raises(SearchError, match="cannot load the evaluate function"):
        run(2, budget=4, evaluate=evaluate, executor=RayExecutor(evaluate, 2))
