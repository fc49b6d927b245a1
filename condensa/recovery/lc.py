"""Learning-compression (L-C) recovery, as in Condensa (NVlabs/condensa ``opt/lc``; Carreira-
Perpiñán & Idelbayev, "Learning-compression algorithms for neural net pruning", CVPR 2018).

Instead of compressing once and fine-tuning, L-C keeps dense weights ``w`` and alternates:

* **L step**: a few minibatch iterations on ``task_loss(w) + mu/2 * ||w - theta - lambda/mu||^2``
  over the compressed tensors: the weights learn the task while being pulled toward a
  compressible point;
* **C step**: ``theta = Compress(w - lambda/mu)`` by re-applying the strategy's operators (any
  operator, including Compose(Prune, Quantize)), then the multiplier update
  ``lambda <- lambda - mu * (w - theta)``;

with ``mu`` growing geometrically from ``mu_init`` by ``mu_multiplier`` up to ``mu_cap``. The
result is the last C step: exactly compressed (masks and quantizers attached as usual).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed
from ..errors import RecoveryError
from ..operators import params
from .config import RecoveryConfig
from .train import make_loader, train


def _compress(strategy, dense: nn.Module, shift: dict[str, torch.Tensor]) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Apply ``strategy`` to ``dense - shift``; return the compressed model and its tensor values."""
    shifted = copy.deepcopy(dense)
    with torch.no_grad():
        for name, delta in shift.items():
            shifted.get_parameter(name).sub_(delta)
    compressed, _ = strategy.apply(shifted, inplace=True)
    values = {}
    for module_name, module, tensor_name in params.compressed_tensors(compressed):
        key = f"{module_name}.{tensor_name}" if module_name else tensor_name
        values[key] = getattr(module, tensor_name).detach().clone()
    return compressed, values


def lc_recover(
    model: nn.Module,
    teacher: nn.Module,
    data,
    config: RecoveryConfig,
    *,
    strategy,
    device: torch.device,
    loss_fn: Callable,
    seed: int = 0,
    progress: Callable[[int, float], None] | None = None,
    loader: DataLoader | None = None,
    wrap: Callable[[nn.Module], nn.Module] | None = None,
    trace: list[dict[str, float]] | None = None,
) -> nn.Module:
    """Run L-C from the reference weights; returns the strategy-applied model (parametrized).

    ``model`` (the once-compressed model) is only used for its architecture; L-C starts from the
    dense reference weights, as the algorithm prescribes. The L steps are one run of the training
    loop (:func:`~condensa.recovery.train.train`, constant learning rate) with the L-C penalty
    added to every step's loss; a C step and the multiplier update run after the first
    ``mb_iterations_first_l`` steps and then every ``mb_iterations_per_l`` steps. ``trace`` (a
    list) receives one entry per C step: the step, ``mu`` and ``distance`` = ||w - Delta(theta)|| /
    ||w|| over the compressed tensors, which falls toward 0 as L-C converges.
    """
    if strategy is None:
        raise RecoveryError("recovery.method=lc needs the strategy to re-apply in its C steps")
    dense = copy.deepcopy(teacher).to(device).train()
    params.strip(dense)
    teacher = teacher.to(device).eval()
    _, theta = _compress(strategy, dense, {})
    names = list(theta)
    multipliers = {n: torch.zeros_like(theta[n]) for n in names}
    state = {"mu": config.mu_init}
    c_steps = {config.mb_iterations_first_l + i * config.mb_iterations_per_l for i in range(config.lc_steps)}
    total = max(c_steps)

    def penalty() -> torch.Tensor:
        mu = state["mu"]
        return 0.5 * mu * sum((dense.get_parameter(n) - theta[n] - multipliers[n] / mu).pow(2).sum() for n in names)

    def c_step(step: int) -> None:
        nonlocal theta
        if step not in c_steps:
            return
        mu = state["mu"]
        with torch.no_grad():
            _, theta = _compress(strategy, dense, {n: multipliers[n] / mu for n in names})
            for n in names:
                multipliers[n] -= mu * (dense.get_parameter(n).detach() - theta[n])
            if trace is not None:
                gap = sum(float((dense.get_parameter(n) - theta[n]).pow(2).sum()) for n in names)
                norm = sum(float(dense.get_parameter(n).pow(2).sum()) for n in names)
                trace.append({"step": step, "mu": mu, "distance": (gap / max(norm, 1e-30)) ** 0.5})
        state["mu"] = min(mu * config.mu_multiplier, config.mu_cap)

    loader = loader or make_loader(data, config.batch_size, shuffle=True, seed=seed)
    schedule = replace(config.training(), epochs=math.ceil(total / max(1, len(loader))), max_steps=total)
    train(dense, data, schedule, device=device, loss_fn=loss_fn, teacher=teacher, seed=seed, progress=progress,
          loader=loader, wrap=wrap, penalty=penalty, after_step=c_step, schedule="constant")
    mu = state["mu"]
    final, _ = _compress(strategy, dense, {n: multipliers[n] / mu for n in names})
    recalibrate_batchnorm(final, make_loader(data, config.batch_size, shuffle=True, seed=seed), device)
    return final.eval()


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, loader: DataLoader, device: torch.device, batches: int = 50) -> None:
    """Re-estimate BatchNorm running statistics for the compressed weights.

    The statistics were accumulated with the dense L-step weights; the C step changes the
    activations, so they are recomputed (cumulative average over up to ``batches`` batches).
    ``loader`` is an ordinary (not distributed) loader: under torchrun every rank sees the same
    batches a single process would, and rank 0's statistics are broadcast so the ranks agree.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for i, (inputs, _) in enumerate(loader):
        if i >= batches:
            break
        model(inputs.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    distributed.broadcast_buffers(model)
    model.eval()
