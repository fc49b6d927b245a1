"""Reports of finished runs: markdown, self-contained HTML and PNG plots."""

from .render import write_report

__all__ = ["write_report"]
