"""Constrained search over a strategy's open knobs (botorch/gpytorch BO and baselines)."""

from .api import METHODS, Evaluation, SearchResult, search
from .journal import Journal
from .objectives import Constraint, Objective, accuracy_drop, mismatch_rate, objective
from .space import Space

__all__ = ["METHODS", "Evaluation", "SearchResult", "search", "Journal", "Constraint", "Objective",
           "accuracy_drop", "mismatch_rate", "objective", "Space"]
