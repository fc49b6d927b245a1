"""The search journal: one JSON line per finished evaluation, so a killed search resumes.

The first line is a header holding the fingerprint of the config (strategy, objective,
constraints, method, seed, ...; not the budget, so a user can raise it and continue). Each
evaluation is appended and fsynced as it finishes: a crash loses at most the evaluation in
flight. A torn last line (a crash mid-write) is dropped with a warning and cut off before the
next append.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from ..errors import SearchError
from ..io import json_default


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: obj}


def _canonical(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=json_default, sort_keys=True))


def fingerprint_diff(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """Human-readable differences between two fingerprints, by dotted key."""
    a, b = _flatten(_canonical(old)), _flatten(_canonical(new))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if a.get(key, "<missing>") != b.get(key, "<missing>"):
            diffs.append(f"{key} differs ({_short(a.get(key, '<missing>'))} vs {_short(b.get(key, '<missing>'))})")
    return diffs


def _short(value: Any) -> str:
    text = json.dumps(value, default=json_default)
    return text if len(text) <= 40 else text[:37] + "..."


class Journal:
    """Append-only JSON-lines record of a search.

    ``writable=False`` reads and checks the journal but never writes it: under ``torchrun`` every
    rank runs the same search and only rank 0 may write.
    """

    def __init__(self, path: str | os.PathLike, *, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """``(header, evaluations)``; a torn final line is ignored (and removed on the next append)."""
        if not self.path.is_file():
            return None, []
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        header, rows, good_bytes = None, [], 0
        for i, line in enumerate(lines):
            if not line.strip():
                good_bytes += len(line) + (1 if i < len(lines) - 1 else 0)
                continue
            try:
                record = json.loads(line)
                if i == len(lines) - 1:
                    raise ValueError("no newline: the write did not finish")
            except ValueError:
                if i >= len(lines) - 2:
                    warnings.warn(f"{self.path}: ignoring a torn last line (the process died while writing it)", stacklevel=2)
                    break
                raise SearchError(f"{self.path}: line {i + 1} is not valid JSON; the journal is corrupt") from None
            good_bytes += len(line) + 1
            if record.get("type") == "header":
                header = record
            elif record.get("type") == "evaluation":
                rows.append(record["evaluation"])
        self._good_bytes = good_bytes
        return header, rows

    def start(self, fingerprint: dict[str, Any], space: dict[str, Any]) -> list[dict[str, Any]]:
        """Open for a search: check the header against ``fingerprint`` and return finished rows."""
        header, rows = self.read()
        wanted = {"fingerprint": _canonical(fingerprint), "space": _canonical(space)}
        if header is None:
            if rows:
                raise SearchError(f"{self.path}: evaluations without a header; the journal is corrupt")
            if self.writable:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.write_text("")
            self._good_bytes = 0
            self._append({"type": "header", "version": 1, **wanted})
            return []
        diffs = fingerprint_diff({"fingerprint": header.get("fingerprint"), "space": header.get("space")}, wanted)
        if diffs:
            raise SearchError(
                f"journal {self.path} was written for a different config: {'; '.join(diffs[:3])}"
                f"{' (and more)' if len(diffs) > 3 else ''}; use a new --out folder or delete the journal"
            )
        return rows

    def append(self, evaluation: dict[str, Any]) -> None:
        self._append({"type": "evaluation", "evaluation": evaluation})

    def _append(self, record: dict[str, Any]) -> None:
        if not self.writable:
            return
        line = json.dumps(record, default=json_default, allow_nan=True) + "\n"
        good = getattr(self, "_good_bytes", None)
        if good is not None and self.path.is_file() and self.path.stat().st_size != good:
            with open(self.path, "r+b") as handle:  # drop a torn tail before appending
                handle.truncate(good)
        with open(self.path, "ab") as handle:
            handle.write(line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        self._good_bytes = self.path.stat().st_size
