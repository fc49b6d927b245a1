"""torchrun inside one evaluation (``search.ranks_per_evaluation``): 2 gloo ranks on CPU give the
same kind of metrics as the in-process evaluation of the same knobs (test_distributed.py checks
the DDP equivalence itself)."""

from __future__ import annotations

import math

import pytest

from condensa.config import parse_config


@pytest.mark.slow
def test_torchrun_evaluation_matches_the_in_process_one():
    from condensa.parallel_eval import TorchrunEvaluate, WorkspaceEvaluate
    from condensa.pipeline import Workspace

    config = parse_config({"model": {"name": "digits_cnn"}, "data": {"name": "digits"}, "device": "cpu",
                           "strategy": {"scheme": "prune_quantize", "args": {"density": {"low": 0.01, "high": 0.5, "log": True}}},
                           "recovery": {"epochs": 1, "lr": 0.003, "shuffle": False}, "search": {"eval_epochs": 1}, "seed": 0})
    workspace = Workspace.from_config(config, log=lambda *_: None)
    knobs = {"prune.density": 0.1}
    local = WorkspaceEvaluate(workspace, 1)(workspace.strategy.bind(knobs))
    ranks = TorchrunEvaluate(config.to_dict(), 2, timeout=900)(knobs)
    assert ranks["density"] == pytest.approx(local["density"])
    assert math.isfinite(ranks["accuracy_drop"]) and abs(ranks["accuracy_drop"] - local["accuracy_drop"]) < 3.0
