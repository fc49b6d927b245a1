"""``condensa search CONFIG --set search.workers=2``: a real (small) digits search on a local Ray,
killed with ``kill -9`` and resumed by the same command: no duplicated journal entry, nothing lost.

Slow (about 3 minutes on 2 cores: two CLI processes, each starting Ray and training); run with ``-m slow``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

REPO = Path(__file__).resolve().parents[1]
CONFIG = """
model: {name: digits_cnn}
data: {name: digits}
strategy: {scheme: prune_quantize, args: {density: {low: 0.01, high: 0.5, log: true}}}
recovery: {epochs: 1, lr: 0.003}
search: {budget: 5, eval_epochs: 1}
seed: 0
"""


def start(config: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "condensa.cli", "search", str(config), "--out", str(out),
                             "--set", "search.workers=2", *extra], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def records(out: Path, kind: str) -> list[dict]:
    path = out / "journal.jsonl"
    lines = path.read_text().splitlines() if path.is_file() else []
    return [json.loads(line)[kind] for line in lines if line.endswith("}") and json.loads(line)["type"] == kind]


@pytest.mark.slow
def test_kill_9_during_a_parallel_cli_search_then_the_same_command_resumes(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    out = tmp_path / "run"
    process = start(config, out, "--quiet")
    deadline = time.time() + 900
    while time.time() < deadline:
        if len(records(out, "evaluation")) >= 1 and len(records(out, "pending")) >= 3:
            break
        if process.poll() is not None:
            pytest.fail(process.stderr.read().decode()[-2000:])
        time.sleep(0.2)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    before = [r["index"] for r in records(out, "evaluation")]
    assert 1 <= len(before) < 5
    resumed = start(config, out)  # the same command (progress shown: plain lines, stderr is not a terminal)
    _, err = resumed.communicate(timeout=900)
    err = err.decode()
    assert resumed.returncode == 0, err[-3000:]
    indices = [r["index"] for r in records(out, "evaluation")]
    assert sorted(indices) == list(range(5)), indices  # no duplicated journal entry, nothing lost
    assert indices[: len(before)] == before  # finished evaluations were kept, not re-run
    assert "running=#" in err  # the progress display shows the evaluations in flight
    result = json.loads((out / "result.json").read_text())
    assert result["samples"] == 5
    assert [e["index"] for e in result["search"]["evaluations"]] == list(range(5))
