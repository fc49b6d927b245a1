"""Multi-process recovery: DDP over 2 gloo processes on CPU equals one process."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from condensa import Prune
from condensa.data import digits_splits
from condensa.recovery import RecoveryConfig, recover

CONFIG = {"epochs": 1, "max_steps": 12, "lr": 0.05, "optimizer": "sgd", "batch_size": 64, "shuffle": False}


def make_model() -> nn.Module:
    torch.manual_seed(0)
    # No dropout or BatchNorm: their per-process randomness/statistics would differ by design.
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def compressed_after_recovery(distributed: bool) -> dict[str, torch.Tensor]:
    from condensa import finalize

    strategy = Prune(density=0.3)
    model, _ = strategy.apply(make_model())
    model = recover(model, None, digits_splits().train, RecoveryConfig.from_dict({**CONFIG, "distributed": distributed}),
                    strategy=strategy, device="cpu", seed=0)
    return {k: v.detach().clone() for k, v in finalize(model).state_dict().items()}


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)})
    torch.set_num_threads(1)
    state = compressed_after_recovery(True)
    if rank == 0:
        torch.save(state, out)
    torch.distributed.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not torch.distributed.is_gloo_available(), reason="gloo backend not built")
def test_two_gloo_processes_match_one_process(tmp_path):
    out = str(tmp_path / "rank0.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)
    single = compressed_after_recovery(False)
    assert ddp.keys() == single.keys()
    for key in single:
        assert torch.allclose(ddp[key], single[key], atol=1e-5), key
    # Training really happened and the masks held under DDP.
    assert not torch.allclose(single["1.weight"], (make_model()[1].weight * (single["1.weight"] != 0)))
    assert (ddp["1.weight"] == 0).sum() == (single["1.weight"] == 0).sum()
