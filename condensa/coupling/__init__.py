"""Channel coupling: the mechanism that says which channels are pruned and removed together.

``FilterPrune`` uses it to rank whole groups, :mod:`condensa.surgery` to remove them. Built on
Torch-Pruning's dependency graph; the only patch of its private API is in
:mod:`.torch_pruning_adapter`.
"""

from .groups import NORMS, TRACE_ERRORS, ChannelGroup, CouplingGraph, Member, channel_groups, following_norms
from .inputs import CONVS, infer_example_input

__all__ = ["CONVS", "NORMS", "TRACE_ERRORS", "ChannelGroup", "CouplingGraph", "Member", "channel_groups",
           "following_norms", "infer_example_input"]
