"""YAML configs parsed into dataclasses.

Every section is a dataclass; unknown keys and wrong types raise a one-line
:class:`~condensa.errors.ConfigError` naming the key path and what is allowed. ``--set a.b=v``
overrides are applied to the raw mapping before validation, so they get the same checks.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class TrainSection:
    """How the reference model is trained when no checkpoint is given."""

    epochs: int = 30
    lr: float = 3e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    batch_size: int = 64


@dataclass
class ModelConfig:
    name: str = "digits_cnn"
    kwargs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    train: TrainSection = field(default_factory=TrainSection)


@dataclass
class DataConfig:
    name: str = "digits"
    root: str | None = None
    batch_size: int = 64
    split_seed: int = 0
    image_size: int | None = None
    val_fraction: float = 0.2
    limit: int | None = None
    seq_len: int = 64


@dataclass
class StrategyConfig:
    scheme: str | None = None
    args: dict = field(default_factory=dict)
    ops: list | None = None


@dataclass
class ConstraintConfig:
    metric: str = "accuracy_drop"
    upper: float = 1.0


@dataclass
class SearchConfig:
    objective: str = "footprint"
    direction: str = "minimize"
    constraints: list = field(default_factory=lambda: [{"metric": "accuracy_drop", "upper": 1.0}])
    budget: int = 10
    method: str = "bo"
    eval_epochs: int | None = None
    n_init: int | None = None
    recommend: str = "model"


@dataclass
class OutputConfig:
    dir: str | None = None
    save_weights: bool = True


@dataclass
class MetricsConfig:
    latency: bool = False
    latency_batch_size: int = 1
    latency_repeats: int = 20
    memorization: bool = False
    memorization_models: int = 48
    memorization_epochs: int = 15


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    recovery: dict = field(default_factory=dict)
    search: SearchConfig = field(default_factory=SearchConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    device: str = "auto"
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false",
                "dict": "a mapping", "list": "a list"}.get(tp.__name__, tp.__name__)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    text = " or ".join(_type_name(a) for a in args)
    return text + (" or null" if type(None) in typing.get_args(tp) else "")


def _check_value(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_value(value, arg, where)
            except ConfigError:
                continue
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp in (str, dict, list):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: Any, where: str) -> Any:
    """Build dataclass ``cls`` from a mapping, checking keys and types."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [key for key in data if key not in names]
    if unknown:
        raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key; allowed: {', '.join(names)}")
    values = {key: _check_value(value, hints[key], f"{where + '.' if where else ''}{key}") for key, value in data.items()}
    return cls(**values)


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.path=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set: expected key.path=value, got {item!r}")
        path, _, text = item.partition("=")
        value = yaml.safe_load(text) if text else None
        node = raw
        keys = path.strip().split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {path}: '{key}' is not a section")
            node = child
        node[keys[-1]] = value
    return raw


def parse_config(raw: Any, overrides: list[str] | None = None) -> Config:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"config: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides or [])
    config = from_dict(Config, raw, "")
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config: file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"config: {path} is not valid YAML{at}: {getattr(error, 'problem', error)}") from None
    return parse_config(raw, overrides)


DATA_NAMES = ("digits", "cifar10", "imagefolder", "text")
OBJECTIVES = ("footprint", "flops", "latency")
DIRECTIONS = ("minimize", "maximize")
METHODS = ("bo", "random", "grid", "bisection")
RECOMMEND = ("model", "observed")


def validate(config: Config) -> None:
    """Cross-field checks that types alone cannot express."""
    from .device import DEVICES

    if config.device not in DEVICES and not config.device.startswith("cuda:"):
        raise ConfigError(f"device: must be one of {list(DEVICES)}, got {config.device!r}")
    if config.data.name not in DATA_NAMES:
        raise ConfigError(f"data.name: must be one of {list(DATA_NAMES)}, got {config.data.name!r}")
    if config.data.batch_size < 1:
        raise ConfigError(f"data.batch_size: must be >= 1, got {config.data.batch_size}")
    search = config.search
    if search.budget < 1:
        raise ConfigError(f"search.budget: must be an integer >= 1, got {search.budget}")
    if search.direction not in DIRECTIONS:
        raise ConfigError(f"search.direction: must be one of {list(DIRECTIONS)}, got {search.direction!r}")
    if search.method not in METHODS:
        raise ConfigError(f"search.method: must be one of {list(METHODS)}, got {search.method!r}")
    if search.recommend not in RECOMMEND:
        raise ConfigError(f"search.recommend: must be one of {list(RECOMMEND)}, got {search.recommend!r}")
    for i, item in enumerate(search.constraints):
        where = f"search.constraints[{i}]"
        constraint = from_dict(ConstraintConfig, item, where)
        if constraint.upper < 0:
            raise ConfigError(f"{where}.upper: must be >= 0 (a bound on a drop or a rate), got {constraint.upper}")
    if config.strategy.scheme is None and config.strategy.ops is None:
        raise ConfigError("strategy: give 'scheme' (with optional 'args') or 'ops'")
