"""Constrained search over a strategy's open knobs (botorch/gpytorch BO and baselines).

The search sees knob specs, ``strategy.bind`` and an ``evaluate`` callable returning a metrics
mapping; it knows nothing about pruning, recovery or how metrics are measured.
"""

from .api import FALLBACK, RECOMMEND, SEARCH_METHODS, Evaluation, SearchResult, check_settings, search
from .bo import constraint_band
from .journal import Journal
from .objectives import DIRECTIONS, Constraint, Objective, accuracy_drop, mismatch_rate
from .space import Space

__all__ = ["FALLBACK", "SEARCH_METHODS", "RECOMMEND", "DIRECTIONS", "Evaluation", "SearchResult", "check_settings", "search",
           "constraint_band", "Journal", "Constraint", "Objective", "accuracy_drop", "mismatch_rate", "Space"]
