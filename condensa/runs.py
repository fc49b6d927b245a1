"""A run folder: where ``compress`` / ``search`` write, and how ``export`` / ``eval`` / ``report``
read it back.

A run folder holds ``config.json`` (the resolved config, so later commands rebuild the same
workspace), ``result.json``, the compressed model as a packed checkpoint (``model.safetensors`` +
``manifest.json``, exactly what ``condensa export`` writes, so the weights on disk are as small as
the footprint says) and, for a search, ``journal.jsonl``. Every file is written atomically;
under ``torchrun`` only rank 0 writes. Reading a run folder back runs no code it names unless the
caller trusts it (``--trust-code``).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import Config, parse_config
from .distributed import is_main_process
from .errors import ConfigError
from .export import load, save
from .export.manifest import MANIFEST
from .export.manifest import WEIGHTS as WEIGHTS
from .io import atomic_write_json, refuse_if_pickle
from .operators import params
from .pipeline import CompressedModel

CONFIG = "config.json"
RESULT = "result.json"
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
    if not is_main_process():  # under torchrun only rank 0 creates and writes the folder
        return path
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


__all__ = ["output_folder", "resolved", "write_outputs", "load_run_config", "read_result", "quant_dtypes", "load_compressed",
           "attach_quantizers", "CONFIG", "RESULT", "WEIGHTS", "JOURNAL"]
