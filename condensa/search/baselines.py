"""Baselines with the same interface as BO, for comparison: grid, random, bisection (1-D)."""

from __future__ import annotations

import torch

from ..errors import SearchError
from .bo import DTYPE, generator
from .space import Space


def grid_point(space: Space, step: int, budget: int) -> list[float]:
    """The ``step``-th point of a regular grid with ``k^d >= budget`` points (row-major); in 1-D
    exactly ``budget`` evenly spaced points including both ends."""
    per_dim = 1
    while per_dim ** space.dim < budget:
        per_dim += 1
    coords, index = [], step
    for _ in range(space.dim):
        coords.append(index % per_dim)
        index //= per_dim
    return space.snap([c / (per_dim - 1) if per_dim > 1 else 0.5 for c in coords])


def random_point(space: Space, seed: int, step: int) -> list[float]:
    return space.snap(torch.rand(space.dim, generator=generator(seed, step), dtype=DTYPE).tolist())


def bisection_point(space: Space, x: list[list[float]], feasible: list[bool], better_end: float) -> list[float]:
    """Bisect between the worst-objective end (assumed feasible) and ``better_end``.

    Assumes feasibility is monotone along the single knob. The interval is rebuilt from the
    history each time, so a resumed bisection continues where it stopped.
    """
    if space.dim != 1:
        raise SearchError(f"bisection searches exactly one knob; this strategy has {space.dim}: {space.names}")
    safe_end = 1.0 - better_end
    if not x:
        return space.snap([safe_end])
    good, bad = safe_end, better_end  # good: feasible side; bad: infeasible side
    for (u,), ok in zip(x, feasible):
        if ok and abs(u - better_end) < abs(good - better_end):
            good = u
        if not ok and abs(u - safe_end) < abs(bad - safe_end) and abs(u - better_end) <= abs(good - better_end):
            bad = u
    return space.snap([(good + bad) / 2])
