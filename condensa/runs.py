"""A run folder: where ``compress`` / ``search`` write, and how ``export`` / ``eval`` / ``report``
read it back.

A run folder holds ``config.json`` (the resolved config, so later commands rebuild the same
workspace), ``result.json``, ``compressed.safetensors`` and, for a search, ``journal.jsonl``.
Every file is written atomically; under ``torchrun`` only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from .config import Config, parse_config
from .distributed import is_main_process
from .errors import ConfigError
from .io import atomic_write_json, refuse_if_pickle
from .models.reference import load_weights
from .models.registry import build_model
from .operators import params
from .pipeline import save_weights

CONFIG = "config.json"
RESULT = "result.json"
WEIGHTS = "compressed.safetensors"
JOURNAL = "journal.jsonl"


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
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise ConfigError(f"--out: cannot write to {path}: {error.strerror or error}") from None
    return path


def resolved(config: Config) -> dict[str, Any]:
    """The config as written to ``config.json`` (every default filled in)."""
    return dataclasses.asdict(config)


def write_outputs(out_dir: Path, config: Config, result: dict[str, Any], model) -> None:
    if not is_main_process():  # under torchrun every rank computes the same result; rank 0 writes
        return
    atomic_write_json(out_dir / CONFIG, resolved(config))
    if config.output.save_weights and model is not None:
        save_weights(model, out_dir / WEIGHTS)
    atomic_write_json(out_dir / RESULT, result)


def load_run_config(run_dir: Path) -> Config:
    if Path(run_dir).is_file():
        refuse_if_pickle(Path(run_dir))
        raise ConfigError(f"{run_dir} is a file; expected the output folder of 'condensa compress', 'search' or 'export'")
    path = run_dir / CONFIG
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {CONFIG}; expected the output folder of 'condensa compress' or 'condensa search'")
    return parse_config(json.loads(path.read_text()))


def read_result(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RESULT
    if not path.is_file():
        raise ConfigError(f"{run_dir}: no {RESULT}; expected the output folder of 'condensa compress' or 'condensa search'")
    return json.loads(path.read_text())


def quant_dtypes(record: dict[str, Any]) -> dict[str, str]:
    dtypes = {}
    for name, entry in (record or {}).items():
        if entry.get("dtype"):
            dtypes[name] = entry["dtype"]
            continue
        for op in entry.get("ops", []):
            if params.is_quant_dtype(op):
                dtypes[name] = op
    return dtypes


def load_compressed(run_dir: str | Path):
    """Rebuild the compressed model of a result folder: the model from its config's factory, the
    compressed weights, and the quantizers re-attached from the record (so export sees int codes)."""
    run_dir = Path(run_dir)
    config = load_run_config(run_dir)
    result = read_result(run_dir)
    weights = run_dir / WEIGHTS
    if not weights.is_file():
        raise ConfigError(f"{run_dir}: no compressed.safetensors (the search found no feasible strategy, or output.save_weights was false)")
    model = load_weights(build_model(config.model.name, **config.model.kwargs), weights).eval()
    modules = dict(model.named_modules())
    for tensor, dtype in quant_dtypes(result.get("record", {})).items():
        module_name, _, tensor_name = tensor.rpartition(".")
        params.set_quant(modules[module_name], tensor_name, dtype)
    return model, config, result


__all__ = ["output_folder", "resolved", "write_outputs", "load_run_config", "read_result", "quant_dtypes", "load_compressed",
           "CONFIG", "RESULT", "WEIGHTS", "JOURNAL"]
