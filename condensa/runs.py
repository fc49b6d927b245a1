"""A run folder: where ``compress`` / ``search`` write, and how ``export`` / ``eval`` / ``report``
read it back.

A run folder holds ``config.json`` (the resolved config, so later commands rebuild the same
workspace), ``result.json``, the compressed model as a packed checkpoint (``model.safetensors`` +
``manifest.json``, exactly what ``condensa export`` writes, so the weights on disk are as small as
the footprint says) and, for a search, ``journal.jsonl``. Every file is written atomically;
under ``torchrun`` only rank 0 writes. Reading a run folder back runs no code it names unless the
caller trusts it (``--trust-code``). A run holds the folder's lock (:func:`exclusive`) while it
works, so two runs never write one folder at once.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock, Timeout
from torch import nn

from .config import Config, parse_config
from .distributed import is_main_process
from .errors import ConfigError, FolderInUseError
from .export import load, save
from .export.manifest import MANIFEST
from .export.manifest import WEIGHTS as WEIGHTS
from .io import atomic_write_json, atomic_write_text, read_json_object, refuse_if_pickle
from .operators import params
from .pipeline import CompressedModel

CONFIG = "config.json"
RESULT = "result.json"
JOURNAL = "journal.jsonl"
LOCK = ".condensa.lock"
PID = ".condensa.pid"


def output_folder(config: Config, out: str | None, config_path: str | None, kind: str) -> Path:
    """The run folder (``--out``, else ``output.dir``, else ``runs/<config>-<kind>``), created and
    checked writable before any work starts."""
    if out:
        path = Path(out)
    elif config.output.dir:
        path = Path(config.output.dir)
    else:
        stem = Path(config_path).stem if config_path else "run"
        path = Path("runs") / f"{stem}-{kind}"
    if not is_main_process():  # under torchrun only rank 0 creates and writes the folder
        return path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-test-{os.getpid()}"  # per process: two runs racing on one folder
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"--out: cannot write to {path}: {error.strerror or error}") from None
    return path


def check_folder(path: str | Path, where: str = "--out") -> Path:
    """Refuse ``path`` unless it is, or could be created as, a folder this process can write;
    creates nothing (so a command refused later leaves no folder behind)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{where}: {path} is a file, not a folder")
    existing = next((p for p in (path, *path.absolute().parents) if p.exists()), None)
    try:  # a probe file in the nearest existing folder, removed at once (os.access says yes to root)
        if existing is None or not existing.is_dir():
            raise NotADirectoryError(f"no folder to create {path} in")
        handle, probe = tempfile.mkstemp(dir=existing, prefix=".write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise ConfigError(f"{where}: cannot write to {path}: {error.strerror or error}") from None
    return path


def writable_folder(path: str | Path, where: str = "--out") -> Path:
    """``path`` as a folder this process can write (created if missing), checked before any work."""
    path = check_folder(path, where)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ConfigError(f"{where}: cannot write to {path}: {error.strerror or error}") from None
    return path


@contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock: one ``search`` / ``compress`` per folder at a time.

    The lock is an OS file lock (``fcntl.flock`` through ``filelock``) on ``.condensa.lock``: the
    kernel releases it when the holder exits, however it exits (``kill -9`` included), so a stale
    lock never blocks a resume. The holder's pid goes to ``.condensa.pid`` for the refusal message.
    Under ``torchrun`` rank 0 holds it for all ranks.
    """
    if not is_main_process():
        yield
        return
    lock = FileLock(str(out_dir / LOCK))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise FolderInUseError(f"--out: {out_dir} is in use by another condensa run (pid {_holder(out_dir)}); wait for it "
                               "to finish, or stop it (a search resumes from its journal), or use another --out") from None
    try:
        atomic_write_text(out_dir / PID, f"{os.getpid()}\n")
        yield
    finally:
        (out_dir / PID).unlink(missing_ok=True)
        lock.release()


def _holder(out_dir: Path, wait: float = 2.0) -> str:
    """The pid of the process holding ``out_dir``'s lock (it writes it just after taking the lock)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            pid = int((out_dir / PID).read_text().strip())
            os.kill(pid, 0)  # alive? (a pid file left by a killed run names a dead process)
            return str(pid)
        except PermissionError:  # alive, another user's
            return str(pid)
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return "unknown"
            time.sleep(0.05)


def resolved(config: Config) -> dict[str, Any]:
    """The config as written to ``config.json`` (every default filled in)."""
    return dataclasses.asdict(config)


def write_outputs(out_dir: Path, config: Config, result: dict[str, Any], compressed: CompressedModel | None,
                  example_input: torch.Tensor | None = None) -> None:
    """``config.json``, the packed model (``output.save_weights``) and ``result.json`` (last)."""
    if not is_main_process():  # under torchrun every rank computes the same result; rank 0 writes
        return
    atomic_write_json(out_dir / CONFIG, resolved(config))
    if config.output.save_weights and compressed is not None:
        manifest = save(compressed.model, out_dir, strategy=compressed.strategy, record=compressed.record,
                        knobs=result.get("knobs"), metrics=result.get("test"),
                        model_factory={"name": config.model.name, "kwargs": config.model.kwargs},
                        example_input=example_input, onnx=False)
        result["weights_file_bytes"] = manifest["files"][WEIGHTS]["bytes"]
    atomic_write_json(out_dir / RESULT, result)


def load_run_config(run_dir: Path, expected: str = "the output folder of 'condensa compress' or 'condensa search'") -> Config:
    """The resolved config a run (or export) folder holds; ``expected`` describes the folder in errors."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        refuse_if_pickle(run_dir)
        raise ConfigError(f"{run_dir} is a file; expected {expected}")
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} does not exist; expected {expected}")
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG}; expected {expected}")
    raw = read_json_object(path)
    try:
        return parse_config(raw)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None


def read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULT
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RESULT}; expected the output folder of 'condensa compress' or 'condensa search'")
    return read_json_object(path)


def quant_dtypes(record: dict[str, Any]) -> dict[str, str]:
    dtypes = {}
    for name, entry in (record or {}).items():
        if entry.get("dtype"):
            dtypes[name] = entry["dtype"]
            continue
        for op in entry.get("ops", []):
            if params.is_quant_dtype(op) or params.group_dtype(op):
                dtypes[name] = op
    return dtypes


def load_compressed(run_dir: str | Path, *, trust_code: bool = False) -> tuple[nn.Module, dict[str, Any], Config, dict[str, Any]]:
    """The compressed model of a run folder as its packed checkpoint rebuilds it:
    ``(model, manifest, config, result)``; the model's factory may name code only with ``trust_code``."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    result = read_result(run_dir)
    if not (run_dir / MANIFEST).is_file():
        raise ConfigError(f"{run_dir}: no packed model ({WEIGHTS} + {MANIFEST}): the search found no feasible strategy, "
                          "or output.save_weights was false")
    model, manifest = load(run_dir, trust_code=trust_code)
    return model, manifest, config, result


def attach_quantizers(model: nn.Module, record: dict[str, Any]) -> nn.Module:
    """Re-attach the quantizers a record names, so metrics count the stored bits (idempotent on
    values that already sit on their integer grid)."""
    modules = dict(model.named_modules())
    for tensor, dtype in quant_dtypes(record or {}).items():
        module_name, _, tensor_name = tensor.rpartition(".")
        if module_name in modules and hasattr(modules[module_name], tensor_name):
            params.set_quant(modules[module_name], tensor_name, dtype)
    return model


__all__ = ["output_folder", "check_folder", "writable_folder", "exclusive", "resolved", "write_outputs", "load_run_config", "read_result",
           "quant_dtypes", "load_compressed", "attach_quantizers", "CONFIG", "RESULT", "WEIGHTS", "JOURNAL", "LOCK", "PID"]
