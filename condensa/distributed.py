"""Multi-device recovery under ``torchrun``: DistributedDataParallel + DistributedSampler.

``torchrun --nproc_per_node=N -m condensa.cli search CONFIG`` starts N processes; each trains
on its shard of every batch and DDP averages the gradients (nccl on CUDA, gloo on CPU). Every
rank runs the same search and measures the same synchronized model; only rank 0 writes files.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data.distributed import DistributedSampler


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def init_from_env(device: torch.device) -> bool:
    """Join the process group described by torchrun's env vars; True when running distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def wrap(model: nn.Module, device: torch.device) -> nn.Module:
    """DDP around ``model`` (parametrized masks and quantizers are ordinary submodules to DDP)."""
    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


def broadcast_buffers(model: nn.Module, source: int = 0) -> None:
    """Copy every buffer (BatchNorm statistics, masks) of ``model`` from rank ``source`` to all ranks."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    for buffer in model.buffers():
        dist.broadcast(buffer.data, src=source)


def all_mean(values: list[float]) -> list[float]:
    """The mean over ranks of each value (unchanged outside a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return values
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor)
    return (tensor / dist.get_world_size()).tolist()


def sampler(data, *, shuffle: bool, seed: int):
    return DistributedSampler(data, num_replicas=world_size(), rank=rank(), shuffle=shuffle, seed=seed)
