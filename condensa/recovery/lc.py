"""Learning-compression (L-C) recovery, as in Condensa (NVlabs/condensa ``opt/lc``; Carreira-
Perpiñán & Idelbayev, "Learning-compression algorithms for neural net pruning", CVPR 2018).

Instead of compressing once and fine-tuning, L-C keeps dense weights ``w`` and alternates:

* **L step**: a few minibatch iterations on ``task_loss(w) + mu/2 * ||w - theta - lambda/mu||^2``
  over the compressed tensors: the weights learn the task while being pulled toward a
  compressible point;
* **C step**: ``theta = Compress(w - lambda/mu)`` by re-applying the strategy's operators (any
  operator, including Compose(Prune, Quantize)), then the multiplier update
  ``lambda <- lambda - mu * (w - theta)``;

with ``mu`` growing geometrically from ``mu_init`` to ``mu_final``. The schedule derives from the
step budget (``epochs`` / ``max_steps``, the same budget fine-tuning gets; :func:`schedule`): the
earlier fixed schedule ran about 200 steps whatever the budget and stopped at mu = 5, with the
weights still 8-16 % of their norm away from their compressed form, so the final C step cost
accuracy. After the last C step the compressed model (masks and quantizers attached at theta)
is fine-tuned for the last ``lc_polish`` share of the budget, continuing the same learning-rate
schedule. The result is exactly compressed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from torch import nn
from torch.utils.data import DataLoader

from .. import distributed
from ..errors import RecoveryError
from ..operators import params
from .config import RecoveryConfig
from .train import make_loader, total_steps, train


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


@dataclass(frozen=True)
class Schedule:
    """When L-C runs its C steps and with which ``mu``: ``c_steps`` C steps, the first after
    ``first`` steps and then one every ``every`` steps; ``mu`` grows geometrically from
    ``mu_init`` (first L step) to ``mu_final`` (last); ``polish`` steps of fine-tuning follow."""

    total: int
    c_steps: int
    every: int
    mu_init: float
    mu_final: float
    polish: int

    @property
    def first(self) -> int:
        return self.total - self.polish - (self.c_steps - 1) * self.every

    def at(self) -> list[int]:
        return [self.first + i * self.every for i in range(self.c_steps)]

    def mu(self, k: int) -> float:
        """``mu`` of L step ``k`` (0-based)."""
        if self.c_steps <= 1:
            return self.mu_final
        return self.mu_init * (self.mu_final / self.mu_init) ** (min(k, self.c_steps - 1) / (self.c_steps - 1))


def schedule(total: int, config: RecoveryConfig) -> Schedule:
    """The L-C schedule for a budget of ``total`` steps: ``lc_steps`` C steps (default
    ``round(sqrt(2 * T))`` clamped to 2..30 and to at most one per 5 steps, T = the steps before
    polishing), evenly spaced with the first L step taking the remainder."""
    polish = int(round(config.lc_polish * total))
    steps = max(1, total - polish)
    c_steps = config.lc_steps
    if c_steps is None:
        c_steps = max(2, min(30, round(math.sqrt(2 * steps)), steps // 5))
    c_steps = max(1, min(c_steps, steps))
    return Schedule(steps + polish, c_steps, steps // c_steps, config.mu_init, config.mu_final, polish)


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
    loop (:func:`~condensa.recovery.train.train`, the same optimizer, warmup and cosine rate as
    fine-tuning) with the L-C penalty added to every step's loss; the C steps and the multiplier
    updates run from its ``after_step``. ``trace`` (a list) receives one entry per C step: the
    step, ``mu`` and ``distance`` = ||w - Delta(theta)|| / ||w|| over the compressed tensors,
    which falls toward 0 as L-C converges.
    """
    if strategy is None:
        raise RecoveryError("recovery.method=lc needs the strategy to re-apply in its C steps")
    dense = copy.deepcopy(teacher).to(device).train()
    params.strip(dense)
    teacher = teacher.to(device).eval()
    _, theta = _compress(strategy, dense, {})
    names = list(theta)
    multipliers = {n: torch.zeros_like(theta[n]) for n in names}
    loader = loader or make_loader(data, config.batch_size, shuffle=True, seed=seed)
    plan = schedule(total_steps(config, len(loader)), config)
    c_steps = dict(zip(plan.at(), range(plan.c_steps)))
    state: dict = {"mu": plan.mu(0), "compressed": None}

    def penalty() -> torch.Tensor:
        mu = state["mu"]
        return 0.5 * mu * sum((dense.get_parameter(n) - theta[n] - multipliers[n] / mu).pow(2).sum() for n in names)

    def c_step(step: int) -> None:
        nonlocal theta
        if step not in c_steps:
            return
        k, mu = c_steps[step], state["mu"]
        with torch.no_grad():
            state["compressed"], theta = _compress(strategy, dense, {n: multipliers[n] / mu for n in names})
            for n in names:
                multipliers[n] -= mu * (dense.get_parameter(n).detach() - theta[n])
            if trace is not None:
                gap = sum(float((dense.get_parameter(n) - theta[n]).pow(2).sum()) for n in names)
                norm = sum(float(dense.get_parameter(n).pow(2).sum()) for n in names)
                trace.append({"step": step, "mu": mu, "distance": (gap / max(norm, 1e-30)) ** 0.5})
        state["mu"] = plan.mu(k + 1)

    # One learning-rate schedule over the whole budget: the L steps, then (polish) fine-tuning of
    # the last C step's compressed model. Two calls of the loop rather than one, because attaching
    # masks mid-run would leave DDP's gradient hooks on the dense weights.
    l_steps = plan.total - plan.polish
    train(dense, data, replace(config.training(), max_steps=l_steps), device=device, loss_fn=loss_fn, teacher=teacher,
          seed=seed, progress=progress, loader=loader, wrap=wrap, penalty=penalty, after_step=c_step, warmup=config.warmup_share,
          schedule_span=(0, plan.total))
    final = state["compressed"]
    if final is None:  # the budget ended before the last C step (fewer batches than planned)
        final, _ = _compress(strategy, dense, {n: multipliers[n] / state["mu"] for n in names})
    if plan.polish:
        train(final, data, replace(config.training(), max_steps=plan.polish), device=device, loss_fn=loss_fn,
              teacher=teacher, seed=seed + 1, loader=loader, wrap=wrap, warmup=config.warmup_share, schedule_span=(l_steps, plan.total))
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
