"""Crashes and races lose nothing: two searches on one folder, kill -9 a running search and resume;
atomic writes; determinism."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
model: {name: digits_cnn}
data: {name: digits}
strategy: {scheme: prune_quantize, args: {density: {low: 0.01, high: 0.5, log: true}}}
recovery: {epochs: 2, lr: 0.003}
search: {budget: 5, eval_epochs: 1}
seed: 0
"""


def start(config: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "condensa.cli", "search", str(config), "--out", str(out), "--quiet"],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ})


def evaluations(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "journal.jsonl").read_text().splitlines() if line.strip()]
    trace = []
    for row in rows:
        if row["type"] == "evaluation":
            e = dict(row["evaluation"])
            e.pop("seconds")
            e["metrics"] = {k: v for k, v in e["metrics"].items() if k != "seconds"}
            trace.append(e)
    return trace


def stable(result: dict) -> dict:
    """result.json without wall-clock fields."""
    text = json.dumps(result, sort_keys=True)
    data = json.loads(text)

    def scrub(node):
        if isinstance(node, dict):
            return {k: scrub(v) for k, v in node.items() if k not in ("seconds",)}
        if isinstance(node, list):
            return [scrub(v) for v in node]
        return node

    return scrub(data)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The reference run, started twice at once on one folder (as ``for i in 1 2; do condensa search
    ... & done`` does): one run holds the folder, the other is refused at once."""
    root = tmp_path_factory.mktemp("faults")
    config = root / "config.yaml"
    config.write_text(CONFIG)
    out = root / "full"
    processes = [start(config, out), start(config, out)]
    results = [(p.pid, p.returncode, err.decode()) for p in processes for _, err in [p.communicate(timeout=600)]]
    return config, out, results


def test_a_second_run_on_the_same_folder_is_refused_and_the_journal_stays_valid(uninterrupted):
    _, out, results = uninterrupted
    winners, losers = [r for r in results if r[1] == 0], [r for r in results if r[1] != 0]
    assert len(winners) == 1 and len(losers) == 1, [(code, err[-1000:]) for _, code, err in results]
    winner, (_, loser_code, loser_err) = winners[0][0], losers[0]
    assert loser_code == 2, loser_err[-2000:]
    assert loser_err.splitlines() == [f"condensa: error: --out: {out} is in use by another condensa run (pid {winner}); "
                                      "wait for it to finish, or stop it (a search resumes from its journal), or use another --out"]
    lines = (out / "journal.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and [json.loads(line)["type"] for line in lines[:-1]] == ["header"] + ["evaluation"] * 5
    assert not list(out.glob("journal.jsonl.corrupt-*")) and not (out / ".condensa.pid").exists()


def test_same_seed_gives_identical_trace_and_result(uninterrupted, tmp_path):
    config, full, _ = uninterrupted
    again = tmp_path / "again"
    process = start(config, again)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err.decode()[-2000:]
    assert evaluations(again) == evaluations(full)
    assert stable(json.loads((again / "result.json").read_text())) == stable(json.loads((full / "result.json").read_text()))


@pytest.mark.parametrize("kill_after", [1, 3])
def test_kill_9_then_resume_equals_uninterrupted_run(uninterrupted, tmp_path, kill_after):
    config, full, _ = uninterrupted
    out = tmp_path / "killed"
    process = start(config, out)
    journal = out / "journal.jsonl"
    deadline = time.time() + 600
    while time.time() < deadline:
        if journal.is_file() and len(journal.read_text().splitlines()) >= kill_after + 1:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(evaluations(out))
    assert kill_after <= finished < 5
    assert (out / ".condensa.pid").read_text().strip() == str(process.pid)  # the killed run's lock is left behind
    resumed = start(config, out)  # ... and does not block the resume: the kernel released the lock
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err.decode()[-2000:]
    trace = evaluations(out)
    assert [e["index"] for e in trace] == list(range(5))  # nothing lost, nothing duplicated
    assert trace == evaluations(full)
    assert stable(json.loads((out / "result.json").read_text()))["knobs"] == stable(json.loads((full / "result.json").read_text()))["knobs"]


def test_crash_during_a_write_leaves_the_previous_file_intact(tmp_path, monkeypatch):
    from condensa.io import atomic_write_json

    target = tmp_path / "result.json"
    atomic_write_json(target, {"version": 1})

    def exploding_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", exploding_replace)
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"version": 2})
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]  # no temp file left behind
