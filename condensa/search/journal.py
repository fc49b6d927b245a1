"""The search journal: one JSON line per finished evaluation, so a killed search resumes.

The first line is a header holding the fingerprint of the config (strategy, objective,
constraints, method, seed, ...; not the budget, so a user can raise it and continue). Each
evaluation is appended and fsynced as it finishes: a crash loses at most the evaluation in
flight. The journal is never shortened: unreadable lines (a crash mid-write) are set aside in a
copy of the file and every readable record is kept (see :class:`Journal`). A parallel search
(``search.workers > 1``) also appends a ``pending`` line for each point it submits, before it
runs, so a resumed search re-runs exactly the points that were in flight; evaluations then appear
in completion order.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from ..errors import CondensaWarning, SearchError
from ..io import atomic_write_bytes, json_default


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


#: keys every evaluation record must have (the rest have defaults)
EVALUATION_KEYS = ("index", "knobs", "metrics", "constraints", "objective", "feasible")


def _record_problem(record: Any) -> str | None:
    """Why a parsed JSON line is not a journal record (None when it is one)."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not a record"
    kind = record.get("type")
    if kind == "header":
        missing = [k for k in ("fingerprint", "space") if k not in record]
        return f"a header without {', '.join(missing)}" if missing else None
    if kind == "evaluation":
        evaluation = record.get("evaluation")
        if not isinstance(evaluation, dict):
            return "an evaluation record without its 'evaluation' mapping"
        missing = [k for k in EVALUATION_KEYS if k not in evaluation]
        if missing:
            return f"an evaluation without {', '.join(missing)}"
        if not isinstance(evaluation["knobs"], dict) or not isinstance(evaluation["metrics"], dict) \
                or not isinstance(evaluation["constraints"], list):
            return "an evaluation whose knobs, metrics or constraints have the wrong type"
        return None
    if kind == "pending":  # a point a parallel search submitted (search/parallel.py)
        pending = record.get("pending")
        if not isinstance(pending, dict) or isinstance(pending.get("index"), bool) \
                or not isinstance(pending.get("index"), int) or not isinstance(pending.get("knobs"), dict):
            return "a pending record without an integer 'index' and a 'knobs' mapping"
        return None
    return f"a record of unknown type {kind!r}"


class Journal:
    """Append-only JSON-lines record of a search.

    Nothing finished is ever thrown away: every line that parses as a record is kept (a last line
    whose newline is missing included). Lines that cannot be read (torn by a crash, garbage) are
    set aside: the journal as found is copied to ``journal.jsonl.corrupt-<time>``, the readable
    records are rewritten in place, and a warning names the copy. A line that is valid JSON but
    not a journal record (edited by hand) is refused with an error instead, leaving the file as it
    is. A journal with a header but no evaluation yet is simply restarted for a changed config.

    ``writable=False`` reads and checks the journal but never writes it: under ``torchrun`` every
    rank runs the same search and only rank 0 may write.
    """

    def __init__(self, path: str | os.PathLike, *, writable: bool = True) -> None:
        self.path = Path(path)
        self.writable = writable
        #: points a parallel search submitted (``{"index", "knobs", "proposal"}``), set by :meth:`read`
        #: and :meth:`start`
        self.pending: list[dict[str, Any]] = []

    def _scan(self) -> tuple[list[tuple[bytes, dict[str, Any]]], list[int], bytes]:
        """``(readable (line, record) pairs, numbers of unreadable lines, raw bytes)``; raises
        :class:`SearchError` for a line that parses but is no journal record."""
        if not self.path.is_file():
            return [], [], b""
        raw = self.path.read_bytes()
        good, bad = [], []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except (ValueError, RecursionError):  # JSONDecodeError and UnicodeDecodeError are ValueErrors
                bad.append(number)
                continue
            problem = _record_problem(record)
            if problem is not None:
                raise SearchError(f"{self.path}: line {number} is {problem}; the journal was edited: fix or remove "
                                  "that line, or use a new --out folder")
            good.append((line, record))
        return good, bad, raw

    def read(self) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """``(header, evaluations)`` of the readable records (unreadable lines are skipped)."""
        good, _, _ = self._scan()
        return self._parse(good)

    def _parse(self, good: list[tuple[bytes, dict[str, Any]]]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        header, rows, pending = None, [], []
        for _, record in good:
            if record["type"] == "header":
                if header is not None:
                    raise SearchError(f"{self.path}: holds two headers (two searches wrote it); use a new --out folder")
                header = record
            elif record["type"] == "pending":  # parallel search (search/parallel.py)
                pending.append(record["pending"])
            else:
                rows.append(record["evaluation"])
        self.pending = pending
        return header, rows

    def start(self, fingerprint: dict[str, Any], space: dict[str, Any]) -> list[dict[str, Any]]:
        """Open for a search: check the header against ``fingerprint`` and return finished rows."""
        good, bad, raw = self._scan()
        header, rows = self._parse(good)
        wanted = {"fingerprint": _canonical(fingerprint), "space": _canonical(space)}
        if header is None and rows:
            raise SearchError(f"{self.path}: {len(rows)} evaluations but no readable header (lines {_numbers(bad)} "
                              "cannot be read), so they cannot be matched to this config; move the journal away or use "
                              "a new --out folder")
        if header is not None and rows:
            diffs = fingerprint_diff({"fingerprint": header.get("fingerprint"), "space": header.get("space")}, wanted)
            if diffs:
                raise SearchError(
                    f"journal {self.path} was written for a different config: {'; '.join(diffs[:3])}"
                    f"{' (and more)' if len(diffs) > 3 else ''}; use a new --out folder or delete the journal"
                )
        if bad:
            self._set_aside(raw, bad, len(rows))
        if header is None or not rows:  # nothing evaluated yet: (re)start with this config's header
            self.pending = []  # points in flight when no evaluation had finished are proposed afresh
            if self.writable:
                atomic_write_bytes(self.path, _line({"type": "header", "version": 1, **wanted}))
            return []
        if bad and self.writable:
            atomic_write_bytes(self.path, b"".join(line + b"\n" for line, _ in good))
        return rows

    def _set_aside(self, raw: bytes, bad: list[int], kept: int) -> None:
        """Copy the journal as found next to it and say so (the caller then rewrites the journal)."""
        if not self.writable:
            return
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
            n += 1
        atomic_write_bytes(target, raw)
        warnings.warn(f"{self.path}: line{'s' if len(bad) > 1 else ''} {_numbers(bad)} cannot be read (a torn write or "
                      f"damage); the journal as found is kept in {target.name}, its {kept} readable evaluations are kept",
                      CondensaWarning, stacklevel=3)

    def append(self, evaluation: dict[str, Any]) -> None:
        self._append({"type": "evaluation", "evaluation": evaluation})

    def append_pending(self, pending: dict[str, Any]) -> None:
        """A point a parallel search submitted, before it runs: ``{"index", "knobs", "proposal"}``
        (same write gate as evaluations: only a writable journal is written)."""
        self._append({"type": "pending", "pending": pending})

    def _append(self, record: dict[str, Any]) -> None:
        if not self.writable:
            return
        line = _line(record)
        with open(self.path, "ab+") as handle:
            handle.seek(0, os.SEEK_END)
            if handle.tell() > 0:  # a complete last record whose newline is missing: end it, never cut it
                handle.seek(-1, os.SEEK_END)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())


def _line(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, default=json_default, allow_nan=True) + "\n").encode("utf-8")


def _numbers(numbers: list[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return shown + (f" and {len(numbers) - 5} more" if len(numbers) > 5 else "")
