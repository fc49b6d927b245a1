"""Multi-process runs: DDP over 2 gloo processes on CPU equals one process, and ranks agree."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from condensa import Prune
from condensa.data import digits_splits
from condensa.recovery import RecoveryConfig, recover

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"epochs": 1, "max_steps": 12, "lr": 0.05, "optimizer": "sgd", "batch_size": 64, "shuffle": False}
METHODS = {
    "finetune": {},
    "distill": {"loss": "distill", "weights": "auto", "softadapt_window": 2},  # SoftAdapt weights from the whole batch
    "lc": {"method": "lc", "lc_steps": 3},  # its last C step attaches the strategy mid-training (fine-tuning after)
    "lr_auto": {"lr": "auto", "lr_test_steps": 12},  # ranks train with one tested rate
}
pytestmark = pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not built")


def make_model(norm: bool = False) -> nn.Module:
    torch.manual_seed(0)
    # No dropout: its per-process randomness would differ by design. BatchNorm only where ranks
    # must agree on recalibrated statistics (training with it differs from one process by design).
    middle = [nn.BatchNorm1d(64)] if norm else []
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), *middle, nn.ReLU(), nn.Linear(64, 10))


def recovered(method: str, distributed: bool, norm: bool = False) -> dict[str, torch.Tensor]:
    from condensa import finalize

    strategy = Prune(density=0.3)
    teacher = make_model(norm).eval()
    model, _ = strategy.apply(teacher)
    config = RecoveryConfig.from_dict({**CONFIG, **METHODS[method], "distributed": distributed})
    model = recover(model, teacher, digits_splits().train, config, strategy=strategy, device="cpu", seed=0)
    return {k: v.detach().clone() for k, v in finalize(model).state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    states = {method: recovered(method, True) for method in METHODS}
    states["lc-batchnorm"] = recovered("lc", True, norm=True)
    torch.save(states, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ddp") / "states")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    return [torch.load(f"{out}.{rank}", weights_only=True) for rank in (0, 1)]


@pytest.mark.parametrize("method", sorted(METHODS))
def test_two_gloo_processes_match_one_process(two_ranks, method):
    torch.set_num_threads(1)
    single = recovered(method, False)
    ddp = two_ranks[0][method]
    assert ddp.keys() == single.keys()
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-5), key
    # Training really happened and the masks held under DDP.
    assert not torch.allclose(single["1.weight"], make_model()[1].weight * (single["1.weight"] != 0))
    assert (ddp["1.weight"] == 0).sum() == (single["1.weight"] == 0).sum()


def test_ranks_agree_on_recalibrated_batchnorm_statistics(two_ranks):
    rank0, rank1 = (states["lc-batchnorm"] for states in two_ranks)
    for key in ("2.running_mean", "2.running_var"):
        assert torch.equal(rank0[key], rank1[key]), key
    assert not torch.equal(rank0["2.running_mean"], torch.zeros(64))  # recalibrated, not reset


SEARCH = """
model: {name: digits_mlp, kwargs: {dropout: 0.0}, train: {epochs: 3}}
data: {name: digits}
strategy: {scheme: prune_quantize, args: {density: {low: 0.05, high: 0.5, log: true}, layers: [Linear]}}
recovery: {epochs: 1, max_steps: 8, lr: 0.003, shuffle: false}
search: {budget: 2, eval_epochs: 1}
"""
VOLATILE = {"seconds", "versions", "device", "created"}


def comparable(value, path=""):
    if isinstance(value, dict):
        return {k: comparable(v, f"{path}.{k}") for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [comparable(v, path) for v in value]
    return value


def assert_close(a, b, path="result"):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), (path, set(a) ^ set(b))
        for key in a:
            assert_close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, list):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-6) or (math.isnan(a) and math.isnan(b)), (path, a, b)
    else:
        assert a == b, (path, a, b)


def test_torchrun_search_writes_the_result_of_one_process(tmp_path):
    config = tmp_path / "search.yaml"
    config.write_text(SEARCH)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    run = dict(cwd=REPO, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=900)
    single = subprocess.run([sys.executable, "-m", "condensa.cli", "search", str(config), "--out", str(tmp_path / "one"),
                             "--quiet"], **run)
    assert single.returncode == 0, single.stderr[-2000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                          "-m", "condensa.cli", "search", str(config), "--out", str(tmp_path / "two"), "--quiet"], **run)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
    one, two = (json.loads((tmp_path / name / "result.json").read_text()) for name in ("one", "two"))
    assert one["samples"] == 2 and one["feasible"] == two["feasible"]
    assert_close(comparable(one), comparable(two))
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
