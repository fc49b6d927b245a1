"""Exception types of condensa.

Every error a user can fix derives from :class:`CondensaError`; the CLI turns these into one
line on stderr and exit code 2. Anything else is a bug or an environment failure (exit code 1).
"""

from __future__ import annotations


class CondensaError(Exception):
    """Base class of every user-facing condensa error."""


class ConfigError(CondensaError, ValueError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class KnobError(CondensaError, ValueError):
    """A knob is open where a value is needed, or a bound value is outside its range."""


class LayerSelectionError(CondensaError, ValueError):
    """A layer pattern matches nothing, or an operator cannot handle a selected layer."""


class DataError(CondensaError, ValueError):
    """A data path is missing or a data set is empty or malformed."""


class ModelError(CondensaError, ValueError):
    """A model spec cannot be resolved, or the model factory raised."""


class SearchError(CondensaError, RuntimeError):
    """A search cannot run or resume (e.g. a journal from a different config)."""


class CheckpointError(CondensaError, ValueError):
    """A checkpoint is corrupt, tampered with, truncated or of an unsafe format."""


class UntrustedCodeError(CondensaError, PermissionError):
    """A file condensa read names code to import, and the caller did not pass ``trust_code``."""


class FolderInUseError(CondensaError, RuntimeError):
    """Another condensa run holds the output folder's lock (one run per folder at a time)."""


class EvaluationError(CondensaError, RuntimeError):
    """One evaluation of a search failed in a way that says nothing about the others (the search
    records it as failed and goes on)."""


class RecoveryError(EvaluationError):
    """Recovery diverged (NaN or inf loss)."""


class CondensaWarning(UserWarning):
    """Something the user should know that does not stop the run (the CLI prints it as one line)."""
